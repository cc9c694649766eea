"""Review of beat's hourly tasks and the job lifecycle: the purge and the digest run whatever the
clocks of beat's and the workers' hosts say, and copies of them that piled up return at once; a
job's outcome, claim, republish and error read true after a lost connection or a refused publish."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from models.audit_tables import LedgerDigest
from models.idempotency import IdempotencyKey
from tests.conftest import refused_port, wait_for

HOURS = dt.timedelta(hours=1)


def _run_keys_cleared(redis_client: redis.Redis) -> None:
    from tasks.beat_runs import RUN_KEY_PREFIX

    for key in redis_client.scan_iter(f"{RUN_KEY_PREFIX}*"):
        redis_client.delete(key)


def _expired_key(session: Session) -> tuple[str, str]:
    owner, key = "review", uuid.uuid4().hex
    past = dt.datetime.now(dt.UTC) - HOURS
    session.add(IdempotencyKey(owner=owner, key=key, request_hash=bytes(32), expires_at=past))
    return owner, key


def _digests(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(LedgerDigest))


@pytest.mark.parametrize("entry", ["purge-idempotency-keys", "ledger-digest"])
def test_an_hourly_task_sent_by_a_beat_whose_clock_lags_the_workers_by_two_hours_still_runs(
    settings, worker, engine, clean_db, redis_client, monkeypatch, entry
) -> None:
    # Each carried `expires` of one interval, which Celery dates by beat's clock and the worker
    # judges by its own: a worker more than an hour ahead of beat dropped every purge and digest.
    from tasks.celery_app import create_celery
    from worker.schedule import beat_schedule

    _run_keys_cleared(redis_client)
    with Session(engine) as session, session.begin():
        owner, key = _expired_key(session)
    beat = create_celery(settings)
    monkeypatch.setattr(beat, "now", lambda: dt.datetime.now(dt.UTC) - 2 * HOURS)
    sent = beat_schedule(settings)[entry]
    beat.send_task(sent["task"], args=sent.get("args"), kwargs=sent.get("kwargs"), **sent.get("options", {}))

    def done() -> bool:
        if entry == "ledger-digest":
            return _digests(engine) == 1
        with Session(engine) as session:
            return session.get(IdempotencyKey, (owner, key)) is None

    wait_for(done, timeout=20, what=f"beat's {entry} to run on the worker")


def test_purges_that_piled_up_behind_busy_workers_run_once(worker_sessions, settings, redis_client, monkeypatch) -> None:
    from models.db import transaction
    from tasks import runtime
    from tasks.maintenance import purge_idempotency_keys

    monkeypatch.setattr(runtime, "settings", lambda: settings)
    monkeypatch.setattr(runtime, "redis_client", lambda: redis_client)
    _run_keys_cleared(redis_client)
    purge = purge_idempotency_keys._get_current_object()
    with transaction(worker_sessions) as session:
        _expired_key(session)
    assert purge.run(scheduled=True) == {"purged": 1}
    with transaction(worker_sessions) as session:
        left = _expired_key(session)
    assert purge.run(scheduled=True) == {"skipped": "a purge ran within a tenth of an interval"}
    with worker_sessions() as session:
        assert session.get(IdempotencyKey, left) is not None  # the piled-up copy did no work


def test_digests_that_piled_up_behind_busy_workers_store_one_digest(
    worker_sessions, settings, engine, redis_client, monkeypatch
) -> None:
    from tasks import runtime
    from tasks.audit import ledger_store_digest

    monkeypatch.setattr(runtime, "settings", lambda: settings)
    monkeypatch.setattr(runtime, "redis_client", lambda: redis_client)
    _run_keys_cleared(redis_client)
    digest = ledger_store_digest._get_current_object()
    assert "digest_id" in digest.run(scheduled=True)
    assert digest.run(scheduled=True) == {"skipped": "a digest ran within a tenth of an interval"}
    assert _digests(engine) == 1
    assert "digest_id" in digest.run()  # one not sent by beat (a test's, an operator's) always runs
    assert _digests(engine) == 2


def test_a_beat_run_holds_off_copies_while_it_runs_and_lets_go_when_it_fails(redis_client, monkeypatch) -> None:
    from tasks import runtime
    from tasks.beat_runs import beat_run, run_key

    monkeypatch.setattr(runtime, "redis_client", lambda: redis_client)
    _run_keys_cleared(redis_client)
    with beat_run("review", 3600.0) as first, beat_run("review", 3600.0) as second:
        assert first and not second  # a copy taken by another worker slot meanwhile
    with pytest.raises(RuntimeError), beat_run("review-fails", 3600.0) as due:
        assert due
        raise RuntimeError("the work failed: its retry, or the next copy, must run")
    with beat_run("review-fails", 3600.0) as due:
        assert due
    assert 0 < redis_client.pttl(run_key("review-fails")) <= 360_000  # a tenth of the interval, by Redis's clock


def test_a_beat_run_that_cannot_reach_redis_runs(monkeypatch) -> None:
    from tasks import runtime
    from tasks.beat_runs import beat_run

    from redis.backoff import NoBackoff
    from redis.retry import Retry

    with refused_port() as port:
        unreachable = redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        monkeypatch.setattr(runtime, "redis_client", lambda: unreachable)
        with beat_run("review", 3600.0) as due:
            assert due


# --- Job outcomes, claims, republishes and errors after lost connections and refused publishes ---

DATABASE = "plant_review_jobs"  # its own: its server processes are killed, as a failover does


@pytest.fixture
def one_connection(settings, make_database, monkeypatch):
    """Task code in this process on a pool of one connection that is never pinged, so a killed
    backend is found by the next statement, as a worker finds it."""
    from models.db import make_engine
    from models.migrate import upgrade_head
    from sqlalchemy.orm import sessionmaker
    from tasks import runtime

    database_settings = settings.model_copy(update={"database_url": make_database(DATABASE),
                                                    "db_ping_after_idle_seconds": 3600.0})
    upgrade_head(database_settings.database_url)
    engine = make_engine(database_settings, pool_size=1)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    monkeypatch.setattr(runtime, "session_factory", lambda: sessions)
    monkeypatch.setattr(runtime, "settings", lambda: database_settings)
    yield sessions
    engine.dispose()


def _connection_killed(pg_admin_url: str, connection) -> None:  # noqa: ANN001 - a Session or Connection
    """Kill this database's server processes, and have ``connection`` find its own dead."""
    import psycopg
    from sqlalchemy import text

    from models.settings import libpq_url

    with psycopg.connect(libpq_url(pg_admin_url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = %s"
                      " AND pid <> pg_backend_pid()", (DATABASE,))
    connection.execute(text("SELECT 1"))


def _queued_job(sessions) -> uuid.UUID:  # noqa: ANN001
    from models.db import transaction
    from models.job_lifecycle import create_job

    with transaction(sessions) as session:
        return create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}).id


