"""/health is built from real checks and never answers 500."""

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from models.db import make_engine
from models.jobs import Job
from tests.conftest import refused_port, sweep_recovery, wait_for
from web import create_app


def test_all_up_with_a_live_worker(client, worker, settings) -> None:
    sweep_recovery(settings)  # what beat does every few seconds: /health's beat check wants one lately
    # A worker busy with another test's job may miss one 0.5 s ping window: wait on the state.
    response = wait_for(lambda: (r := client.get("/health")).get_json()["status"] == "ok" and r,
                        timeout=20, interval=0.2, what="health ok")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "up"
    assert body["checks"]["redis"]["status"] == "up"
    assert body["checks"]["workers"]["count"] >= 1
    assert body["checks"]["beat"]["status"] == "up"


@pytest.fixture
def down_url() -> Iterator[str]:
    with refused_port() as port:
        yield f"127.0.0.1:{port}"


def test_database_down_is_503_naming_it(settings, down_url) -> None:
    app = create_app(settings.model_copy(update={"database_url": f"postgresql+psycopg://postgres@{down_url}/x"}))
    response = app.test_client().get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["status"] == "down"
    # /health is public: the driver's text (hosts, ports, users) goes to the log, not to the caller
    assert body["checks"]["database"]["error"] == "OperationalError (details in the API's log)"
    assert down_url.rsplit(":", 1)[1] not in response.get_data(as_text=True)
    assert body["checks"]["redis"]["status"] == "up"
    assert "Retry-After" in response.headers


def test_redis_down_is_503_naming_it(settings, down_url) -> None:
    app = create_app(settings.model_copy(update={"redis_url": f"redis://{down_url}/0"}))
    response = app.test_client().get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["redis"]["status"] == "down"
    assert body["checks"]["database"]["status"] == "up"
    assert body["checks"]["workers"]["status"] == "skipped"


def test_api_answers_503_problem_when_the_database_is_down(settings, down_url) -> None:
    app = create_app(settings.model_copy(update={"database_url": f"postgresql+psycopg://postgres@{down_url}/x"}))
    response = app.test_client().get("/api/v1/jobs", headers={"Authorization": "Bearer any-key"})
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.headers["Retry-After"]


def test_job_submission_is_accepted_while_redis_is_down(settings, down_url, admin_key) -> None:
    app = create_app(settings.model_copy(update={"redis_url": f"redis://{down_url}/0"}))
    response = app.test_client().post("/api/v1/diagnostics/sleep", json={"seconds": 0},
                                      headers={"Authorization": f"Bearer {admin_key}"})
    # The row is committed, in the outbox; beat's requeue task publishes it once Redis is back.
    assert response.status_code == 202
    assert response.get_json()["status"] == "queued"
    with Session(make_engine(settings)) as session:
        assert session.get(Job, uuid.UUID(response.get_json()["id"])).enqueued_at is None


