"""A statement interrupted in the worker's process (Celery's soft time limit raises from a
signal handler inside psycopg's wait) is cancelled on the server when its connection goes
back to the pool, so the locks its transaction holds go at once, not at ``statement_timeout``.
"""

from __future__ import annotations

import signal

import pytest
from sqlalchemy import text

from models.db import make_engine
from tests.conftest import lock_waiters, wait_for

BLOCKED, HELD = 7_400_001, 7_400_002


class Interrupted(Exception):
    """What the signal handler raises, as billiard's raises ``SoftTimeLimitExceeded``."""


def _raise_interrupted(_signum, _frame):
    raise Interrupted


def test_a_statement_interrupted_in_a_lock_wait_stops_waiting_and_lets_its_locks_go(settings) -> None:
    # The server's statement_timeout is 120 s: only a cancel ends the wait within the test's 10 s.
    engine = make_engine(settings.model_copy(update={"db_statement_timeout_ms": 120_000}), pool_size=2)
    blocker = engine.connect()
    blocker.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BLOCKED})
    waiter = engine.raw_connection()  # as a Session's connection, it goes back to the pool on close
    previous = signal.signal(signal.SIGALRM, _raise_interrupted)
    try:
        cursor = waiter.cursor()
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (HELD,))
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(Interrupted):
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (BLOCKED,))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    try:
        waiter.close()
        wait_for(lambda: lock_waiters(engine) == 0, timeout=10, what="the interrupted statement to stop waiting")
        with engine.connect() as other:
            assert other.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": HELD})
    finally:
        blocker.close()
        engine.dispose()
