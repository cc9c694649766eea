"""Per-process resources for tasks: settings, a session factory and a Redis client, built on first use.

A forked worker child must not reuse its parent's connections, so the worker calls
:func:`reset_after_fork` from ``worker_process_init``.
"""

from __future__ import annotations

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
