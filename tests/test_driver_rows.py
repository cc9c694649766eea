"""``models.db.driver_rows``: the hottest statements run by psycopg itself, on the session's
connection, and must read, fail and show up exactly as SQLAlchemy's execution would."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, bindparam, insert, select, text, update
from sqlalchemy.exc import DataError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from models.api_keys import authenticate, create_api_key, revoke_api_key
from models.db_json import UNREADABLE_JSON
from models.db_statements import driver_rows, driver_sql
from models.job_lifecycle import claim_job, create_job, get_job
from models.jobs import RECORD_COLUMNS, Job
from tests.conftest import recorded_statements


def test_a_job_read_by_the_driver_equals_the_orm_s_row_json_loader_included(engine, clean_db) -> None:
    with Session(engine) as session, session.begin():
        job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0.5, "nested": [1, {"a": None}]}, queue="default").id
        # A fraction too large for a float: the engine's loader reads it as the unreadable marker,
        # and the driver's read must use that loader, not psycopg's default json.loads (infinity).
        session.execute(text("UPDATE jobs SET result = CAST(:result AS jsonb) WHERE id = :id"),
                        {"id": job_id, "result": '{"x": 1' + "0" * 400 + '.5}'})
    with Session(engine) as session:
        read = get_job(session, job_id)
        orm = session.scalars(select(Job).where(Job.id == job_id)).one()
        for column in RECORD_COLUMNS:
            assert getattr(read, column.name) == getattr(orm, column.name), column.name
    assert read.params == {"seconds": 0.5, "nested": [1, {"a": None}]}
    assert read.result == UNREADABLE_JSON


def test_the_key_lookup_by_the_driver_refuses_a_revoked_key_at_once(engine, clean_db) -> None:
    with Session(engine) as session, session.begin():
        key = create_api_key(session, name="k", scopes=["read", "write"])
        key_id = key.key.id
    with Session(engine) as session:
        caller = authenticate(session, key.plaintext)
        assert caller is not None and caller.id == key_id and set(caller.scopes) == {"read", "write"}
        assert authenticate(session, key.plaintext + "x") is None
    with Session(engine) as session, session.begin():
        revoke_api_key(session, key_id=key_id)
    with Session(engine) as session:
        assert authenticate(session, key.plaintext) is None


def test_a_driver_statement_is_seen_by_the_engine_s_listeners_in_the_session_s_transaction(engine, clean_db) -> None:
    with Session(engine) as session, session.begin():
        job_id = create_job(session, kind="diagnostics.sleep", params={}, queue="default").id
    with recorded_statements(engine) as seen, Session(engine) as session, session.begin():
        session.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))
        assert get_job(session, job_id).status == "cancelled"  # its own transaction's write
        session.rollback()
    assert [statement.split()[0] for _, statement in seen] == ["UPDATE", "SELECT"]
    assert all(not autocommit for autocommit, _ in seen)


def test_a_driver_error_is_sqlalchemy_s_and_leaves_a_live_connection_usable(engine) -> None:
    with Session(engine) as session:
        with pytest.raises(DataError) as raised:
            driver_rows(session, "SELECT 1 / %(zero)s", {"zero": 0})
        assert not raised.value.connection_invalidated
        session.rollback()
        assert driver_rows(session, driver_sql(select(text("2"))), {}) == [(2,)]


def test_a_driver_statement_past_its_timeout_is_an_operational_error(engine) -> None:
    with Session(engine) as session, session.begin():
        session.execute(text("SET LOCAL statement_timeout = 50"))
        with pytest.raises(OperationalError):
            driver_rows(session, "SELECT pg_sleep(1)", {})


def test_a_missing_job_is_not_found_through_the_driver(engine) -> None:
    from models.errors import NotFound

    with Session(engine) as session, pytest.raises(NotFound):
        get_job(session, uuid.uuid4())


def test_a_compiled_statement_binds_its_own_literals_and_refuses_a_missing_parameter(engine) -> None:
    statement = driver_sql(select(Job.id).where(Job.status == "running", Job.id == bindparam("job_id")))
    assert list(statement.defaults.values()) == ["running"]
    with Session(engine) as session:
        assert driver_rows(session, statement, {"job_id": uuid.uuid4()}) == []
        session.rollback()
        with pytest.raises(ProgrammingError, match="job_id"):
            driver_rows(session, statement, {})


def test_a_job_claimed_on_a_core_connection_commits_with_it(engine, clean_db) -> None:
    """A Core connection's commit-as-you-go must commit what a driver statement wrote on it
    (helper-95: the statement ran outside SQLAlchemy's transaction, and close rolled it back)."""
    with Session(engine) as session, session.begin():
        job_id = create_job(session, kind="diagnostics.sleep", params={}, queue="default").id
    with engine.connect() as connection:
        assert claim_job(connection, job_id=job_id, worker="w1", lease_seconds=60) is not None
        connection.commit()
    with Session(engine) as session:
        assert get_job(session, job_id).status == "running"


def test_a_compiled_statement_refuses_a_name_it_does_not_have() -> None:
    statement = driver_sql(select(Job.id).where(Job.id == bindparam("job_id")))
    with pytest.raises(ValueError, match="status"):
        statement.parameters({"job_id": uuid.uuid4(), "status": "running"})


def test_a_statement_sqlalchemy_completes_at_execution_is_refused_at_its_definition() -> None:
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("n", Integer, default=lambda: 1))
    with pytest.raises(ValueError, match="completes at execution"):
        driver_sql(insert(table).values(id=bindparam("id")))  # a Python-side default
    with pytest.raises(ValueError, match="completes at execution"):
        driver_sql(select(Job.id).where(Job.status.in_(["queued", "running"])))  # an expanding IN


def test_jsonb_parameters_get_sqlalchemy_s_bind_processing(engine, clean_db) -> None:
    params = {"seconds": 0, "text": "é\u2028", "list": [1, 2.5, None]}
    with Session(engine) as session, session.begin():
        job = create_job(session, kind="diagnostics.sleep", params=params, queue="default")
        stored = session.execute(text("SELECT params, jsonb_typeof(params) FROM jobs WHERE id = :id"), {"id": job.id}).one()
    assert job.params == params and stored == (params, "object")


def test_a_statement_whose_parameter_names_sqlalchemy_rewrites_is_refused() -> None:
    with pytest.raises(ValueError, match="completes at execution"):
        driver_sql(select(Job.id).where(Job.kind == bindparam("kind.name")))


def test_a_driver_statement_in_a_session_flushes_what_is_pending_first(engine, clean_db) -> None:
    """As Session.execute does (helper-95): a job added to the session and not yet flushed is
    there for the driver's read of it."""
    with Session(engine) as session, session.begin():
        job_id = uuid.uuid4()
        session.add(Job(id=job_id, kind="diagnostics.sleep", params={}, queue="default", status="queued"))
        assert get_job(session, job_id).status == "queued"
        session.rollback()
