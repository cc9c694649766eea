"""What counts against ``PLANT_JOB_MAX_ATTEMPTS``, and how a last attempt ends.

``attempts`` is the fencing token, raised by every claim; a hand-back (a worker shutting
down, a bulk job's lease lapsing between batches) is not a failure and is counted apart
(``handbacks``). The runner's ``_retry_later`` and beat's ``rescue_expired`` run here
against the real job table; republishing is recorded instead of sent.
"""

import datetime as dt

import pytest
from sqlalchemy import select, text, update

from models.db import transaction
from models.errors import JobHandedBack, TransientJobError
from models.job_control import request_cancel
from models.job_lifecycle import claim_job, create_job, get_job
from models.job_recovery import release_for_retry, rescue_expired
from models.jobs import Job, JobStatus
from tasks import runner, runtime
from tests.conftest import SentTasks

MAX_ATTEMPTS = 3


@pytest.fixture
def sessions(worker_sessions, settings, monkeypatch):
    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(update={"job_max_attempts": MAX_ATTEMPTS}))
    return worker_sessions


def _new_job(sessions):
    with transaction(sessions) as session:
        return create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}, to_publish=True).id


def _claim(sessions, job_id):
    with transaction(sessions) as session:
        return claim_job(session, job_id=job_id, worker="w", lease_seconds=60)


def _job(sessions, job_id):
    with sessions() as session:
        return get_job(session, job_id)


def _hand_back(sessions, job_id, times: int) -> None:
    for _ in range(times):
        claim = _claim(sessions, job_id)
        attempt = runner.Attempt(JobStatus.QUEUED, error=JobHandedBack("worker shutdown").problem(), retry_after=0.0,
                                 handed_back=True)
        publisher = SentTasks()
        assert runner._retry_later(publisher, claim, attempt)["status"] == "queued" and len(publisher.sent) == 1


def _transient(claim) -> runner.Attempt:
    return runner.Attempt(JobStatus.QUEUED, error=TransientJobError("database blip").problem(), retry_after=1.0)


def test_hand_backs_do_not_use_up_the_attempts_allowed(sessions) -> None:
    job_id = _new_job(sessions)
    _hand_back(sessions, job_id, MAX_ATTEMPTS)
    claim = _claim(sessions, job_id)
    assert (claim.attempt, claim.handbacks, claim.counted_attempts) == (MAX_ATTEMPTS + 1, MAX_ATTEMPTS, 1)
    assert runner._retry_later(SentTasks(), claim, _transient(claim))["status"] == "queued"
    job = _job(sessions, job_id)
    assert (job.status, job.attempts) == ("queued", MAX_ATTEMPTS + 1)


def test_a_transient_error_on_the_last_counted_attempt_fails_the_job(sessions) -> None:
    job_id = _new_job(sessions)
    _hand_back(sessions, job_id, 1)
    for _ in range(MAX_ATTEMPTS):
        claim = _claim(sessions, job_id)
        publisher = SentTasks()
        runner._retry_later(publisher, claim, _transient(claim))
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.error["type"]) == ("failed", MAX_ATTEMPTS + 1, "/problems/transient-error")
    assert publisher.sent == []


def test_a_dead_worker_after_hand_backs_is_rescued_not_failed(sessions) -> None:
    job_id = _new_job(sessions)
    _hand_back(sessions, job_id, MAX_ATTEMPTS)
    _claim(sessions, job_id)  # its worker is then killed: the lease runs out
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=text("now() - interval '1 hour'")))
    with transaction(sessions) as session:
        rescued = rescue_expired(session, max_attempts=MAX_ATTEMPTS, base=0, cap=0, older_than=dt.timedelta(0))
    assert ([ref.job_id for ref in rescued.republish], rescued.failed) == ([job_id], 0)


def test_a_cancel_asked_before_a_transient_error_on_the_last_attempt_ends_the_job_cancelled(sessions) -> None:
    job_id = _new_job(sessions)
    for _ in range(MAX_ATTEMPTS - 1):
        claim = _claim(sessions, job_id)
        with transaction(sessions) as session:
            release_for_retry(session, claim=claim, error=TransientJobError("x").problem())
    claim = _claim(sessions, job_id)
    assert claim.counted_attempts == MAX_ATTEMPTS
    with transaction(sessions) as session:
        assert request_cancel(session, job_id=job_id).status == "running"  # asked; the attempt is live
    outcome = runner._retry_later(SentTasks(), claim, _transient(claim))
    job = _job(sessions, job_id)
    assert outcome["status"] == job.status == "cancelled" and job.error["type"] == "/problems/job-cancelled"
    assert job.finished_at is not None


