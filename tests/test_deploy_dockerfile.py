"""Static checks of the image: Dockerfile, .dockerignore, docker/entrypoint.sh and
gunicorn.conf.py. No Docker engine is needed; hadolint runs when it is installed.

The entrypoint's health checks are also run for real (they are plain sh), with a scratch
role file and data directory.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
ROLES = ["api", "worker", "worker-audit", "beat", "flower", "migrate", "seed", "seal-keys"]
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|python3?-dev|libpq-dev|apt-get install)\b")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction, args in instructions():
        if instruction == "FROM":
            found.append([])
        if found:
            found[-1].append((instruction, args))
    return found


def build_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM."""
    args = {}
    for instruction, value in instructions():
        if instruction == "FROM":
            break
        if instruction == "ARG" and "=" in value:
            name, _, default = value.partition("=")
            args[name] = default
    return args


def base_images() -> list[str]:
    images = []
    for stage in stages():
        image = stage[0][1].split()[0]
        images.append(re.sub(r"\$\{(\w+)\}", lambda m: build_args()[m[1]], image))
    return images


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


# --- Dockerfile ------------------------------------------------------------------------------


def test_multi_stage_on_a_slim_python_base() -> None:
    assert len(stages()) >= 2
    assert len(set(base_images())) == 1, "the venv copied between stages needs the same interpreter"
    for image in base_images():
        assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", image), image
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(p) for p in re.search(r">=\s*([\d.]+)", requires)[1].split("."))
    version = tuple(int(p) for p in re.search(r"python:(\d+\.\d+)", base_images()[-1])[1].split("."))
    assert version >= minimum


def test_final_stage_takes_only_the_built_virtualenv() -> None:
    copies = [args for instruction, args in final_stage() if instruction == "COPY"]
    assert any(args.startswith("--from=builder /opt/venv ") for args in copies)
    assert not [args for instruction, args in final_stage() if instruction == "RUN" and BUILD_TOOLS.search(args)]
    builder_runs = " ".join(args for instruction, args in stages()[0] if instruction == "RUN")
    assert "build-essential" in builder_runs  # so the absence above means something


def test_final_stage_runs_as_a_non_root_user() -> None:
    users = [args for instruction, args in final_stage() if instruction == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # Nothing after USER may need root.
    after = final_stage()[[i for i, (ins, _) in enumerate(final_stage()) if ins == "USER"][-1]:]
    assert not [args for ins, args in after if ins == "RUN"]


def test_healthcheck_entrypoint_and_default_role() -> None:
    final = dict(final_stage())
    assert re.search(r'CMD \["plant-entrypoint", "healthcheck"\]', final["HEALTHCHECK"])
    assert re.search(r"--interval=\d+s", final["HEALTHCHECK"]) and "--timeout=" in final["HEALTHCHECK"]
    assert json.loads(final["ENTRYPOINT"]) == ["plant-entrypoint"]
    assert json.loads(final["CMD"]) == ["api"]
    copies = [args for instruction, args in final_stage() if instruction == "COPY"]
    assert any(re.search(r"docker/entrypoint\.sh /usr/local/bin/plant-entrypoint$", c) for c in copies)
    assert any(c.endswith("gunicorn.conf.py /app/gunicorn.conf.py") for c in copies)
    assert "-c /app/gunicorn.conf.py" in ENTRYPOINT.read_text()


def test_every_package_is_copied_into_the_build() -> None:
    includes = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in includes}
    copied = {args.split()[0] for instruction, args in stages()[0] if instruction == "COPY"}
    assert packages <= copied, f"not copied into the build: {packages - copied}"
    assert {"pyproject.toml", "README.md"} <= copied


def test_every_copied_path_exists_and_is_not_dockerignored() -> None:
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]

    def is_ignored(path: str) -> bool:
        verdict = False
        for pattern in ignored:
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.lstrip("!")) or path.startswith(pattern.lstrip("!") + "/"):
                verdict = not negate
        return verdict

    for instruction, args in instructions():
        if instruction != "COPY" or args.startswith("--from"):
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), source
            assert not is_ignored(source), f"{source} is excluded by .dockerignore"
    for private in (".venv", ".plant", ".env", "secrets", ".git", "terraform.tfstate", "celerybeat-schedule",
                    ".plant-demo", "some/dir/key.pem", "deploy/secrets", "elsewhere/admin-api-key"):  # helper-73
        assert is_ignored(private), f".dockerignore must exclude {private}"


