"""Review of the migrations and the database setup: lock and statement timeouts while migrating,
concurrent upgraders, and what the runtime role may write."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest
from alembic import command
from click.testing import CliRunner

from cli.main import cli
from models.migrate import MigrationLockTimeout, alembic_config, grant_runtime_role, heads, upgrade_head
from models.settings import libpq_url
from tests.conftest import wait_for


def _revision(url: str) -> str | None:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row and row[0]


@pytest.fixture
def at_0023(make_database: Callable[[str], str]) -> str:
    """A database one migration behind head; 0024 alters ``audit_runs``."""
    url = make_database("plant_review_migrations")
    command.upgrade(alembic_config(url), "0023")
    return url


@pytest.fixture
def reader_of_audit_runs(at_0023: str) -> Iterator[psycopg.Connection]:
    """A transaction of the running release that has read ``audit_runs`` and is still open."""
    with psycopg.connect(libpq_url(at_0023)) as holder:
        holder.execute("SELECT count(*) FROM audit_runs")
        try:
            yield holder
        finally:
            if not holder.broken:  # ended by a test's watchdog
                holder.rollback()


def _in_thread(action: Callable[[], None]) -> tuple[threading.Thread, dict[str, BaseException | None]]:
    outcome: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            action()
            outcome["error"] = None
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_migration_behind_a_long_transaction_gives_up_changes_nothing_and_stops_no_reader(
        at_0023: str, reader_of_audit_runs: psycopg.Connection) -> None:
    """0024's ALTER TABLE waited for the open transaction without end, and every statement on
    audit_runs queued behind it (the API and the workers stood still); now each wait is bounded
    and a migration that timed out on every attempt changed nothing."""
    thread, outcome = _in_thread(lambda: upgrade_head(at_0023, lock_timeout_ms=300, attempts=2))
    with psycopg.connect(libpq_url(at_0023), autocommit=True) as reader:
        reader.execute("SET statement_timeout = 20000")
        assert reader.execute("SELECT count(*) FROM audit_runs").fetchone() == (0,)  # not stuck behind the ALTER
    thread.join(timeout=30)
    assert not thread.is_alive(), "the upgrade still waits for the lock"
    assert isinstance(outcome["error"], MigrationLockTimeout), outcome
    assert "nothing was changed" in str(outcome["error"])
    assert _revision(at_0023) == "0023"


def test_a_migration_whose_lock_wait_timed_out_is_tried_again(
        at_0023: str, reader_of_audit_runs: psycopg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="models.migrate")
    thread, outcome = _in_thread(lambda: upgrade_head(at_0023, lock_timeout_ms=300, attempts=5))
    wait_for(lambda: "attempt 1 of 5" in caplog.text, what="the first attempt to time out")
    reader_of_audit_runs.rollback()  # the long transaction ends
    thread.join(timeout=60)
    assert not thread.is_alive() and outcome["error"] is None, outcome
    assert _revision(at_0023) == heads()[0]


def test_plant_db_upgrade_says_a_lock_wait_timed_out_in_one_line(
        at_0023: str, reader_of_audit_runs: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("models.migrate.MIGRATION_ATTEMPTS", 1)
    monkeypatch.setattr("models.migrate.MIGRATION_LOCK_TIMEOUT_MS", 300)
    holder_pid = reader_of_audit_runs.info.backend_pid
    # Should the upgrade wait without end, the long transaction is ended after 20 s: the test fails, not hangs.
    ender = threading.Timer(20, lambda: psycopg.connect(libpq_url(at_0023), autocommit=True).execute(
        "SELECT pg_terminate_backend(%s)", (holder_pid,)))
    ender.start()
    try:
        done = CliRunner().invoke(cli, ["db", "upgrade"], env={"DATABASE_URL": at_0023, "PLANT_RUNTIME_ROLE": ""})
    finally:
        ender.cancel()
    assert done.exit_code == 1, done.output
    assert "waited too long for a table's lock" in done.output and "Traceback" not in done.output
    assert _revision(at_0023) == "0023"


def test_concurrent_upgrades_under_short_role_timeouts_all_succeed(
        pg_admin_url: str, make_database: Callable[[str], str]) -> None:
    """Defaults meant for the API (a database's or role's statement_timeout, lock_timeout) cancelled
    a backfill halfway, and a second upgrader waiting for the first's advisory lock: migrations
    turn statement_timeout off and wait for the advisory lock without limit."""
    url = make_database("plant_review_migrations_concurrent")
    with psycopg.connect(libpq_url(pg_admin_url), autocommit=True) as admin:
        admin.execute("ALTER DATABASE plant_review_migrations_concurrent SET statement_timeout = '150ms'")
        admin.execute("ALTER DATABASE plant_review_migrations_concurrent SET lock_timeout = '150ms'")
    code = f"from models.migrate import upgrade_head; upgrade_head({url!r})"
    upgraders = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for _ in range(3)]
    results = [(upgrader.wait(timeout=180), upgrader.stdout.read().decode()[-1500:]) for upgrader in upgraders]
    assert [code for code, _ in results] == [0, 0, 0], results
    assert _revision(url) == heads()[0]


REVIEW_RUNTIME = "plant_review_migrations_runtime"


@pytest.fixture
def runtime_url(pg_admin_url: str, make_database: Callable[[str], str]) -> Iterator[tuple[str, str]]:
    """(owner's URL, runtime role's URL) of a migrated database whose runtime role was granted."""
    url = make_database("plant_review_migrations_roles")
    with psycopg.connect(libpq_url(pg_admin_url), autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {REVIEW_RUNTIME}")
        admin.execute(f"CREATE ROLE {REVIEW_RUNTIME} LOGIN")
    upgrade_head(url)
    grant_runtime_role(url, REVIEW_RUNTIME)
    scheme, rest = url.split("://", 1)
    try:
        yield url, f"{scheme}://{REVIEW_RUNTIME}@{rest.split('@', 1)[1]}"
    finally:
        with psycopg.connect(libpq_url(pg_admin_url), autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS plant_review_migrations_roles WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {REVIEW_RUNTIME}")


@pytest.mark.parametrize("statement", [
    "UPDATE signed_exports_began SET began_at = '9999-01-01'",
    "DELETE FROM signed_exports_began",
    "INSERT INTO alembic_version VALUES ('0025')",
], ids=["move-signed-exports-began", "delete-signed-exports-began", "set-revision"])
def test_the_runtime_role_cannot_move_when_plant_began_recording(runtime_url: tuple[str, str], statement: str) -> None:
    """signed_exports_began says from when every report a key signed is on record: moved past
    a retired key's first signature, `plant signing-keys seal` wrote that key's seal with no list
    (models.key_seals.record_seal_list), so what a leaked key signs outside the chain was refused
    by none. Migration 0010 writes its one row; the runtime role only reads it (a trigger guards
    ledger_digests_v2_began's)."""
    owner, runtime = runtime_url
    with psycopg.connect(libpq_url(owner)) as conn:
        before = conn.execute("SELECT began_at FROM signed_exports_began").fetchone()
    with psycopg.connect(libpq_url(runtime), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute(statement)
        assert conn.execute("SELECT began_at FROM signed_exports_began").fetchone() == before
