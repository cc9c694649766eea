"""Settings come from the environment, typed and validated, in one place."""

import pytest
from pydantic import ValidationError

from models.settings import load_settings, sqlalchemy_url


def test_reads_database_and_redis_urls_and_plant_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/plant")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("PLANT_PORT", "8123")
    monkeypatch.setenv("PLANT_REQUEUE_AFTER_SECONDS", "12.5")
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/plant"
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.port == 8123
    assert settings.requeue_after_seconds == 12.5


def test_explicit_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANT_PORT", "8123")
    assert load_settings(port=9000).port == 9000


def test_invalid_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANT_PORT", "not-a-port")
    with pytest.raises(ValidationError):
        load_settings()


@pytest.mark.parametrize(("soft", "hard"), [("60", "60"), ("60", "30")])
def test_a_hard_time_limit_not_above_the_soft_one_is_refused(monkeypatch: pytest.MonkeyPatch, soft: str, hard: str) -> None:
    """The hard limit kills the process; the soft one lets the job record its failure first."""
    monkeypatch.setenv("PLANT_JOB_SOFT_TIME_LIMIT", soft)
    monkeypatch.setenv("PLANT_JOB_HARD_TIME_LIMIT", hard)
    with pytest.raises(ValidationError, match="must be above PLANT_JOB_SOFT_TIME_LIMIT"):
        load_settings()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://a@h/d", "postgresql+psycopg://a@h/d"),
        ("postgresql://a@h/d", "postgresql+psycopg://a@h/d"),
        ("postgresql+psycopg://a@h/d", "postgresql+psycopg://a@h/d"),
    ],
)
def test_sqlalchemy_url_names_the_psycopg_driver(given: str, expected: str) -> None:
    assert sqlalchemy_url(given) == expected


# Read by something other than Settings (README's Configuration section names each).
NOT_SETTINGS = {"PLANT_PG_PORT", "PLANT_REDIS_PORT", "WEB_CONCURRENCY", "PLANT_WEB_THREADS"}


def _configuration_table() -> dict[str, str]:
    """README's Configuration table: each variable named in a row's first cell, with its
    default (its part of the default cell, where that cell gives one per variable)."""
    import re

    from tests.conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for cells in rows:
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        defaults = re.split(r", | / ", cells[1])
        table.update(zip(names, defaults if len(defaults) == len(names) else [cells[1]] * len(names), strict=True))
    return table


def _env_names(name: str, field) -> list[str]:
    alias = field.validation_alias
    if alias is None:
        return [f"PLANT_{name.upper()}"]
    return list(getattr(alias, "choices", [alias]))


def test_the_readme_lists_every_setting_with_its_default() -> None:
    """Kept by hand, the table had drifted: settings missing, one listed that nothing read."""
    from models.settings import Settings

    table = _configuration_table()
    settings = {name: (field, _env_names(name, field)) for name, field in Settings.model_fields.items()}
    missing = [names[0] for field, names in settings.values() if not any(n in table for n in names)]
    assert missing == [], f"README's Configuration table does not list {missing}"
    known = {n for _, names in settings.values() for n in names} | NOT_SETTINGS
    assert sorted(set(table) - known) == [], "README lists variables that nothing reads"
    for field, names in settings.values():  # a plain number in the table is the default
        documented = table[next(n for n in names if n in table)].strip()
        if documented.replace(".", "", 1).isdigit():
            assert float(documented) == field.default, (names[0], documented, field.default)


@pytest.mark.parametrize(("given", "read"), [("", None), ("  \n", None), ("a-key\n", "a-key")])
def test_a_blank_admin_key_is_no_key_and_one_read_from_a_file_loses_its_newline(
        monkeypatch: pytest.MonkeyPatch, given: str, read: str | None) -> None:
    """A blank PLANT_ADMIN_API_KEY made every start create an admin key nobody held; one saved
    with ``echo`` kept a newline no client sends (helper-67)."""
    monkeypatch.setenv("PLANT_ADMIN_API_KEY", given)
    key = load_settings().admin_api_key
    assert (key.get_secret_value() if key is not None else None) == read
