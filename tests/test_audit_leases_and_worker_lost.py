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

from models.audit_chunks import keep_waiting_audits_leased, record_chunks_published
from models.audit_runs import start_run
from models.audit_tables import AuditRun
from models.entities import EntityType
from models.job_lifecycle import JobClaim, claim_job, create_job, get_job
from models.jobs import Job
from models.registry import create_entity
from tests.conftest import EMBEDDER, wait_for
from tests.stack import ChaosStack


def running_audit(session: Session, keyring, *, worker: str, lease_seconds: int = 300, scope: dict | None = None,
                  published: bool = True) -> JobClaim:
    """An audit job claimed by ``worker`` whose run is planned, its chunks all still to do and,
    when ``published``, on the queue (``tasks.audit._start_audit`` recorded their publish)."""
    params = {"verify_signatures": "heads", **({"scope": scope} if scope else {})}
    job = create_job(session, kind="audit.run", queue="audit", params=params, to_publish=True)
    claim = claim_job(session, job_id=job.id, worker=worker, lease_seconds=lease_seconds)
    assert claim is not None
    run = start_run(session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=1000)
    if published:
        record_chunks_published(session, run_id=run.id, attempt=claim.attempt)
    return claim


def renewal_of(engine, *, waiting: uuid.UUID, running: uuid.UUID) -> tuple[int, float]:
    """Put ``waiting``'s lease 10 s from its end (past half its term), let a batch of
    ``running`` renew what it renews; returns how many it renewed and ``waiting``'s seconds left."""
    with Session(engine) as session, session.begin():
        session.execute(update(Job).where(Job.id == waiting).values(
            lease_expires_at=text("clock_timestamp() + interval '10 seconds'")))
    with Session(engine) as batch, batch.begin():
        renewed = keep_waiting_audits_leased(batch, job_id=running, lease_seconds=300)
    with Session(engine) as session:
        left = session.scalar(select(Job.lease_expires_at - func.clock_timestamp()).where(Job.id == waiting))
    return renewed, left.total_seconds()


def test_a_batch_does_not_renew_a_lease_that_lapsed_while_the_batch_ran(engine, keyring, committed_steward) -> None:
    """``keep_waiting_audits_leased`` says only live leases are renewed ("a lapsed one is the
    sweep's"). It compared them with ``now()``, the time the batch's *transaction* began: a
    lease that ran out while the batch audited its entities still counted as live, and was
    renewed. By then beat's sweep may have judged the job dead and republished it; the renewal
    undid that (the new message's claim finds a live lease and claims nothing)."""
    with Session(engine) as session, session.begin():
        me = running_audit(session, keyring, worker="me").job_id
        other = running_audit(session, keyring, worker="gone").job_id
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


def test_a_batch_renews_only_the_audits_begun_after_its_own(engine, keyring, committed_steward) -> None:
    """Chunks queue first in, first out: an audit begun before the one whose batch runs has had its
    chunks taken from the queue already, so one still running with chunks to do has no message
    left (its worker was killed before it published them; a chunk's retries ran out) and only
    the sweep can take it up. Every other audit's batches renewed its lease, and it was never
    recovered while audits ran back to back (helper-150)."""
    with Session(engine) as session, session.begin():
        earlier = running_audit(session, keyring, worker="gone").job_id
    with Session(engine) as session, session.begin():  # runs are stamped by their transactions' start
        me = running_audit(session, keyring, worker="me").job_id
    with Session(engine) as session, session.begin():
        later = running_audit(session, keyring, worker="queued-behind-me").job_id
    with Session(engine) as session, session.begin():  # both past half their term
        session.execute(update(Job).where(Job.id.in_([earlier, later])).values(
            lease_expires_at=text("clock_timestamp() + interval '10 seconds'")))
    with Session(engine) as batch, batch.begin():
        assert keep_waiting_audits_leased(batch, job_id=me, lease_seconds=300) == 1
    with Session(engine) as session:
        left = dict(session.execute(select(Job.id, Job.lease_expires_at - func.clock_timestamp())
                                    .where(Job.id.in_([earlier, later]))).all())
    assert left[earlier].total_seconds() < 11 and left[later].total_seconds() > 250, left


