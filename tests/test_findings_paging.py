"""Paging a running run's findings skips none: a page waits for the batches in flight.

Chunks write findings in parallel, each batch in its own transaction holding its run's
row ``FOR KEY SHARE`` (``models.audit_runs.audit_chunk_step``). An id drawn by one batch
can commit after a later id of another batch; a page taken between the two would pass
the earlier id, and the next page (ids after the token) would never show it.
"""

import threading
import uuid
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from tests.conftest import lock_waiters, wait_for

API = "/api/v1"


def _running_run(engine: Engine, keyring: Any) -> uuid.UUID:
    from models.audit_runs import start_run
    from models.job_lifecycle import create_job

    with Session(engine) as session, session.begin():
        job = create_job(session, kind="audit.run", params={"verify_signatures": "heads"}, queue="audit")
        return start_run(session, job_id=job.id, params=job.params, keyring=keyring, chunk_entities=100).id


def _batch_writes_a_finding(connection: Connection, run_id: uuid.UUID, code: str) -> int:
    """What a chunk's batch does before its commit: hold the run, then write a finding."""
    connection.execute(text("SELECT id FROM audit_runs WHERE id = :run FOR KEY SHARE"), {"run": run_id})
    return connection.scalar(text("INSERT INTO audit_findings (run_id, code, severity) VALUES (:run, :code, 'warning') "
                                  "RETURNING id"), {"run": run_id, "code": code})


def test_a_page_of_a_running_run_waits_for_a_batch_in_flight_so_no_finding_is_skipped(client, engine, keyring) -> None:
    run_id = _running_run(engine, keyring)
    with engine.connect() as slow:
        earlier = _batch_writes_a_finding(slow, run_id, "slow-batch")  # drawn first, not committed yet
        with engine.begin() as fast:
            later = _batch_writes_a_finding(fast, run_id, "fast-batch")
        assert earlier < later
        answers: dict[str, Any] = {}
        reader = threading.Thread(target=lambda: answers.update(page=client.get(f"{API}/audit/runs/{run_id}/findings")))
        reader.start()
        try:
            wait_for(lambda: lock_waiters(engine), what="the page to wait for the batch in flight")
            assert reader.is_alive()
        finally:
            slow.commit()
            reader.join(timeout=30)
    page = answers["page"]
    assert page.status_code == 200, page.get_data(as_text=True)
    assert [item["code"] for item in page.get_json()["items"]] == ["slow-batch", "fast-batch"]


def test_a_finished_run_s_pages_lock_nothing(client, engine, keyring) -> None:
    """A finished run takes no more findings: its pages are read while its row is locked."""
    run_id = _running_run(engine, keyring)
    with engine.begin() as connection:
        _batch_writes_a_finding(connection, run_id, "written")
    from models.audit_runs import summarize_run

    with Session(engine) as session, session.begin():
        summarize_run(session, run_id=run_id, keyring=keyring)
    with engine.connect() as holder:
        holder.execute(text("SELECT id FROM audit_runs WHERE id = :run FOR UPDATE"), {"run": run_id})
        page = client.get(f"{API}/audit/runs/{run_id}/findings")
        holder.rollback()
    assert page.status_code == 200, page.get_data(as_text=True)
    assert "written" in [item["code"] for item in page.get_json()["items"]]
