"""A registry job's attempt fences its own writes: a worker that stalled while its job was
re-claimed by another attempt commits nothing, in certification, single and bulk assignment.

The task functions run in this process against the test database (the process-wide
session factory, keyring and embedder point at it); the job rows are real.
"""

import datetime as dt
import threading
import uuid

import pytest
from sqlalchemy import text, update

from models.db import make_session_factory, transaction
from models.entities import Agent, EntityType, Skill
from models.errors import StaleAttempt
from models.job_lifecycle import JobClaim, claim_job, create_job
from models.jobs import Job
from tasks import registry_jobs, runtime
from tasks.runner import FINISHED
from tests.test_assignment import World
from tests.conftest import SentTasks, lock_waiters, wait_for
from tests.test_certification import GOOD


@pytest.fixture
def sessions(worker_sessions):
    return worker_sessions


def _expire_lease(session, job_id: uuid.UUID) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=text("now() - interval '1 hour'")))


def _stale_claim(sessions, kind: str, params: dict) -> JobClaim:
    """Attempt 1's claim, after its lease ran out and attempt 2 claimed the job."""
    with transaction(sessions) as session:
        job = create_job(session, kind=kind, params=params)
        stalled = claim_job(session, job_id=job.id, worker="stalled", lease_seconds=60)
        _expire_lease(session, job.id)
        assert claim_job(session, job_id=job.id, worker="rescuer", lease_seconds=60).attempt == 2
    return stalled


@pytest.fixture
def world(sessions, write_ctx, committed_steward):
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        world.teams = [world.team(f"Fenced team {i}", capacity=2).id for i in range(2)]
        world.agents = [world.agent(f"Fenced agent {i}").id for i in range(3)]
        world.draft = world.make(EntityType.SKILL, name="Fenced Skill", skill_key="fenced-skill", category="technical",
                                 description=GOOD).id
    return world


def test_a_stale_certification_attempt_certifies_nothing(sessions, world) -> None:
    claim = _stale_claim(sessions, "skill.certify", {"skill_id": str(world.draft)})
    with pytest.raises(StaleAttempt):
        registry_jobs._certify(claim, lambda *_: None)
    with sessions() as session:
        skill = session.get(Skill, world.draft)
        assert (skill.status, skill.version) == ("draft", 1)


def test_a_stale_assignment_attempt_seats_nobody(sessions, world) -> None:
    claim = _stale_claim(sessions, "agent.assign_team", {"agent_id": str(world.agents[0]), "team_id": str(world.teams[0])})
    with pytest.raises(StaleAttempt):
        registry_jobs._assign(claim, lambda *_: None)
    with sessions() as session:
        assert session.get(Agent, world.agents[0]).team_id is None


def test_a_stale_bulk_assignment_attempt_seats_nobody(sessions, world) -> None:
    claim = _stale_claim(sessions, "agents.assign_teams", {"agent_ids": [str(a) for a in world.agents]})
    with pytest.raises(StaleAttempt):
        registry_jobs._assign_bulk(claim, lambda *_: None)
    with sessions() as session:
        assert all(session.get(Agent, agent_id).team_id is None for agent_id in world.agents)


@pytest.mark.parametrize("last_attempt", [False, True])
def test_a_bulk_attempt_whose_lease_expired_hands_the_job_back_before_its_next_batch(
        sessions, world, settings, monkeypatch, last_attempt) -> None:
    """Its worker stalled past the lease between batches: no further batch, and the job is
    released and republished once, even on the last allowed attempt (not failed)."""
    from models.errors import JobHandedBack
    from tasks import runner

    claim = _claimed(sessions, "agents.assign_teams", {"agent_ids": [str(a) for a in world.agents]})
    max_attempts = claim.attempt if last_attempt else settings.job_max_attempts
    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(update={"job_max_attempts": max_attempts}))
    with transaction(sessions) as clock:
        _expire_lease(clock, claim.job_id)
    with pytest.raises(JobHandedBack):
        registry_jobs._assign_bulk(claim, lambda *_: None)
    attempt = runner._execute(claim, registry_jobs._assign_bulk, runner.RowProgress.for_worker(claim))
    task = SentTasks()
    assert runner._retry_later(task, claim, attempt)["status"] == "queued"
    assert [(queue, countdown) for _, _, queue, countdown in task.sent] == [("default", 0.0)]
    with sessions() as session:
        job = session.get(Job, claim.job_id)
        assert (job.status, job.worker, job.error["type"]) == ("queued", None, "/problems/job-handed-back")
        assert all(session.get(Agent, agent_id).team_id is None for agent_id in world.agents)


def test_the_live_attempt_does_the_work(sessions, world) -> None:
    with transaction(sessions) as session:
        job = create_job(session, kind="agents.assign_teams", params={"agent_ids": [str(a) for a in world.agents]})
        claim = claim_job(session, job_id=job.id, worker="live", lease_seconds=60)
    outcome = registry_jobs._assign_bulk(claim, lambda *_: None)
    assert outcome["placed"] == 3
    with sessions() as session:
        assert all(isinstance(session.get(Agent, agent_id).team_id, uuid.UUID) for agent_id in world.agents)


