"""Cancelling, on the server, a statement whose client stopped waiting for it.

Each connection of the engine is a :class:`CancellingConnection`, which cancels its statement
when an exception interrupts the wait for its result; the pool cancels the statement of a
connection it closes while still inside one (:func:`cancel_interrupted_statements`). Either
way the statement's locks go at once instead of at ``statement_timeout``.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from sqlalchemy import Engine, event

log = logging.getLogger(__name__)

# How long a cancel request may take to reach the server (libpq opens a connection for it).
CANCEL_TIMEOUT_SECONDS = 5.0
ACTIVE = psycopg.pq.TransactionStatus.ACTIVE  # a command in flight
RV = TypeVar("RV")


class CancellingConnection(psycopg.Connection[Any]):
    """A psycopg connection that cancels its statement when an exception other than
    psycopg's own interrupts the wait for its result, as psycopg does for
    ``KeyboardInterrupt`` and ``SystemExit`` only.

    Celery's soft time limit raises ``SoftTimeLimitExceeded`` from a signal handler, so a
    limit that fires in a lock wait left the statement running on the server, holding its
    transaction's locks, and the connection busy: the rollback that followed failed
    ("another command is already in progress"), its error replaced the limit's, SQLAlchemy
    logged it as an ERROR with its traceback, and the pool closed the connection. Cancelled
    and drained here, the statement fails at once, the exception that interrupted it is the
    one raised, and the connection rolls back and goes back to the pool like any other.

    A connection still busy afterwards is left to the pool, which cancels its statement
    again as it closes it (:func:`cancel_interrupted_statements`): one whose cancel did not
    end the statement within twice :data:`CANCEL_TIMEOUT_SECONDS` (the cancel, then the
    drain), one interrupted a second time meanwhile, and one whose generator the interrupt
    ended itself (raised in psycopg's Python code between sending the statement and
    waiting, a window of microseconds).
    """

    def wait(self, gen: PQGen[RV], *args: Any, **kwargs: Any) -> RV:
        try:
            return super().wait(gen, *args, **kwargs)
        except psycopg.Error:
            raise
        except Exception:
            if self.pgconn.transaction_status == ACTIVE:
                self._end_statement(gen)
            raise

    def _end_statement(self, gen: PQGen[Any]) -> None:
        try:
            self.cancel_safe(timeout=CANCEL_TIMEOUT_SECONDS)
            super().wait(gen, timeout=CANCEL_TIMEOUT_SECONDS)  # the cancel's error, or what it finished with
        except psycopg.Error:
            pass  # QueryCanceled, as expected; or the statement's own error, or a lost cancel (below)
        except Exception as again:  # noqa: BLE001 - interrupted again: the first interrupt is the one raised
            log.warning("the cancel of an interrupted statement was interrupted: %r", again)
        if self.pgconn.transaction_status == ACTIVE:
            log.warning("an interrupted statement is still running; the pool cancels it again as it closes the connection")


def connect_cancelling(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> CancellingConnection:
    """The engine's ``do_connect`` hook (:func:`models.db.make_engine`): every connection is a
    :class:`CancellingConnection`."""
    return CancellingConnection.connect(*cargs, **cparams)


def cancel_interrupted_statements(engine: Engine) -> None:
    """Cancel, on the server, the statement of a connection the pool closes while inside it.

    A connection closed in a statement left it running on the server, and a server process
    waiting on a lock does not notice its client has gone: it kept its transaction's locks
    until ``statement_timeout`` (30 s by default), and a job's outcome, written next, waited
    that long behind them. Cancelled as the pool closes the connection, the statement fails
    at once and its locks go with it. Connections cancel an interrupted wait themselves
    (:class:`CancellingConnection`); this is for one whose cancel did not end it, and for a
    connection closed busy any other way. A process that dies in a statement is the
    server's to notice (``client_connection_check_interval``, :func:`models.db.make_engine`).

    The pool closes a busy connection after its failed rollback (``close`` comes before the
    socket is closed); Plant detaches no connection from the pool. A listener that raises
    would stop SQLAlchemy closing the connection, so this one never does.
    """

    @event.listens_for(engine, "close")
    def _cancel_if_in_a_statement(dbapi_connection: Any, _record: Any) -> None:
        pgconn = getattr(dbapi_connection, "pgconn", None)
        if pgconn is None or pgconn.transaction_status != ACTIVE:
            return
        try:
            dbapi_connection.cancel_safe(timeout=CANCEL_TIMEOUT_SECONDS)
        except Exception as error:  # noqa: BLE001 - the close must go on; statement_timeout is the backstop
            log.warning("could not cancel the statement of a connection closed inside it: %s", error)
