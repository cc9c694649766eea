"""Secrets as files: each secret setting's ``*_FILE`` variant (models/settings.py), compose's
``secrets:`` made by docker/make-secrets.sh, and what reads them in the image (the entrypoint,
Redis's command, Flower's configuration file). Compose passed every password in environment
variables, which ``docker inspect``, /proc/PID/environ and every child process show (helper-224).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from pydantic_settings import SettingsError

from models.settings import FILE_SUFFIX, SECRET_FILE_SETTINGS, load_settings, settings_variables, unknown_plant_variables
from tests.test_deploy_compose import compose, env_example, interpolate, services
from tests.test_deploy_dockerfile import run_entrypoint

REPO = Path(__file__).resolve().parent.parent
MAKE_SECRETS = REPO / "docker" / "make-secrets.sh"
# Every variable a secret setting is read from, and what a value given in it reads as.
SECRET_VARIABLES = {
    "DATABASE_URL": ("database_url", "postgresql://u:pw@db/plant", "postgresql+psycopg://u:pw@db/plant"),
    "PLANT_DATABASE_URL": ("database_url", "postgresql://u:pw@db/plant", "postgresql+psycopg://u:pw@db/plant"),
    "REDIS_URL": ("redis_url", "redis://:pw@cache:6379/0", "redis://:pw@cache:6379/0"),
    "PLANT_REDIS_URL": ("redis_url", "redis://:pw@cache:6379/0", "redis://:pw@cache:6379/0"),
    "PLANT_RUNTIME_ROLE_PASSWORD": ("runtime_role_password", "rt-pw", "rt-pw"),
    "PLANT_ADMIN_API_KEY": ("admin_api_key", "plant_" + "k" * 40, "plant_" + "k" * 40),
    "PLANT_FLOWER_BASIC_AUTH": ("flower_basic_auth", "admin:fl-pw", "admin:fl-pw"),
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SECRET_VARIABLES:
        for variable in (name, name + FILE_SUFFIX):
            monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def _value(settings: object, field: str) -> str:
    value = getattr(settings, field)
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


# --- Settings ---------------------------------------------------------------------------------


def test_every_secret_setting_has_a_file_variant() -> None:
    assert {field for field, _, _ in SECRET_VARIABLES.values()} == set(SECRET_FILE_SETTINGS)


@pytest.mark.parametrize("name", sorted(SECRET_VARIABLES))
def test_a_secret_is_read_from_the_file_its_file_variable_names_trimmed(
        clean_env: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    field, given, read = SECRET_VARIABLES[name]
    secret = tmp_path / "secret"
    secret.write_text(f"  {given}\n\n")
    clean_env.setenv(name + FILE_SUFFIX, str(secret))
    assert _value(load_settings(), field) == read


@pytest.mark.parametrize(("plain", "file"), [("DATABASE_URL", "DATABASE_URL_FILE"), ("PLANT_DATABASE_URL", "DATABASE_URL_FILE"),
                                             ("PLANT_ADMIN_API_KEY", "PLANT_ADMIN_API_KEY_FILE"),
                                             ("PLANT_FLOWER_BASIC_AUTH", "plant_flower_basic_auth_file")])
def test_a_secret_set_both_ways_stops_the_process_naming_both(
        clean_env: pytest.MonkeyPatch, tmp_path: Path, plain: str, file: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-the-file-4f2a")
    clean_env.setenv(plain, "from-the-environment-9c1b")
    clean_env.setenv(file, str(secret))
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert plain in message and file.upper() in message and "both set" in message
    assert "4f2a" not in message and "9c1b" not in message


@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "blank", "no path"])
def test_a_file_that_cannot_give_the_secret_stops_the_process_naming_it(
        clean_env: pytest.MonkeyPatch, tmp_path: Path, problem: str) -> None:
    path = tmp_path / "redis-url"
    if problem == "directory":
        path.mkdir()
    elif problem == "empty":
        path.write_text("")
    elif problem == "blank":
        path.write_text(" \n\t\n")
    clean_env.setenv("REDIS_URL_FILE", "" if problem == "no path" else str(path))
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "REDIS_URL_FILE" in message
    assert problem == "no path" or str(path) in message


def test_explicit_overrides_still_win_over_a_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql://file@db/plant\n")
    clean_env.setenv("DATABASE_URL_FILE", str(secret))
    assert load_settings(database_url="postgresql://given@db/plant").database_url == "postgresql+psycopg://given@db/plant"


def test_file_variants_are_known_variables_and_the_signing_key_s_stays_its_own_setting() -> None:
    names = [f"PLANT_{field.upper()}{FILE_SUFFIX}" for field in SECRET_FILE_SETTINGS]
    assert unknown_plant_variables(dict.fromkeys(names, "/run/secrets/x")) == []
    not_a_secret = "PLANT_PORT" + FILE_SUFFIX  # no variant: spelt whole, the repository-wide check would take it for a name
    assert unknown_plant_variables({not_a_secret: "/x"}) == [not_a_secret]
    assert "PLANT_SIGNING_KEY_FILE" in settings_variables() and "signing_key" not in SECRET_FILE_SETTINGS


def test_the_cli_says_what_is_wrong_in_one_line_without_the_secret(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli.main import cli

    secret = tmp_path / "url"
    secret.write_text("postgresql://u:sekrit-51d@db/plant\n")
    env = {"PLANT_DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql://x@db/p", "DATABASE_URL_FILE": str(secret)}
    done = CliRunner().invoke(cli, ["db", "check"], env=env)
    assert done.exit_code == 1
    assert done.stderr.strip() == ("plant: invalid setting: DATABASE_URL and DATABASE_URL_FILE are both set: "
                                   "set only one of them"), done.output


# --- The dev runner -------------------------------------------------------------------------


def test_the_dev_runner_takes_urls_given_as_files_and_hands_its_children_no_second_copy(
        clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Read from a file, a URL still points the runner at that server (no embedded one), and the
    children get it as DATABASE_URL / REDIS_URL without the _FILE variable beside it, which they
    would refuse as the setting given twice."""
    from cli import dev

    (tmp_path / "db").write_text("postgresql://u:pw@db.example:5432/plant\n")
    (tmp_path / "redis").write_text("redis://:pw@cache.example:6379/0\n")
    clean_env.setenv("PLANT_DATA_DIR", str(tmp_path / "data"))
    clean_env.setenv("PLANT_DATABASE_URL_FILE", str(tmp_path / "db"))
    clean_env.setenv("REDIS_URL_FILE", str(tmp_path / "redis"))
    config = dev.dev_config_from_environment()
    assert config.database_url == "postgresql+psycopg://u:pw@db.example:5432/plant"
    assert config.redis_url == "redis://:pw@cache.example:6379/0"
    (tmp_path / "data").mkdir()
    child = dev.runner_child_environment(config, dev.BackingServices(config.database_url, config.database_url, config.redis_url))
    assert not {name for name in child if name.endswith(FILE_SUFFIX) and "URL" in name}
    for name, value in child.items():
        clean_env.setenv(name, value)
    clean_env.delenv("PLANT_DATABASE_URL_FILE")
    clean_env.delenv("REDIS_URL_FILE")
    assert load_settings().redis_url == config.redis_url


