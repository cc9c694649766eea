"""A worker killed mid-audit: the job is rescued, resumes from its checkpoints, and its
result equals a clean run's.

Runs its own workers on a separate Redis database so the suite's shared worker never
sees these messages. Worker B is SIGKILLed (with its pool) once the audit has made
progress; worker C then runs beat's requeue task, which republishes the job whose
lease expired; the retried attempt republishes the unfinished chunks, which continue
from their cursors.
"""

import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.audit_tables import AuditChunk
from models.entities import EntityType
from models.registry import create_entity
from tasks.celery_app import create_celery
from tests.conftest import REPO_ROOT, child_env, stop_process_group, wait_for
from web import create_app

pytestmark = pytest.mark.e2e
LEASE_SECONDS = "2"


def start_worker(settings, name: str, log_dir) -> subprocess.Popen:
    env = child_env(settings, PLANT_JOB_LEASE_SECONDS=LEASE_SECONDS, PLANT_AUDIT_BATCH_SIZE="2",
                    PLANT_AUDIT_CHUNK_ENTITIES="120", PLANT_REQUEUE_AFTER_SECONDS="0.5")
    log = open(log_dir / f"{name}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "default,audit", "-c", "2",
         "-n", f"{name}-{os.getpid()}@%h", "--without-mingle", "--without-gossip"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    celery = create_celery(settings)
    wait_for(lambda: celery.control.ping(timeout=0.5, destination=[f"{name}-{os.getpid()}@" + os.uname().nodename]),
             timeout=60, what=f"worker {name}")
    return process


def test_a_killed_audit_resumes_and_matches_a_clean_run(settings, seeded, engine, write_ctx, tmp_path, admin_key) -> None:
    isolated = settings.model_copy(update={"redis_url": settings.redis_url.rsplit("/", 1)[0] + "/5"})
    with Session(engine) as session, session.begin():
        for n in range(300):
            create_entity(session, entity_type=EntityType.INDUSTRY, ctx=write_ctx,
                          data={"name": f"Crash industry {n}", "code": f"C{n:04d}", "governance_agent_id": seeded.steward_id})
    client = create_app(isolated).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"

    doomed = start_worker(isolated, "doomed", tmp_path)
    url = client.post("/api/v1/audit/run", json={"verify_signatures": "all"}).headers["Location"]
    wait_for(lambda: client.get(url).get_json()["progress"]["done"] >= 60, what="audit progress")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    crashed = client.get(url).get_json()
    assert crashed["status"] == "running" and crashed["progress"]["done"] < crashed["progress"]["total"]
    with Session(engine) as session:
        cursors_at_crash = {c.chunk_no: c.counters.get("entities", 0) for c in session.scalars(select(AuditChunk))}
    assert sum(cursors_at_crash.values()) > 0

    rescuer = start_worker(isolated, "rescuer", tmp_path)
    try:
        celery = create_celery(isolated)

        def rescued() -> dict | None:
            celery.send_task("plant.maintenance.requeue_stale_jobs", queue="default")
            job = client.get(url, query_string={"wait": 2}).get_json()
            return job if job["status"] == "succeeded" else None

        job = wait_for(rescued, timeout=90, interval=0.5, what="the rescued audit to finish")
        assert job["attempts"] == 2
        with Session(engine) as session:
            processed = {c.chunk_no: c.counters.get("entities", 0) for c in session.scalars(select(AuditChunk))}
        # No chunk started over: nothing was counted twice.
        assert sum(processed.values()) == job["result"]["total_entities"]

        clean = client.get(client.post("/api/v1/audit/run", json={"verify_signatures": "all"}).headers["Location"],
                           query_string={"wait": 30})
        clean = wait_for(lambda: (j := client.get(clean.request.path).get_json())["status"] == "succeeded" and j,
                         timeout=90, what="the clean audit")
    finally:
        stop_process_group(rescuer)
    volatile = {"run_id", "duration_seconds"}
    assert {k: v for k, v in job["result"].items() if k not in volatile} == \
           {k: v for k, v in clean["result"].items() if k not in volatile}