def test_an_audit_stopped_for_a_worker_shutdown_is_handed_back_not_left_to_expire(
        sessions, settings, seeded, monkeypatch) -> None:
    """Its chunks checkpoint; the first to see the shutdown hands the job back (counted as a
    hand-back, republished at once), and the others find their attempt superseded."""
    import threading

    from models.audit_chunks import pending_chunks
    from models.audit_tables import AuditRun
    from tasks import audit

    job_id, _, sent = _audit_chunks(sessions, settings, monkeypatch)
    with sessions() as session:
        chunks = pending_chunks(session, session.query(AuditRun.id).filter(AuditRun.job_id == job_id).scalar())
    assert len(chunks) >= 2 and [name for name, _ in sent] == [audit.CHUNK_TASK] * len(chunks)
    messages = [args for _, args in sent]  # each chunk's (job, attempt, chunk, the job's hand-backs at its claim)
    assert [args[2] for args in messages] == chunks and {tuple(args[::3]) for args in messages} == {(str(job_id), 0)}
    stopping = threading.Event()
    stopping.set()
    monkeypatch.setattr(runtime, "shutdown_requested", stopping)
    # A chunk holding a single entity is done in its one batch (chunk bounds follow the random
    # ids): the first chunk with a second batch sees the shutdown at its checkpoint.
    outcomes = iter(audit.audit_chunk(*args) for args in messages)
    first = next(outcome for outcome in outcomes if not outcome.get("done"))
    assert first.get("stopped") == "worker shutdown" and first["status"] == "queued", first
    assert sent[-1] == ("plant.audit.run", [str(job_id)])  # republished at once, not after the lease
    assert next(outcomes)["skipped"] == "superseded attempt"
    with sessions() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.handbacks) == ("queued", 1, 1)


def test_hand_backs_past_the_cap_count_as_attempts(sessions, settings, monkeypatch) -> None:
    """A job handed back again and again (its lease always lapsing mid-run) must not loop for ever."""
    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(
        update={"job_max_attempts": MAX_ATTEMPTS, "job_max_handbacks": 2}))
    job_id = _new_job(sessions)
    _hand_back(sessions, job_id, 2 + MAX_ATTEMPTS - 1)  # two free, then counted ones, the job still queued
    claim = _claim(sessions, job_id)
    assert (claim.handbacks, claim.counted_attempts) == (2, MAX_ATTEMPTS)
    attempt = runner.Attempt(JobStatus.QUEUED, error=JobHandedBack("lease lapsed").problem(), retry_after=0.0,
                             handed_back=True)
    assert runner._retry_later(SentTasks(), claim, attempt)["status"] == "failed"


def _audit_chunks(sessions, settings, monkeypatch):
    """An audit job claimed and split into chunks; returns (job id, each chunk's message args,
    and the list every message task code sends lands in)."""
    from tasks import audit

    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(
        update={"job_max_attempts": MAX_ATTEMPTS, "audit_batch_size": 1, "audit_chunk_entities": 2}))
    sent = []
    monkeypatch.setattr(audit.audit_run.app, "send_task", lambda name, *, args, queue, **kw: sent.append((name, args)))
    with transaction(sessions) as session:
        job_id = create_job(session, kind="audit.run", params={"verify_signatures": "heads"}, queue="audit").id
    audit._start_audit(_claim(sessions, job_id), lambda *_: None)
    return job_id, [args for name, args in sent if name == audit.CHUNK_TASK], sent


