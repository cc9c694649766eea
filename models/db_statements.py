"""Writing and running statements: array parameters and statements run by psycopg itself.

``uuid_in`` and its kin bind a list as one array parameter (``column = ANY(:ids)``).
:func:`driver_sql` compiles a Core statement once and :func:`driver_rows` runs it (or plain
SQL) by psycopg itself on a session's or Core connection's own connection, for the hottest
statements, keeping SQLAlchemy's transaction, listeners and error handling.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg.rows import tuple_row
from sqlalchemy import ARRAY, BigInteger, Connection, LargeBinary, any_, literal
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.orm import Session

# Where a unit of work's statements run: a Session, or a Core connection (single_statement's).
SessionOrConnection = Session | Connection


def uuid_in(column: Any, ids: Iterable[uuid.UUID]) -> Any:
    """``column = ANY(:ids)``: one array parameter; ``IN`` with hundreds of parameters
    makes a statement too long for the driver's cache, re-parsed on every execution."""
    return column == any_(literal(list(ids), ARRAY(UUID(as_uuid=True))))


def bigint_in(column: Any, values: Iterable[int]) -> Any:
    """``column = ANY(:values)`` for a ``bigint`` column, one array parameter (see :func:`uuid_in`)."""
    return column == any_(literal(list(values), ARRAY(BigInteger())))


def bytes_in(column: Any, values: Iterable[bytes]) -> Any:
    """``column = ANY(:values)`` for a ``bytea`` column, one array parameter (see :func:`uuid_in`)."""
    return column == any_(literal(list(values), ARRAY(LargeBinary())))


def binary_row(session: Session, sql: str, params: Sequence[Any]) -> tuple[Any, ...]:
    """The one row ``sql`` returns, read straight from psycopg in binary format on the
    session's connection (no hex decoding of bytea: for aggregates over many rows); see
    :func:`driver_rows`."""
    return driver_rows(session, sql, params, binary=True)[0]


_PSYCOPG_DIALECT = psycopg_dialect()


@dataclass(frozen=True)
class DriverStatement:
    """A Core statement compiled once for :func:`driver_rows` (psycopg's ``%(name)s``
    parameters), so the statement keeps its one definition in Core. ``defaults`` holds the
    values the statement binds itself (its literals: ``status = 'running'`` is a parameter
    too), already through their types' bind processing; ``processors`` the bind processing
    of the named parameters the caller gives (``jsonb``: a ``Jsonb`` wrapper), applied as
    SQLAlchemy applies it. A named parameter left out fails the statement; a name the
    statement does not have is refused."""

    sql: str
    defaults: Mapping[str, Any]
    names: frozenset[str]
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]

    def parameters(self, given: Mapping[str, Any]) -> dict[str, Any]:
        if not self.names.issuperset(given):
            raise ValueError(f"not parameters of this statement: {sorted(set(given) - self.names)}")
        values = {**self.defaults, **given}
        for name, process in self.processors:
            if name in values:
                values[name] = process(values[name])
        return values


def driver_sql(statement: Any) -> DriverStatement:
    """Compile ``statement`` for :func:`driver_rows`. Refused: a statement whose values
    SQLAlchemy computes or renders at execution (Python-side column defaults, expanding
    ``IN``, literal-execute parameters), which a string compiled once cannot carry, and one
    whose parameter names SQLAlchemy rewrites in the SQL (a ``.`` or brackets in a name)."""
    compiled = statement.compile(dialect=_PSYCOPG_DIALECT)
    if (compiled.insert_prefetch or compiled.update_prefetch or compiled.literal_execute_params
            or compiled.post_compile_params or compiled.escaped_bind_names):
        raise ValueError(f"a statement SQLAlchemy completes at execution cannot run by psycopg alone: {compiled}")
    defaults: dict[str, Any] = {}
    processors: dict[str, Callable[[Any], Any]] = {}
    for bind, name in compiled.bind_names.items():
        process = bind.type.dialect_impl(_PSYCOPG_DIALECT).bind_processor(_PSYCOPG_DIALECT)
        if bind.required:
            if process is not None:
                processors[name] = process
        else:
            defaults[name] = bind.effective_value if process is None else process(bind.effective_value)
    names = frozenset(name for bind, name in compiled.bind_names.items() if bind.required)
    return DriverStatement(str(compiled), defaults, names, tuple(processors.items()))


