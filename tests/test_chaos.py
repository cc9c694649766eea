"""Chaos in the suite: real processes killed and real servers restarted, each bounded.

* SIGKILL a worker during a stream of 200 jobs: all 200 succeed, each exactly once.
* Stop Redis for 20 s in the middle of a stream of submissions: every accepted job finishes.
* Restart PostgreSQL while jobs run: they all finish after it returns.
* A supervised worker that dies is restarted (the deployments' restart policy) and runs jobs.
(The audit variant is in test_e2e_audit_crash.py; racing certifications in test_certification.py.)
"""

import os
import signal
import time

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.postgres_server import EmbeddedPostgres
from cli.ports import claim_port
from cli.services import EmbeddedRedis
from models.jobs import Job
from models.migrate import upgrade_head
from tests.conftest import wait_for
from tests.stack import ChaosStack

pytestmark = pytest.mark.e2e
SLEEP = "/api/v1/diagnostics/sleep"


def all_finished(client, urls: list[str]) -> list[dict]:
    jobs = [client.get(u).get_json() for u in urls]
    return jobs if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs) else []


def test_sigkill_a_worker_during_200_jobs(settings, admin_key, tmp_path) -> None:
    stack = ChaosStack(settings, tmp_path)
    try:
        stack.start_worker("victim")
        stack.start_worker("survivor")
        stack.start_beat()
        client = stack.client(admin_key)
        urls = [client.post(SLEEP, json={"seconds": 0.05, "steps": 1}).headers["Location"] for _ in range(200)]
        wait_for(lambda: sum(client.get(u).get_json()["status"] == "succeeded" for u in urls[:60]) >= 20,
                 what="the stream to be under way")
        stack.kill("victim")
        jobs = wait_for(lambda: all_finished(client, urls), timeout=120, interval=0.5, what="all 200 jobs")
    finally:
        stack.stop()
    assert [j["status"] for j in jobs] == ["succeeded"] * 200
    assert all(j["result"] == {"slept": 0.05} and j["finished_at"] for j in jobs)
    assert max(j["attempts"] for j in jobs) <= 2  # a job the victim held ran once more, no more


def test_redis_down_for_20_seconds_during_submissions(settings, admin_key, tmp_path) -> None:
    redis_server = EmbeddedRedis(tmp_path / "redis", claim_port())
    redis_server.start()
    stack = ChaosStack(settings, tmp_path, redis_url=redis_server.url)
    try:
        # Restarted if it exits, as deployed: kombu can crash a worker that loses the broker
        # while holding unacknowledged messages (see tests/stack.py).
        stack.start_worker("worker", restart=True)
        stack.start_beat()
        client = stack.client(admin_key)
        urls = [client.post(SLEEP, json={"seconds": 0, "steps": 1}).headers["Location"] for _ in range(10)]
        redis_server.stop()
        outage_ends = time.monotonic() + 20
        while time.monotonic() < outage_ends:
            response = client.post(SLEEP, json={"seconds": 0, "steps": 1})
            assert response.status_code == 202  # accepted while Redis is down: the outbox has it
            urls.append(response.headers["Location"])
            time.sleep(1)  # pacing the stream of submissions, not waiting on state
        during_outage = len(urls) - 10
        redis_server.start()
        urls += [client.post(SLEEP, json={"seconds": 0, "steps": 1}).headers["Location"] for _ in range(10)]
        jobs = wait_for(lambda: all_finished(client, urls), timeout=120, interval=0.5, what="every accepted job")
    finally:
        stack.stop()
        redis_server.stop()
    # How many went in during the outage depends on how fast a loaded machine answers (about
    # one a second): every job accepted, whenever, must have run.
    assert during_outage >= 5, during_outage
    assert {j["status"] for j in jobs} == {"succeeded"}  # all_finished answers every url's job, or none


def test_postgres_restart_while_jobs_run(settings, tmp_path, server_tmp) -> None:
    from models.api_keys import create_api_key
    from models.db import make_engine

    server = EmbeddedPostgres(server_tmp / "pg", claim_port())
    server.start()
    server.create_database("chaos")
    url = server.url_for("chaos")
    upgrade_head(url)
    isolated = settings.model_copy(update={"database_url": url})
    engine = make_engine(isolated)
    with Session(engine) as session, session.begin():
        key = create_api_key(session, name="chaos", scopes=["admin"]).plaintext
    stack = ChaosStack(isolated, tmp_path)
    try:
        stack.start_worker("worker", concurrency=4)
        stack.start_beat()
        client = stack.client(key)
        urls = [client.post(SLEEP, json={"seconds": 2, "steps": 4}).headers["Location"] for _ in range(6)]
        wait_for(lambda: any(client.get(u).get_json()["status"] == "running" for u in urls), what="jobs running")
        server.stop()
        time.sleep(3)  # the outage itself: PostgreSQL stays down this long
        server.start()
        jobs = wait_for(lambda: all_finished(client, urls), timeout=120, interval=0.5, what="jobs after the restart")
        assert {j["status"] for j in jobs} == {"succeeded"}
        with Session(engine) as session:
            assert set(session.scalars(select(Job.status))) == {"succeeded"}
    finally:
        stack.stop()
        engine.dispose()
        server.stop()


