"""A statement left running on the server by a client that gave up on it stops at once,
not at ``statement_timeout``, so the locks its transaction holds go with it:

- interrupted in the worker's own process (Celery's soft time limit raises from a signal
  handler inside psycopg's wait): the connection cancels it there and then, and the
  interrupt itself comes out, with the connection back in the pool;
- on a connection closed inside it all the same (its cancel interrupted, or psycopg's own
  connection): the pool cancels it as it closes it;
- its process killed (the hard time limit, the OOM killer, a deploy): the server notices
  the closed connection within ``client_connection_check_interval``.

Every engine here has a 120 s statement timeout, so only those end the wait within the
tests' 10 s; the interrupted statements' engines check no client, so only the cancels do.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import sessionmaker

from models.db import make_engine, transaction
from models.db_cancel import CANCEL_TIMEOUT_SECONDS, connect_cancelling
from tests.conftest import child_env, lock_waiters, wait_for

BLOCKED, HELD = 7_400_001, 7_400_002
LONG_TIMEOUT_MS = 120_000
THROUGH = ["a pooled connection", "a Session's transaction"]
PIPELINED = "an executemany on a pooled connection"


class Interrupted(Exception):
    """What the signal handler raises, as billiard's raises ``SoftTimeLimitExceeded``."""


def _raise_interrupted(_signum, _frame):
    raise Interrupted


@pytest.fixture
def blocked(settings):
    """An engine with the long timeout, and a connection holding the lock BLOCKED."""
    yield from _blocked_engine(settings)


@pytest.fixture
def blocked_unchecked(settings):
    """The same without the server's client checks: only a cancel can end a wait."""
    yield from _blocked_engine(settings.model_copy(update={"db_client_check_interval_ms": 0}))


def _blocked_engine(settings):
    engine = make_engine(settings.model_copy(update={"db_statement_timeout_ms": LONG_TIMEOUT_MS}), pool_size=2)
    blocker = engine.connect()
    blocker.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BLOCKED})
    try:
        yield engine
    finally:
        blocker.close()
        engine.dispose()


def _held_lock_is_free(engine) -> bool:
    with engine.connect() as other:
        return other.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": HELD})


def _interrupt_once_waiting(engine) -> threading.Thread:
    """Interrupt this (the main) thread once a session of the database waits on a lock."""
    main = threading.main_thread().ident

    def interrupt() -> None:
        try:
            wait_for(lambda: lock_waiters(engine) == 1, timeout=10, what="the statement to wait on the lock")
        finally:  # even when it never waited: the main thread must not sit out the 120 s
            signal.pthread_kill(main, signal.SIGALRM)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    return thread


def _wait_interrupted(engine, through: str, prepare=lambda _connection: None) -> BaseException:
    """Hold HELD, wait on BLOCKED until interrupted, give the connection back; what came out.
    ``prepare`` gets the psycopg connection of the pooled ones first."""
    previous = signal.signal(signal.SIGALRM, _raise_interrupted)
    try:
        with pytest.raises(Exception) as raised:
            if through != "a Session's transaction":
                waiter = engine.raw_connection()
                prepare(waiter.driver_connection)
                try:
                    cursor = waiter.cursor()
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (HELD,))
                    thread = _interrupt_once_waiting(engine)
                    if through == PIPELINED:  # psycopg sends an executemany in pipeline mode
                        cursor.executemany("SELECT pg_advisory_xact_lock(%s)", [(BLOCKED,)])
                    else:
                        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (BLOCKED,))
                finally:
                    waiter.close()  # back to the pool, which rolls it back
            else:
                with transaction(sessionmaker(bind=engine)) as session:
                    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": HELD})
                    thread = _interrupt_once_waiting(engine)
                    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BLOCKED})
        thread.join()
    finally:
        signal.signal(signal.SIGALRM, previous)
    return raised.value