def test_a_cancel_that_waits_on_a_certification_finds_it_finished(sessions, world, engine, monkeypatch) -> None:
    # The attempt stalled past its lease, so a cancel would end the job at once; it comes
    # while the certification's transaction holds the attempt, and waits. The job's
    # outcome commits with the certificate: the cancel then finds a finished job.
    import threading

    from models.errors import JobNotCancellable
    from models.job_control import request_cancel
    from models.job_lifecycle import get_job
    from tests.conftest import wait_for

    with transaction(sessions) as session:
        job = create_job(session, kind="skill.certify", params={"skill_id": str(world.draft)})
        claim = claim_job(session, job_id=job.id, worker="stalled", lease_seconds=60)
        _expire_lease(session, job.id)
    certified, release = threading.Event(), threading.Event()
    real_certify = registry_jobs.certify_skill

    def certify_then_pause(*args, **kwargs):
        outcome = real_certify(*args, **kwargs)
        certified.set()
        assert release.wait(30)
        return outcome

    monkeypatch.setattr(registry_jobs, "certify_skill", certify_then_pause)
    results: dict[str, object] = {}

    def work() -> None:
        results["work"] = registry_jobs._certify(claim, lambda *_: None)

    def cancel() -> None:
        try:
            with transaction(sessions) as session:
                results["cancel"] = request_cancel(session, job_id=job.id).status
        except JobNotCancellable as exc:
            results["cancel"] = exc

    worker, canceller = threading.Thread(target=work), threading.Thread(target=cancel)
    worker.start()
    try:
        assert certified.wait(30)
        canceller.start()
        wait_for(lambda: lock_waiters(engine), what="the cancel to wait on the job row")
    finally:
        release.set()
        worker.join(30)
        if canceller.ident is not None:
            canceller.join(30)
    with sessions() as session:
        assert (get_job(session, job.id).status, session.get(Skill, world.draft).status) == ("succeeded", "certified")
    assert isinstance(results["cancel"], JobNotCancellable), results
    assert results["work"] is FINISHED  # run_job records nothing more


def _claimed(sessions, kind: str, params: dict) -> JobClaim:
    with transaction(sessions) as session:
        job = create_job(session, kind=kind, params=params)
        return claim_job(session, job_id=job.id, worker="live", lease_seconds=60)


@pytest.mark.parametrize("kind", ["skill.certify", "agents.assign_teams"])
def test_a_cancel_asked_before_the_work_starts_is_honoured(sessions, world, kind) -> None:
    # Neither job has a progress checkpoint before it writes: the fence is where it looks.
    from models.errors import JobCancelled
    from models.job_control import request_cancel

    params = {"skill_id": str(world.draft)} if kind == "skill.certify" else {"agent_ids": [str(a) for a in world.agents]}
    claim = _claimed(sessions, kind, params)
    with transaction(sessions) as session:
        assert request_cancel(session, job_id=claim.job_id).status == "running"  # asked; the attempt is live
    handler = registry_jobs._certify if kind == "skill.certify" else registry_jobs._assign_bulk
    with pytest.raises(JobCancelled):
        handler(claim, lambda *_: None)
    with sessions() as session:
        assert session.get(Skill, world.draft).status == "draft"
        assert all(session.get(Agent, agent_id).team_id is None for agent_id in world.agents)


def test_a_bulk_batch_checks_its_attempt_without_holding_up_the_job_row(sessions, world) -> None:
    # Progress writes and cancel requests update the job row while batches run.
    from models.job_control import request_cancel
    from models.job_lifecycle import check_attempt, report_progress

    claim = _claimed(sessions, "agents.assign_teams", {"agent_ids": [str(a) for a in world.agents]})
    with transaction(sessions) as batch:
        check_attempt(batch, claim=claim)  # as a batch's transaction starts
        with transaction(sessions) as progress:
            progress.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert report_progress(progress, claim=claim, done=1, total=3, message="applying", lease_seconds=60) is False
        with transaction(sessions) as cancel:
            cancel.execute(text("SET LOCAL lock_timeout = '2s'"))
            asked = request_cancel(cancel, job_id=claim.job_id)
            assert asked.status == "running" and asked.cancel_requested_at is not None


