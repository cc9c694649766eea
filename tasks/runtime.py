"""Per-process resources for tasks: settings and a session factory, built on first use.

A forked worker child must not reuse its parent's connections, so the worker calls
:func:`reset_after_fork` from ``worker_process_init``.
"""

from __future__ import annotations

import threading
from functools import cache

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
