"""Review of the secrets-as-files change: the environment a process hands its children (a
``DATABASE_URL_FILE`` exported beside the URL a parent sets stopped every child of the tests and
the bench harness as the setting given twice), the names a secret's file variants are looked up
under (without pydantic-settings' private helpers), and how docker/make-secrets.sh reads ``.env``
and what it finds already in ``secrets/``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from pydantic_settings import SettingsError

from models.settings import (
    FILE_SUFFIX,
    SECRET_FILE_SETTINGS,
    Settings,
    child_environment,
    field_variables,
    load_settings,
)

REPO = Path(__file__).resolve().parent.parent
MAKE_SECRETS = REPO / "docker" / "make-secrets.sh"
GIVEN_DB = "postgresql+psycopg://child:pw@db.example:5432/plant"
GIVEN_REDIS = "redis://:pw@cache.example:6379/3"


def load_settings_under(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """The settings a child started with exactly ``env`` would load."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


# --- child_environment ----------------------------------------------------------------------------


def test_an_overridden_setting_loses_every_other_name_and_file_variant_it_had() -> None:
    base = {"DATABASE_URL_FILE": "/run/secrets/db", "plant_database_url": "postgresql://old@db/plant",
            "Plant_Redis_Url_File": "/run/secrets/redis", "PLANT_REDIS_URL": "redis://old",
            "PLANT_ADMIN_API_KEY_FILE": "/run/secrets/key", "PLANT_PORT": "8123", "plant_data_dir": "/old",
            "HOME": "/home/x"}
    child = child_environment(base, DATABASE_URL=GIVEN_DB, REDIS_URL=GIVEN_REDIS, PLANT_DATA_DIR="/new", EXTRA="1")
    assert child == {"DATABASE_URL": GIVEN_DB, "REDIS_URL": GIVEN_REDIS, "PLANT_DATA_DIR": "/new", "EXTRA": "1",
                     # settings no override names, and what is no setting, pass as they were
                     "PLANT_ADMIN_API_KEY_FILE": "/run/secrets/key", "PLANT_PORT": "8123", "HOME": "/home/x"}
    assert base["DATABASE_URL_FILE"] == "/run/secrets/db"  # the parent's own is left alone


def test_a_prefixed_override_wins_over_the_plain_name_the_parent_had(monkeypatch: pytest.MonkeyPatch) -> None:
    """``DATABASE_URL`` is read before ``PLANT_DATABASE_URL``: kept beside the override, it would win."""
    child = child_environment({"DATABASE_URL": "postgresql://old@db/plant"}, PLANT_DATABASE_URL=GIVEN_DB)
    assert load_settings_under(monkeypatch, child).database_url == GIVEN_DB


def _conftest_child(settings: Settings, tmp_path: Path) -> dict[str, str]:
    from tests.conftest import child_env

    return child_env(settings)


def _bench_child(settings: Settings, tmp_path: Path) -> dict[str, str]:
    from bench.harness import BenchStack

    return BenchStack(tmp_path / "bench").child_env(settings)  # not started: child_env reads no server


def _dev_child(settings: Settings, tmp_path: Path) -> dict[str, str]:
    from cli import dev

    config = dev.DevConfig(data_dir=settings.data_dir, port=0, flower_port=0, database_url=None, redis_url=None,
                           pg_port=0, redis_port=0, signing_key_file=None, flower_basic_auth="admin:fl-pw")
    return dev.runner_child_environment(config, dev.BackingServices(GIVEN_DB, GIVEN_DB, GIVEN_REDIS))


@pytest.mark.parametrize("build", [_conftest_child, _bench_child, _dev_child], ids=["tests", "bench", "dev"])
def test_children_started_with_url_files_exported_load_the_urls_they_were_given(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, build: object) -> None:
    settings = load_settings(database_url=GIVEN_DB, redis_url=GIVEN_REDIS, data_dir=tmp_path / "data")
    (tmp_path / "db").write_text("postgresql://parent:pw@elsewhere/plant\n")
    (tmp_path / "redis").write_text("redis://:pw@elsewhere:6379/0\n")
    monkeypatch.setenv("DATABASE_URL_FILE", str(tmp_path / "db"))
    monkeypatch.setenv("plant_redis_url_file", str(tmp_path / "redis"))
    child = build(settings, tmp_path)  # type: ignore[operator]
    loaded = load_settings_under(monkeypatch, child)
    assert (loaded.database_url, loaded.redis_url) == (GIVEN_DB, GIVEN_REDIS)


# --- The names a secret's file variants are looked up under ----------------------------------------

_VALUES = {"database_url": ("postgresql+psycopg://a@h/d", "postgresql+psycopg://a@h/d"),
           "redis_url": ("redis://h:1/2", "redis://h:1/2"), "runtime_role_password": ("rt", "rt"),
           "admin_api_key": ("k" * 40, "k" * 40), "flower_basic_auth": ("a:b", "a:b"),
           "data_dir": ("/srv/plant", Path("/srv/plant")), "port": ("8123", 8123),
           "prometheus_multiproc_dir": ("/tmp/metrics", Path("/tmp/metrics"))}


def _plain(value: object) -> object:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


