"""A worker SIGKILLed mid-audit over a thousand entities: the job is rescued, resumes
from its chunk checkpoints, and its result equals a clean run's.

Worker "doomed" is killed (with its pool) once the audit has made progress; beat's
recovery task republishes the job when its lease expires, worker "rescuer" takes the
new attempt, which republishes the unfinished chunks; they continue at their cursors.

And a worker whose database connections are all cut mid-audit: each chunk that loses its
connection comes back (Celery retry) and resumes at its checkpoint, in the same attempt.
"""

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from models.audit_tables import AuditChunk
from models.entities import EntityType
from models.registry import create_entity
from tests.conftest import wait_for
from tests.stack import ChaosStack

pytestmark = pytest.mark.e2e
ENTITIES = 1000  # 2,000 cost 170 s of the suite under load; a kill at 15% leaves 850 to resume


def _industries(engine, write_ctx, seeded) -> None:
    with Session(engine) as session, session.begin():
        for n in range(ENTITIES):
            create_entity(session, entity_type=EntityType.INDUSTRY, ctx=write_ctx,
                          data={"name": f"Crash industry {n}", "code": f"C{n:05d}", "governance_agent_id": seeded.steward_id})


def _finished(client, url: str, what: str) -> dict:
    return wait_for(lambda: (j := client.get(url, query_string={"wait": 2}).get_json())["status"] == "succeeded" and j,
                    timeout=120, interval=0.2, what=what)


def _same_result(job: dict, clean: dict) -> None:
    volatile = {"run_id", "duration_seconds"}
    assert {k: v for k, v in job["result"].items() if k not in volatile} == \
           {k: v for k, v in clean["result"].items() if k not in volatile}


def _entities_processed(engine) -> int:
    with Session(engine) as session:
        return sum(c.counters.get("entities", 0) for c in session.scalars(select(AuditChunk)))


def test_a_killed_audit_resumes_and_matches_a_clean_run(settings, seeded, engine, write_ctx, tmp_path, admin_key) -> None:
    _industries(engine, write_ctx, seeded)
    stack = ChaosStack(settings, tmp_path, PLANT_AUDIT_BATCH_SIZE="25", PLANT_AUDIT_CHUNK_ENTITIES="200")
    client = stack.client(admin_key)
    try:
        stack.start_worker("doomed")
        url = client.post("/api/v1/audit/run", json={"verify_signatures": "all"}).headers["Location"]
        wait_for(lambda: client.get(url).get_json()["progress"]["done"] >= 150, what="audit progress")
        stack.kill("doomed")
        crashed = client.get(url).get_json()
        assert crashed["status"] == "running" and crashed["progress"]["done"] < crashed["progress"]["total"]

        stack.start_worker("rescuer")
        stack.start_beat()
        job = _finished(client, url, "the rescued audit to finish")
        assert job["attempts"] == 2
        # No chunk started over: every entity was counted exactly once.
        assert _entities_processed(engine) == job["result"]["total_entities"] >= ENTITIES

        clean_url = client.post("/api/v1/audit/run", json={"verify_signatures": "all"}).headers["Location"]
        clean = _finished(client, clean_url, "the clean audit")
    finally:
        stack.stop()
    _same_result(job, clean)


def test_an_audit_whose_database_connections_are_cut_resumes_in_the_same_attempt(
        settings, seeded, engine, write_ctx, tmp_path, admin_key) -> None:
    """Every connection of the worker is terminated while its chunks run. Before, each chunk
    that lost its connection ended with its message acknowledged, and the run waited for the
    job's lease to lapse, then for a new attempt."""
    _industries(engine, write_ctx, seeded)
    worker_app = "plant-chaos-worker"  # libpq's PGAPPNAME: how this test finds the worker's sessions
    stack = ChaosStack(settings, tmp_path, PLANT_AUDIT_BATCH_SIZE="25", PLANT_AUDIT_CHUNK_ENTITIES="200",
                       PLANT_JOB_LEASE_SECONDS="300", PGAPPNAME=worker_app)  # no lease lapses here
    client = stack.client(admin_key)
    try:
        stack.start_worker("steady")
        url = client.post("/api/v1/audit/run", json={"verify_signatures": "all"}).headers["Location"]
        wait_for(lambda: client.get(url).get_json()["progress"]["done"] >= 150, what="audit progress")

        def cut() -> int:  # the worker's sessions inside a statement or a transaction
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
                return admin.scalar(text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity"
                    " WHERE application_name = :app AND state <> 'idle'"), {"app": worker_app})

        wait_for(cut, timeout=10, what="a worker session to cut")
        assert client.get(url).get_json()["status"] == "running"  # cut mid-run
        job = _finished(client, url, "the audit to finish after the cut")
        assert job["attempts"] == 1  # no new attempt: the chunks came back by themselves
        assert _entities_processed(engine) == job["result"]["total_entities"] >= ENTITIES
        log = (tmp_path / "steady.log").read_text()
        assert "hit a transient error" in log, log[-3000:]

        clean_url = client.post("/api/v1/audit/run", json={"verify_signatures": "all"}).headers["Location"]
        clean = _finished(client, clean_url, "the clean audit")
    finally:
        stack.stop()
    _same_result(job, clean)