def test_a_batch_renews_only_audits_whose_current_attempt_published_its_chunks(engine, keyring,
                                                                              committed_steward) -> None:
    """An audit planned and never published (its worker killed in between), or published by an
    attempt the sweep has since superseded, has no message of its current attempt waiting
    anywhere: it is left to its lease. One whose chunks this attempt published is kept leased."""
    with Session(engine) as session, session.begin():
        me = running_audit(session, keyring, worker="me").job_id
    with Session(engine) as session, session.begin():
        waiting = running_audit(session, keyring, worker="queued-behind-me").job_id
        unpublished = running_audit(session, keyring, worker="killed-after-planning", published=False).job_id
        superseded = running_audit(session, keyring, worker="killed-then-reclaimed").job_id
        # The sweep republished it and a new attempt claimed it, and was killed before publishing.
        session.execute(update(Job).where(Job.id == superseded).values(attempts=Job.attempts + 1))
        others = [waiting, unpublished, superseded]
        session.execute(update(Job).where(Job.id.in_(others)).values(
            lease_expires_at=text("clock_timestamp() + interval '10 seconds'")))
    with Session(engine) as batch, batch.begin():
        assert keep_waiting_audits_leased(batch, job_id=me, lease_seconds=300) == 1
    with Session(engine) as session:
        left = dict(session.execute(select(Job.id, Job.lease_expires_at - func.clock_timestamp())
                                    .where(Job.id.in_(others))).all())
    assert left[waiting].total_seconds() > 250, left
    assert left[unpublished].total_seconds() < 11 and left[superseded].total_seconds() < 11, left


def test_an_earlier_attempts_late_publish_record_does_not_overwrite_a_later_ones(db_session, keyring, steward) -> None:
    claim = running_audit(db_session, keyring, worker="w")
    run_id = db_session.scalar(select(AuditRun.id).where(AuditRun.job_id == claim.job_id))
    record_chunks_published(db_session, run_id=run_id, attempt=claim.attempt + 1)
    record_chunks_published(db_session, run_id=run_id, attempt=claim.attempt)
    assert db_session.scalar(select(AuditRun.chunks_published_attempt).where(AuditRun.id == run_id)) == claim.attempt + 1


def _industries(engine, write_ctx, steward_id, count: int) -> None:
    with Session(engine) as session, session.begin():
        for n in range(count):
            create_entity(session, entity_type=EntityType.INDUSTRY, ctx=write_ctx,
                          data={"name": f"Lease industry {n}", "code": f"L{n:05d}", "governance_agent_id": steward_id})


def _start_workers(stack: ChaosStack) -> None:
    """As deployed: one audit worker process (``-Q audit -c 1``), and the default workers
    beside it, which take beat's recovery sweeps."""
    for name, queues, concurrency in (("auditor", "audit", "1"), ("default", "default,maintenance", "2")):
        stack._spawn(name, ["worker", "-Q", queues, "-c", concurrency, "-n", stack.node(name),
                            "--without-mingle", "--without-gossip"])
        wait_for(lambda name=name: stack.celery.control.ping(timeout=0.5, destination=[stack.node(name)], limit=1),
                 timeout=60, what=f"worker {name}")