@pytest.mark.parametrize("failures", [1, 99])
def test_an_audit_whose_publish_record_fails_keeps_its_attempt_and_its_chunks(
        sessions, settings, seeded, monkeypatch, caplog, failures) -> None:
    """The start sends its chunks, then records that they wait on the queue. A database error
    in that record failed the attempt after its messages were out: the job was retried as a new
    attempt, and the chunks just sent ran as stale. Now a transient error is tried again (one
    failure: recorded), and one that lasts leaves the record out with a warning."""
    from sqlalchemy.exc import OperationalError

    from models.audit_chunks import record_chunks_published
    from models.audit_tables import AuditRun
    from tasks import audit

    calls = []

    def record_after_failures(session, **kwargs):
        calls.append(kwargs)
        if len(calls) <= failures:
            raise OperationalError("UPDATE audit_runs ...", {}, Exception("server closed the connection unexpectedly"))
        return record_chunks_published(session, **kwargs)

    monkeypatch.setattr(audit, "record_chunks_published", record_after_failures)
    job_id, messages, _ = _audit_chunks(sessions, settings, monkeypatch)  # the start did not raise
    assert messages and len(calls) == min(failures + 1, 3)
    with transaction(sessions) as session:
        job = get_job(session, job_id)
        published = session.scalar(select(AuditRun.chunks_published_attempt).where(AuditRun.job_id == job_id))
    assert job.status == JobStatus.RUNNING.value and job.attempts == 1
    assert published == (1 if failures == 1 else 0)
    assert ("recording so failed" in caplog.text) == (failures > 1)


def test_an_audit_chunk_that_loses_its_database_connection_comes_back_and_resumes(
        sessions, settings, seeded, monkeypatch) -> None:
    """A transient error asks Celery to send the chunk again after a backoff; nothing is
    recorded, and the chunk's next delivery resumes from its checkpoint and completes the run.
    (Before, the error ended the task, its message was acknowledged, and the run waited for the
    job's lease to lapse.)"""
    from celery.exceptions import Retry
    from sqlalchemy.exc import OperationalError

    from tasks import audit

    job_id, messages, _ = _audit_chunks(sessions, settings, monkeypatch)
    retries = []

    def retry(*, exc, countdown, max_retries):
        retries.append((type(exc), countdown, max_retries))
        raise Retry(exc=exc, when=countdown)

    monkeypatch.setattr(audit.audit_chunk._get_current_object(), "retry", retry)
    real_step, calls, lost = audit.audit_chunk_step, {}, []

    def connection_lost_after_a_chunk_s_first_checkpoint(session, *, chunk_id, **kwargs):
        calls[chunk_id] = calls.get(chunk_id, 0) + 1
        if calls[chunk_id] == 2 and not lost:  # the first chunk with a second batch (bounds follow random ids)
            lost.append(chunk_id)
            raise OperationalError("SELECT ...", {}, Exception("server closed the connection unexpectedly"))
        return real_step(session, chunk_id=chunk_id, **kwargs)

    monkeypatch.setattr(audit, "audit_chunk_step", connection_lost_after_a_chunk_s_first_checkpoint)
    redelivered = []
    for args in messages:
        try:
            audit.audit_chunk(*args)
        except Retry:
            assert _job(sessions, job_id).status == "running"  # not failed, not finished: the chunk comes back
            redelivered.append(args)
    assert [args[2] for args in redelivered] == lost != []
    assert [(kind, most) for kind, _, most in retries] == [(OperationalError, MAX_ATTEMPTS)]
    assert 0 <= retries[0][1] <= settings.retry_backoff_cap_seconds  # a backoff (full jitter)
    assert _job(sessions, job_id).status == "running"  # the run waits for the lost chunk
    audit.audit_chunk(*redelivered[0])  # its next delivery resumes from its checkpoint
    job = _job(sessions, job_id)
    assert job.status == "succeeded" and job.result["total_entities"] > 0


def test_an_audit_chunk_that_fails_fails_its_job_at_once_with_the_error(sessions, settings, seeded, monkeypatch) -> None:
    """Not left running until its lease lapses (and retried, and at last `worker-lost`)."""
    from tasks import audit

    job_id, messages, _ = _audit_chunks(sessions, settings, monkeypatch)
    monkeypatch.setattr(audit, "audit_chunk_step", lambda session, **kwargs: 1 / 0)
    outcome = audit.audit_chunk(*messages[0])
    assert outcome["status"] == "failed"
    job = _job(sessions, job_id)
    assert job.status == "failed" and job.error["type"] == "/problems/internal-error"
    assert "ZeroDivisionError" in job.error["detail"]
    assert audit.audit_chunk(*messages[1])["skipped"] == "superseded"  # the job has ended: its error stays the first
    assert "ZeroDivisionError" in _job(sessions, job_id).error["detail"]
    run = _run(sessions, job_id)  # ended with its job, not left `running` for ever
    assert (run.status, run.finished_at) == ("failed", job.finished_at)
    assert run.summary["total_entities"] == 0 and run.summary["duration_seconds"] >= 0


