"""Local `plant` commands next to `make dev` find its database without setup; the environment still wins."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from cli.main import cli


pytestmark = pytest.mark.usefixtures("no_server_log_lines")  # tests/conftest.py: CLI output without server log lines


@pytest.mark.parametrize("args", [("entity", "repairs", "--json"), ("signing-keys", "seal", "--json"), ("seed", "--json")])
def test_local_commands_next_to_make_dev_find_its_database_without_setup(settings, monkeypatch, tmp_path, clean_db, args):
    """Finding 1. The README's CLI section: "Next to `make dev` on its default port it needs no
    setup", and it lists `plant entity restore`, `plant entity repairs` and `plant signing-keys
    seal`. Those work on DATABASE_URL, which `make dev` writes only into
    `$PLANT_DATA_DIR/services.env`: without it they went to the default
    postgres@127.0.0.1:5432/plant, whatever server listens there."""
    for name in ("DATABASE_URL", "PLANT_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "plant"
    shutil.copytree(settings.data_dir / "keys", data_dir / "keys")
    (data_dir / "services.env").write_text(f"DATABASE_URL={settings.database_url}\nREDIS_URL={settings.redis_url}\n"
                                           f"OWNER_DATABASE_URL={settings.database_url}\n")
    monkeypatch.setenv("PLANT_DATA_DIR", str(data_dir))
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)
    # Said on stderr, naming the file and not the URL (it holds a password).
    assert f"using the dev runner's database, from {data_dir / 'services.env'}" in result.stderr
    assert settings.database_url not in result.stderr


def test_a_database_url_in_the_environment_wins_over_services_env(settings, monkeypatch, tmp_path) -> None:
    """The fallback never overrides what the operator set."""
    from cli.local import local_settings

    data_dir = tmp_path / "plant"
    data_dir.mkdir()
    (data_dir / "services.env").write_text("DATABASE_URL=postgresql://elsewhere@127.0.0.1:1/other\n")
    monkeypatch.setenv("PLANT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    assert local_settings().database_url == settings.database_url
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.delenv("PLANT_DATABASE_URL", raising=False)
    assert local_settings().database_url == "postgresql+psycopg://elsewhere@127.0.0.1:1/other"


@pytest.mark.parametrize("args", [("db", "check", "--json"), ("db", "upgrade", "--json")])
def test_schema_commands_next_to_make_dev_use_its_owner_s_url(settings, monkeypatch, tmp_path, args) -> None:
    """README: services.env's `OWNER_DATABASE_URL` is the schema owner's, "for `plant db
    upgrade`"; the command never read the file and went to the default
    postgres@127.0.0.1:5432/plant (here, another server's database). The runner's
    `DATABASE_URL` is the runtime role's, which cannot migrate: these take the owner's."""
    for name in ("DATABASE_URL", "PLANT_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "plant"
    data_dir.mkdir()
    (data_dir / "services.env").write_text("DATABASE_URL=postgresql+psycopg://runtime@127.0.0.1:1/nowhere\n"
                                           f"REDIS_URL={settings.redis_url}\nOWNER_DATABASE_URL={settings.database_url}\n")
    monkeypatch.setenv("PLANT_DATA_DIR", str(data_dir))
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout).get("drift", False) is False
    assert "using the dev runner's database" in result.stderr
