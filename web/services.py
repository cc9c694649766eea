"""The API process's long-lived resources and its per-request database session.

``create_app`` builds one :class:`Services` and stores it on the app. A request gets at
most one session (opened lazily, always closed in teardown); views commit explicitly,
and only then publish any Celery message.

A view marked :func:`statement_at_a_time` reads in autocommit: each statement (the key
lookup, then the view's reads) runs and ends on its own, with no BEGIN and no ROLLBACK,
two round trips of a request's four. Only for views whose every read is consistent on its
own, because two statements may then see different commits, and that write nothing or write
in one statement (a job submission without ``Idempotency-Key``; the record of a report's
signature). The audit exports and report page read so for another reason: they are built in
Python for seconds, which a transaction left open would spend idle, past
``PLANT_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS``.
Such a request's statements run on a pooled Core connection (:func:`db_statements`), with
no Session around it unless the view asks for one (:func:`db_session`, then bound to that
connection): a Session's bookkeeping was a tenth of a job GET's CPU (stop 30).
:func:`autocommit_when` marks a view that qualifies only for some requests (a job
submission without ``Idempotency-Key``: web.jobs_http.submits_a_job).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import redis
from celery import Celery
from flask import Flask, current_app, g, has_request_context, request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.migrate import known_revisions
from models.db import make_engine, make_session_factory
from models.db_statements import SessionOrConnection
from models.embeddings import Embedder, make_embedder
from models.errors import DigestsBusy
from models.keys import keyring_from_settings
from models.settings import Settings
from models.signing import KeyRing
from tasks.celery_app import API_BROKER_SOCKET_TIMEOUT_SECONDS, create_celery

EXTENSION_KEY = "plant"
AUTOCOMMIT_ATTRIBUTE = "plant_statement_at_a_time"
V = TypeVar("V", bound=Callable)


R = TypeVar("R")


class SharedReading:
    """One reading shared by its callers while it is younger than ``max_age`` seconds (0: read
    on each call). Once it is older, the first caller reads again and the others get the
    previous reading meanwhile, at once (only the very first reading is waited for): however
    many callers there are, one thread at a time is held by a slow read. With ``wait``, the
    others wait for that reading instead and get it (a burst of callers costs one reading)."""

    def __init__(self, max_age: float, *, wait: bool = False) -> None:
        self._max_age = max_age
        self._wait = wait
        self._lock = threading.Lock()
        self._value: object = None
        self._read_at: float | None = None

    def get(self, read: Callable[[], R]) -> R:
        read_at, value = self._read_at, self._value
        if read_at is not None and time.monotonic() - read_at < self._max_age:
            return value  # type: ignore[return-value]
        if not self._lock.acquire(blocking=self._wait or read_at is None):
            return value  # type: ignore[return-value]  # another caller is reading: the last reading
        try:
            if self._read_at is not None and time.monotonic() - self._read_at < self._max_age:
                return self._value  # type: ignore[return-value]  # read while this caller waited
            self._value, self._read_at = read(), time.monotonic()
            return self._value  # type: ignore[return-value]
        finally:
            self._lock.release()


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    health_engine: Engine  # /health's own: a pool the requests have taken every connection of is no outage
    health_checks: ThreadPoolExecutor  # runs /health's database check, which must end on time (web.health)
    sessions: sessionmaker[Session]
    autocommit_engine: Engine  # for views marked autocommit_when/statement_at_a_time: the same pool, in autocommit
    celery: Celery
    redis: redis.Redis
    keyring: KeyRing
    embedder: Embedder
    digest_slots: threading.BoundedSemaphore  # see digest_slot
    long_poll_slots: threading.BoundedSemaphore | None  # see long_poll_slot; None: no long poll waits
    workers_reading: SharedReading  # /health's workers check (web.health._workers), shared by its callers


def build_services(settings: Settings) -> Services:
    known_revisions()  # /health compares the schema's revision with them: read the migrations now, not in a check
    engine = make_engine(settings)
    return Services(
        settings=settings,
        engine=engine,
        health_engine=make_engine(settings, pool_size=1, max_overflow=1, pool_timeout=settings.health_timeout_seconds),
        health_checks=ThreadPoolExecutor(max_workers=2, thread_name_prefix="health-db"),
        sessions=make_session_factory(engine),
        autocommit_engine=engine.execution_options(isolation_level="AUTOCOMMIT"),
        celery=create_celery(settings, socket_timeout=API_BROKER_SOCKET_TIMEOUT_SECONDS),
        redis=redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.health_timeout_seconds,
            socket_connect_timeout=settings.health_timeout_seconds,
        ),
        keyring=keyring_from_settings(settings),
        embedder=make_embedder(settings.embedder),
        digest_slots=threading.BoundedSemaphore(settings.digests_at_once),
        long_poll_slots=threading.BoundedSemaphore(settings.long_polls_at_once) if settings.long_polls_at_once else None,
        workers_reading=SharedReading(max_age=settings.health_timeout_seconds),
    )


def app_services(app: Flask) -> Services:
    return app.extensions[EXTENSION_KEY]


def services() -> Services:
    return app_services(current_app)


@contextmanager
def digest_slot() -> Iterator[None]:
    """One of this process's ``PLANT_DIGESTS_AT_ONCE`` digest slots, or ``DigestsBusy`` (503) now.

    A digest holds a thread and a pooled connection for about a second per 200,000
    entities, and a second connection while it waits for a quiet moment (up to 5 s); without
    a bound, any ``read`` key asking for many at once would hold every thread and connection
    of the process. A request finding no free slot does not wait: waiting would hold its
    thread just the same."""
    svc = services()
    if not svc.digest_slots.acquire(blocking=False):
        raise DigestsBusy(f"this server is already taking {svc.settings.digests_at_once} "
                          "ledger digest(s) at once; retry shortly")
    try:
        yield
    finally:
        svc.digest_slots.release()


@contextmanager
def long_poll_slot() -> Iterator[bool]:
    """Whether this request may wait, holding one of this process's ``PLANT_LONG_POLLS_AT_ONCE``
    long-poll slots while it does. A long poll holds its thread for up to 30 s: unbounded, any
    ``read`` key polling as many jobs as the process has threads left none for other requests,
    ``/health`` included. One finding no free slot does not wait for one (that would hold its
    thread just the same): it answers at once."""
    slots = services().long_poll_slots
    if slots is None or not slots.acquire(blocking=False):
        yield False
        return
    try:
        yield True
    finally:
        slots.release()


def _always() -> bool:
    return True


def autocommit_when(condition: Callable[[], bool]) -> Callable[[V], V]:
    """Mark a view whose statements run in autocommit for the requests where ``condition()``
    holds (it is asked in the request, before the key lookup; see the module doc).

    Put it below the route decorator: flask-openapi3's wrapper copies the mark."""
    def mark(view: V) -> V:
        setattr(view, AUTOCOMMIT_ATTRIBUTE, condition)
        return view
    return mark