@pytest.mark.skipif(shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}") is None,
                    reason="hadolint not installed")
def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Entrypoint ------------------------------------------------------------------------------


def test_entrypoint_is_valid_executable_sh_with_every_role() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    assert subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True).returncode == 0
    text = ENTRYPOINT.read_text()
    for role in ROLES:
        block = re.search(rf"\n    {re.escape(role)}\)\n(.*?);;", text, re.S)
        assert block, role
        assert f"record_role {role}" in block[1], role
        # Every long-running role is exec'd, so PID 1 gets SIGTERM; seal-keys is one-shot
        # and prints the seals after sealing, so it stays the shell's child.
        assert bool(re.search(r"^ *exec ", block[1], re.M)) == (role != "seal-keys"), role


def run_entrypoint(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "PLANT_ROLE_FILE": str(tmp_path / "role"),
            "PLANT_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env={**base, **env},
                          capture_output=True, text=True, timeout=30)


def test_beat_health_follows_the_schedule_file_age(tmp_path: Path) -> None:
    (tmp_path / "role").write_text("beat\n")
    (tmp_path / "data").mkdir()
    assert run_entrypoint(tmp_path, "healthcheck").returncode == 1  # no schedule yet
    schedule = tmp_path / "data" / "celerybeat-schedule.db"
    schedule.write_bytes(b"")
    assert run_entrypoint(tmp_path, "healthcheck").returncode == 0
    stale = time.time() - 11 * 60
    os.utime(schedule, (stale, stale))
    result = run_entrypoint(tmp_path, "healthcheck")
    assert result.returncode == 1 and "not written" in result.stderr


def test_unknown_role_is_unhealthy_and_one_shots_are_healthy(tmp_path: Path) -> None:
    assert run_entrypoint(tmp_path, "healthcheck").returncode == 1
    (tmp_path / "role").write_text("migrate\n")
    assert run_entrypoint(tmp_path, "healthcheck").returncode == 0


@pytest.mark.parametrize("role,needs", [("flower", "FLOWER_BASIC_AUTH"), ("api", "DATABASE_URL"),
                                        ("worker", "REDIS_URL"), ("migrate", "DATABASE_URL"),
                                        ("seal-keys", "PLANT_SIGNING_KEY"), ("seal-keys", "PLANT_RETIRED_SIGNING_KEYS_DIR")])
def test_roles_refuse_to_start_without_their_configuration(tmp_path: Path, role: str, needs: str) -> None:
    env = {"DATABASE_URL": "postgresql://x@/db", "REDIS_URL": "redis://r", "FLOWER_BASIC_AUTH": "a:b",
           "PLANT_SIGNING_KEY": "pem", "PLANT_RETIRED_SIGNING_KEYS_DIR": "/retired"}
    del env[needs]
    result = run_entrypoint(tmp_path, role, **env)
    assert result.returncode == 64 and needs in result.stderr
    assert not (tmp_path / "role").exists()


def test_unknown_commands_pass_through(tmp_path: Path) -> None:
    result = run_entrypoint(tmp_path, "echo", "plant", "db", "check")
    assert result.returncode == 0 and result.stdout.strip() == "plant db check"