def test_sigterm_hands_a_running_job_back(settings, admin_key, tmp_path) -> None:
    stack = ChaosStack(settings, tmp_path)
    try:
        leaving = stack.start_worker("leaving")
        client = stack.client(admin_key)
        url = client.post(SLEEP, json={"seconds": 30, "steps": 30}).headers["Location"]
        wait_for(lambda: client.get(url).get_json()["progress"]["done"] >= 1, what="the long job to run")
        leaving.send_signal(signal.SIGTERM)
        leaving.wait(timeout=15)  # warm shutdown does not wait out the 30 s job
        handed = client.get(url).get_json()
        assert handed["status"] == "queued" and handed["error"]["type"] == "/problems/job-handed-back"
        stack.start_worker("taker")
        running = wait_for(lambda: (j := client.get(url).get_json())["status"] == "running" and j, what="a new attempt")
        assert running["attempts"] == 2
        client.post(url + "/cancel")
        assert wait_for(lambda: (j := client.get(url).get_json())["status"] == "cancelled" and j, what="cancel")
    finally:
        stack.stop()


def test_a_supervised_worker_that_dies_is_restarted_and_runs_jobs(settings, admin_key, tmp_path) -> None:
    # The restart policy the Redis-outage test relies on, as compose and Cloud Run apply it.
    stack = ChaosStack(settings, tmp_path)
    try:
        first = stack.start_worker("phoenix", restart=True)
        os.killpg(first.pid, signal.SIGKILL)
        wait_for(lambda: stack.restarts["phoenix"] == 1, what="the restart")
        client = stack.client(admin_key)
        url = client.post(SLEEP, json={"seconds": 0, "steps": 1}).headers["Location"]
        assert wait_for(lambda: (j := client.get(url).get_json())["status"] == "succeeded" and j, timeout=60,
                        what="a job on the restarted worker")
    finally:
        stack.stop()


def test_a_soft_time_limit_that_fires_in_a_database_wait_fails_the_job_timed_out(settings, seeded, engine, admin_key,
                                                                                tmp_path) -> None:
    """Celery raises the limit inside psycopg's wait; the rollback of the busy connection then
    failed and its OperationalError replaced the limit's, so the job was retried as transient
    up to its attempt budget, a soft limit each time (helper-72). And the statement went on
    waiting on the server, holding its transaction's locks, so the outcome waited for the
    statement timeout (30 s then, 120 s here). The connection now cancels the statement
    itself and the limit comes out as it is; the pool's cancel and the server's client check
    would end it too (tests/test_db_cancel.py tests each alone)."""
    from sqlalchemy import text

    from models.certification import CERTIFICATION_LOCK

    stack = ChaosStack(settings, tmp_path, PLANT_JOB_SOFT_TIME_LIMIT="3", PLANT_JOB_HARD_TIME_LIMIT="60",
                       PLANT_JOB_LEASE_SECONDS="300", PLANT_DB_STATEMENT_TIMEOUT_MS="120000")
    blocker = engine.connect()
    blocker_tx = blocker.begin()
    try:
        blocker.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CERTIFICATION_LOCK})  # every certification waits
        stack.start_worker("w", concurrency=1)
        client = stack.client(admin_key)
        skills = client.get("/api/v1/genesis/skills", query_string={"page_size": 100}).get_json()["items"]
        skill = next(s for s in skills if s["skill_key"] == "aml-screening")
        url = client.post(f"/api/v1/genesis/skills/{skill['id']}/certify", json={}).headers["Location"]
        job = wait_for(lambda: (j := client.get(url).get_json())["error"] is not None and j, timeout=30,
                       what="the first attempt to end")
    finally:
        blocker_tx.rollback()
        blocker.close()
        stack.stop()
    assert (job["status"], job["error"]["type"], job["attempts"]) == ("failed", "/problems/job-timed-out", 1), job
    assert "on the way out" not in job["error"]["detail"], job  # the limit itself, not a failed rollback's error


def test_a_job_handed_back_at_shutdown_keeps_the_progress_it_reached(settings, admin_key, tmp_path) -> None:
    """A checkpoint still pending (closer than the minimum interval to the last write) was
    dropped by the hand-back: the row showed less than the attempt reached (helper-72)."""
    import re

    stack = ChaosStack(settings, tmp_path, PLANT_JOB_LEASE_SECONDS="300", PLANT_PROGRESS_MIN_INTERVAL_SECONDS="3")
    try:
        leaving = stack.start_worker("leaving", concurrency=1)
        client = stack.client(admin_key)
        url = client.post("/api/v1/diagnostics/sleep", json={"seconds": 60, "steps": 600}).headers["Location"]
        wait_for(lambda: client.get(url).get_json()["progress"]["done"] >= 1, what="the first written checkpoint")
        leaving.send_signal(signal.SIGTERM)
        leaving.wait(timeout=15)
        handed = client.get(url).get_json()
    finally:
        stack.stop()
    assert handed["status"] == "queued" and handed["error"]["type"] == "/problems/job-handed-back", handed
    reached = int(re.search(r"stopped at (\d+)/600", handed["error"]["detail"]).group(1))
    assert handed["progress"]["done"] == reached, (handed["progress"], handed["error"]["detail"])