def statement_at_a_time(view: V) -> V:
    """Mark a read-only view whose reads are each consistent alone (see the module doc)."""
    return autocommit_when(_always)(view)


def _view_reads_in_autocommit() -> bool:
    if not has_request_context() or request.endpoint is None:  # an app context alone (CLI, tests)
        return False
    condition = getattr(current_app.view_functions.get(request.endpoint), AUTOCOMMIT_ATTRIBUTE, None)
    return condition is not None and condition()


def db_statements() -> SessionOrConnection:
    """Where the request's statements run: for a view marked :func:`statement_at_a_time`
    (or :func:`autocommit_when`, when its condition holds), a pooled Core connection in
    autocommit; for any other, the request's Session. For functions that take either (the
    key lookup, a job's read and insert)."""
    if not _view_reads_in_autocommit():
        return db_session()
    if "db_connection" not in g:
        g.db_connection = services().autocommit_engine.connect()
    return g.db_connection


def db_session() -> Session:
    if "db_session" not in g:
        svc = services()
        g.db_session = svc.sessions(bind=db_statements()) if _view_reads_in_autocommit() else svc.sessions()
    return g.db_session


@contextmanager
def stream_session(svc: Services) -> Iterator[Session]:
    """A session in autocommit on a pooled connection of its own, for a response sent as it is
    written after its view returned (and the request's connection went back to the pool):
    both closed as the stream ends, or is closed unfinished."""
    with svc.autocommit_engine.connect() as connection, svc.sessions(bind=connection) as session:
        yield session


def close_db_session(_: BaseException | None = None) -> None:
    """End the request's database work and give its connection back to the pool (a
    long-poll does so between its reads)."""
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
    connection = g.pop("db_connection", None)
    if connection is not None:
        connection.close()


def init_services(app: Flask, settings: Settings) -> None:
    app.extensions[EXTENSION_KEY] = build_services(settings)
    app.teardown_appcontext(close_db_session)