def _run(sessions, job_id):
    from models.audit_tables import AuditRun

    with sessions() as session:
        return session.query(AuditRun).filter(AuditRun.job_id == job_id).one()


def _lapse(sessions, job_id, **values) -> None:
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            lease_expires_at=text("now() - interval '1 hour'"), **values))


def test_an_audit_job_failed_by_the_sweep_closes_its_run_with_what_it_audited(
        sessions, settings, seeded, monkeypatch) -> None:
    """Its worker died on the last allowed attempt: beat's recovery pass fails the job, then
    closes the run (before, it stayed `running` for ever and the runs-by-status metric
    counted it so)."""
    from models.audit_tables import AuditChunk
    from tasks import audit
    from tasks.maintenance import requeue_stale_jobs

    job_id, messages, _ = _audit_chunks(sessions, settings, monkeypatch)

    def entities_in(args) -> int:
        with sessions() as session:
            return session.get(AuditChunk, args[2]).counters["entities"]

    audited = []  # chunks up to the first that held an entity (chunk bounds follow random ids)
    for args in messages[:-1]:
        assert audit.audit_chunk(*args)["done"]
        audited.append(args)
        if entities_in(args):
            break
    assert _run(sessions, job_id).status == "running"
    _lapse(sessions, job_id, attempts=MAX_ATTEMPTS)  # then its worker died: the lease runs out
    beat = SentTasks()
    outcome = type(requeue_stale_jobs._get_current_object()).run(beat)
    assert (outcome["failed"], outcome["runs_closed"], beat.sent) == (1, 1, [])
    job, run = _job(sessions, job_id), _run(sessions, job_id)
    assert (job.status, run.status, run.finished_at) == ("failed", "failed", job.finished_at)
    assert run.summary["total_entities"] == sum(map(entities_in, audited)) > 0  # what it audited, no more
    assert type(requeue_stale_jobs._get_current_object()).run(SentTasks())["runs_closed"] == 0  # once


def test_cancelling_an_audit_whose_lease_lapsed_closes_its_run_at_once(
        sessions, settings, seeded, monkeypatch, client) -> None:
    job_id, _, _ = _audit_chunks(sessions, settings, monkeypatch)
    _lapse(sessions, job_id)
    response = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    run = _run(sessions, job_id)
    assert (run.status, run.finished_at) == ("cancelled", _job(sessions, job_id).finished_at)
    assert client.get(f"/api/v1/audit/runs/{run.id}").get_json()["status"] == "cancelled"


def test_closing_runs_leaves_live_and_finished_runs_alone_and_skips_a_held_one(
        sessions, settings, seeded, monkeypatch, keyring) -> None:
    from models.audit_close import close_runs_of_ended_jobs
    from models.audit_tables import AuditRun

    job_id, _, _ = _audit_chunks(sessions, settings, monkeypatch)
    with transaction(sessions) as session:
        assert close_runs_of_ended_jobs(session, keyring=keyring) == 0  # its job is running
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="failed", finished_at=text("now()")))
    with sessions() as holder, holder.begin():  # say, a chunk finishing the run at this moment
        holder.execute(select(AuditRun).where(AuditRun.job_id == job_id).with_for_update())
        with transaction(sessions) as session:
            assert close_runs_of_ended_jobs(session, keyring=keyring) == 0  # not waited for: the next pass takes it
    with transaction(sessions) as session:
        assert close_runs_of_ended_jobs(session, keyring=keyring, job_id=job_id) == 1
    with transaction(sessions) as session:  # closed now, like a run that succeeded: left alone
        assert session.scalar(select(AuditRun.status).where(AuditRun.job_id == job_id)) == "failed"
        assert close_runs_of_ended_jobs(session, keyring=keyring) == 0