@pytest.mark.parametrize(("consumed", "unserved"), [("default,maintenance", "audit"), ("default,audit", "maintenance")])
def test_a_queue_no_worker_consumes_makes_health_degraded_naming_it(settings, tmp_path, consumed, unserved) -> None:
    """Compose runs the audit queue's workers apart: with them gone, audits would wait for good.
    With no consumer of the maintenance queue (workers started with an old command line), no
    dead worker's job would ever be republished."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT, child_env, stop_process_group

    alone = settings.model_copy(update={"redis_url": settings.redis_url.rsplit("/", 1)[0] + "/12"})
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", consumed, "-c", "1",
             "-n", f"without-{unserved}-{os.getpid()}@%h", "--without-mingle", "--without-gossip"],
            cwd=REPO_ROOT, env=child_env(alone), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = create_app(alone).test_client()
        body = wait_for(lambda: (b := client.get("/health").get_json())["checks"]["workers"].get("count") and b,
                        timeout=60, interval=0.2, what="the worker to answer")
        workers = body["checks"]["workers"]
        assert body["status"] == "degraded" and workers["status"] == "down"
        assert workers["error"] == f"no worker consumes the {unserved} queue"
        assert workers["queues"][unserved] == 0 and workers["queues"]["default"] == 1
    finally:
        stop_process_group(worker)


def test_a_statement_timeout_is_503_saying_so_not_that_the_database_is_unreachable(
        settings, engine, admin_key, committed_steward) -> None:
    from sqlalchemy import text

    app = create_app(settings.model_copy(update={"db_statement_timeout_ms": 300}))
    with engine.connect() as holder, holder.begin():  # a write in flight holds the agent row
        holder.execute(text("SELECT 1 FROM agents WHERE id = :id FOR UPDATE"), {"id": committed_steward})
        response = app.test_client().patch(f"/api/v1/agents/{committed_steward}", json={"description": "waits"},
                                           headers={"Authorization": f"Bearer {admin_key}"})
    problem = response.get_json()
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert problem["type"] == "/problems/database-timeout" and "statement timeout" in problem["detail"]


def test_health_watches_every_queue_a_job_is_routed_to() -> None:
    from tasks.dispatch import JOB_ROUTES
    from web.health import SERVED_QUEUES

    assert {route.queue for route in JOB_ROUTES.values()} | {"maintenance"} == set(SERVED_QUEUES)


def test_health_answers_on_time_when_the_database_takes_the_connection_and_never_answers(settings) -> None:
    """It waited for libpq's connect timeout (5 s) whatever PLANT_HEALTH_TIMEOUT_SECONDS said
    (helper-67); on a pooled connection to a frozen server it could wait until TCP gave up."""
    import socket
    import time

    with socket.socket() as listener:  # accepts (the kernel does), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        app = create_app(settings.model_copy(update={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{port}/x"}))
        started = time.monotonic()
        response = app.test_client().get("/health")
        elapsed = time.monotonic() - started
    database = response.get_json()["checks"]["database"]
    assert response.status_code == 503 and database["status"] == "down" and "no answer within" in database["error"]
    # The database's check, then Redis' and the workers' (1.2 s measured), not libpq's 5 s; a
    # second of slack for the other xdist worker's load.
    assert elapsed < settings.health_timeout_seconds * 2 + 2


def test_a_pool_the_requests_hold_whole_is_no_database_outage(settings) -> None:
    """With every pooled connection taken by requests, /health waited for the pool (30 s) and
    then called the database down, and a load balancer would have pulled a busy, healthy API."""
    from web.services import app_services

    app = create_app(settings.model_copy(update={"db_pool_size": 1}))
    engine = app_services(app).engine
    held = [engine.connect(), engine.connect()]  # the pool and its overflow
    try:
        database = app.test_client().get("/health").get_json()["checks"]["database"]
    finally:
        for connection in held:
            connection.close()
        engine.dispose()
    assert database["status"] == "up"


def test_database_checks_that_timed_out_before_starting_are_dropped_and_each_app_has_its_own(
        settings, monkeypatch) -> None:
    """Checks queued behind stuck ones stayed queued and ran later, however many piled up, and
    one executor served every app in the process, so one app's stuck checks made another's
    healthy database look down (helper-69)."""
    import threading

    import web.health
    from web.services import app_services

    quick = settings.model_copy(update={"health_timeout_seconds": 0.2})
    stuck, healthy = create_app(quick), create_app(quick)
    release, ran = threading.Event(), []
    select_one = web.health._select_one

    def blocked(engine) -> None:  # noqa: ANN001
        ran.append(engine)
        release.wait(10)

    monkeypatch.setattr(web.health, "_select_one", blocked)
    client = stuck.test_client()
    try:
        for _ in range(6):
            assert client.get("/health").get_json()["checks"]["database"]["status"] == "down"
        monkeypatch.setattr(web.health, "_select_one", select_one)
        assert healthy.test_client().get("/health").get_json()["checks"]["database"]["status"] == "up"
    finally:
        release.set()
    app_services(stuck).health_checks.shutdown(wait=True)
    assert len(ran) == 2  # the two that had started; the four queued behind them were dropped
