"""The one place that reads the process environment.

``load_settings()`` builds a typed, validated :class:`Settings` from ``DATABASE_URL``,
``REDIS_URL`` and ``PLANT_*`` variables, and each secret one's ``*_FILE`` variant (the value
read from the file it names, as Docker secrets and the official images do it). Everything else
receives a ``Settings`` object and never looks at ``os.environ`` itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from models.regular_files import read_regular_file

log = logging.getLogger(__name__)


def sqlalchemy_url(url: str) -> str:
    """Return ``url`` with the psycopg 3 driver named, as SQLAlchemy needs it.

    Plain ``postgres://`` / ``postgresql://`` URLs (what most hosts and tools hand out)
    are accepted and rewritten; an explicit driver is left alone.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def libpq_url(url: str) -> str:
    """Return ``url`` without SQLAlchemy's driver name, as psycopg and libpq take it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


# The settings that hold a secret (a password, or a URL carrying one): each may come instead from
# the file its variable's name plus _FILE names (DATABASE_URL_FILE, PLANT_ADMIN_API_KEY_FILE, ...),
# so that the secret stays out of the process environment (`docker inspect`, /proc/PID/environ,
# crash reports, every child process). PLANT_SIGNING_KEY_FILE is the signing key's already, a
# setting of its own: models/keys.py reads the key from that path (and checks its mode).
SECRET_FILE_SETTINGS = ("database_url", "redis_url", "runtime_role_password", "admin_api_key", "flower_basic_auth")
FILE_SUFFIX = "_FILE"


def read_secret_file(variable: str, path: str) -> str:
    """The secret in the file at ``path`` (named by ``variable``), surrounding whitespace and the
    final newline dropped. A blank path, a file that cannot be read or one holding nothing is a
    :class:`SettingsError` naming the variable and the path, never the content."""
    if not path.strip():
        raise SettingsError(f"{variable} is set but names no file")
    try:
        value = read_regular_file(path).decode("utf-8").strip()  # a FIFO there would hang the process's start
    except OSError as exc:
        raise SettingsError(f"{variable}: cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{variable}: {path} is not UTF-8 text") from None
    if not value:
        raise SettingsError(f"{variable}: {path} is empty")
    return value


def field_variables(settings_cls: type[BaseSettings], field_name: str) -> tuple[tuple[str, str], ...]:
    """The environment variables ``settings_cls`` reads its field ``field_name`` from, in the order
    pydantic-settings prefers them, each as ``(key, variable)``: the key the value is validated under
    (the alias, or the field's name) and the variable's name (upper case unless the class is
    case-sensitive). A validation alias's names (``AliasChoices``), and the prefixed field name where
    there is none or the class populates by name, as pydantic-settings' environment source reads them."""
    config = settings_cls.model_config
    alias = settings_cls.model_fields[field_name].validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if isinstance(alias, str) else []
    prefix, target = config.get("env_prefix", ""), config.get("env_prefix_target", "variable")
    pairs = [(choice, (prefix if target in ("alias", "all") else "") + choice) for choice in choices if isinstance(choice, str)]
    if not pairs or config.get("validate_by_name", config.get("populate_by_name", False)):
        variable = (prefix if target in ("variable", "all") else "") + field_name
        pairs.append((field_name, variable if config.get("case_sensitive", False) else variable.upper()))
    fold, seen, variables = _fold(settings_cls), set(), []
    for key, variable in pairs:  # a name spelt twice (an alias that is the prefixed field name): its first
        if fold(variable) not in seen:
            seen.add(fold(variable))
            variables.append((key, variable))
    return tuple(variables)


def _fold(settings_cls: type[BaseSettings]) -> Callable[[str], str]:
    """How ``settings_cls`` compares variable names: as spelt, or in any case (pydantic-settings' default)."""
    return (lambda name: name) if settings_cls.model_config.get("case_sensitive", False) else str.lower


class SecretFileVariables(PydanticBaseSettingsSource):
    """The ``*_FILE`` variants of :data:`SECRET_FILE_SETTINGS`' variables: each variable a secret
    setting is read from (:func:`field_variables`) with the suffix, its value read as a file path,
    from the process environment, names compared as the environment source compares them. (Its
    ``secrets_dir`` reads one directory's files by the settings' names; the convention here names
    each file where it is, as ``POSTGRES_PASSWORD_FILE`` does.) A secret set both ways is refused
    rather than one silently winning."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        fold = _fold(settings_cls)
        ignore_empty = settings_cls.model_config.get("env_ignore_empty", False)
        self._environ = {fold(name): value for name, value in os.environ.items() if value or not ignore_empty}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """The secret ``field_name``'s file variant's content, its key and False (no JSON to
        decode); ``(None, field_name, False)`` when no file variant is set."""
        fold = _fold(self.settings_cls)
        names = field_variables(self.settings_cls, field_name)
        given = [variable for _, variable in names if fold(variable) in self._environ]
        for key, variable in names:
            path = self._environ.get(fold(variable + FILE_SUFFIX))
            if path is None:
                continue
            if given:
                raise SettingsError(f"{given[0]} and {variable + FILE_SUFFIX} are both set: set only one of them")
            return read_secret_file(variable + FILE_SUFFIX, path), key, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field_name in SECRET_FILE_SETTINGS:
            value, key, _ = self.get_field_value(self.settings_cls.model_fields[field_name], field_name)
            if value is not None:
                values[key] = value
        return values


class Settings(BaseSettings):
    """Runtime configuration shared by the API, the workers, beat and the CLI."""

    model_config = SettingsConfigDict(
        env_prefix="PLANT_", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/plant",
        validation_alias=AliasChoices("DATABASE_URL", "PLANT_DATABASE_URL"),
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "PLANT_REDIS_URL"),
    )
    runtime_role: str | None = Field(
        default=None, min_length=1,
        description="`plant db upgrade` grants this role what the API, workers and beat need (models.migrate.grant_runtime_role)",
    )
    runtime_role_password: SecretStr | None = Field(
        default=None, description="with runtime_role: `plant db upgrade` creates the role with it, or sets it",
    )
    data_dir: Path = Path(".plant")
    port: int = Field(default=8000, ge=1, le=65535)
    flower_port: int = Field(default=5555, ge=1, le=65535)

    # Database pool and timeouts.
    db_pool_size: int = Field(default=5, ge=1)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)
    db_idle_in_transaction_timeout_ms: int = Field(
        default=60_000, ge=0,
        description="the server ends a session left idle inside a transaction this long, and its locks with it (0: never)",
    )
    db_client_check_interval_ms: int = Field(
        default=1000, ge=0,
        description="while a statement runs, the server checks this often that its client is still connected, and "
                    "ends the statement of one whose socket closed (0: never, and not sent: PostgreSQL on Windows and before "
                    "14 refuse it)",
    )
    db_ping_after_idle_seconds: float = Field(
        default=1.0, ge=0, description="a pooled connection idle longer than this is pinged before use"
    )

    # Jobs.
    job_soft_time_limit: int = Field(default=3600, ge=1, description="seconds")
    job_hard_time_limit: int = Field(default=3700, ge=1, description="seconds")
    job_lease_seconds: int = Field(default=300, ge=1)
    progress_min_interval_seconds: float = Field(
        default=0.5, ge=0, description="a job's checkpoints closer together than this are written with a later one"
    )
    requeue_after_seconds: float = Field(
        default=60.0, gt=0, description="a queued job older than this is republished by beat"
    )
    requeue_interval_seconds: float = Field(default=5.0, gt=0, description="how often beat runs job recovery")
    retry_after_seconds: int = Field(default=1, ge=0, description="Retry-After sent with 202")
    digests_at_once: int = Field(
        default=1, ge=1, description="ledger digests one API process takes at a time; one more is 503 digests-busy"
    )
    long_polls_at_once: int = Field(
        default=4, ge=0, description="long polls (GET /jobs/{id}?wait=N) one API process holds at a time; "
                                     "one more answers at once, as without wait (gunicorn: half its threads)"
    )

    # Signing keys for the entity chain: the active key as PEM text (PLANT_SIGNING_KEY,
    # e.g. from a secret manager) or a file; retired keys (still trusted for what they
    # signed) as *.pem files in a directory. Defaults live under data_dir/keys.
    signing_key: SecretStr | None = None
    signing_key_file: Path | None = None
    retired_signing_keys_dir: Path | None = None

    # Embeddings: "hashing" (built in, no download) or "sentence-transformers". Checked here, so
    # that a misspelt name stops the API, workers and beat at start rather than failing every job
    # that embeds (a worker took it and failed each with embedder-unavailable).
    embedder: Literal["hashing", "sentence-transformers"] = "hashing"

    # Audits and the ledger digest.
    # Each batch pays a fixed cost (the chunk and run locked, its checkpoint checked, signed and
    # written, the guards' fingerprint read, the job's progress committed): 2,000 rather than 500
    # roughly halved a quick full audit's wall time (docs/benchmarks.md, stop 40). A batch of
    # 2,000 industries holds a few MB of versions; one of certified skills takes 4x as long to
    # re-gate as 500 did, and a cancel waits for the batch in flight.
    audit_batch_size: int = Field(default=2_000, ge=1, le=10_000)
    # Small, so that every worker process stays busy to the end of a run: with 50,000, the
    # last big chunk left a core idle (200,000 entities on 2 processes: 12.5 s, against
    # 11.2 s with 5,000; docs/benchmarks.md, stop 34).
    audit_chunk_entities: int = Field(default=5_000, ge=1, description="entities per parallel chunk")
    audit_interval_seconds: float = Field(default=86_400.0, gt=0, description="scheduled full audit")
    digest_interval_seconds: float = Field(default=3_600.0, gt=0, description="scheduled ledger digest")
    digest_leaves_kept: int = Field(
        default=24, ge=2, description="stored digests, newest first, whose leaf rows beat's digest task keeps "
        "(2 at least: a check of the latest reads its leaves over several statements)")

    # Flower basic auth as "user:password"; `plant dev` generates one under data_dir.
    flower_basic_auth: SecretStr | None = None

    # Access and input limits.
    admin_api_key: SecretStr | None = Field(default=None, description="ensured as an admin key at start")
    max_request_bytes: int = Field(default=1_048_576, ge=1024, description="larger bodies get 413")
    idempotency_ttl_seconds: int = Field(default=86_400, ge=1, le=10 * 365 * 86_400)  # an expiry the database can store
    job_max_attempts: int = Field(default=5, ge=1)
    job_max_handbacks: int = Field(
        default=100, ge=0, description="hand-backs a job may make without them counting as attempts; later ones count"
    )
    retry_backoff_base_seconds: float = Field(default=1.0, gt=0)
    retry_backoff_cap_seconds: float = Field(default=60.0, gt=0)

    # Health.
    health_timeout_seconds: float = Field(default=1.0, gt=0)
    broker_read_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300,
        description="how long a worker or beat waits for one reply from Redis, and how often kombu checks their "
                    "long-lived connections (tasks/celery_app.py::create_celery)")

    # Logs and metrics.
    log_format: Literal["json", "console"] = Field(default="json", description="`make dev` uses console")
    log_level: str = Field(default="INFO", pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    # /metrics is public: each API process reads the database and the broker for it at most
    # once per this many seconds, however often it is scraped (0: on every scrape).
    metrics_state_max_age_seconds: float = Field(default=5.0, ge=0, le=300)
    # Set (by gunicorn.conf.py, or the operator) when several API processes share metrics.
    # Only prometheus_client's own name: it is what the library itself reads.
    prometheus_multiproc_dir: Path | None = Field(default=None, validation_alias="PROMETHEUS_MULTIPROC_DIR")

    @model_validator(mode="after")
    def _hard_limit_after_soft(self) -> Settings:
        # The soft limit lets a job record its failure; a hard limit at or below it kills the
        # process first, and the job waits for the lease sweep instead.
        if self.job_hard_time_limit <= self.job_soft_time_limit:
            raise ValueError(f"PLANT_JOB_HARD_TIME_LIMIT ({self.job_hard_time_limit}) must be above "
                             f"PLANT_JOB_SOFT_TIME_LIMIT ({self.job_soft_time_limit})")
        return self

    @field_validator("admin_api_key", "runtime_role", "runtime_role_password", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        # PLANT_ADMIN_API_KEY= (blank) is not a key: it made each start create an admin key nobody
        # holds. A key read from a file saved with a newline is the key without it, as clients send it.
        # PLANT_RUNTIME_ROLE= (blank) names no role, and sets no password, as compose passes an unset variable.
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str) -> str:
        return sqlalchemy_url(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Beside the environment: a secret given both ways is an error, so their order never decides.
        return init_settings, env_settings, SecretFileVariables(settings_cls), dotenv_settings, file_secret_settings

    @property
    def active_signing_key_path(self) -> Path:
        return self.signing_key_file or self.data_dir / "keys" / "active.pem"

    @property
    def retired_signing_keys_path(self) -> Path:
        return self.retired_signing_keys_dir or self.data_dir / "keys" / "retired"


class DataDirSettings(BaseSettings):
    """``PLANT_DATA_DIR`` alone, read as :class:`Settings` reads it: what a client of the API needs
    (the dev runner's admin key file, ``cli.client``). Loading every setting there made any server
    setting that is invalid where the client runs (``PLANT_PORT=x``, say) stop every command."""

    model_config = SettingsConfigDict(env_prefix="PLANT_", extra="ignore", frozen=True)

    data_dir: Path = Settings.model_fields["data_dir"].default


def load_settings(**overrides: object) -> Settings:
    """Read the environment (and explicit overrides, which win) into a ``Settings``."""
    return Settings(**overrides)  # type: ignore[arg-type]


def child_environment(base: Mapping[str, str], *, reset: Iterable[str] = (), **overrides: str) -> dict[str, str]:
    """``base`` (a process's environment) with ``overrides`` set, for a process it starts. A setting
    an override gives loses every other variable ``base`` gives it in (names compared as
    :class:`Settings` compares them): its ``*_FILE`` variants above all, beside which the child
    would stop with "both set" (``DATABASE_URL_FILE`` exported, ``DATABASE_URL`` overridden), and
    its other names, one of which could win over the override (``DATABASE_URL`` over
    ``PLANT_DATABASE_URL``). Each setting ``reset`` names (fields of :class:`Settings`) loses every
    variable ``base`` gives it in, overridden or not: a child that must run on its defaults (the
    demo's stack, which gets ``reset=Settings.model_fields``, so a setting added later is reset too)."""
    unknown = set(reset) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"no such settings to reset: {', '.join(sorted(unknown))}")
    fold, reset = _fold(Settings), frozenset(reset)
    given = {fold(name) for name in overrides}
    replaced: set[str] = set()
    for field_name in Settings.model_fields:
        variables = [variable for _, variable in field_variables(Settings, field_name)]
        if field_name in SECRET_FILE_SETTINGS:
            variables += [variable + FILE_SUFFIX for variable in variables]
        if field_name in reset or given & {fold(variable) for variable in variables}:
            replaced |= {fold(variable) for variable in variables}
    return {**{name: value for name, value in base.items() if fold(name) not in replaced}, **overrides}


# Every PLANT_* variable Plant reads that is not a field of Settings, and what reads it: with the
# fields' own names, what :func:`unknown_plant_variables` knows. tests/test_nosniff_job_fields_deleted_industries_and_unknown_variables.py
# checks that every PLANT_ name spelt in the repository (code, deployment files, docs) is one of
# them, or a Python name it lists as no variable.
OTHER_PLANT_VARIABLES: Mapping[str, str] = {
    "PLANT_URL": "the CLI: the server it talks to (cli/client.py)",
    "PLANT_API_KEY": "the CLI: the key it sends (cli/client.py)",
    "PLANT_BIND": "gunicorn.conf.py, docker/entrypoint.sh",
    "PLANT_WEB_THREADS": "gunicorn.conf.py",
    "PLANT_PG_PORT": "plant dev (cli/dev.py)",
    "PLANT_REDIS_PORT": "plant dev (cli/dev.py)",
    "PLANT_DEV_LIFELINE_FD": "plant dev's watchdog (cli/watchdog.py)",
    "PLANT_DEMO_PORT": "plant demo (cli/demo.py)",
    "PLANT_DEMO_FLOWER_PORT": "plant demo (cli/demo.py)",
    "PLANT_WORKER_CONCURRENCY": "docker/entrypoint.sh",
    "PLANT_BEAT_STALE_MINUTES": "docker/entrypoint.sh",
    "PLANT_ROLE_FILE": "docker/entrypoint.sh",
    "PLANT_IMAGE": "docker-compose.yml",
    "PLANT_PUBLISH_ADDRESS": "docker-compose.yml",
    "PLANT_FLOWER_PUBLISH_ADDRESS": "docker-compose.yml",
    "PLANT_SIGNING_KEY_PATH": "docker-compose.yml",
    "PLANT_RETIRED_SIGNING_KEYS_PATH": "docker-compose.yml",
    "PLANT_SKIP_BROWSER_TESTS": "the tests (tests/test_report_html.py)",
    "PLANT_TEST_SHOW_WORKER_LOG": "the tests (tests/conftest.py)",
}


def settings_variables() -> frozenset[str]:
    """The PLANT_* names :class:`Settings` reads: each field's under the prefix, or its aliases,
    and a secret's ``*_FILE`` variants."""
    names: set[str] = set()
    for name in Settings.model_fields:
        found = {variable.upper() for _, variable in field_variables(Settings, name) if variable.upper().startswith("PLANT_")}
        names |= found | ({n + FILE_SUFFIX for n in found} if name in SECRET_FILE_SETTINGS else set())
    return frozenset(names)


def unknown_plant_variables(environ: Mapping[str, str]) -> list[str]:
    """The PLANT_* variables of ``environ`` nothing in Plant reads, sorted: a misspelt one
    (a letter left out of one) would otherwise be ignored without a word (``extra="ignore"``).
    Names compare in upper case, as Settings reads them."""
    known = settings_variables() | set(OTHER_PLANT_VARIABLES)
    return sorted(name for name in environ if name.upper().startswith("PLANT_") and name.upper() not in known)


# Set in a process that warned before forking the ones that create the app (gunicorn's master):
# its forks inherit it and say nothing more.
_warned_before_forking = False


def warn_of_unknown_variables(environ: Mapping[str, str] | None = None) -> None:
    """Log one warning naming every PLANT_* variable of ``environ`` (the process's environment)
    nothing reads, at a process's start (the API's ``create_app``, a worker's or beat's, once
    logging is set up), unless a parent warned before forking it. Values are never logged."""
    if _warned_before_forking:
        return
    unknown = unknown_plant_variables(os.environ if environ is None else environ)
    if unknown:
        log.warning("ignoring environment variables Plant does not read (misspelt?): %s", ", ".join(unknown),
                    extra={"unknown_variables": unknown})


def warn_before_forking() -> None:
    """:func:`warn_of_unknown_variables` in a process that forks the ones creating the app
    (gunicorn's master, ``on_starting``): one warning for the server, not one per worker."""
    global _warned_before_forking
    warn_of_unknown_variables()
    _warned_before_forking = True