def test_a_chunk_cut_off_while_finishing_the_run_finishes_it_when_it_comes_back(
        sessions, settings, seeded, monkeypatch) -> None:
    """The last chunk's step committed the run complete, then finishing the job lost its
    connection: the chunk's redelivery finds itself done and still finishes the run."""
    from celery.exceptions import Retry
    from sqlalchemy.exc import OperationalError

    from tasks import audit

    job_id, messages, _ = _audit_chunks(sessions, settings, monkeypatch)
    real_finish, cut = audit._finish, []

    def connection_lost_once(claim, run_id):
        if not cut:
            cut.append(run_id)
            raise OperationalError("UPDATE jobs ...", {}, Exception("server closed the connection unexpectedly"))
        return real_finish(claim, run_id)

    def retry(*, exc, countdown, max_retries):
        raise Retry(exc=exc, when=countdown)

    monkeypatch.setattr(audit, "_finish", connection_lost_once)
    monkeypatch.setattr(audit.audit_chunk._get_current_object(), "retry", retry)
    for args in messages[:-1]:
        audit.audit_chunk(*args)
    with pytest.raises(Retry):
        audit.audit_chunk(*messages[-1])
    assert cut and _job(sessions, job_id).status == "running"
    assert audit.audit_chunk(*messages[-1]) == {"chunk": messages[-1][2], "done": True}
    assert _job(sessions, job_id).status == "succeeded"


def test_a_cancelled_audit_s_summary_counts_a_sibling_chunk_s_batch_still_in_flight(
        sessions, settings, seeded, monkeypatch, engine, keyring) -> None:
    """The chunk that sees the cancel ends the job, then summarizes: ending the job waits for
    a sibling chunk whose batch already passed its checkpoint (it holds the job row), so the
    run's summary counts that batch's findings. Summarizing first missed them, and the
    report then listed findings its summary did not count."""
    import threading

    from models.audit import FindingRow
    from models.audit_tables import AuditChunk, AuditRun
    from tasks import audit
    from tests.conftest import lock_waiters, wait_for
    from tests.test_audit_record_signed import written_by_plant

    job_id, messages, _ = _audit_chunks(sessions, settings, monkeypatch)
    claim = _claim_of(messages[0])
    with transaction(sessions) as session:
        request_cancel(session, job_id=job_id)
    sibling = sessions()
    sibling.begin()
    try:  # a sibling chunk's batch: its checkpoint holds the job row, its findings are not committed yet
        sibling.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR NO KEY UPDATE"), {"id": job_id})
        run_id = sibling.scalar(select(AuditRun.id).where(AuditRun.job_id == job_id))
        written_by_plant(sibling, sibling.get(AuditRun, run_id), sibling.get(AuditChunk, messages[1][2]), keyring,
                         [FindingRow(None, None, None, "head-rolled-back", "in flight")])
        cancelling = threading.Thread(target=audit._cancel, args=(claim,))
        cancelling.start()
        wait_for(lambda: lock_waiters(engine), what="the cancel to wait on the sibling's checkpoint")
        sibling.commit()
    finally:
        sibling.close()
    cancelling.join(30)
    run = _run(sessions, job_id)
    assert (_job(sessions, job_id).status, run.status) == ("cancelled", "cancelled")
    assert run.summary["by_code"] == {"head-rolled-back": 1} and run.summary["findings"] == 1


def _claim_of(message):
    """The claim a chunk message carries (job, attempt, chunk, hand-backs)."""
    import uuid

    from models.job_lifecycle import JobClaim

    job_id, attempt, _, handbacks = message
    return JobClaim(uuid.UUID(job_id), "audit.run", {}, attempt, handbacks)


def test_a_cancel_never_deadlocks_with_a_sibling_chunk_finishing_its_own(
        sessions, settings, seeded, monkeypatch, engine) -> None:
    """A sibling chunk that completes takes the run row (``chunks_done``), then the job row
    (its checkpoint). The cancelling chunk takes the job row first; waiting for the run row
    after it would close a cycle, and PostgreSQL would abort one of the two. It commits the
    cancel first, then waits for the run, which the sibling lets go once it finds its job ended."""
    import threading

    from models.audit_tables import AuditRun
    from tasks import audit
    from tests.conftest import lock_waiters, wait_for

    job_id, messages, _ = _audit_chunks(sessions, settings, monkeypatch)
    claim = _claim_of(messages[0])
    with transaction(sessions) as session:
        request_cancel(session, job_id=job_id)
    errors = []

    def cancel() -> None:
        try:
            audit._cancel(claim)
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            errors.append(exc)

    sibling = sessions()
    sibling.begin()
    try:
        sibling.execute(update(AuditRun).where(AuditRun.job_id == job_id).values(chunks_done=AuditRun.chunks_done + 1))
        cancelling = threading.Thread(target=cancel)
        cancelling.start()
        wait_for(lambda: not cancelling.is_alive() or lock_waiters(engine), what="the cancel to end or wait")
        sibling.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR NO KEY UPDATE"), {"id": job_id})  # its checkpoint
        sibling.rollback()  # the job is no longer its attempt's: the checkpoint would find it stale
    finally:
        sibling.close()
        cancelling.join(30)
    assert errors == [] and (_job(sessions, job_id).status, _run(sessions, job_id).status) == ("cancelled", "cancelled")


