"""Engine and session construction.

Processes build one engine from ``Settings`` and hand out short-lived sessions. Domain
functions take a ``Session`` and only flush; the edge (a request or a task) commits. The
engine's connections carry server-side limits and TCP keepalives, are pinged after sitting
idle, decode json with :mod:`models.db_json` and cancel interrupted statements
(:mod:`models.db_cancel`). Statements psycopg runs itself are in :mod:`models.db_statements`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from models.db_cancel import cancel_interrupted_statements, connect_cancelling
from models.db_json import load_json
from models.settings import Settings


def make_engine(settings: Settings, *, pool_size: int | None = None, max_overflow: int | None = None,
                pool_timeout: float = 30.0) -> Engine:
    """Create the process's engine; no connection is opened until first use.

    Every connection carries three server-side limits. ``statement_timeout`` ends a
    statement that runs too long. ``idle_in_transaction_session_timeout`` ends the
    session of a process that stopped inside a transaction (frozen, paused, cut off),
    so the row locks it holds (a job row under a bulk batch, an agent under an
    assignment) no longer block claims, cancels and the sweep until TCP notices.
    ``client_connection_check_interval`` ends, within a second, the statement of a process
    that died inside it and whose socket its OS closed (the hard time limit's SIGKILL, the
    OOM killer), which the server otherwise ran on, locks held, until ``statement_timeout``:
    a lock wait does not read from the client. A client lost without its socket closing (a
    host gone, a network cut) is still ``statement_timeout``'s. PostgreSQL 14 and later, on
    Linux, macOS and the BSDs; on Windows it refuses the setting, which
    ``PLANT_DB_CLIENT_CHECK_INTERVAL_MS=0`` leaves out. The URL's own ``options`` are kept
    (:func:`server_options`). A statement whose wait an exception interrupts is cancelled by
    its connection (:class:`~models.db_cancel.CancellingConnection`), or by the pool as it closes one still
    inside a statement (:func:`~models.db_cancel.cancel_interrupted_statements`). Plant's
    own transactions idle between statements for milliseconds (a first sentence-transformers
    model load, inside a write, for seconds); what takes longer runs after its transaction
    ended: a bulk plan's solve, a long poll's sleep.
    """
    engine = create_engine(
        settings.database_url,
        json_deserializer=load_json,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_pool_size if max_overflow is None else max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
        # A failed statement's message names the statement, not its values: that message is
        # logged (500s, job failures, retries) and the values are keys' hashes and content.
        hide_parameters=True,
        connect_args={"connect_timeout": 5, "options": server_options(settings), **TCP_KEEPALIVES},
    )
    ping_idle_connections(engine, after_seconds=settings.db_ping_after_idle_seconds)
    event.listen(engine, "do_connect", connect_cancelling)
    cancel_interrupted_statements(engine)
    return engine


# libpq's TCP keepalives: a connection whose server host vanished (a network cut, a host gone,
# no FIN or RST ever comes) is found dead within about a minute (30 s idle, then 3 probes 10 s
# apart) instead of the kernel's default of some two hours, by the request, job or /health check
# waiting on it. Keepalive probes go out only while nothing sent is unacknowledged, so a
# statement (or the pool's ping) sent to a host that vanished while the connection sat idle in
# the pool would be retransmitted for tcp_retries2 (some 15 minutes): tcp_user_timeout (ms) ends
# it after the same minute. (All ignored on a Unix socket.)
TCP_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
                  "tcp_user_timeout": 60_000}


def server_options(settings: Settings) -> str:
    """libpq's ``options`` for every connection of :func:`make_engine`: the ones the URL
    gives, a ``search_path`` say, then Plant's limits, which win a conflict.

    An ``options`` in ``connect_args`` replaces the URL's outright, so a deployment whose
    tables live outside ``public`` (``?options=-csearch_path%3Dplant``) lost its search path
    in the API and the workers while its migrations kept it. (It replaces libpq's
    ``PGOPTIONS`` too, which only the settings loader could read: put them in the URL.)"""
    given = make_url(settings.database_url).query.get("options") or ""
    plant = (f"-c statement_timeout={settings.db_statement_timeout_ms}"
             f" -c idle_in_transaction_session_timeout={settings.db_idle_in_transaction_timeout_ms}")
    if settings.db_client_check_interval_ms:
        plant += f" -c client_connection_check_interval={settings.db_client_check_interval_ms}"
    return " ".join([*([given] if isinstance(given, str) else given), plant]).strip()


def ping_idle_connections(engine: Engine, *, after_seconds: float) -> None:
    """Ping a pooled connection at checkout when it sat idle longer than ``after_seconds``.

    ``pool_pre_ping`` pings at every checkout: one extra round trip per request and per
    job step, on a database that is usually fine. A connection back in the pool for less
    than a second was working a moment ago; one idle longer is pinged, and a dead one is
    replaced before anyone uses it (the pool retries the checkout). So a database restart
    stays invisible, because a restart takes longer than the threshold. A connection that
    dies within it fails its next statement; SQLAlchemy then drops every pooled connection
    made before the failure, and the callers that open a unit of work (the API's key
    lookup, the worker's claim, checkpoint and outcome) run it once more on a fresh
    connection (:func:`retry_if_disconnected`).
    """

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get("returned_at")
        if returned_at is None or time.monotonic() - returned_at <= after_seconds:
            return  # new, or back in the pool only a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            raise exc.DisconnectionError(f"idle connection failed its ping: {error}") from error



T = TypeVar("T")


def retry_if_disconnected(action: Callable[[], T], *, before_retry: Callable[[], None] | None = None) -> T:
    """Run ``action``; if its pooled connection turned out dead, run it once more.

    Only for an action that is a unit of work of its own (it opens, and ends, its own
    transaction or autocommitted statement), so nothing half-done is repeated: the dead
    connection's transaction is gone with it. SQLAlchemy has dropped every pooled
    connection made before the failure, so the second run gets a fresh one.
    """
    try:
        return action()
    except exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
        if before_retry is not None:
            before_retry()
        return action()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit, so results can be serialized."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def one_off_sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions for a short command (seed, restore, seal): one pooled connection, and the
    engine disposed of when the block ends."""
    engine = make_engine(settings, pool_size=1)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error, always close."""
    with factory() as session, session.begin():
        yield session


@contextmanager
def single_statement(factory: sessionmaker[Session]) -> Iterator[Connection]:
    """A unit of work that is exactly one statement, run in autocommit mode on a pooled
    connection of ``factory``'s engine.

    One statement is atomic on its own, so leaving out BEGIN and COMMIT changes nothing
    but two round trips to the server. Use only where the block issues one statement:
    a second one would commit separately. It yields a Core ``Connection``, not a Session:
    a worker's claim, checkpoints and outcome are such units, and a Session's bookkeeping
    around one statement cost about 45 µs of CPU each (stop 30)."""
    with factory.kw["bind"].connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")