# --- gunicorn.conf.py ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _gunicorn_conf_leaves_the_environment_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn.conf.py sets what it derives from the threads with os.environ.setdefault, which
    monkeypatch does not see: left set, a value sized for 8 threads reached a gunicorn started
    later in the same test process with 2 (tests/conftest.py::gunicorn_serving)."""
    from tests.conftest import GUNICORN_DERIVED

    for name in GUNICORN_DERIVED:
        monkeypatch.setenv(name, "")  # remembers its absence, restored after the test
        monkeypatch.delenv(name)


@pytest.mark.parametrize("env,bind", [
    ({}, "127.0.0.1:8000"),
    ({"PLANT_PORT": "8123"}, "127.0.0.1:8123"),
    ({"PORT": "8080"}, "0.0.0.0:8080"),
    ({"PORT": "8080", "PLANT_BIND": "0.0.0.0:9000"}, "0.0.0.0:9000"),
])
def test_gunicorn_bind(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], bind: str) -> None:
    for name in ("PORT", "PLANT_BIND", "PLANT_PORT", "WEB_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    assert config["bind"] == bind
    assert config["workers"] == max(2, os.cpu_count() or 1)
    assert config["timeout"] > 30  # above the longest long-poll


@pytest.mark.parametrize("env,pool", [
    ({}, "8"),
    ({"PLANT_WEB_THREADS": "12"}, "12"),
    ({"PLANT_WEB_THREADS": "12", "PLANT_DB_POOL_SIZE": "3"}, "3"),
    ({"PLANT_WEB_THREADS": "1"}, "1"),  # no long poll waits: /health keeps the one thread (helper-152)
])
def test_gunicorn_sizes_the_database_pool_to_its_threads(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                         pool: str) -> None:
    for name in ("PLANT_WEB_THREADS", "PLANT_DB_POOL_SIZE", "PLANT_LONG_POLLS_AT_ONCE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    assert os.environ["PLANT_DB_POOL_SIZE"] == pool
    assert config["threads"] == int(env.get("PLANT_WEB_THREADS", "8"))
    assert os.environ["PLANT_LONG_POLLS_AT_ONCE"] == str(config["threads"] // 2)


def test_gunicorn_access_log_is_json() -> None:
    config = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    sample = re.sub(r"%\([^)]*\)s", "1", config["access_log_format"])
    record = json.loads(sample)
    assert {"method", "path", "status", "duration_ms"} <= set(record)


_ACCESS_LOG_SCRIPT = """
import datetime, runpy, sys, types
from gunicorn.config import Config

config = runpy.run_path("gunicorn.conf.py")
cfg = Config()
for name in ("logconfig_dict", "access_log_format", "logger_class"):
    cfg.set(name, config[name])
cfg.set("accesslog", sys.argv[1] if sys.argv[1] not in ("", "syslog") else None)
if sys.argv[1] == "syslog":
    cfg.set("syslog", True)
    cfg.set("syslog_addr", "udp://127.0.0.1:9")  # the discard port: nothing listens, nothing fails
logger = cfg.logger_class(cfg)
built = []
atoms = logger.atoms
logger.atoms = lambda *args: built.append(1) or atoms(*args)
response = types.SimpleNamespace(status="200 OK", headers=[("X-Request-ID", "r-1")], sent=2)
environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/health", "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/health",
           "QUERY_STRING": ""}
logger.access(response, types.SimpleNamespace(headers=[]), environ, datetime.timedelta(milliseconds=3))
print("built", len(built), file=sys.stderr)
"""


@pytest.mark.parametrize("accesslog", ["", "-", "syslog"])
def test_gunicorn_builds_an_access_line_only_when_an_access_log_is_asked_for(accesslog: str) -> None:
    """gunicorn's own logger formats every request's access fields whenever a logging config
    is given, and drops the line when there is no access log: CPU for nothing on every request.
    Syslog, which gunicorn sends the access lines to, still gets them."""
    done = subprocess.run([sys.executable, "-c", _ACCESS_LOG_SCRIPT, accesslog], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert f"built {1 if accesslog else 0}" in done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if accesslog == "-":
        assert [(line["path"], line["status"], line["request_id"]) for line in lines] == [("/health", 200, "r-1")]
    else:
        assert lines == []


@pytest.mark.parametrize("role,secret,value", [
    ("flower", "FLOWER_BASIC_AUTH", "admin:change-me"), ("flower", "REDIS_URL", "redis://:change-me@redis:6379/0"),
    ("worker", "REDIS_URL", "redis://:change-me@redis:6379/0"), ("beat", "REDIS_URL", "redis://:change-me@redis:6379/0"),
    ("api", "DATABASE_URL", "postgresql+psycopg://plant_runtime:change-me@postgres:5432/plant"),
    ("migrate", "PLANT_ADMIN_API_KEY", "change-me"), ("migrate", "PLANT_RUNTIME_ROLE_PASSWORD", "change-me")])
def test_roles_refuse_to_start_on_the_env_example_s_placeholder(tmp_path: Path, role: str, secret: str, value: str) -> None:
    """``.env.example`` ships ``change-me`` for every secret: copied unchanged, Redis, Flower and
    the database would run on a password anyone can read in the repository."""
    env = {"DATABASE_URL": "postgresql://x@/db", "REDIS_URL": "redis://r", "FLOWER_BASIC_AUTH": "a:b", secret: value}
    result = run_entrypoint(tmp_path, role, **env)
    assert result.returncode == 64 and secret in result.stderr and "change-me" in result.stderr, result.stderr
    assert value not in result.stderr or value == "change-me"  # the secret's own value is not echoed
    assert not (tmp_path / "role").exists()
