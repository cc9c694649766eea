"""Static checks of docker-compose.yml and .env.example (no Docker engine needed).

The file is validated against the Compose Specification JSON schema (vendored in
tests/data, see its README), both as written and after interpolating .env.example, and the
wiring is asserted: start-up order, queues, the single beat, health checks, named volumes,
and the configuration each container receives.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from models.settings import FILE_SUFFIX, SECRET_FILE_SETTINGS, Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
SCHEMA_FILE = REPO / "tests" / "data" / "compose-spec.json"

PLANT_SERVICES = {"migrate", "api", "worker", "worker-audit", "beat", "flower", "seed"}
# Variables read outside models.settings: by gunicorn.conf.py, the entrypoint, or Flower.
PROCESS_EDGE_ENV = {"PLANT_BIND", "WEB_CONCURRENCY", "PLANT_WORKER_CONCURRENCY", "FLOWER_BASIC_AUTH"}
# Every secret a container gets, as a compose secret file: (service, variable) -> secret.
SECRET_FILES = {
    **{(name, variable): secret for name in ("api", "worker", "worker-audit", "seed") for variable, secret in (
        ("DATABASE_URL_FILE", "runtime_database_url"), ("REDIS_URL_FILE", "redis_url"),
        ("PLANT_SIGNING_KEY_FILE", "plant_signing_key"))},
    ("migrate", "DATABASE_URL_FILE"): "database_url",
    ("migrate", "PLANT_RUNTIME_ROLE_PASSWORD_FILE"): "runtime_role_password",
    ("migrate", "PLANT_ADMIN_API_KEY_FILE"): "bootstrap_admin_key",
    ("beat", "REDIS_URL_FILE"): "redis_url",
    ("flower", "REDIS_URL_FILE"): "redis_url",
    ("flower", "PLANT_FLOWER_BASIC_AUTH_FILE"): "flower_basic_auth",
    ("postgres", "POSTGRES_PASSWORD_FILE"): "postgres_password",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|AUTH|_URL$")
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def raw_text() -> str:
    return COMPOSE_FILE.read_text()


def compose() -> dict[str, Any]:
    return yaml.safe_load(raw_text())


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution, applied like Compose to the parsed values (so
    comments are left alone): ${VAR}, ${VAR:-default}, ${VAR:?error}, and $$ for $."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op in (":?", "?") and not value:
            raise KeyError(f"{name} is required: {arg}")
        if op in (":-", "-") and not value:
            return arg
        return value or ""

    if isinstance(node, dict):
        return {interpolate(k, env): interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, str):
        return VARIABLE.sub(substitute, node.replace("$$", "\0")).replace("\0", "$")
    return node


def variables_used() -> list[re.Match[str]]:
    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for k, v in node.items() for s in strings(k) + strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []

    return [m for s in strings(compose()) for m in VARIABLE.finditer(s.replace("$$", ""))]


def validator() -> jsonschema.protocols.Validator:
    # The file declares draft 2019-09 (under an old URI jsonschema does not recognise).
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def settings_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        spelt = {f"PLANT_{name.upper()}", *(getattr(alias, "choices", []) or ([alias] if isinstance(alias, str) else []))}
        names |= spelt | ({n + FILE_SUFFIX for n in spelt} if name in SECRET_FILE_SETTINGS else set())
    return names


# --- Schema --------------------------------------------------------------------------------


def test_vendored_schema_is_the_recorded_one() -> None:
    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    assert digest in (REPO / "tests" / "data" / "README.md").read_text()


def test_compose_file_matches_the_compose_spec() -> None:
    errors = [f"{list(e.path)}: {e.message}" for e in validator().iter_errors(compose())]
    assert errors == []


def test_compose_file_matches_the_compose_spec_once_interpolated() -> None:
    document = interpolate(compose(), env_example())
    errors = [f"{list(e.path)}: {e.message}" for e in validator().iter_errors(document)]
    assert errors == []


def test_the_schema_check_rejects_what_compose_would_reject() -> None:
    broken = compose()
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_finished"
    broken["services"]["worker"]["helthcheck"] = broken["services"]["worker"].pop("healthcheck")
    assert len(list(validator().iter_errors(broken))) == 2


# --- .env.example ----------------------------------------------------------------------------


def test_every_variable_without_a_default_is_documented() -> None:
    documented = env_example()
    for match in variables_used():
        if match["op"] in (None, ":?", "?"):
            assert match["name"] in documented, f"{match['name']} is required but not in .env.example"


def test_env_example_documents_only_variables_compose_uses() -> None:
    used = {m["name"] for m in variables_used()}
    assert set(env_example()) <= used, set(env_example()) - used


def test_env_example_holds_no_secrets() -> None:
    """Secrets are files under ./secrets/ (docker/make-secrets.sh), never .env values."""
    text = ENV_EXAMPLE.read_text()
    assert "BEGIN" not in text and "change-me" not in text
    assert [name for name in env_example() if SECRET_NAME.search(name)] == []


# --- Wiring --------------------------------------------------------------------------------


def test_services() -> None:
    assert set(services()) == PLANT_SERVICES | {"postgres", "redis"}


def test_backing_services() -> None:
    postgres, redis = services()["postgres"], services()["redis"]
    assert postgres["image"] == "pgvector/pgvector:pg17"
    assert re.fullmatch(r"redis:7(\.\d+)*(-alpine)?", redis["image"])
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    for name in ("postgres", "redis"):
        assert "ports" not in services()[name], f"{name} must not be published on the host"


def test_one_image_for_every_plant_role() -> None:
    for name in PLANT_SERVICES:
        service = services()[name]
        assert service["image"] == "${PLANT_IMAGE:-plant:local}", name
        assert service["build"] == {"context": "."}, name
    commands = {name: services()[name]["command"] for name in PLANT_SERVICES}
    assert commands == {name: [name] for name in PLANT_SERVICES}


def test_long_running_services_restart_and_one_shots_do_not() -> None:
    for name, service in services().items():
        expected = "no" if name in ("migrate", "seed") else "unless-stopped"
        assert service["restart"] == expected, name


def test_migrate_runs_once_after_postgres_and_gates_the_app() -> None:
    migrate = services()["migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker", "worker-audit", "beat", "seed"):
        depends = services()[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
    for name in ("api", "worker", "worker-audit", "beat", "flower"):
        assert services()[name]["depends_on"]["redis"] == {"condition": "service_healthy"}, name


def test_queues() -> None:
    entrypoint = (REPO / "docker" / "entrypoint.sh").read_text()
    worker = re.search(r"\n    worker\)\n(.*?);;", entrypoint, re.S)[1]
    audit = re.search(r"\n    worker-audit\)\n(.*?);;", entrypoint, re.S)[1]
    assert "-Q default,maintenance " in worker and "audit" not in worker
    assert "-Q audit " in audit and "--prefetch-multiplier 1" in audit and "--concurrency 1" in audit


def test_exactly_one_beat() -> None:
    beats = [name for name, s in services().items() if s.get("command") == ["beat"]]
    assert beats == ["beat"]
    assert services()["beat"]["deploy"]["replicas"] == 1
    assert "beat" not in (REPO / "docker" / "entrypoint.sh").read_text().split("worker)")[1].split(";;")[0]


def test_every_service_has_a_real_healthcheck() -> None:
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check["test"][0] in ("CMD", "CMD-SHELL"), name
        if name in PLANT_SERVICES:
            assert check["test"] == ["CMD", "plant-entrypoint", "healthcheck"], name


RETIRED_KEYS_MOUNT = "${PLANT_RETIRED_SIGNING_KEYS_PATH:-./secrets/retired}:/run/plant-retired-keys:ro"


def test_named_volumes_only_but_the_retired_keys_read_only() -> None:
    declared = set(compose()["volumes"])
    used = set()
    for name, service in services().items():
        for volume in service.get("volumes", []):
            if volume == RETIRED_KEYS_MOUNT:
                continue
            source = volume.split(":")[0]
            assert not source.startswith((".", "/", "~", "$")), f"{name}: bind mount {volume}"
            used.add(source)
    assert used == declared == {"postgres-data", "redis-data", "beat-data"}
    assert services()["beat"]["volumes"] == ["beat-data:/var/lib/plant"]


def test_configuration_each_container_gets() -> None:
    known = settings_env_names() | PROCESS_EDGE_ENV
    for name in PLANT_SERVICES:
        environment = services()[name]["environment"]
        assert set(environment) <= known, f"{name}: {set(environment) - known} is read by nothing"
    env = {name: services()[name]["environment"] for name in PLANT_SERVICES}
    # Only migrate connects as the schema's owner; it grants the runtime role everything else uses.
    assert env["migrate"]["PLANT_RUNTIME_ROLE"] == "${PLANT_RUNTIME_ROLE:-plant_runtime}"
    assert "DATABASE_URL_FILE" not in env["beat"] and "DATABASE_URL_FILE" not in env["flower"]
    assert set(env["flower"]) == {"REDIS_URL_FILE", "PLANT_FLOWER_BASIC_AUTH_FILE"}
    given = {(name, variable): value.removeprefix("/run/secrets/") for name, service in services().items()
             for variable, value in service.get("environment", {}).items() if variable.endswith(FILE_SUFFIX)}
    assert given == SECRET_FILES
    for (name, _), secret in SECRET_FILES.items():
        assert secret in services()[name]["secrets"], (name, secret)
    assert compose()["secrets"]["plant_signing_key"]["file"].startswith("${PLANT_SIGNING_KEY_PATH")


def test_published_ports_default_to_loopback() -> None:
    published = {name: s["ports"] for name, s in services().items() if "ports" in s}
    assert set(published) == {"api", "flower"}
    assert all(p.startswith("${PLANT_PUBLISH_ADDRESS:-127.0.0.1}:") for p in published["api"])
    assert all(p.startswith("${PLANT_FLOWER_PUBLISH_ADDRESS:-127.0.0.1}:") for p in published["flower"])
    assert env_example()["PLANT_PUBLISH_ADDRESS"] == env_example()["PLANT_FLOWER_PUBLISH_ADDRESS"] == "127.0.0.1"


def test_no_secret_is_in_any_container_s_environment() -> None:
    """Passwords, URLs carrying them, Flower's credentials and the admin key went to the containers
    as environment variables, shown by `docker inspect`, /proc/PID/environ and every child process:
    each is a compose secret file now, named by a *_FILE variable (helper-224)."""
    for name, service in services().items():
        for variable, value in service.get("environment", {}).items():
            if variable.endswith(FILE_SUFFIX):
                assert value.startswith("/run/secrets/"), (name, variable)
            else:
                assert not SECRET_NAME.search(variable), f"{name}: {variable} is a secret in the environment"
            assert not SECRET_NAME.search(" ".join(m["name"] for m in VARIABLE.finditer(str(value)))), (name, variable)
    redis = " ".join(services()["redis"]["command"]) + " ".join(services()["redis"]["healthcheck"]["test"])
    assert "REDIS_PASSWORD" not in redis and "--requirepass" not in redis  # not on its command line either


def test_every_secret_is_a_file_under_the_ignored_secrets_directory() -> None:
    """Each a file docker/make-secrets.sh makes (but the signing key); git never sees one."""
    declared = compose()["secrets"]
    used = {secret for service in services().values() for secret in service.get("secrets", [])}
    assert used == set(declared)
    for secret, source in declared.items():
        assert set(source) == {"file"}, secret
        path = interpolate(source["file"], {})
        assert path.startswith("./secrets/"), (secret, path)
    assert "/secrets/" in (REPO / ".gitignore").read_text().splitlines()


def test_every_signer_reads_retired_keys_and_their_seals() -> None:
    """Compose mounted nothing where Plant reads retired keys: after a key rotation every
    version the old key signed stopped verifying (helper-73)."""
    for name in ("api", "worker", "worker-audit", "seed"):
        service = services()[name]
        assert service["environment"]["PLANT_RETIRED_SIGNING_KEYS_DIR"] == "/run/plant-retired-keys"
        assert RETIRED_KEYS_MOUNT in service["volumes"]


def test_api_outlasts_gunicorn_s_graceful_shutdown_and_redis_has_a_limit_for_noeviction() -> None:
    graceful = int(re.search(r"^graceful_timeout\s*=\s*(\d+)", (REPO / "gunicorn.conf.py").read_text(), re.M)[1])
    assert int(services()["api"]["stop_grace_period"].removesuffix("s")) > graceful > 30  # the long-poll cap (helper-75)
    command = " ".join(services()["redis"]["command"])
    assert "--maxmemory-policy noeviction" in command and '--maxmemory "$$REDIS_MAXMEMORY"' in command


def test_every_process_that_embeds_skills_gets_one_embedder_migrate_included() -> None:
    """``plant db upgrade`` (migrate) fills skills' reading vectors with ``PLANT_EMBEDDER``, and the
    API and workers embed with theirs: compose passed it to none, so a value in .env changed nothing."""
    embedders = {name: service.get("environment", {}).get("PLANT_EMBEDDER") for name, service in services().items()
                 if name in {"migrate", "api", "worker", "worker-audit", "seed"}}
    assert set(embedders.values()) == {"${PLANT_EMBEDDER:-hashing}"}, embedders