# --- docker/make-secrets.sh and compose ----------------------------------------------------------


def make_secrets(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(MAKE_SECRETS)], cwd=cwd, capture_output=True, text=True, timeout=30, check=True)


def test_make_secrets_writes_every_file_compose_mounts_once(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("POSTGRES_USER=owner\nPOSTGRES_DB='registry'\nPLANT_RUNTIME_ROLE=app\n")
    make_secrets(tmp_path)
    secrets = tmp_path / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700 and (secrets / "retired").is_dir()
    declared = {name: interpolate(source["file"], {}) for name, source in compose()["secrets"].items()}
    made = {path.name: path for path in secrets.iterdir() if path.is_file()}
    assert {f"./secrets/{name}" for name in made} == set(declared.values()) - {declared["plant_signing_key"]}
    for path in made.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # the containers' users read it
    read = {name: path.read_text() for name, path in made.items()}
    assert all(value.endswith("\n") and value.strip() and "change-me" not in value for value in read.values())
    owner, runtime, redis_pw = (read[n].strip() for n in ("postgres_password", "runtime_role_password", "redis_password"))
    assert len({owner, runtime, redis_pw}) == 3 and all(len(p) == 48 for p in (owner, runtime, redis_pw))
    assert read["database_url"].strip() == f"postgresql+psycopg://owner:{owner}@postgres:5432/registry"
    assert read["runtime_database_url"].strip() == f"postgresql+psycopg://app:{runtime}@postgres:5432/registry"
    assert read["redis_url"].strip() == f"redis://:{redis_pw}@redis:6379/0"
    assert read["flower_basic_auth"].startswith("admin:") and len(read["bootstrap_admin_key"].strip()) >= 32
    (secrets / "database_url").unlink()
    again = make_secrets(tmp_path)
    assert {path.name: path.read_text() for path in secrets.iterdir() if path.is_file()} == read  # kept, and rebuilt alike
    assert f"created {secrets.name}/database_url" in again.stdout and "kept    secrets/redis_url" in again.stdout


def test_make_secrets_keeps_the_passwords_an_older_env_file_held(tmp_path: Path) -> None:
    """A deployment from before the secret files: its database was initialised with .env's
    POSTGRES_PASSWORD, which a new random one would lock migrate out of."""
    (tmp_path / ".env").write_text("POSTGRES_PASSWORD=old-owner\nREDIS_PASSWORD = old-redis \n"
                                   "FLOWER_BASIC_AUTH=admin:change-me\nPLANT_ADMIN_API_KEY=plant_old_key_of_at_least_32_chars\n")
    make_secrets(tmp_path)
    secrets = tmp_path / "secrets"
    assert (secrets / "postgres_password").read_text() == "old-owner\n"
    assert (secrets / "database_url").read_text() == "postgresql+psycopg://plant:old-owner@postgres:5432/plant\n"
    assert (secrets / "redis_url").read_text() == "redis://:old-redis@redis:6379/0\n"
    assert (secrets / "bootstrap_admin_key").read_text() == "plant_old_key_of_at_least_32_chars\n"
    assert "change-me" not in (secrets / "flower_basic_auth").read_text()  # the placeholder is never kept


@pytest.mark.parametrize("service", ["api", "migrate", "beat", "flower"])
def test_each_service_s_settings_come_from_its_secret_files(clean_env: pytest.MonkeyPatch, tmp_path: Path,
                                                            service: str) -> None:
    """What a container of ``service`` loads: compose's environment for it, with the files
    make-secrets.sh wrote where compose mounts them."""
    make_secrets(tmp_path)
    secrets = tmp_path / "secrets"
    environment = interpolate(services()[service]["environment"], env_example())
    for name, value in environment.items():
        clean_env.setenv(name, value.replace("/run/secrets/", f"{secrets}/"))
    settings = load_settings()
    expected_db = {"api": "runtime_database_url", "migrate": "database_url"}
    if service in expected_db:
        assert settings.database_url == (secrets / expected_db[service]).read_text().strip()
    if service != "migrate":
        assert settings.redis_url == (secrets / "redis_url").read_text().strip()
    if service == "migrate":
        assert settings.admin_api_key.get_secret_value() == (secrets / "bootstrap_admin_key").read_text().strip()
        assert settings.runtime_role_password.get_secret_value() == (secrets / "runtime_role_password").read_text().strip()
    if service == "flower":
        assert settings.flower_basic_auth.get_secret_value() == (secrets / "flower_basic_auth").read_text().strip()


def test_redis_takes_its_password_from_the_secret_file_not_its_command_line_or_environment(tmp_path: Path) -> None:
    """Compose's Redis command, run for real with the local redis-server: a client without the
    password is refused, and neither its argv nor its environment holds the password."""
    password = "d41d8cd98f00b204e9800998ecf8427e"
    (tmp_path / "redis_password").write_text(password + "\n")
    sock = tmp_path / "redis.sock"
    shell, flag, script = interpolate(services()["redis"]["command"], env_example())
    script = script.replace("/run/secrets/", f"{tmp_path}/").replace(
        "redis-server - ", f"redis-server - --port 0 --unixsocket {sock} --dir {tmp_path} ")
    process = subprocess.Popen([shell, flag, script], env={"PATH": os.environ["PATH"], "REDIS_MAXMEMORY": "64mb"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(unix_socket_path=str(sock)).ping()
        client = redis.Redis(unix_socket_path=str(sock), password=password)
        assert client.ping() and client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        for part in ("cmdline", "environ"):  # the shell exec'd redis-server: same process
            assert password.encode() not in Path(f"/proc/{process.pid}/{part}").read_bytes(), part
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- The image: entrypoint and Flower --------------------------------------------------------------


@pytest.mark.parametrize("role", ["api", "worker", "migrate", "beat", "seed"])
def test_the_entrypoint_takes_secret_files_for_the_urls(tmp_path: Path, role: str) -> None:
    stub = tmp_path / "bin"
    stub.mkdir()
    for command in ("gunicorn", "celery", "plant"):
        (stub / command).write_text("#!/bin/sh\necho started \"$@\"\n")
        (stub / command).chmod(0o755)
    (tmp_path / "url").write_text("postgresql://u:pw@db/plant\n")
    result = run_entrypoint(tmp_path, role, PATH=f"{stub}:{os.environ['PATH']}", DATABASE_URL_FILE=str(tmp_path / "url"),
                            REDIS_URL_FILE=str(tmp_path / "url"))
    assert result.returncode == 0 and result.stdout.startswith("started "), result.stderr


def test_the_entrypoint_refuses_the_placeholder_in_a_secret_file_without_printing_it(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("change-me\n")
    (tmp_path / "url").write_text("postgresql://u:not-a-placeholder@db/plant\n")
    result = run_entrypoint(tmp_path, "migrate", DATABASE_URL_FILE=str(tmp_path / "url"),
                            PLANT_ADMIN_API_KEY_FILE=str(tmp_path / "key"))
    assert result.returncode == 64 and "PLANT_ADMIN_API_KEY_FILE" in result.stderr and str(tmp_path / "key") in result.stderr
    assert not (tmp_path / "role").exists()


def test_flower_gets_its_credentials_from_a_configuration_file_not_its_environment(tmp_path: Path) -> None:
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "celery").write_text("#!/bin/sh\necho \"$@\"\nenv\n")
    (stub / "celery").chmod(0o755)
    (tmp_path / "auth").write_text("admin:fl-9e3\n")
    path = f"{stub}:{os.environ['PATH']}"
    result = run_entrypoint(tmp_path, "flower", PATH=path, REDIS_URL="redis://r", PLANT_FLOWER_BASIC_AUTH_FILE=str(tmp_path / "auth"))
    assert result.returncode == 0, result.stderr
    assert "--conf=/app/flower_conf.py" in result.stdout.splitlines()[0] and "fl-9e3" not in result.stdout
    refused = run_entrypoint(tmp_path, "flower", PATH=path, REDIS_URL="redis://r")
    assert refused.returncode == 64 and "PLANT_FLOWER_BASIC_AUTH_FILE" in refused.stderr
    given = run_entrypoint(tmp_path, "flower", PATH=path, REDIS_URL="redis://r", FLOWER_BASIC_AUTH="a:b")
    assert given.returncode == 0 and "--conf" not in given.stdout.splitlines()[0]  # Flower's own variable, as before
    copies = (REPO / "Dockerfile").read_text()
    assert "COPY docker/flower_conf.py /app/flower_conf.py" in copies


_FLOWER_OPTIONS = """
import sys
import flower.options  # noqa: F401 - defines Flower's options
from tornado.options import options
options.parse_config_file(sys.argv[1], final=False)
print(options.basic_auth)
"""


def test_flower_s_configuration_file_sets_its_basic_auth_from_the_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "auth").write_text("admin:fl-pw\n")
    env = {**os.environ, "PLANT_FLOWER_BASIC_AUTH_FILE": str(tmp_path / "auth")}
    done = subprocess.run([sys.executable, "-c", _FLOWER_OPTIONS, str(REPO / "docker" / "flower_conf.py")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "['admin:fl-pw']", done.stderr
    del env["PLANT_FLOWER_BASIC_AUTH_FILE"]
    refused = subprocess.run([sys.executable, "-c", _FLOWER_OPTIONS, str(REPO / "docker" / "flower_conf.py")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "PLANT_FLOWER_BASIC_AUTH_FILE" in refused.stderr