def _claimed(sessions, job_id: uuid.UUID):  # noqa: ANN001, ANN202
    from models.db import single_statement
    from models.job_lifecycle import claim_job

    with single_statement(sessions) as connection:
        return claim_job(connection, job_id=job_id, worker="w1", lease_seconds=60)


def test_an_outcome_that_committed_before_its_connection_died_is_recorded_not_superseded(
    one_connection, pg_admin_url, monkeypatch, caplog
) -> None:
    # The retry on a fresh connection found the job no longer running (StaleAttempt), and the
    # worker logged "was superseded; outcome dropped" for an outcome that stood in the row.
    from models.job_lifecycle import get_job
    from models.jobs import JobStatus
    from tasks import runner

    sessions = one_connection
    job_id = _queued_job(sessions)
    claim = _claimed(sessions, job_id)
    real_finish, calls = runner.finish_job, []

    def reply_lost_the_first_time(connection, **kwargs) -> None:  # noqa: ANN001
        calls.append(kwargs["status"])
        real_finish(connection, **kwargs)
        if len(calls) == 1:
            _connection_killed(pg_admin_url, connection)

    monkeypatch.setattr(runner, "finish_job", reply_lost_the_first_time)
    outcome = runner.record_outcome(claim, JobStatus.SUCCEEDED, {"done": 1}, None)
    assert len(calls) == 2 and outcome == {"job_id": str(job_id), "status": "succeeded"}
    assert "superseded" not in caplog.text
    with sessions() as session:
        assert get_job(session, job_id).status == "succeeded"