def driver_rows(
    session: SessionOrConnection, statement: str | DriverStatement, params: Sequence[Any] | Mapping[str, Any], *,
    binary: bool = False, row_factory: Any = tuple_row,
) -> list[Any]:
    """The rows ``statement`` returns, run by psycopg itself on the session's connection
    (or on ``session`` itself, a Core connection).

    For the hottest statements (every API request's key lookup, every job's insert, read,
    claim and outcome, an audit's aggregates): SQLAlchemy's execution and result layers
    cost about 90 µs of CPU a statement over psycopg's own (stop 30: the key lookup and
    job read of a GET, 470 → 285 µs). A :class:`DriverStatement`'s parameters get their
    types' bind processing as under SQLAlchemy; a plain SQL string's go to psycopg as they
    are. json and jsonb are read with the engine's loader (:func:`models.db_json.load_json`), which it set
    on every connection; rows are psycopg's (``row_factory``), read by attribute or index.

    It runs as a statement of SQLAlchemy's would: a Session autoflushes first and the
    statement joins its transaction; on a Core connection it begins SQLAlchemy's
    transaction if none is (so ``commit()`` commits it). The engine's
    ``before_cursor_execute`` and ``after_cursor_execute`` listeners see it, with no cursor
    or execution context (a ``retval`` listener cannot change it); SQLAlchemy's own SQL
    logging (``echo``) does not.

    A database error goes through SQLAlchemy's own handling: it comes out as SQLAlchemy's,
    as from ``session.execute`` (a timeout is an ``OperationalError``: 503 in the API, a
    transient error in a job), and on a disconnect the connection is invalidated and the
    pool drops every connection made before it, so :func:`models.db.retry_if_disconnected`'s retry
    gets a fresh one."""
    sql, params = _statement_sql(statement, params)
    connection = _joined(session)
    _dispatch(connection, "before_cursor_execute", sql, params)
    try:
        with connection.connection.driver_connection.cursor(binary=binary, row_factory=row_factory) as cursor:
            rows = cursor.execute(sql, params).fetchall()
    except psycopg.Error as error:
        # SQLAlchemy's own handling, as for a statement it ran: the error wrapped as its own,
        # and on a disconnect this connection invalidated and the pool told to drop every
        # connection made before it (the retry of retry_if_disconnected must not take
        # another connection the same restart killed), with handle_error listeners.
        connection._handle_dbapi_exception(error, sql, params, None, None)  # noqa: SLF001 - it always raises
        raise  # not reached
    _dispatch(connection, "after_cursor_execute", sql, params)
    return rows


@contextmanager
def held_pages(session: SessionOrConnection, statement: str | DriverStatement, params: Sequence[Any] | Mapping[str, Any],
               *, size: int, row_factory: Any = tuple_row) -> Iterator[Iterator[list[Any]]]:
    """The rows ``statement`` returns, as of its one snapshot, handed out ``size`` at a time:
    read through a cursor the server holds (``DECLARE ... WITH HOLD``), so the client holds a
    page, never all of them. The statement is one, as :func:`driver_rows`' (listeners, errors
    and transaction alike); in autocommit the server keeps its result (in ``work_mem``, then
    in temporary files) until the cursor is closed, as the block is left, and no transaction
    stays open meanwhile: other statements may run on the connection between pages."""
    sql, params = _statement_sql(statement, params)
    connection = _joined(session)
    _dispatch(connection, "before_cursor_execute", sql, params)
    cursor = connection.connection.driver_connection.cursor(f"plant_held_{uuid.uuid4().hex}", withhold=True,
                                                             row_factory=row_factory)
    try:
        try:
            cursor.execute(sql, params)
        except psycopg.Error as error:
            connection._handle_dbapi_exception(error, sql, params, None, None)  # noqa: SLF001 - as driver_rows
        _dispatch(connection, "after_cursor_execute", sql, params)
        yield _fetched(connection, cursor, size)
    finally:
        cursor.close()  # not tried on a connection that is closed or in a failed transaction (where it is gone)


def _fetched(connection: Connection, cursor: Any, size: int) -> Iterator[list[Any]]:
    while True:
        try:
            rows = cursor.fetchmany(size)
        except psycopg.Error as error:
            connection._handle_dbapi_exception(error, "FETCH", (), None, None)  # noqa: SLF001 - as driver_rows
        if not rows:
            return
        yield rows


def _statement_sql(statement: str | DriverStatement, params: Sequence[Any] | Mapping[str, Any]) -> tuple[str, Any]:
    if isinstance(statement, DriverStatement):
        return statement.sql, statement.parameters(cast(Mapping[str, Any], params))
    return statement, params


def _joined(session: SessionOrConnection) -> Connection:
    """The Core connection a statement of ``session`` runs on, joined to its transaction as
    SQLAlchemy's own statement would be: a Session autoflushes first (a no-op when nothing is
    pending); a Core connection not in autocommit begins SQLAlchemy's transaction if none
    is (so its ``commit()`` commits the statement)."""
    if isinstance(session, Session):
        if session.autoflush:
            session.flush()
        return session.connection()
    if not session.connection.driver_connection.autocommit and not session.in_transaction():
        session.begin()
    return session


def _dispatch(connection: Connection, event: str, sql: str, params: Any) -> None:
    for listener in getattr(connection.dispatch, event):
        listener(connection, None, sql, params, None, False)