@pytest.mark.parametrize("through", [*THROUGH, PIPELINED])
def test_an_interrupted_wait_cancels_its_statement_and_the_connection_goes_back_to_the_pool(
        blocked_unchecked, through, caplog) -> None:
    engine = blocked_unchecked
    closed = []
    event.listen(engine, "close", lambda *_: closed.append(1))
    with caplog.at_level(logging.WARNING):
        raised = _wait_interrupted(engine, through)
    assert isinstance(raised, Interrupted), repr(raised)  # not the rollback's error, raised from it
    assert lock_waiters(engine) == 0  # cancelled before the interrupt came out, not after
    assert _held_lock_is_free(engine)
    assert closed == [] and engine.pool.checkedin() == 2, engine.pool.status()  # rolled back and pooled, not closed
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []  # no "Exception during reset"


def test_a_wait_interrupted_on_an_idle_connection_sends_no_cancel_and_waits_for_nothing(blocked_unchecked, caplog) -> None:
    """Waiting for notifications is a wait with no statement in flight: nothing to cancel,
    and nothing to drain (which would sit out the drain's timeout)."""
    waiter = blocked_unchecked.raw_connection()
    connection = waiter.driver_connection
    connection.execute("LISTEN plant_test_idle")
    connection.commit()
    previous = signal.signal(signal.SIGALRM, _raise_interrupted)
    started = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with caplog.at_level(logging.WARNING), pytest.raises(Interrupted):
            for _ in connection.notifies(timeout=30):
                pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        waiter.close()
    assert time.monotonic() - started < CANCEL_TIMEOUT_SECONDS
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_an_interrupt_during_the_cancel_leaves_the_first_one_raised_and_the_statement_to_the_pool(
        blocked_unchecked, caplog) -> None:
    def interrupt_the_first_cancel(connection) -> None:
        cancel_safe = connection.cancel_safe

        def interrupted_once(**kwargs):
            connection.cancel_safe = cancel_safe  # the pool's cancel, later, goes through
            raise Interrupted("again")

        connection.cancel_safe = interrupted_once

    with caplog.at_level(logging.WARNING):
        raised = _wait_interrupted(blocked_unchecked, "a pooled connection", prepare=interrupt_the_first_cancel)
    assert isinstance(raised, Interrupted) and raised.args == (), repr(raised)  # the first interrupt, not the second
    assert any("was interrupted" in r.getMessage() for r in caplog.records), caplog.records
    wait_for(lambda: lock_waiters(blocked_unchecked) == 0, timeout=10, what="the pool's cancel to end the statement")
    assert _held_lock_is_free(blocked_unchecked)


@pytest.mark.parametrize("through", THROUGH)
def test_the_pool_cancels_the_statement_of_a_connection_it_closes_inside_it(blocked_unchecked, through) -> None:
    """With psycopg's own connections, which leave such a statement running, the rollback
    fails and the pool closes the connection: its cancel is what ends the statement."""
    engine = blocked_unchecked
    event.remove(engine, "do_connect", connect_cancelling)
    engine.pool.dispose()  # no connection of the cancelling kind left
    raised = _wait_interrupted(engine, through)
    chain = [raised, raised.__context__, getattr(raised.__context__, "__context__", None)]
    assert any(isinstance(error, Interrupted) for error in chain), chain
    wait_for(lambda: lock_waiters(engine) == 0, timeout=10, what="the interrupted statement to stop waiting")
    assert _held_lock_is_free(engine)


CHILD = f"""
from sqlalchemy import text
from models.db import make_engine
from models.settings import load_settings
connection = make_engine(load_settings()).connect()
connection.execute(text("SELECT pg_advisory_xact_lock({HELD})"))
connection.execute(text("SELECT pg_advisory_xact_lock({BLOCKED})"))
"""


def test_the_statement_of_a_killed_process_stops_waiting_and_lets_its_locks_go(settings, blocked) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD],
                             env=child_env(settings, PLANT_DB_STATEMENT_TIMEOUT_MS=str(LONG_TIMEOUT_MS)))
    try:
        wait_for(lambda: lock_waiters(blocked) == 1, what="the child's statement to wait on the lock")
    finally:
        child.kill()
        child.wait(timeout=10)
    wait_for(lambda: lock_waiters(blocked) == 0, timeout=10, what="the killed process's statement to stop waiting")
    assert _held_lock_is_free(blocked)
