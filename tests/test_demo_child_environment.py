"""The demo's stack (``plant dev`` under ``plant demo``) inherits none of the developer's
settings. It stripped a list of its own, which had fallen behind ``models.settings``: the runtime
role's password and its ``*_FILE``, the metrics directory under its prefixed name (one the demo's
gunicorn empties at start), and any setting spelt in lower case (Settings reads names in any case)
reached it. It now resets every setting through ``child_environment``, so one added later is reset too."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.demo_stack import DemoStack
from models.settings import FILE_SUFFIX, SECRET_FILE_SETTINGS, Settings, child_environment, field_variables

DEMO_SETS = {"PLANT_DATA_DIR", "PLANT_PORT", "PLANT_FLOWER_PORT", "PLANT_AUDIT_BATCH_SIZE"}


def every_setting_variable() -> list[str]:
    names = []
    for field_name in Settings.model_fields:
        variables = [variable for _, variable in field_variables(Settings, field_name)]
        names += variables + ([v + FILE_SUFFIX for v in variables] if field_name in SECRET_FILE_SETTINGS else [])
    return names


def test_no_variable_of_any_setting_reaches_the_demo_s_stack_but_those_it_sets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in every_setting_variable():
        monkeypatch.setenv(name, "/the-developer-s")
    monkeypatch.setenv("database_url", "postgresql://dev@shared/plant")  # as Settings reads it: any case
    monkeypatch.setenv("PLANT_PG_PORT", "5432")  # plant dev's own, no setting
    monkeypatch.setenv("GUNICORN_CMD_ARGS", "--bind 0.0.0.0:80")
    monkeypatch.setenv("PATH_FOR_THE_DEMO", "kept")
    env = DemoStack(tmp_path, 1, 2, extra_env={"PLANT_AUDIT_BATCH_SIZE": "10"}).environment()
    leaked = sorted(name for name in env if (name.upper() in map(str.upper, every_setting_variable())
                                             and name not in DEMO_SETS))
    assert leaked == [], leaked
    assert {name: env[name] for name in DEMO_SETS} == {
        "PLANT_DATA_DIR": str(tmp_path.resolve()), "PLANT_PORT": "1", "PLANT_FLOWER_PORT": "2", "PLANT_AUDIT_BATCH_SIZE": "10"}
    assert "PLANT_PG_PORT" not in env and "GUNICORN_CMD_ARGS" not in env
    assert env["PATH_FOR_THE_DEMO"] == "kept"


def test_reset_takes_out_every_name_of_a_setting_and_refuses_one_that_is_none() -> None:
    base = {"DATABASE_URL_FILE": "/run/secrets/db", "plant_database_url": "x", "PLANT_LOG_LEVEL": "DEBUG", "HOME": "/h"}
    assert child_environment(base, reset=["database_url"], PLANT_PORT="1") == {
        "PLANT_LOG_LEVEL": "DEBUG", "HOME": "/h", "PLANT_PORT": "1"}
    with pytest.raises(ValueError, match="databse_url"):
        child_environment(base, reset=["databse_url"])
