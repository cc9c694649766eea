"""Adversarial review of the job lifecycle: leases, their renewal by other audits' batches,
the dead-worker sweep, cancels and who asked for them.

Real PostgreSQL throughout; the end-to-end cases run real Celery workers and beat
(``tests.stack.ChaosStack``: short leases, fast recovery).
"""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from models.audit_runs import keep_waiting_audits_leased, start_run
from models.entities import EntityType
from models.job_lifecycle import claim_job, create_job, get_job
from models.jobs import Job
from models.registry import create_entity
from tests.conftest import EMBEDDER, wait_for
from tests.stack import ChaosStack


def _running_audit(session: Session, keyring, *, worker: str, lease_seconds: int = 300) -> uuid.UUID:
    """An audit job claimed by ``worker`` whose run is planned, its chunks all still to do."""
    job = create_job(session, kind="audit.run", queue="audit", params={"verify_signatures": "heads"}, to_publish=True)
    claim = claim_job(session, job_id=job.id, worker=worker, lease_seconds=lease_seconds)
    assert claim is not None
    start_run(session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=1000)
    return job.id


def test_a_batch_does_not_renew_a_lease_that_lapsed_while_the_batch_ran(engine, keyring, committed_steward) -> None:
    """``keep_waiting_audits_leased`` says only live leases are renewed ("a lapsed one is the
    sweep's"). It compared them with ``now()``, the time the batch's *transaction* began: a
    lease that ran out while the batch audited its entities still counted as live, and was
    renewed. By then beat's sweep may have judged the job dead and republished it; the renewal
    undid that (the new message's claim finds a live lease and claims nothing)."""
    with Session(engine) as session, session.begin():
        me = _running_audit(session, keyring, worker="me")
        other = _running_audit(session, keyring, worker="gone")
    with Session(engine) as session, session.begin():  # the other's lease: one second left, by the clock
        session.execute(update(Job).where(Job.id == other).values(
            lease_expires_at=text("clock_timestamp() + interval '1 second'")))
    with Session(engine) as batch, batch.begin():
        batch.execute(select(func.now()))  # the batch's transaction has begun: it audits its entities...
        batch.execute(text("SELECT pg_sleep(1.5)"))  # ...for longer than the other lease had left
        lapsed = batch.scalar(select(Job.lease_expires_at < func.clock_timestamp()).where(Job.id == other))
        assert lapsed
        renewed = keep_waiting_audits_leased(batch, job_id=me, lease_seconds=300)
    with Session(engine) as session:
        still_lapsed = session.scalar(select(Job.lease_expires_at < func.clock_timestamp()).where(Job.id == other))
    assert (renewed, still_lapsed) == (0, True)
