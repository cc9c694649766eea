"""Paging a running run's findings skips none: a page waits for the batches in flight.

Chunks write findings in parallel, each batch in its own transaction. An id drawn by one
batch can commit after a later id of another batch; a page taken between the two would
pass the earlier id, and the next page (ids after the token) would never show it. Each
batch holds ``models.audit_chunks.writing_findings`` from before it draws an id until it
commits; a page waits for those (``batches_in_flight_done``).
"""

import threading
import uuid
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from models.audit_chunks import writing_findings
from tests.conftest import EMBEDDER, lock_waiters, wait_for

API = "/api/v1"


def _running_run(engine: Engine, keyring: Any) -> uuid.UUID:
    from models.audit_runs import start_run
    from models.job_lifecycle import create_job

    with Session(engine) as session, session.begin():
        job = create_job(session, kind="audit.run", params={"verify_signatures": "heads"}, queue="audit")
        return start_run(session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=100).id


def _batch_writes_a_finding(session: Session, run_id: uuid.UUID, code: str) -> int:
    """What a chunk's batch does before its commit (``audit_chunk_step``): hold the run's
    findings, then write one."""
    writing_findings(session, run_id)
    return session.scalar(text("INSERT INTO audit_findings (run_id, code, severity) VALUES (:run, :code, 'warning') "
                               "RETURNING id"), {"run": run_id, "code": code})


def _page_in_a_thread(client, run_id: uuid.UUID, answers: dict[str, Any]) -> threading.Thread:
    reader = threading.Thread(target=lambda: answers.update(page=client.get(f"{API}/audit/runs/{run_id}/findings")))
    reader.start()
    return reader


def _codes(answers: dict[str, Any]) -> list[str]:
    page = answers["page"]
    assert page.status_code == 200, page.get_data(as_text=True)
    return [item["code"] for item in page.get_json()["items"]]


def test_a_page_of_a_running_run_waits_for_a_batch_in_flight_so_no_finding_is_skipped(client, engine, keyring) -> None:
    run_id = _running_run(engine, keyring)
    answers: dict[str, Any] = {}
    with Session(engine) as slow:
        earlier = _batch_writes_a_finding(slow, run_id, "slow-batch")  # drawn first, not committed yet
        with Session(engine) as fast, fast.begin():
            later = _batch_writes_a_finding(fast, run_id, "fast-batch")
        assert earlier < later
        reader = _page_in_a_thread(client, run_id, answers)
        try:
            wait_for(lambda: lock_waiters(engine), what="the page to wait for the batch in flight")
            assert reader.is_alive()
        finally:
            slow.commit()
            reader.join(timeout=30)
    assert _codes(answers) == ["slow-batch", "fast-batch"]


def test_batches_that_overlap_without_a_pause_cannot_starve_a_page(client, engine, keyring) -> None:
    """A batch that asks after the page waits behind it, though batches share the lock."""
    run_id = _running_run(engine, keyring)
    answers: dict[str, Any] = {}
    with Session(engine) as first, Session(engine) as second:
        _batch_writes_a_finding(first, run_id, "first")
        reader = _page_in_a_thread(client, run_id, answers)
        try:
            wait_for(lambda: lock_waiters(engine), what="the page to wait for the first batch")
            next_batch = threading.Thread(target=lambda: (_batch_writes_a_finding(second, run_id, "second"), second.commit()))
            next_batch.start()
            wait_for(lambda: lock_waiters(engine) == 2, what="the next batch to queue behind the page")
        finally:
            first.commit()  # the page goes before the batch that asked after it
            reader.join(timeout=30)
            next_batch.join(timeout=30)
    assert _codes(answers) == ["first"]
    with Session(engine) as session:
        assert session.scalar(text("SELECT count(*) FROM audit_findings WHERE run_id = :run"), {"run": run_id}) == 2


def test_a_finished_run_s_pages_wait_for_nothing(client, engine, keyring) -> None:
    """A finished run takes no more findings: its pages are read while a writer holds its lock."""
    run_id = _running_run(engine, keyring)
    with Session(engine) as session, session.begin():
        _batch_writes_a_finding(session, run_id, "written")
    from models.audit_close import summarize_run

    with Session(engine) as session, session.begin():
        summarize_run(session, run_id=run_id, keyring=keyring)
    with Session(engine) as holder:
        writing_findings(holder, run_id)
        holder.execute(text("SELECT id FROM audit_runs WHERE id = :run FOR UPDATE"), {"run": run_id})
        page = client.get(f"{API}/audit/runs/{run_id}/findings")
        holder.rollback()
    assert page.status_code == 200, page.get_data(as_text=True)
    assert "written" in [item["code"] for item in page.get_json()["items"]]