@pytest.mark.parametrize("job_ended", [True, False])
def test_a_chunk_that_finds_its_run_closed_lets_go_if_its_job_ended_and_fails_it_otherwise(
        sessions, settings, seeded, monkeypatch, job_ended) -> None:
    """Closed by its job's own end (a cancel's race): the chunk is a stale attempt, quietly.
    Closed while the job is still this attempt's (someone else's UPDATE of a running run):
    the job fails, saying so, instead of finishing on a summary Plant did not write."""
    from models.audit_tables import AuditRun
    from tasks import audit

    job_id, messages, _ = _audit_chunks(sessions, settings, monkeypatch)
    with transaction(sessions) as session:
        if job_ended:
            session.execute(update(Job).where(Job.id == job_id).values(status="cancelled", finished_at=text("now()")))
        session.execute(update(AuditRun).where(AuditRun.job_id == job_id).values(
            status="succeeded", finished_at=text("now()"), summary={"non_compliant": 0}))
    outcomes = [audit.audit_chunk(*args) for args in messages]
    job = _job(sessions, job_id)
    if job_ended:
        assert job.status == "cancelled" and outcomes[0] == {"chunk": messages[0][2], "skipped": "superseded attempt"}
    else:
        assert job.status == "failed" and job.error["type"] == "/problems/audit-run-closed"


def test_the_sweep_skips_a_run_marked_finished_whose_status_was_left_running(
        sessions, settings, seeded, monkeypatch, keyring) -> None:
    """Such a run (an UPDATE of a running run, outside Plant) cannot be closed again; taken
    by every pass, twenty of them would hold the sweep's general pass up for good."""
    from models.audit_close import close_runs_of_ended_jobs
    from models.audit_tables import AuditRun

    job_id, _, _ = _audit_chunks(sessions, settings, monkeypatch)
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="failed", finished_at=text("now()")))
        session.execute(update(AuditRun).where(AuditRun.job_id == job_id).values(finished_at=text("now()")))
    with transaction(sessions) as session:
        assert close_runs_of_ended_jobs(session, keyring=keyring) == 0


def test_an_audit_chunk_whose_retries_are_spent_leaves_its_job_to_the_sweep(sessions, settings, seeded,
                                                                            monkeypatch) -> None:
    """A chunk whose last retry failed has no message left: its run stops counting as waiting on
    the queue (``chunks_published_attempt`` cleared), so no other audit's batches keep its job
    leased and the sweep republishes it once its lease lapses. While retries are left, the
    chunk comes back and the record stays."""
    from celery.exceptions import Retry
    from sqlalchemy.exc import OperationalError

    from models.audit_tables import AuditRun
    from tasks import audit

    job_id, messages, _ = _audit_chunks(sessions, settings, monkeypatch)

    def published() -> int | None:
        with sessions() as session:
            return session.scalar(select(AuditRun.chunks_published_attempt).where(AuditRun.job_id == job_id))

    assert published() == 1

    def retry(*, exc, countdown, max_retries):  # as Celery's: past max_retries it raises exc itself
        if audit.audit_chunk.request.retries >= max_retries:
            raise exc
        raise Retry(exc=exc, when=countdown)

    monkeypatch.setattr(audit.audit_chunk._get_current_object(), "retry", retry)
    monkeypatch.setattr(audit, "audit_chunk_step", lambda session, **kwargs: (_ for _ in ()).throw(
        OperationalError("SELECT ...", {}, Exception("server closed the connection unexpectedly"))))
    with pytest.raises(Retry):
        audit.audit_chunk(*messages[0])
    assert published() == 1
    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(update={"job_max_attempts": 0}))
    with pytest.raises(OperationalError):
        audit.audit_chunk(*messages[0])
    assert published() == 0  # not NULL: that is a run planned by a release before 0024
    assert _job(sessions, job_id).status == "running"  # left to its lease, and so to the sweep
