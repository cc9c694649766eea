"""End to end: the HTTP API, the real broker and a real ``celery worker`` process.

Every wait here polls the job row (through the API) until it reaches a state, with a
deadline; nothing sleeps for a fixed time and hopes.
"""

import datetime as dt
import uuid

import pytest
from sqlalchemy import func, select, update

from models.jobs import Job
from tasks.celery_app import create_celery
from tests.conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]


def _job(client, job_id: str) -> dict:
    return client.get(f"/api/v1/jobs/{job_id}").get_json()


def _start(client, seconds: float, steps: int) -> dict:
    response = client.post("/api/v1/diagnostics/sleep", json={"seconds": seconds, "steps": steps})
    assert response.status_code == 202
    return response.get_json()


def test_a_job_runs_with_progress_and_succeeds(client) -> None:
    job = _start(client, 2.0, 4)
    running = wait_for(
        lambda: (j := _job(client, job["id"]))["status"] == "running" and j["progress"]["done"] >= 1 and j,
        what="running with progress",
    )
    assert running["progress"]["total"] == 4
    assert running["attempts"] == 1 and running["started_at"] is not None
    done = wait_for(lambda: (j := _job(client, job["id"]))["status"] == "succeeded" and j, what="success")
    assert done["result"] == {"slept": 2.0}
    assert done["progress"]["done"] == 4 and done["error"] is None
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]


def test_long_poll_returns_as_soon_as_the_job_finishes(client) -> None:
    job = _start(client, 0.2, 1)
    response = client.get(f"/api/v1/jobs/{job['id']}", query_string={"wait": 20})
    assert response.get_json()["status"] == "succeeded"
    # It returned early: well before the 20 s it was allowed to wait.
    finished = dt.datetime.fromisoformat(response.get_json()["finished_at"])
    assert dt.datetime.now(dt.UTC) - finished < dt.timedelta(seconds=5)


def test_cancel_a_running_job_stops_it_at_its_next_checkpoint(client) -> None:
    job = _start(client, 600, 600)
    wait_for(lambda: _job(client, job["id"])["status"] == "running", what="running")
    response = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    cancelled = wait_for(lambda: (j := _job(client, job["id"]))["status"] == "cancelled" and j, what="cancelled")
    assert cancelled["error"]["type"] == "/problems/job-cancelled"
    assert cancelled["result"] is None
    assert cancelled["progress"]["done"] < 600


def test_unknown_job_is_404_even_with_a_worker(client) -> None:
    assert client.get(f"/api/v1/jobs/{uuid.uuid4()}").status_code == 404


def test_a_job_whose_message_was_lost_is_republished_by_the_requeue_task(client, app, settings, engine) -> None:
    # A row with no message: as if Redis lost it after the commit.
    with engine.begin() as connection:
        job_id = connection.scalar(
            Job.__table__.insert()
            .values(kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}, queue="default")
            .returning(Job.id)
        )
        connection.execute(
            update(Job).where(Job.id == job_id).values(enqueued_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        )
    create_celery(settings).send_task("plant.maintenance.requeue_stale_jobs")  # routed to the maintenance queue
    done = wait_for(lambda: (j := _job(client, str(job_id)))["status"] == "succeeded" and j, what="requeued job")
    assert done["attempts"] == 1


def test_recovery_is_not_held_up_behind_a_backlog_of_jobs(client, settings, engine) -> None:
    """Beat's recovery goes to the maintenance queue, which the default workers take from
    beside their jobs: a lost message is republished while a backlog still waits, not after
    it (on the default queue, it waited behind every job published before it)."""
    backlog = [_start(client, 2.0, 1)["id"] for _ in range(16)]  # 16 s of work for the 2 worker processes
    lost_at = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    try:
        with engine.begin() as connection:
            lost = connection.scalar(
                Job.__table__.insert().values(kind="diagnostics.sleep", params={"seconds": 0, "steps": 1},
                                              queue="default", enqueued_at=lost_at).returning(Job.id))
        create_celery(settings).send_task("plant.maintenance.requeue_stale_jobs")

        def republished() -> tuple[int] | None:
            with engine.connect() as connection:
                enqueued_at = connection.scalar(select(Job.enqueued_at).where(Job.id == lost))
                waiting = connection.scalar(select(func.count()).where(
                    Job.id.in_([uuid.UUID(b) for b in backlog]), Job.status == "queued"))
            return (waiting,) if enqueued_at != lost_at else None  # how many still wait, once it ran

        (waiting,) = wait_for(republished, timeout=60, what="the recovery pass")
        assert waiting >= len(backlog) // 2, f"recovery ran only once {len(backlog) - waiting} of the backlog had started"
    finally:
        for job_id in backlog:
            client.post(f"/api/v1/jobs/{job_id}/cancel")


def test_a_redelivered_message_for_a_finished_job_does_nothing(client, settings) -> None:
    job = _start(client, 0, 1)
    wait_for(lambda: _job(client, job["id"])["status"] == "succeeded", what="success")
    before = _job(client, job["id"])
    celery = create_celery(settings)
    celery.send_task("plant.diagnostics.sleep", args=[job["id"]], queue="default")
    # A second job behind it on the same queue proves the duplicate was consumed first.
    marker = _start(client, 0, 1)
    wait_for(lambda: _job(client, marker["id"])["status"] == "succeeded", what="marker job")
    assert _job(client, job["id"]) == before
