"""Per-process resources for tasks: settings, a session factory and a Redis client, built on first use.

A forked worker child must not reuse its parent's connections, so the worker calls
:func:`reset_after_fork` from ``worker_process_init``.
"""

from __future__ import annotations

import os
import signal
import threading
from functools import cache

import redis
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, make_session_factory
from models.embeddings import Embedder, make_embedder
from models.keys import keyring_from_settings
from models.settings import Settings, load_settings
from models.signing import KeyRing


# Set in a pool process when its worker is shutting down (warm, on SIGTERM): running
# jobs hand themselves back at their next checkpoint instead of holding shutdown up.
shutdown_requested = threading.Event()


# The Celery worker's main process: noted as it starts (worker.app), so its pool processes, which
# inherit it, can ask it to stop (restart_worker_on_the_active_key). None outside a worker.
worker_main_pid: int | None = None
_restart_asked = threading.Event()


def note_worker_main_process() -> None:
    global worker_main_pid
    worker_main_pid = os.getpid()


def restart_worker_on_the_active_key() -> bool:
    """Ask this worker to stop taking jobs and exit 0 (SIGTERM to its main process: Celery's warm
    shutdown), for its supervisor to start it again on the active signing key: its own was
    sealed since it started, and it would refuse every job it took. Asked once per process;
    False outside a worker."""
    if worker_main_pid is None:
        return False
    if not _restart_asked.is_set():
        _restart_asked.set()
        os.kill(worker_main_pid, signal.SIGTERM)
    return True


@cache
def settings() -> Settings:
    return load_settings()


@cache
def session_factory() -> sessionmaker[Session]:
    return make_session_factory(make_engine(settings(), pool_size=2))


@cache
def redis_client() -> redis.Redis:
    """The broker's Redis, for what tasks record beside the queues (the recovery sweep's mark)."""
    timeout = settings().broker_read_timeout_seconds
    return redis.Redis.from_url(settings().redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)


@cache
def keyring() -> KeyRing:
    return keyring_from_settings(settings())


@cache
def embedder() -> Embedder:
    return make_embedder(settings().embedder)


def reset_after_fork() -> None:
    if session_factory.cache_info().currsize:
        engine = session_factory().kw["bind"]
        engine.dispose(close=False)
    session_factory.cache_clear()
    redis_client.cache_clear()