def test_an_outcome_superseded_while_its_connection_was_down_is_still_dropped(
    one_connection, pg_admin_url, monkeypatch
) -> None:
    from sqlalchemy import update

    from models.jobs import Job, JobStatus
    from tasks import runner

    sessions = one_connection
    job_id = _queued_job(sessions)
    claim = _claimed(sessions, job_id)
    real_finish, calls = runner.finish_job, []

    def died_before_writing(connection, **kwargs) -> None:  # noqa: ANN001
        calls.append(kwargs["status"])
        if len(calls) == 1:  # meanwhile the sweep gave the job to another attempt, which failed it
            with Session(sessions.kw["bind"]) as other, other.begin():
                other.execute(update(Job).where(Job.id == job_id).values(attempts=2, status="failed"))
            _connection_killed(pg_admin_url, connection)
        real_finish(connection, **kwargs)

    monkeypatch.setattr(runner, "finish_job", died_before_writing)
    assert runner.record_outcome(claim, JobStatus.SUCCEEDED, {"done": 1}, None)["skipped"] == "superseded"


def test_a_release_that_committed_before_its_connection_died_still_publishes_the_retry(
    one_connection, pg_admin_url, monkeypatch
) -> None:
    # It sent no message: the job waited for the lost-message sweep (a minute, by default).
    from contextlib import contextmanager

    from models.errors import TransientJobError
    from models.jobs import JobStatus
    from tasks import runner
    from tests.conftest import SentTasks

    sessions, task = one_connection, SentTasks()
    job_id = _queued_job(sessions)
    claim = _claimed(sessions, job_id)
    real_transaction, commits = runner.transaction, []

    @contextmanager
    def reply_lost_the_first_time(factory):  # noqa: ANN001, ANN202
        with real_transaction(factory) as session:
            yield session
        commits.append(1)
        if len(commits) == 1:
            with factory() as after:
                _connection_killed(pg_admin_url, after)

    monkeypatch.setattr(runner, "transaction", reply_lost_the_first_time)
    attempt = runner.Attempt(JobStatus.QUEUED, error=TransientJobError("blip").problem(), retry_after=1.0)
    assert runner._retry_later(task, claim, attempt) == {"job_id": str(job_id), "status": "queued", "retry": 2}
    assert [args for _, args, _, _ in task.sent] == [[str(job_id)]]


class _JobMessage:
    """Stands in for a job task as Celery runs it: its request (custom headers are attributes of
    it, as Celery makes them), and its retry, which records the headers the retry would carry."""

    name = "plant.diagnostics.sleep"

    def __init__(self, **headers: object) -> None:
        from types import SimpleNamespace

        self.request = SimpleNamespace(retries=1 if headers else 0, **headers)
        self.retries: list[dict] = []

    def retry(self, *, exc: BaseException, countdown: float, max_retries: int, headers: dict) -> Exception:
        self.retries.append(headers)
        return RuntimeError("the message is retried")


def test_a_claim_whose_connection_died_twice_is_taken_up_by_the_retried_message(
    one_connection, pg_admin_url, monkeypatch
) -> None:
    # The claim committed, its reply was lost, and the retry on a fresh connection lost its
    # connection too: the message was retried under a new token, found the job running under a
    # live lease, did nothing, and the job waited out its lease (300 s by default) for the sweep.
    from models.job_lifecycle import get_job
    from models.jobs import Job
    from tasks import runner

    sessions = one_connection
    job_id = _queued_job(sessions)
    real_claim, tries = runner.claim_job, []

    def lost_twice(connection, **kwargs):  # noqa: ANN001, ANN202
        tries.append(kwargs["worker"])
        if len(tries) == 1:
            real_claim(connection, **kwargs)
        _connection_killed(pg_admin_url, connection)

    monkeypatch.setattr(runner, "claim_job", lost_twice)
    first = _JobMessage()
    with pytest.raises(RuntimeError, match="retried"):
        runner.run_job(first, str(job_id), lambda claim, progress: {"done": claim.attempt})
    assert len(tries) == 2 and first.retries == [{runner.EARLIER_CLAIMS_HEADER: [tries[0]]}]
    with sessions() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.worker) == ("running", tries[0])

    monkeypatch.setattr(runner, "claim_job", real_claim)
    retried = _JobMessage(**first.retries[0])
    assert runner.run_job(retried, str(job_id), lambda claim, progress: {"done": claim.attempt}) == {
        "job_id": str(job_id), "status": "succeeded"}
    with sessions() as session:
        job = get_job(session, job_id)
        assert (job.status, job.attempts, job.result) == ("succeeded", 1, {"done": 1})
    # A redelivery of the retried message (its run died) finds the row under that run's token,
    # not the one it carries: it does not take the job up again.
    assert runner.run_job(_JobMessage(**first.retries[0]), str(job_id), lambda c, p: {}) == {
        "job_id": str(job_id), "skipped": "not claimable"}


