"""Dead pooled connections: pinged when idle, and otherwise retried once by the units of
work that open a request or a job step (the key lookup, claim, checkpoint, outcome).

Each test has a database of its own, and kills that database's server processes with
``pg_terminate_backend`` (what a database restart or a failover does to every
connection), so no other test's connections are touched.
"""

from __future__ import annotations

import threading

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from models.api_keys import create_api_key
from models.db import make_engine, single_statement, transaction
from models.job_lifecycle import claim_job, create_job, get_job
from models.jobs import JobStatus
from models.migrate import upgrade_head
from models.settings import libpq_url
from tasks.runner import RowProgress
from web import create_app
from web.services import app_services

DATABASE = "plant_ping"


@pytest.fixture
def ping_settings(settings, make_database):
    return settings.model_copy(update={"database_url": make_database(DATABASE)})


@pytest.fixture
def worker_on_one_connection(ping_settings, monkeypatch):
    """Task code in this process on a pool of one connection that is never pinged, so a
    killed backend is found by the next statement, as a worker finds it."""
    from tasks import runtime

    upgrade_head(ping_settings.database_url)
    engine = make_engine(ping_settings.model_copy(update={"db_ping_after_idle_seconds": 3600.0}), pool_size=1)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    monkeypatch.setattr(runtime, "session_factory", lambda: sessions)
    monkeypatch.setattr(runtime, "settings", lambda: ping_settings)
    yield sessions
    engine.dispose()


def _kill_backends(pg_admin_url: str) -> int:
    """Terminate this database's server processes and wait (up to 10 s each) until they are
    gone: the next statement on a killed connection then finds it dead, every time."""
    with psycopg.connect(libpq_url(pg_admin_url), autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (DATABASE,),
        ).fetchone()
    return killed[0]


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(text("SELECT pg_backend_pid()"))


def test_a_connection_idle_past_the_threshold_is_pinged_and_replaced_unseen(ping_settings, pg_admin_url) -> None:
    engine = make_engine(ping_settings.model_copy(update={"db_ping_after_idle_seconds": 0.0}), pool_size=1)
    try:
        before = _backend_pid(engine)
        assert _kill_backends(pg_admin_url) == 1
        assert _backend_pid(engine) != before  # no error: the ping found it dead, the pool reconnected
    finally:
        engine.dispose()


def test_a_connection_used_moments_ago_is_not_pinged(ping_settings, pg_admin_url) -> None:
    engine = make_engine(ping_settings.model_copy(update={"db_ping_after_idle_seconds": 3600.0}), pool_size=1)
    try:
        _backend_pid(engine)
        assert _kill_backends(pg_admin_url) == 1
        with pytest.raises(DBAPIError) as failed:
            _backend_pid(engine)
        assert failed.value.connection_invalidated
        _backend_pid(engine)  # and the pool has moved on to a fresh connection
    finally:
        engine.dispose()


def _api_never_pinging(ping_settings, scopes: list[str]):  # noqa: ANN202 - a Flask app and its test client
    """The API on ``ping_settings``' database with a key of ``scopes``, its pool never pinging
    (a connection killed under it is found by the next statement)."""
    upgrade_head(ping_settings.database_url)
    quiet = ping_settings.model_copy(update={"db_ping_after_idle_seconds": 3600.0})
    engine = make_engine(quiet)
    with Session(engine) as session, session.begin():
        key = create_api_key(session, name="ping", scopes=scopes).plaintext
    engine.dispose()
    app = create_app(quiet)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return app, client


def test_the_api_retries_a_requests_first_statement_on_a_fresh_connection(ping_settings, pg_admin_url) -> None:
    app, client = _api_never_pinging(ping_settings, ["read"])
    try:
        assert client.get("/api/v1/jobs").status_code == 200
        assert _kill_backends(pg_admin_url) >= 1
        response = client.get("/api/v1/jobs")
        assert response.status_code == 200, response.get_json()
    finally:
        app_services(app).engine.dispose()


def test_a_workers_checkpoint_is_written_on_a_fresh_connection_after_its_own_died(ping_settings, pg_admin_url) -> None:
    upgrade_head(ping_settings.database_url)
    engine = make_engine(ping_settings.model_copy(update={"db_ping_after_idle_seconds": 3600.0}), pool_size=1)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    try:
        with transaction(sessions) as session:
            job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 2}).id
        with single_statement(sessions) as session:
            claim = claim_job(session, job_id=job_id, worker="w1", lease_seconds=60)
        progress = RowProgress(claim, sessions=sessions, lease_seconds=60, min_interval=0.0, shutdown=threading.Event())
        assert _kill_backends(pg_admin_url) == 1
        progress(1, 2, "after the failover")
        with sessions() as session:
            assert get_job(session, job_id).progress_message == "after the failover"
    finally:
        engine.dispose()


