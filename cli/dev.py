"""The dev runner behind ``make dev``: the whole stack in one foreground command.

It starts embedded PostgreSQL and Redis under ``PLANT_DATA_DIR`` (unless ``DATABASE_URL`` /
``REDIS_URL`` point elsewhere), generates a signing key there if none is configured, migrates
the schema, loads the demo seed (idempotent), then runs the API (gunicorn), a Celery
worker, beat and Flower as children with their output prefixed and forwarded to our stdout.
On embedded PostgreSQL the schema is migrated as ``postgres`` and everything else connects
as ``plant_runtime``, a role that owns nothing (:func:`models.migrate.grant_runtime_role`), as
a deployment should; both need the passwords generated into the data dir
(``postgres.password``, ``runtime-role.password``). A ``DATABASE_URL`` given is used for both.
SIGINT, SIGTERM, SIGHUP or the death of any child stops everything: each child is a process-group
leader, so its own children (gunicorn and prefork workers) are swept up with it. A runner
killed outright (SIGKILL, the OOM killer) cannot: its watchdog (:mod:`cli.watchdog`), told of
every process group as it starts, then stops them the same way. Two runners with different
data dirs and ports can run side by side.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import sys
from collections.abc import Callable, Mapping
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from sqlalchemy.engine import make_url

from cli.bootstrap import ensure_dev_admin, fill_derived_vectors
from cli.data_dir import data_dir_lock, make_data_dir
from cli.errors import PlantCliError
from cli.local import SERVICES_ENV
from cli.postgres_server import EmbeddedPostgres
from cli.seeding import seed_database
from cli.services import EmbeddedRedis, Server, ServiceError, generated_secret, require_free_port, start_on_a_free_port
from cli.supervisor import PROJECT_ROOT, Supervisor
from cli.watchdog import DEFERRED_SIGNALS, LIFELINE_VARIABLE, Watchdog, stop_when_closed
from models.chain import signer_kids
from models.db import one_off_sessions, transaction
from models.keys import replace_file
from models.migrate import grant_runtime_role, upgrade_head
from models.settings import FILE_SUFFIX, Settings, field_variables, load_settings
from models.settings import child_environment
from models.errors import KeyFileTooOpen
from models.key_material import ensure_key_file

DEV_DATABASE = "plant"
DEV_RUNTIME_ROLE = "plant_runtime"
# SIGHUP too: a closed terminal or a dropped ssh session hangs the runner up, and by default that
# killed it without its cleanup, leaving every server and app process (each in a session of its
# own, so the hangup never reached them) running, and the data dir locked for the next start.
SHUTDOWN_SIGNALS = DEFERRED_SIGNALS  # SIGINT, SIGTERM, SIGHUP


@dataclass(frozen=True)
class DevConfig:
    """What the runner needs; ``None`` URLs mean "start an embedded server", and a port of 0
    for one of them "on a free port, picked as it starts"."""

    data_dir: Path
    port: int
    flower_port: int
    database_url: str | None
    redis_url: str | None
    pg_port: int
    redis_port: int
    signing_key_file: Path | None  # generated if missing; None when PLANT_SIGNING_KEY is set
    flower_basic_auth: str | None  # None: generate credentials into data_dir/flower-auth
    lifeline_fd: int | None = None  # a pipe whose end of file stops us (plant demo's; cli.watchdog)


def _port(env: Mapping[str, str], name: str) -> int:
    """The port ``name`` asks for; 0 when it is unset or 0: a free one, picked as the server starts."""
    value = env.get(name) or "0"
    if not (value.isascii() and value.isdigit() and int(value) <= 65535):
        raise PlantCliError(f"{name} must be a port number (1-65535, or 0 for a free one), not {value!r}")
    return int(value)


def _given(env: Mapping[str, str], field_name: str) -> bool:
    """Whether ``env`` sets ``field_name``, under any of its names or as a file (``DATABASE_URL_FILE``)."""
    spelt = {name.upper() for name in env}
    return any(variable.upper() in spelt or (variable + FILE_SUFFIX).upper() in spelt
               for _, variable in field_variables(Settings, field_name))


def dev_config_from_environment() -> DevConfig:
    """Read settings, plus what only the runner cares about: which URLs were set explicitly."""
    settings = load_settings()
    env = os.environ
    database_url_set = _given(env, "database_url")
    redis_url_set = _given(env, "redis_url")
    return DevConfig(
        data_dir=settings.data_dir.resolve(),
        port=settings.port,
        flower_port=settings.flower_port,
        database_url=settings.database_url if database_url_set else None,
        redis_url=settings.redis_url if redis_url_set else None,
        pg_port=_port(env, "PLANT_PG_PORT"),
        redis_port=_port(env, "PLANT_REDIS_PORT"),
        signing_key_file=(
            None if settings.signing_key is not None else settings.active_signing_key_path.resolve()
        ),
        flower_basic_auth=settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else None,
        lifeline_fd=int(fd) if (fd := env.get(LIFELINE_VARIABLE, "")).isascii() and fd.isdigit() else None,
    )


def flower_credentials(config: DevConfig) -> str:
    """``user:password`` for Flower: from settings, else generated once into the data dir."""
    if config.flower_basic_auth:
        return config.flower_basic_auth
    return generated_secret(config.data_dir / "flower-auth", lambda: f"plant:{secrets.token_urlsafe(18)}")


class ShutdownRequested(BaseException):
    """Raised in the main thread by our SIGINT/SIGTERM handler; a BaseException like Ctrl-C."""


def _request_shutdown(signum: int, _frame: object) -> NoReturn:
    raise ShutdownRequested(signal.Signals(signum).name)


def _venv_tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def app_processes(config: DevConfig) -> list[tuple[str, list[str]]]:
    """Role and argv of each app process, in the order they are stopped (API first)."""
    celery = [_venv_tool("celery"), "-A", "worker.app"]
    return [
        ("api", [_venv_tool("gunicorn"), "-c", str(PROJECT_ROOT / "gunicorn.conf.py"),
                 "web:create_app()", "--bind", f"127.0.0.1:{config.port}"]),
        ("beat", [*celery, "beat", "--loglevel=INFO",
                  "-s", str(config.data_dir / "celerybeat-schedule")]),
        # Credentials reach Flower as FLOWER_BASIC_AUTH (see runner_child_environment), not argv.
        ("flower", [*celery, "flower", "--address=127.0.0.1", f"--port={config.flower_port}"]),
        # The port in the node name keeps two runners sharing one broker from colliding.
        ("worker", [*celery, "worker", "-Q", "default,audit,maintenance", "--loglevel=INFO",
                    "-n", f"dev-{config.port}@%h", "--concurrency", "2", "-E"]),
    ]


@dataclass(frozen=True)
class BackingServices:
    owner_url: str  # migrates the schema
    database_url: str  # everything else: the runtime role, or the owner when DATABASE_URL was given
    redis_url: str
    runtime_password: str | None = None  # the runtime role's, on embedded PostgreSQL


def start_backing_services(config: DevConfig, stack: ExitStack, watchdog: Watchdog | None = None) -> BackingServices:
    """Start the embedded servers not overridden by a URL, and say where each connects
    (and, given a ``watchdog``, tell it of each server's process as it starts)."""
    database_url, redis_url = config.database_url, config.redis_url
    owner_url, runtime_password = database_url, None
    if database_url is None:
        postgres = _started(lambda port: EmbeddedPostgres(config.data_dir / "postgres", port, passwords=True),
                            config.pg_port, stack, watchdog, (config.port, config.flower_port))
        postgres.create_database(DEV_DATABASE)
        runtime_password = generated_secret(config.data_dir / "runtime-role.password")
        owner_url = postgres.url_for(DEV_DATABASE)
        database_url = postgres.url_for(DEV_DATABASE, DEV_RUNTIME_ROLE, runtime_password)
    if redis_url is None:
        redis_url = _started(lambda port: EmbeddedRedis(config.data_dir / "redis", port, passwords=True),
                             config.redis_port, stack, watchdog, (config.port, config.flower_port)).url
    return BackingServices(owner_url=owner_url, database_url=database_url, redis_url=redis_url,
                           runtime_password=runtime_password)


def migrate(services: BackingServices) -> None:
    """Upgrade the schema as its owner; grant the runtime role, if there is one, what it needs
    (and its password, on embedded PostgreSQL)."""
    upgrade_head(services.owner_url)
    if services.owner_url != services.database_url:
        grant_runtime_role(services.owner_url, DEV_RUNTIME_ROLE, create=True, password=services.runtime_password)


def _started(server_on: Callable[[int], Server], port: int, stack: ExitStack, watchdog: Watchdog | None,
             avoid: tuple[int, ...] = ()) -> Server:
    """The server on ``port``, started; on a free port when ``port`` is 0 (not one of
    ``avoid``, the runner's own API and Flower ports, which no one holds until gunicorn and
    Flower start: picked, the server took it and the API could not start), and on another if
    that one is taken before the server binds it. Each server's stop is registered before
    its start: a signal can interrupt a start at any point."""
    def before_start(server: Server) -> None:
        stack.callback(server.stop)
        server.watchdog = watchdog

    if port:
        server = server_on(port)
        before_start(server)
        server.start()
        return server
    return start_on_a_free_port(server_on, before_start=before_start, avoid=avoid)


def write_services_env(data_dir: Path, services: BackingServices) -> None:
    """Leave the URLs where other shells (psql, a one-off script) can source them: for this
    user only, since a URL given in the environment may hold a password. ``DATABASE_URL`` is
    the runtime role's; ``OWNER_DATABASE_URL``, for ``plant db upgrade``, the schema owner's."""
    lines = [f"DATABASE_URL={services.database_url}", f"REDIS_URL={services.redis_url}"]
    if services.owner_url != services.database_url:
        lines.append(f"OWNER_DATABASE_URL={services.owner_url}")
    replace_file(data_dir / SERVICES_ENV, ("\n".join(lines) + "\n").encode(), mode=0o600)


def runner_child_environment(config: DevConfig, services: BackingServices) -> dict[str, str]:
    """The children's environment: the runner's, with the URLs it uses in place of any it was given
    (as a file too: a ``DATABASE_URL_FILE`` beside the new ``DATABASE_URL`` would stop them)."""
    return child_environment(
        {"PLANT_LOG_FORMAT": "console", **os.environ},  # readable lines in a terminal, unless the caller chose
        DATABASE_URL=services.database_url,
        REDIS_URL=services.redis_url,
        PLANT_DATA_DIR=str(config.data_dir),
        PYTHONUNBUFFERED="1",  # so forwarded log lines arrive as they are written
        FLOWER_BASIC_AUTH=flower_credentials(config),
    )


def print_banner(config: DevConfig, services: BackingServices) -> None:
    api = f"http://127.0.0.1:{config.port}"
    owner = (f"  schema owner (migrations): {_shown(services.owner_url)}\n"
             if services.owner_url != services.database_url else "")
    print(
        f"\n  API      {api}/api/v1\n  Docs     {api}/docs\n  Health   {api}/health\n"
        f"  Flower   http://127.0.0.1:{config.flower_port} (basic auth: {config.data_dir / 'flower-auth'}"
        f" unless PLANT_FLOWER_BASIC_AUTH is set)\n"
        f"  DATABASE_URL={_shown(services.database_url)}\n  REDIS_URL={_shown(services.redis_url)}\n{owner}"
        f"  (with their passwords: {config.data_dir / SERVICES_ENV})\n"
        "  Ctrl-C stops everything.\n",
        flush=True,
    )


def admin_key_line(key_file: Path | None) -> str:
    """Where the admin key is, never the key: like the passwords the banner hides, it went to
    the terminal's scrollback and to every log of the runner's output (``make dev > dev.log``,
    ``plant demo``'s ``stack.log``), there for anyone who could read them to act as admin."""
    if key_file is None:
        return "admin API key: the one PLANT_ADMIN_API_KEY holds"
    return f'admin API key: in {key_file} (export PLANT_API_KEY="$(cat {shlex.quote(str(key_file))})")'


def _shown(url: str) -> str:
    """``url`` with its password, if any, as ``***``: the banner goes to a terminal and its scrollback."""
    return make_url(url).render_as_string(hide_password=True)


def _install_shutdown_handlers() -> dict[int, object]:
    """Turn SIGINT/SIGTERM into ShutdownRequested; return the handlers they replace."""
    return {sig: signal.signal(sig, _request_shutdown) for sig in SHUTDOWN_SIGNALS}


def _ignore_shutdown_signals() -> None:
    # A second Ctrl-C must not abort the cleanup halfway and strand processes.
    for sig in SHUTDOWN_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def run_dev(config: DevConfig | None = None) -> int:
    """Run the stack until a signal (exit 0) or until something fails (exit 1).

    Must run in the main thread (it installs signal handlers). Everything it started is
    stopped before it returns: app processes first, then Redis, then PostgreSQL.
    """
    config = config or dev_config_from_environment()
    make_data_dir(config.data_dir)
    previous = _install_shutdown_handlers()
    if config.lifeline_fd is not None:
        stop_when_closed(config.lifeline_fd)
    try:
        with ExitStack() as stack:
            try:
                # Entered first, so closed last: once everything else has been stopped.
                lock = stack.enter_context(data_dir_lock(config.data_dir))
                return _run_stack(config, stack, stack.enter_context(Watchdog.start(holding=(lock,))))
            except ShutdownRequested as request:
                with suppress(OSError):  # after a hangup the terminal is gone: stop all the same
                    print(f"\n{request}: shutting down", flush=True)
                return 0
            except ServiceError as error:
                print(f"plant dev: {error}", file=sys.stderr, flush=True)
                return 1
            finally:
                _ignore_shutdown_signals()  # before the stack unwinds
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ensure_dev_signing_key(settings: Settings, path: Path) -> None:
    """The dev runner's signing key at ``path``, generated on a registry's first start only.

    A registry that already holds versions was signed by a key; were that key's file gone (a
    data dir's ``keys/`` removed, ``PLANT_SIGNING_KEY_FILE`` misspelt, ``DATABASE_URL`` naming
    a database another runner signed), a new key made in silence would take over: every
    chain it does not know would read as tampered (409 ``entity-tampered`` on every write,
    every audit reporting it). Refused instead (``ServiceError``), naming the keys that signed."""
    if not path.exists():
        with one_off_sessions(settings) as sessions, transaction(sessions) as session:
            signers = signer_kids(session)
        if signers:
            raise ServiceError(
                f"no signing key at {path}, but the registry holds versions signed by {', '.join(signers)}: "
                "put that key back (or point PLANT_SIGNING_KEY_FILE at it); a new key would not verify them. "
                "`plant signing-keys rotate` makes a new key and keeps the old one trusted")
    try:
        ensure_key_file(path)
    except KeyFileTooOpen as exc:  # a key its group or others can read: said before any process starts on it
        raise ServiceError(exc.detail) from exc


def _run_stack(config: DevConfig, stack: ExitStack, watchdog: Watchdog) -> int:
    """Start everything, registering its cleanup on ``stack`` and its processes with
    ``watchdog``; return 1 when a child dies (a worker that exits 0 is started again)."""
    require_free_port(config.port, "API (PLANT_PORT)")
    require_free_port(config.flower_port, "Flower (PLANT_FLOWER_PORT)")
    services = start_backing_services(config, stack, watchdog)
    write_services_env(config.data_dir, services)
    migrate(services)
    settings = load_settings(database_url=services.database_url, data_dir=config.data_dir)
    fill_derived_vectors(settings)  # as plant db upgrade does after the migrations
    if config.signing_key_file is not None:
        ensure_dev_signing_key(settings, config.signing_key_file)  # a dev key; production supplies its own
    seeded = seed_database(settings)
    print(f"seed: created {sum(seeded.created.values())} entities (0 after the first start)", flush=True)
    print(admin_key_line(ensure_dev_admin(settings, config.data_dir)[1]), flush=True)
    supervisor = Supervisor(runner_child_environment(config, services), watchdog)
    stack.callback(supervisor.stop_all)
    for role, argv in app_processes(config):
        supervisor.spawn(role, argv)
    print_banner(config, services)
    dead, status = supervisor.wait_for_failure(restarted_on_exit_0=frozenset({"worker"}))
    print(f"{dead.role} exited (status {status}): shutting down", file=sys.stderr, flush=True)
    return 1