@pytest.mark.parametrize("field", sorted(_VALUES))
def test_each_name_field_variables_gives_is_one_pydantic_settings_reads_in_any_case(
        monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    """field_variables spells out what pydantic-settings' environment source reads (for the file
    variants, which must be looked up under the same names): each name, in its case or another, sets
    the field; the secrets' ``*_FILE`` variants are looked up under exactly these names."""
    given, read = _VALUES[field]
    names = [variable for _, variable in field_variables(Settings, field)]
    assert names and len({name.lower() for name in names}) == len(names)
    for name in names:
        for spelt in (name, name.lower()):
            assert _plain(getattr(load_settings_under(monkeypatch, {spelt: given}), field)) == read, spelt


@pytest.mark.parametrize("field", SECRET_FILE_SETTINGS)
def test_every_name_of_a_secret_has_a_file_variant_read_in_any_case(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, field: str) -> None:
    given, read = _VALUES[field]
    (tmp_path / "secret").write_text(given + "\n")
    for _, name in field_variables(Settings, field):
        for spelt in (name + FILE_SUFFIX, (name + FILE_SUFFIX).title()):
            loaded = load_settings_under(monkeypatch, {spelt: str(tmp_path / "secret")})
            assert _plain(getattr(loaded, field)) == read, spelt
        with pytest.raises(SettingsError, match=f"{name} and {name}{FILE_SUFFIX} are both set"):
            load_settings_under(monkeypatch, {name.lower(): given, name + FILE_SUFFIX: str(tmp_path / "secret")})


# --- docker/make-secrets.sh -------------------------------------------------------------------------

SHELLS = ["sh", "bash"]


def run_make_secrets(shell: str, cwd: Path, env_file: str | None = None) -> subprocess.CompletedProcess[str]:
    if env_file is not None:
        (cwd / ".env").write_text(env_file)
    return subprocess.run([shell, str(MAKE_SECRETS)], cwd=cwd, capture_output=True, text=True, timeout=30)


def _url_password(url: str) -> str:
    return unquote(urlsplit(url).password or "")


@pytest.mark.parametrize("shell", SHELLS)
def test_make_secrets_reads_env_lines_as_compose_does(tmp_path: Path, shell: str) -> None:
    env_file = (
        "# an older deployment's .env\n"
        "export POSTGRES_USER=owner  # the schema owner\n"
        "POSTGRES_DB='reg # istry'\n"
        'POSTGRES_PASSWORD="p@ss\\"w#rd/1" # kept from before\n'
        "  export REDIS_PASSWORD = r#not-a-comment\r\n"
        "PLANT_RUNTIME_ROLE= # none: the default\n"
        "PLANT_ADMIN_API_KEY='plant_key \"of\" at least 32 characters'\n"
        "FLOWER_BASIC_AUTH=admin:first\n"
        "FLOWER_BASIC_AUTH=admin:second # the last one counts\n"
    )
    done = run_make_secrets(shell, tmp_path, env_file)
    assert done.returncode == 0, done.stderr
    read = {path.name: path.read_text().removesuffix("\n") for path in (tmp_path / "secrets").iterdir() if path.is_file()}
    assert read["postgres_password"] == 'p@ss"w#rd/1'
    assert read["redis_password"] == "r#not-a-comment"
    assert read["bootstrap_admin_key"] == 'plant_key "of" at least 32 characters'
    assert read["flower_basic_auth"] == "admin:second"
    owner = urlsplit(read["database_url"])
    assert (unquote(owner.username or ""), _url_password(read["database_url"])) == ("owner", 'p@ss"w#rd/1')
    assert (owner.hostname, owner.port, unquote(owner.path)) == ("postgres", 5432, "/reg # istry")
    assert unquote(urlsplit(read["runtime_database_url"]).username or "") == "plant_runtime"
    assert _url_password(read["redis_url"]) == "r#not-a-comment" and urlsplit(read["redis_url"]).hostname == "redis"
    # What Plant makes of them: the URL's parts as the clients decode them.
    from sqlalchemy.engine import make_url

    parsed = make_url(read["database_url"])
    assert (parsed.username, parsed.password, parsed.database) == ("owner", 'p@ss"w#rd/1', "reg # istry")


@pytest.mark.parametrize("shell", SHELLS)
def test_make_secrets_stops_at_an_unclosed_quote_writing_nothing(tmp_path: Path, shell: str) -> None:
    done = run_make_secrets(shell, tmp_path, "POSTGRES_USER=owner\nPOSTGRES_PASSWORD=\"half\n")
    assert done.returncode != 0 and ".env line 2" in done.stderr and "POSTGRES_PASSWORD" in done.stderr
    assert "half" not in done.stderr and not (tmp_path / "secrets").exists()


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("what", ["directory", "dangling link", "empty file"])
def test_make_secrets_refuses_a_path_of_its_that_is_not_a_file_holding_a_secret(
        tmp_path: Path, shell: str, what: str) -> None:
    """The empty directory an older compose made at a missing secret file's path was reported as
    kept, while the password beside it was made anew: redis_url then held another password than
    redis_password."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    path = secrets / "redis_password"
    if what == "directory":
        path.mkdir()
    elif what == "dangling link":
        path.symlink_to(tmp_path / "nowhere")
    else:
        path.write_text(" \n")
    done = run_make_secrets(shell, tmp_path)
    assert done.returncode != 0, done.stdout
    assert str(Path("secrets") / "redis_password") in done.stderr and "remove it" in done.stderr
    assert sorted(p.name for p in secrets.iterdir()) == ["redis_password"]  # nothing written
    if what == "directory":
        path.rmdir()
        again = run_make_secrets(shell, tmp_path)
        assert again.returncode == 0, again.stderr
        password = path.read_text().strip()
        assert _url_password((secrets / "redis_url").read_text().strip()) == password and len(password) == 48
