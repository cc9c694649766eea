"""What a job's ``error`` tells a client of an exception that is not Plant's own.

A driver's or SQLAlchemy's message names the database's host and port, and a failed
statement's text and parameters (``[SQL: …] [parameters: …]``); any read key sees a job's
error. Such an exception is shown by its type alone, with the job id to find it in the
worker's log, which keeps it whole; Plant's own errors keep the message written for clients.
The runner's ``_execute`` and its outcome paths run here against the real job table.
"""

import logging

import pytest
from sqlalchemy import create_engine, text

from models.api_keys import create_api_key
from models.db import transaction
from models.errors import NotCertifiable
from models.job_lifecycle import claim_job, create_job
from models.jobs import JobStatus
from tasks import runner, runtime
from tests.conftest import SentTasks, refused_port

SECRET = "some-internal-value"


@pytest.fixture
def sessions(worker_sessions, settings, monkeypatch):
    monkeypatch.setattr(runtime, "settings", lambda: settings)
    return worker_sessions


@pytest.fixture
def reader(app, sessions):
    """A client holding a read key: any such key may show any job."""
    with transaction(sessions) as session:
        key = create_api_key(session, name="reader", scopes=["read"]).plaintext
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


def _claimed_job(sessions):
    with transaction(sessions) as session:
        job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}, to_publish=True).id
    with transaction(sessions) as session:
        return claim_job(session, job_id=job_id, worker="w", lease_seconds=60)


def _run(claim, handler) -> None:
    """One attempt as ``runner.run_job`` ends it: a transient error goes back to the queue
    (its error shown meanwhile), any other outcome is recorded."""
    attempt = runner._execute(claim, handler, None)
    if attempt.retry_after is not None:
        runner._retry_later(SentTasks(), claim, attempt)
    else:
        runner.record_outcome(claim, attempt.status, attempt.result, attempt.error)


def _shown_error(reader, job_id) -> dict:
    response = reader.get(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200
    return response.get_json()["error"]


def test_a_lost_database_connection_shows_its_type_not_the_host_and_port(sessions, reader, caplog) -> None:
    claim = _claimed_job(sessions)
    with refused_port() as port:
        def connect_to_a_dead_server(claim, progress):
            with create_engine(f"postgresql+psycopg://plant@127.0.0.1:{port}/plant").connect():
                pass

        with caplog.at_level(logging.WARNING, logger="tasks.runner"):
            _run(claim, connect_to_a_dead_server)
    error = _shown_error(reader, claim.job_id)
    assert error["type"] == "/problems/transient-error"
    assert error["detail"] == f"attempt 1: OperationalError (details in the worker log, job_id={claim.job_id})"
    shown = str(error)
    assert "127.0.0.1" not in shown and "port" not in shown and "refused" not in shown
    assert f"127.0.0.1\", port {port}" in caplog.text  # the worker's log keeps it whole


def test_a_failed_statement_shows_its_type_not_the_sql_or_its_parameters(sessions, reader, caplog) -> None:
    claim = _claimed_job(sessions)

    def cast_a_secret(claim, progress):
        with sessions() as session:
            session.execute(text("SELECT CAST(:value AS int) FROM jobs"), {"value": SECRET})

    with caplog.at_level(logging.ERROR, logger="tasks.runner"):
        _run(claim, cast_a_secret)
    error = _shown_error(reader, claim.job_id)
    assert error["type"] == "/problems/internal-error"
    assert error["detail"] == f"DataError (details in the worker log, job_id={claim.job_id})"
    shown = str(error)
    assert "[SQL:" not in shown and SECRET not in shown and "CAST" not in shown
    assert SECRET in caplog.text and "[SQL:" in caplog.text


def test_an_audit_chunk_s_failed_statement_shows_its_type_not_the_sql(sessions, settings, seeded, monkeypatch, reader) -> None:
    from tasks import audit
    from tests.test_job_attempt_budget import _audit_chunks

    job_id, messages, _ = _audit_chunks(sessions, settings, monkeypatch)

    def cast_a_secret(session, **kwargs):
        session.execute(text("SELECT CAST(:value AS int)"), {"value": SECRET})

    monkeypatch.setattr(audit, "audit_chunk_step", cast_a_secret)
    assert audit.audit_chunk(*messages[0])["status"] == "failed"
    error = _shown_error(reader, job_id)
    assert error["type"] == "/problems/internal-error"
    assert error["detail"] == f"chunk {messages[0][2]}: DataError (details in the worker log, job_id={job_id})"
    assert SECRET not in str(error) and "[SQL:" not in str(error)


def test_plant_s_own_errors_keep_their_message(sessions, reader) -> None:
    claim = _claimed_job(sessions)

    def refuse(claim, progress):
        raise NotCertifiable("skill x is retired")

    _run(claim, refuse)
    error = _shown_error(reader, claim.job_id)
    assert (error["type"], error["detail"]) == ("/problems/not-certifiable", "skill x is retired")
    with transaction(sessions) as session:
        assert session.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": claim.job_id}).scalar() == JobStatus.FAILED.value
