"""Review of the reconnect fixes: a claim whose connection died twice is retried through Celery itself
(a real worker), and the retried message carries the earlier run's token and the rest of what the
job's run relies on, so the retried run takes over the claim that committed unseen and finishes the
job at once, not after its lease; a worker-lost error cleared by its own attempt's checkpoint gives
back the error it replaced; beat's hourly runs use the process's one Redis client."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import pytest
import redis
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from tests.conftest import wait_for

WORKER_LOST = "/problems/worker-lost"
LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@pytest.mark.e2e
def test_a_claim_whose_connection_died_twice_is_taken_over_by_its_message_retried_through_celery(
        settings, engine, admin_key, tmp_path) -> None:
    """The first claim commits and its reply is lost; its retry on a fresh connection is lost too
    (tests/lost_claim_replies_app.py). ``task.retry(headers=...)`` must deliver the first run's
    token on the retried run's ``task.request``, keeping its task id, retry count, arguments and
    queue: the retried run takes the job over (attempt 1, no second attempt) within the backoff
    (at most 0.1 s here), where it used to find the job under a live lease (300 s) and do nothing."""
    from tests.stack import ChaosStack

    runs_log = tmp_path / "runs.jsonl"
    stack = ChaosStack(settings, tmp_path, app="tests.lost_claim_replies_app", PLANT_JOB_LEASE_SECONDS="300",
                       LOST_CLAIM_RUNS_LOG=str(runs_log))
    with redis.Redis.from_url(stack.settings.redis_url) as chaos:
        chaos.flushdb()  # no earlier test's message ahead of this one's
    try:
        stack.start_worker("worker", concurrency=1)
        client = stack.client(admin_key)
        submitted = time.monotonic()
        url = client.post("/api/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1}).headers["Location"]
        job = wait_for(lambda: (j := client.get(url).get_json())["status"] not in ("queued", "running") and j,
                       timeout=20, what="the job (not the 300 s lease)")
        took = time.monotonic() - submitted
        stack.kill("worker")  # its job ended: a warm shutdown would cost some 1.5 s
    finally:
        stack.stop()
    print(f"claim lost twice: the retried message took the job over, which ended {took:.2f} s after submission")
    entries = [json.loads(line) for line in runs_log.read_text().splitlines()]
    claims = [e["claim"] for e in entries if "claim" in e]
    first, retried = [e for e in entries if e.get("task") == "plant.diagnostics.sleep"]
    assert (job["status"], job["attempts"], job["progress"]["done"]) == ("succeeded", 1, 1), job
    assert len(claims) == 3 and claims[0] == claims[1] != claims[2]  # the run's retry kept its token
    assert (first["earlier"], retried["earlier"]) == (None, [claims[0]])
    assert (retried["id"], retried["args"], retried["queue"]) == (first["id"], first["args"], "default")
    assert (first["retries"], retried["retries"]) == (0, 1)
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT worker FROM jobs WHERE id = :id"), {"id": job["id"]}) == claims[2]
    assert took < 10


# --- A worker-lost error cleared by its own attempt's checkpoint ---


def _lease_ran_out(db_session: Session, job_id: uuid.UUID) -> dict:
    """The sweep finds the job's lease expired and republishes it: the job's error then."""
    from models.job_lifecycle import get_job
    from models.job_recovery import rescue_expired
    from models.jobs import Job

    db_session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=LONG_AGO, enqueued_at=None))
    rescue = rescue_expired(db_session, max_attempts=5, base=0.001, cap=0.001, older_than=dt.timedelta(minutes=1))
    assert [ref.job_id for ref in rescue.republish] == [job_id]
    return get_job(db_session, job_id).error


def test_a_checkpoint_clearing_its_attempt_s_worker_lost_error_gives_back_the_error_it_replaced(db_session) -> None:
    # Attempt 1 failed transiently; attempt 2 stalled and the sweep wrote worker-lost over that
    # error; attempt 2 woke and reported: the job showed no error at all, as if attempt 1 had none.
    from models.errors import TransientJobError
    from models.job_lifecycle import claim_job, create_job, get_job, report_progress
    from models.job_recovery import release_for_retry
    from models.jobs import JobStatus

    job_id = create_job(db_session, kind="diagnostics.sleep", params={"seconds": 0}).id
    first = claim_job(db_session, job_id=job_id, worker="w1", lease_seconds=60)
    blip = TransientJobError("attempt 1: OperationalError (details in the worker log)").problem()
    assert release_for_retry(db_session, claim=first, error=blip) is JobStatus.QUEUED
    second = claim_job(db_session, job_id=job_id, worker="w2", lease_seconds=60)
    lost = _lease_ran_out(db_session, job_id)
    assert (lost["type"], lost["attempt"], lost["previous"]) == (WORKER_LOST, 2, blip)
    report_progress(db_session, claim=second, done=1, total=2, message="awake", lease_seconds=60)
    assert get_job(db_session, job_id).error == blip


def test_a_worker_lost_error_keeps_one_level_of_previous_errors(db_session) -> None:
    # Attempt 1 failed transiently, attempts 2 and 3 each went quiet: attempt 3's worker-lost keeps
    # attempt 2's, without the error that one replaced (no checkpoint can restore that any more).
    from models.errors import TransientJobError
    from models.job_lifecycle import claim_job, create_job, get_job, report_progress
    from models.job_recovery import release_for_retry

    job_id = create_job(db_session, kind="diagnostics.sleep", params={"seconds": 0}).id
    release_for_retry(db_session, claim=claim_job(db_session, job_id=job_id, worker="w0", lease_seconds=60),
                      error=TransientJobError("attempt 1: blip").problem())
    claim_job(db_session, job_id=job_id, worker="w1", lease_seconds=60)
    first_lost = _lease_ran_out(db_session, job_id)
    assert "previous" in first_lost
    third = claim_job(db_session, job_id=job_id, worker="w2", lease_seconds=60)
    second_lost = _lease_ran_out(db_session, job_id)
    expected = {k: v for k, v in first_lost.items() if k != "previous"}
    assert (second_lost["attempt"], second_lost["previous"]) == (3, expected)
    report_progress(db_session, claim=third, done=1, total=None, message=None, lease_seconds=60)
    assert get_job(db_session, job_id).error == expected


@pytest.mark.parametrize("stored", ["sql-null", None, "an error edited through SQL into a string"])
def test_a_worker_lost_error_over_no_error_or_one_that_is_no_object(db_session, stored) -> None:
    from sqlalchemy import null

    from models.job_lifecycle import claim_job, create_job, get_job, report_progress
    from models.jobs import Job

    job_id = create_job(db_session, kind="diagnostics.sleep", params={"seconds": 0}).id
    claim = claim_job(db_session, job_id=job_id, worker="w1", lease_seconds=60)
    db_session.execute(update(Job).where(Job.id == job_id).values(error=null() if stored == "sql-null" else stored))
    stored = None if stored == "sql-null" else stored  # JSON null (None) and SQL NULL both read as None
    lost = _lease_ran_out(db_session, job_id)
    assert lost["type"] == WORKER_LOST and lost.get("previous") == stored and ("previous" in lost) == bool(stored)
    report_progress(db_session, claim=claim, done=1, total=None, message=None, lease_seconds=60)
    assert get_job(db_session, job_id).error == stored


# --- Beat's hourly runs and the process's Redis client ---


def test_beat_runs_use_the_process_s_one_redis_client(settings, monkeypatch) -> None:
    # Each run building a client (and a pool of connections) of its own, never closed, would
    # leave connections behind on every hourly run of every worker process.
    from tasks import runtime
    from tasks.beat_runs import beat_run, run_key

    built, build = [], redis.Redis.from_url

    def counted(*args, **kwargs) -> redis.Redis:  # noqa: ANN002, ANN003
        built.append(args)
        return build(*args, **kwargs)

    def forget_the_client() -> None:  # the process's client is built on first use (functools.cache)
        getattr(runtime.redis_client, "cache_clear", lambda: None)()

    monkeypatch.setattr(runtime, "settings", lambda: settings)
    monkeypatch.setattr(redis.Redis, "from_url", counted)
    forget_the_client()
    try:
        for _ in range(3):
            with beat_run("review-one-client", 3600.0):
                pass
        client = runtime.redis_client()
        client.delete(run_key("review-one-client"))
        client.close()
        assert len(built) == 1
    finally:
        forget_the_client()