def test_a_refused_republish_does_not_double_the_wait_before_the_next_try(
    worker_sessions, settings, redis_client, monkeypatch
) -> None:
    from sqlalchemy import update

    from models.db import transaction
    from models.job_lifecycle import create_job
    from models.jobs import Job
    from tasks import runtime
    from tasks.maintenance import requeue_stale_jobs
    from tests.conftest import SentTasks

    monkeypatch.setattr(runtime, "settings", lambda: settings)
    monkeypatch.setattr(runtime, "redis_client", lambda: redis_client)
    sweep = type(requeue_stale_jobs._get_current_object()).run
    with transaction(worker_sessions) as session:
        job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0}, to_publish=True).id
    long_ago = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

    def lost_long_ago() -> None:
        with transaction(worker_sessions) as session:
            session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=long_ago))

    lost_long_ago()
    refused = sweep(SentTasks(broker_down=True))
    assert (refused["lost"], refused["published"]) == (1, 0)
    with worker_sessions() as session:
        assert session.get(Job, job_id).republishes == 0  # no message went
    lost_long_ago()
    assert sweep(SentTasks())["published"] == 1
    with worker_sessions() as session:
        assert session.get(Job, job_id).republishes == 1  # one did: the next wait doubles


def _worker_lost_job(db_session):  # noqa: ANN001, ANN202
    from sqlalchemy import update

    from models.job_lifecycle import claim_job, create_job, get_job
    from models.job_recovery import rescue_expired
    from models.jobs import Job

    job_id = create_job(db_session, kind="diagnostics.sleep", params={"seconds": 0}).id
    claim = claim_job(db_session, job_id=job_id, worker="stalled", lease_seconds=60)
    db_session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))
    rescue = rescue_expired(db_session, max_attempts=5, base=0.001, cap=0.001, older_than=dt.timedelta(minutes=1))
    assert [ref.job_id for ref in rescue.republish] == [job_id]
    error = get_job(db_session, job_id).error
    assert (error["type"], error["attempt"]) == ("/problems/worker-lost", 1)
    return claim


def test_a_worker_lost_error_is_cleared_by_a_checkpoint_of_the_attempt_it_was_about(db_session) -> None:
    # Its worker was only stalled: it reports again, renewing its lease (the republished message
    # then finds the job live and does nothing), and the job showed `worker-lost` until it ended.
    from models.job_lifecycle import get_job, report_progress

    claim = _worker_lost_job(db_session)
    assert not report_progress(db_session, claim=claim, done=1, total=2, message="awake", lease_seconds=60)
    job = get_job(db_session, claim.job_id)
    assert (job.status, job.error) == ("running", None)


def test_a_worker_lost_error_stays_while_the_next_attempt_runs(db_session) -> None:
    from models.job_lifecycle import claim_job, get_job, report_progress

    lost = _worker_lost_job(db_session)
    claim = claim_job(db_session, job_id=lost.job_id, worker="next", lease_seconds=60)
    assert claim.attempt == 2
    report_progress(db_session, claim=claim, done=1, total=2, message="retrying", lease_seconds=60)
    assert get_job(db_session, claim.job_id).error["type"] == "/problems/worker-lost"
