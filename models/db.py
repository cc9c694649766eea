"""Engine and session construction.

Processes build one engine from ``Settings`` and hand out short-lived sessions. Domain
functions take a ``Session`` and only flush; the edge (a request or a task) commits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from models.settings import Settings


def make_engine(settings: Settings, *, pool_size: int | None = None) -> Engine:
    """Create the process's engine; no connection is opened until first use."""
    return create_engine(
        settings.database_url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": 5,
            "options": f"-c statement_timeout={settings.db_statement_timeout_ms}",
        },
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit, so results can be serialized."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error, always close."""
    with factory() as session, session.begin():
        yield session


@contextmanager
def single_statement(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work that is exactly one statement, run in autocommit mode.

    One statement is atomic on its own, so leaving out BEGIN and COMMIT changes nothing
    but two round trips to the server. Use only where the block issues one statement:
    a second one would commit separately.
    """
    with factory() as session:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session
        session.commit()
