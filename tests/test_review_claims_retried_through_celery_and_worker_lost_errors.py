"""Review of the reconnect fixes: a claim whose connection died twice is retried through Celery itself
(a real worker), and the retried message carries the earlier run's token and the rest of what the
job's run relies on, so the retried run takes over the claim that committed unseen and finishes the
job at once, not after its lease; beat's hourly runs use the process's one Redis client."""

from __future__ import annotations

import json
import time

import pytest
import redis
from sqlalchemy import text

from tests.conftest import wait_for

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
                       PLANT_TEST_RUNS_LOG=str(runs_log))
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
