"""Local `plant` commands (run against DATABASE_URL) end in one line, never a traceback: a
schema not migrated, a value the database refuses, an operator with no login name."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli


pytestmark = pytest.mark.usefixtures("no_server_log_lines")  # tests/conftest.py: CLI output without server log lines


def _one_line(result) -> str:
    """Exit 1, one ``plant: ...`` line on stderr, no traceback (the README's promise for every error)."""
    assert not (result.exception and not isinstance(result.exception, SystemExit)), repr(result.exception)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("plant: ")]
    return line


@pytest.mark.parametrize("args", [
    ("seed",), ("entity", "repairs"), ("entity", "restore", "agent", "00000000-0000-4000-8000-000000000000"),
])
def test_a_local_command_on_a_database_not_migrated_says_so_in_one_line(make_database, monkeypatch, settings, args):
    """`plant seed` (or a restore) before `plant db upgrade` printed SQLAlchemy's ProgrammingError
    traceback: only OperationalError was turned into a line."""
    monkeypatch.setenv("DATABASE_URL", make_database("cli_review_not_migrated"))
    monkeypatch.setenv("PLANT_DATA_DIR", str(settings.data_dir))
    line = _one_line(CliRunner().invoke(cli, list(args)))
    assert "does not exist" in line and "plant db upgrade" in line


def test_a_statement_the_database_refuses_is_one_line() -> None:
    import psycopg
    from sqlalchemy.exc import DataError

    from cli.errors import one_line

    refused = DataError("INSERT ...", {"actor": "x"}, psycopg.errors.StringDataRightTruncation(
        "value too long for type character varying(255)"))
    assert one_line(refused) == "database error: value too long for type character varying(255)"


@pytest.mark.parametrize("actor", ["x" * 256, "ops\x00alice"])
def test_an_actor_the_repair_record_cannot_hold_is_a_usage_error(settings, monkeypatch, clean_db, actor):
    """A long --actor or one holding a NUL reached the INSERT and came out as a DataError traceback."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PLANT_DATA_DIR", str(settings.data_dir))
    result = CliRunner().invoke(cli, ["entity", "restore", "agent", "00000000-0000-4000-8000-000000000000",
                                      "--actor", actor])
    assert result.exit_code == 2 and "--actor" in result.stderr and "at most 255" in result.stderr


def test_a_restore_without_actor_by_a_uid_with_no_login_name_is_recorded_by_uid(monkeypatch) -> None:
    """``getpass.getuser`` raises under a uid with no passwd entry (``docker run --user N``):
    the default actor was a traceback."""
    import getpass

    from cli import repair

    def no_name() -> str:
        raise KeyError("getpwuid(): uid not found: 4242")

    monkeypatch.setattr(getpass, "getuser", no_name)
    assert repair._operator().startswith("uid-")