def test_a_claim_that_committed_before_its_connection_died_is_taken_up_on_the_retry(
        worker_on_one_connection, pg_admin_url, monkeypatch) -> None:
    """The claim's UPDATE committed and then the connection died before its reply arrived:
    the retry finds the job running under this run's own token and does the work, instead
    of leaving it under a live lease with no worker until the lease ran out."""
    from tasks import runner

    sessions = worker_on_one_connection
    real_claim, tries = runner.claim_job, []

    def reply_lost_the_first_time(session, **kwargs):
        tries.append(kwargs["retrying"])
        claim = real_claim(session, **kwargs)
        if len(tries) == 1:
            assert claim is not None and _kill_backends(pg_admin_url) == 1
            session.execute(text("SELECT 1"))  # what the worker sees: the connection is gone
        return claim

    monkeypatch.setattr(runner, "claim_job", reply_lost_the_first_time)
    with transaction(sessions) as session:
        job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}).id
    outcome = runner.run_job(None, str(job_id), lambda claim, progress: {"done": claim.attempt})
    assert tries == [False, True] and outcome == {"job_id": str(job_id), "status": "succeeded"}
    with sessions() as session:
        job = get_job(session, job_id)
        assert (job.status, job.attempts, job.result) == ("succeeded", 1, {"done": 1})


def test_a_release_after_a_transient_error_is_made_on_a_fresh_connection_when_its_own_died(
        worker_on_one_connection, pg_admin_url) -> None:
    from models.errors import TransientJobError
    from tasks import runner
    from tests.conftest import SentTasks

    sessions, task = worker_on_one_connection, SentTasks()
    with transaction(sessions) as session:
        job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}).id
    with single_statement(sessions) as session:
        claim = claim_job(session, job_id=job_id, worker="w1", lease_seconds=60)
    assert _kill_backends(pg_admin_url) == 1  # the pooled connection the release would use
    attempt = runner.Attempt(JobStatus.QUEUED, error=TransientJobError("blip").problem(), retry_after=1.0)
    assert runner._retry_later(task, claim, attempt)["status"] == "queued"
    assert [args for _, args, _, _ in task.sent] == [[str(job_id)]]
    with sessions() as session:
        assert get_job(session, job_id).status == "queued"


def _two_pooled_connections(engine: Engine) -> None:
    """Leave two connections in the pool, as any process under load holds several."""
    first, second = engine.connect(), engine.connect()
    first.execute(text("SELECT 1")), second.execute(text("SELECT 1"))
    first.close(), second.close()


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/jobs/00000000-0000-0000-0000-000000000000", "/api/v1/api-keys"])
def test_a_key_lookup_after_a_restart_that_killed_every_pooled_connection_is_retried_on_a_new_one(
    ping_settings, pg_admin_url, path
) -> None:
    """A statement run by psycopg itself (models.db.driver_rows) must drop the whole pool on a
    disconnect, as SQLAlchemy does, or the retry takes the next dead connection (helper-95)."""
    app, client = _api_never_pinging(ping_settings, ["admin"])
    try:
        assert client.get(path).status_code in (200, 404)
        _two_pooled_connections(app_services(app).engine)
        assert _kill_backends(pg_admin_url) == 2
        response = client.get(path)
        assert response.status_code in (200, 404), response.get_json()
    finally:
        app_services(app).engine.dispose()


def test_a_workers_outcome_is_recorded_after_a_restart_that_killed_every_pooled_connection(
    ping_settings, pg_admin_url, monkeypatch
) -> None:
    from tasks import runtime
    from tasks.runner import record_outcome

    upgrade_head(ping_settings.database_url)
    quiet = ping_settings.model_copy(update={"db_ping_after_idle_seconds": 3600.0})
    engine = make_engine(quiet, pool_size=2)  # as tasks.runtime's pool
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    monkeypatch.setattr(runtime, "session_factory", lambda: sessions)
    monkeypatch.setattr(runtime, "settings", lambda: quiet)
    try:
        with transaction(sessions) as session:
            job_id = create_job(session, kind="diagnostics.sleep", params={}).id
        with single_statement(sessions) as connection:
            claim = claim_job(connection, job_id=job_id, worker="w1", lease_seconds=60)
        _two_pooled_connections(engine)
        assert _kill_backends(pg_admin_url) == 2
        assert record_outcome(claim, JobStatus.SUCCEEDED, {"ok": True}, None)["status"] == "succeeded"
        with sessions() as session:
            assert get_job(session, job_id).status == "succeeded"
    finally:
        engine.dispose()