@pytest.mark.parametrize("takes_it", ["claim", "cancel"])
def test_a_bulk_job_does_not_change_hands_while_a_batch_of_its_attempt_is_in_flight(
        sessions, world, engine, takes_it) -> None:
    """Its lease ran out (the worker stalled mid-batch): a new attempt's claim, or a cancel
    that ends the job at once, waits for the batch to commit, so no batch ever commits after
    its attempt lost the job. The sweep skips the row meanwhile, and no further batch of the
    old attempt starts (it would keep the job from changing hands for the rest of its run)."""
    from models.errors import JobHandedBack
    from models.job_control import request_cancel
    from models.job_lifecycle import check_attempt
    from models.job_recovery import rescue_expired

    claim = _claimed(sessions, "agents.assign_teams", {"agent_ids": [str(a) for a in world.agents]})
    outcome: dict[str, object] = {}

    def take() -> None:
        try:
            with transaction(sessions) as session:
                outcome["pid"] = session.scalar(text("SELECT pg_backend_pid()"))
                if takes_it == "claim":
                    outcome["by"] = claim_job(session, job_id=claim.job_id, worker="rescuer", lease_seconds=60)
                else:
                    outcome["by"] = request_cancel(session, job_id=claim.job_id).status
        except BaseException as exc:  # noqa: BLE001 - shown by the test's thread below
            outcome["error"] = exc

    def waiting_for(blocker: int) -> bool:
        if "error" in outcome:
            raise AssertionError(f"the {takes_it} failed") from outcome["error"]  # type: ignore[misc]
        with engine.connect() as connection:
            pid = outcome.get("pid")
            return pid is not None and blocker in connection.scalar(text("SELECT pg_blocking_pids(:pid)"), {"pid": pid})

    taker = threading.Thread(target=take)
    try:
        with transaction(sessions) as batch:
            check_attempt(batch, claim=claim)
            batch_pid = batch.scalar(text("SELECT pg_backend_pid()"))
            with transaction(sessions) as clock:
                _expire_lease(clock, claim.job_id)
            with transaction(sessions) as sweep:
                rescued = rescue_expired(sweep, max_attempts=5, base=0, cap=0, older_than=dt.timedelta(0))
            assert (rescued.republish, rescued.failed, rescued.cancelled) == ([], 0, 0)
            taker.start()
            wait_for(lambda: waiting_for(batch_pid), what=f"the {takes_it} waiting for the batch")
            with pytest.raises(JobHandedBack), transaction(sessions) as next_batch:
                check_attempt(next_batch, claim=claim)
            assert "by" not in outcome and "error" not in outcome
    finally:
        if taker.ident is not None:  # started
            taker.join(timeout=30)
    assert not taker.is_alive() and "error" not in outcome, outcome.get("error")
    if takes_it == "claim":
        assert outcome["by"] is not None and outcome["by"].attempt == claim.attempt + 1
    else:
        assert outcome["by"] == "cancelled"


def test_a_redelivered_message_for_a_live_job_waits_for_no_lock(sessions, world) -> None:
    """The claim locks only a claimable row: a duplicate message finds a live job held by
    its attempt (a certification's FOR SHARE, a batch's FOR KEY SHARE) and does nothing, at once."""
    from models.job_lifecycle import check_attempt, hold_attempt

    for fence in (hold_attempt, check_attempt):
        claim = _claimed(sessions, "agents.assign_teams", {"agent_ids": [str(a) for a in world.agents]})
        with transaction(sessions) as work, transaction(sessions) as duplicate:
            fence(work, claim=claim)
            duplicate.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert claim_job(duplicate, job_id=claim.job_id, worker="duplicate", lease_seconds=60) is None


def test_a_worker_frozen_inside_a_batch_holds_up_a_claim_only_until_the_server_ends_its_session(
        sessions, world, engine, settings) -> None:
    """A process that stopped inside a batch's transaction keeps the job row locked: the server
    ends its session after ``PLANT_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS`` (1 min by default; 0.5 s
    here), and the claim that waited takes the job."""
    from sqlalchemy.exc import DBAPIError

    from models.db import make_engine
    from models.job_lifecycle import check_attempt
    from tasks.runner import is_transient

    with engine.connect() as connection:
        assert connection.scalar(text("SHOW idle_in_transaction_session_timeout")) == "1min"
    claim = _claimed(sessions, "agents.assign_teams", {"agent_ids": [str(a) for a in world.agents]})
    frozen_engine = make_engine(settings.model_copy(update={"db_idle_in_transaction_timeout_ms": 500}), pool_size=1)
    frozen = make_session_factory(frozen_engine)()
    try:
        check_attempt(frozen, claim=claim)  # a batch began, and its process stopped
        with transaction(sessions) as clock:
            _expire_lease(clock, claim.job_id)
        with transaction(sessions) as rescuer:
            rescuer.execute(text("SET LOCAL lock_timeout = '10s'"))  # without the timeout: LockNotAvailable
            taken = claim_job(rescuer, job_id=claim.job_id, worker="rescuer", lease_seconds=60)
        assert taken is not None and taken.attempt == claim.attempt + 1
        with pytest.raises(DBAPIError, match="idle-in-transaction timeout") as ended:
            frozen.execute(text("SELECT 1"))  # the process wakes to find its session gone
        assert is_transient(ended.value)  # so its attempt ends as a retry, which finds the job taken
    finally:
        frozen.close()
        frozen_engine.dispose()