@pytest.mark.e2e
def test_a_dead_audit_is_recovered_while_another_audit_runs(settings, seeded, engine, keyring, write_ctx, tmp_path,
                                                            admin_key) -> None:
    """README: "A worker killed mid-audit: beat's requeue task republishes the job once its lease
    expires." An audit whose ``audit.run`` worker was SIGKILLed after its plan committed and
    before it published its chunks has no message anywhere (its own came back to a claim that
    found the lease live, and was acknowledged): only the sweep can take it up. While another
    audit ran, every one of that audit's batches renewed the dead audit's lease, so its lease
    never ran out and the sweep never republished it; with audits started back to back it
    never would have been. Only a run whose chunks its job's current attempt published is
    kept leased now (migration 0024)."""
    _industries(engine, write_ctx, seeded.steward_id, 600)  # batches of one: the other audit runs for some seconds, even on an idle machine
    stack = ChaosStack(settings, tmp_path, PLANT_AUDIT_BATCH_SIZE="1", PLANT_AUDIT_CHUNK_ENTITIES="100000")
    client = stack.client(admin_key)
    try:
        _start_workers(stack)
        stack.start_beat()
        url = client.post("/api/v1/audit/run", json={"verify_signatures": "heads"}).headers["Location"]
        wait_for(lambda: client.get(url).get_json()["progress"]["done"] > 0, timeout=60, interval=0.05,
                 what="the other audit's first batch")
        with Session(engine) as session, session.begin():
            dead = running_audit(session, keyring, worker="killed-after-planning", lease_seconds=2, published=False,
                                 scope={"entity_type": "agent", "entity_ids": [str(seeded.steward_id)]}).job_id
            published_at = session.scalar(select(Job.enqueued_at).where(Job.id == dead))
        started = time.monotonic()
        recovered_while_it_ran = False
        while (other := client.get(url).get_json())["status"] in ("queued", "running"):
            with Session(engine) as session:
                row = get_job(session, dead)
                enqueued_at = session.scalar(select(Job.enqueued_at).where(Job.id == dead))
            if other["status"] == "running" and (row.attempts > 1 or enqueued_at != published_at):
                if other["attempts"] > 1:  # the other audit's own lease lapsed (a loaded machine): republished
                    pytest.skip("the other audit was republished after the dead one: its new attempt's chunks queue "
                                "behind the dead audit's message, so it rightly no longer renews it")
                recovered_while_it_ran = True
                break
            time.sleep(0.2)
        assert other["status"] in ("running", "succeeded"), other
        # The other audit ran long enough: a dead audit's lease (2 s), the sweep's backoff (1 s at
        # most) and a sweep or two (every 0.5 s).
        assert recovered_while_it_ran or time.monotonic() - started > 6
        if recovered_while_it_ran:  # what it was there for is shown: its 600 batches need not hold up the dead one's
            assert client.post(url + "/cancel").status_code in (200, 409)  # 409: it ended meanwhile
        # Once nothing renews it, the dead audit is taken up again and finishes.
        wait_for(lambda: client.get(f"/api/v1/jobs/{dead}").get_json()["status"] == "succeeded", timeout=120,
                 interval=0.2, what="the dead audit to be recovered")
    finally:
        stack.stop()
    assert recovered_while_it_ran


@pytest.mark.e2e
def test_a_job_retried_after_its_worker_was_killed_says_why_its_attempt_ended(settings, admin_key, tmp_path) -> None:
    """README: "While retrying, the job shows `attempts` and the last error." A job retried after
    a transient error shows it; one whose worker was SIGKILLed ran its next attempt with
    ``error: null``: ``attempts: 2`` and nothing to say what became of the first."""
    stack = ChaosStack(settings, tmp_path)
    try:
        stack.start_worker("doomed")
        client = stack.client(admin_key)
        url = client.post("/api/v1/diagnostics/sleep", json={"seconds": 30, "steps": 30}).headers["Location"]
        wait_for(lambda: client.get(url).get_json()["progress"]["done"] >= 1, what="the job to run")
        stack.kill("doomed")
        stack.start_worker("rescuer")
        stack.start_beat()
        retried = wait_for(lambda: (j := client.get(url).get_json())["attempts"] == 2 and j["status"] == "running" and j,
                           timeout=60, what="a second attempt")
        client.post(url + "/cancel")
        wait_for(lambda: client.get(url).get_json()["status"] == "cancelled", what="the cancel")
    finally:
        stack.stop()
    assert retried["error"] is not None and retried["error"]["type"] == "/problems/worker-lost", retried["error"]
