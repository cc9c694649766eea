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
