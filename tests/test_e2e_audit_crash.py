"""A worker SIGKILLed mid-audit over a few thousand entities: the job is rescued, resumes
from its chunk checkpoints, and its result equals a clean run's.

Worker "doomed" is killed (with its pool) once the audit has made progress; beat's
recovery task republishes the job when its lease expires, worker "rescuer" takes the
new attempt, which republishes the unfinished chunks; they continue at their cursors.
"""

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.audit_tables import AuditChunk
from models.entities import EntityType
from models.registry import create_entity
from tests.conftest import wait_for
from tests.stack import ChaosStack

pytestmark = pytest.mark.e2e
ENTITIES = 2000


def test_a_killed_audit_resumes_and_matches_a_clean_run(settings, seeded, engine, write_ctx, tmp_path, admin_key) -> None:
    with Session(engine) as session, session.begin():
        for n in range(ENTITIES):
            create_entity(session, entity_type=EntityType.INDUSTRY, ctx=write_ctx,
                          data={"name": f"Crash industry {n}", "code": f"C{n:05d}", "governance_agent_id": seeded.steward_id})
    stack = ChaosStack(settings, tmp_path, PLANT_AUDIT_BATCH_SIZE="25", PLANT_AUDIT_CHUNK_ENTITIES="400")
    client = stack.client(admin_key)
    try:
        stack.start_worker("doomed")
        url = client.post("/api/v1/audit/run", json={"verify_signatures": "all"}).headers["Location"]
        wait_for(lambda: client.get(url).get_json()["progress"]["done"] >= 300, what="audit progress")
        stack.kill("doomed")
        crashed = client.get(url).get_json()
        assert crashed["status"] == "running" and crashed["progress"]["done"] < crashed["progress"]["total"]

        stack.start_worker("rescuer")
        stack.start_beat()
        job = wait_for(lambda: (j := client.get(url, query_string={"wait": 2}).get_json())["status"] == "succeeded" and j,
                       timeout=120, interval=0.2, what="the rescued audit to finish")
        assert job["attempts"] == 2
        with Session(engine) as session:
            processed = sum(c.counters.get("entities", 0) for c in session.scalars(select(AuditChunk)))
        # No chunk started over: every entity was counted exactly once.
        assert processed == job["result"]["total_entities"] >= ENTITIES

        clean_url = client.post("/api/v1/audit/run", json={"verify_signatures": "all"}).headers["Location"]
        clean = wait_for(lambda: (j := client.get(clean_url, query_string={"wait": 2}).get_json())["status"] == "succeeded" and j,
                         timeout=120, what="the clean audit")
    finally:
        stack.stop()
    volatile = {"run_id", "duration_seconds"}
    assert {k: v for k, v in job["result"].items() if k not in volatile} == \
           {k: v for k, v in clean["result"].items() if k not in volatile}
