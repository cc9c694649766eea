"""The jobs review: job submission, Idempotency-Key, delivery, reads and cancels driven as a
demanding or hostile client would, against the real database, broker and (where marked) a
real worker process. Every wait polls the job row until it reaches a state."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models.idempotency import IdempotencyKey
from models.jobs import Job
from tests.conftest import wait_for

SLEEP = "/api/v1/diagnostics/sleep"
JOBS = "/api/v1/jobs"
TERMINAL = ("succeeded", "failed", "cancelled")


def _job(client, job_id: str) -> dict:
    return client.get(f"{JOBS}/{job_id}").get_json()


@pytest.mark.parametrize("url, field", [
    (f"{JOBS}?status=queued&status=running", "status"),
    (f"{JOBS}?page_size=1&page_size=500", "page_size"),
    (f"{JOBS}?kind=diagnostics.sleep&kind=audit.run", "kind"),
    (f"{JOBS}/{uuid.UUID(int=7)}?wait=0&wait=30", "wait"),
])
def test_a_query_parameter_given_twice_is_422_naming_it_not_its_first_value_taken(client, url, field) -> None:
    """``?status=queued&status=running`` answered 200 with only the queued jobs: the query model
    was handed the first value and the second dropped, so a client asking for either status
    saw a listing it could take for both (a repeated JSON member is refused the same way)."""
    response = client.get(url)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"] == "/problems/invalid-input" and problem["status"] == 422
    assert problem["errors"] == [{"field": field, "message": "given more than once; send it once"}]


def test_a_query_parameter_given_once_each_still_filters(client, engine) -> None:
    job = client.post(SLEEP, json={"seconds": 0, "steps": 1}).get_json()
    with engine.begin() as connection:  # ended, so that a worker of this process leaves its status as it is
        connection.execute(update(Job).where(Job.id == uuid.UUID(job["id"])).values(status="failed", finished_at=func.now()))
    listed = client.get(JOBS, query_string={"status": "failed", "kind": "diagnostics.sleep", "page_size": 5})
    assert listed.status_code == 200 and [j["id"] for j in listed.get_json()["items"]] == [job["id"]]


def test_concurrent_requests_with_one_key_and_two_bodies_make_one_job(app, admin_key, engine) -> None:
    """Twelve requests at once with one key, half of them with another body: exactly one job,
    every request with its body gets it back, every other one 422 idempotency-key-reused."""
    bodies = [{"seconds": 0, "steps": 1}, {"seconds": 1, "steps": 1}]
    barrier, answers = threading.Barrier(12), []

    def submit(body: dict) -> None:
        c = app.test_client()
        c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
        barrier.wait()
        response = c.post(SLEEP, json=body, headers={"Idempotency-Key": "contested"})
        answers.append((body["seconds"], response.status_code, response.get_json()))

    threads = [threading.Thread(target=submit, args=(bodies[i % 2],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Session(engine) as session:
        jobs = session.execute(select(Job.id, Job.params)).all()
        assert session.scalar(select(func.count()).select_from(IdempotencyKey)) == 1
    assert len(jobs) == 1
    winner = jobs[0].params["seconds"]
    for seconds, status, body in answers:
        if seconds == winner:
            assert status == 202 and body["id"] == str(jobs[0].id)
        else:
            assert status == 422 and body["type"] == "/problems/idempotency-key-reused"


def test_a_replay_after_a_cancel_returns_the_cancelled_job_not_a_new_one(client, engine) -> None:
    headers = {"Idempotency-Key": "cancel-then-retry"}
    body = {"seconds": 30, "steps": 30}  # long: a worker of this test process may have claimed it; a cancel ends it
    first = client.post(SLEEP, json=body, headers=headers).get_json()
    assert client.post(f"{JOBS}/{first['id']}/cancel").status_code == 200
    wait_for(lambda: _job(client, first["id"])["status"] == "cancelled", what="the job to end cancelled")
    again = client.post(SLEEP, json=body, headers=headers)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first["id"] and again.get_json()["status"] == "cancelled"
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


@pytest.mark.e2e
@pytest.mark.usefixtures("worker")
def test_jobs_cancelled_as_they_are_claimed_each_end_once_and_say_what_happened(client) -> None:
    """A cancel sent right behind each submission races the worker's claim: every job ends
    (none left queued or running), no job runs a second attempt, and each one's record agrees
    with its outcome: a success slept every step and shows them all; a cancel has no result."""
    ids = []
    for _ in range(12):
        job = client.post(SLEEP, json={"seconds": 0.6, "steps": 3}).get_json()
        assert client.post(f"{JOBS}/{job['id']}/cancel").status_code in (200, 409)
        ids.append(job["id"])
    ended = [wait_for(lambda i=i: (j := _job(client, i))["status"] in TERMINAL and j, what=f"job {i} to end")
             for i in ids]
    for job in ended:
        assert job["attempts"] <= 1, job
        if job["status"] == "succeeded":
            assert job["result"] == {"slept": 0.6} and job["progress"]["done"] == job["progress"]["total"] == 3
        else:
            assert job["status"] == "cancelled", job
            assert job["result"] is None and job["error"]["type"] == "/problems/job-cancelled"
            assert job["cancelled_by"] == job["requested_by"]


def test_a_job_whose_stored_result_is_no_object_is_still_shown_and_listed(client, engine) -> None:
    job = client.post(SLEEP, json={"seconds": 0, "steps": 1}).get_json()
    with engine.begin() as connection:  # edited through SQL, as the stored-error tests do; ended, so that
        connection.execute(update(Job).where(Job.id == uuid.UUID(job["id"])).values(  # no worker writes it again
            status="succeeded", finished_at=func.now(), result=["not", "an", "object"]))
    shown = client.get(f"{JOBS}/{job['id']}")
    assert shown.status_code == 200 and shown.get_json()["result"] == ["not", "an", "object"]
    listed = client.get(JOBS)
    assert listed.status_code == 200 and job["id"] in {j["id"] for j in listed.get_json()["items"]}
    with engine.begin() as connection:  # its parameters too: served as stored
        connection.execute(update(Job).where(Job.id == uuid.UUID(job["id"])).values(params="a string"))
    shown = client.get(f"{JOBS}/{job['id']}")
    assert shown.status_code == 200 and shown.get_json()["params"] == "a string"
    assert client.get(JOBS).status_code == 200
