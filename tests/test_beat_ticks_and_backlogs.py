"""Beat's ticks survive a broker down at the tick and a fire that waits most of an interval, and a
job waiting in a backlog is not republished every minute (stop 37's review of beat and recovery)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from models.settings import load_settings


def _beat_with_broker_down(interval: float):
    """Celery's own beat scheduler over Plant's schedule, whose broker went away after it
    connected: each publish fails as kombu's does then."""
    from celery.beat import Scheduler
    from kombu.exceptions import OperationalError

    from tasks.celery_app import create_celery
    from worker.schedule import beat_schedule

    settings = load_settings(audit_interval_seconds=interval, redis_url="redis://127.0.0.1:9/0")
    app = create_celery(settings)
    app.conf.beat_schedule = {"full-audit": beat_schedule(settings)["full-audit"]}
    scheduler = Scheduler(app=app, lazy=False)
    scheduler.data = {"full-audit": scheduler.schedule["full-audit"]}
    entry = scheduler.schedule["full-audit"]
    entry.last_run_at = entry.default_now() - dt.timedelta(seconds=interval)  # the tick is due
    scheduler.__dict__["producer"] = None  # connected earlier (a first connection waits for the broker)

    def publish_fails(*_, **__):
        raise OperationalError("Error 111 connecting to redis:6379. Connection refused.")

    scheduler.apply_async = publish_fails
    return scheduler


def test_a_scheduled_audit_tick_beat_could_not_send_still_yields_its_audit(worker_sessions, monkeypatch) -> None:
    """Review finding 1. Celery's beat advances an entry before it sends it
    (``Scheduler.reserve``, then ``apply_entry``, which logs and swallows a failed send), so a
    tick whose message could not be published (Redis down or restarting at midnight UTC) is
    gone: the next try is the next boundary, a day later. Nothing on the database side knew
    the tick was due, so that day had no scheduled audit. The recovery sweep, which runs every
    few seconds, now fires a tick whose slot is unclaimed once it is overdue, when the tick
    before it was fired (so a fresh deployment does not start an audit at once)."""
    from models.audit_tables import ScheduledFire
    from models.db import transaction
    from models.jobs import Job
    from tasks import runtime
    from tasks.maintenance import requeue_stale_jobs
    from tests.conftest import SentTasks

    interval = 1e9  # slots at 1970-01-01 and 2001-09-09: the current one is long overdue
    scheduler = _beat_with_broker_down(interval)
    scheduler.tick()  # sends the due tick: the publish fails and is logged
    due, next_check = scheduler.schedule["full-audit"].is_due()
    assert not due and next_check > 3600  # beat will not try that tick again

    monkeypatch.setattr(runtime, "settings", lambda: load_settings(audit_interval_seconds=interval))
    previous = dt.datetime.fromtimestamp(0, dt.UTC)
    current = dt.datetime.fromtimestamp(interval, dt.UTC)
    with transaction(worker_sessions) as session:
        session.add(ScheduledFire(schedule="full-audit", fire_at=previous))
    beat = SentTasks()
    outcome = type(requeue_stale_jobs._get_current_object()).run(beat)
    with worker_sessions() as session:
        fired = session.execute(select(ScheduledFire.fire_at, ScheduledFire.job_id)
                                .where(ScheduledFire.schedule == "full-audit", ScheduledFire.fire_at == current)).one_or_none()
        assert fired is not None, "the tick beat could not send never became an audit"
        job = session.get(Job, fired.job_id)
        assert (job.kind, job.params, job.requested_by) == ("audit.run", {"verify_signatures": "heads"}, "beat:full-audit")
    assert outcome["fired"] == ["full-audit"]
    assert [name for name, *_ in beat.sent] == ["plant.audit.run"]
    # Once claimed, the slot is not fired again, by the sweep or by a late fire from beat.
    assert type(requeue_stale_jobs._get_current_object()).run(SentTasks())["fired"] == []


def test_the_sweep_fires_nothing_for_a_schedule_that_never_fired_or_whose_tick_is_not_overdue(worker_sessions, monkeypatch) -> None:
    from models.audit_tables import ScheduledFire
    from models.db import transaction
    from tasks import runtime
    from tasks.maintenance import requeue_stale_jobs
    from tests.conftest import SentTasks

    monkeypatch.setattr(runtime, "settings", lambda: load_settings(audit_interval_seconds=1e9))
    assert type(requeue_stale_jobs._get_current_object()).run(SentTasks())["fired"] == []  # a fresh deployment
    # Every 10 years: the current slot (2020) is overdue, but the last fire is two slots back
    # (beat was down then: its own catch-up fires the tick, not the sweep).
    monkeypatch.setattr(runtime, "settings", lambda: load_settings(audit_interval_seconds=315_360_000.0))
    with transaction(worker_sessions) as session:
        session.add(ScheduledFire(schedule="full-audit", fire_at=dt.datetime.fromtimestamp(315_360_000.0 * 3, dt.UTC)))
    assert type(requeue_stale_jobs._get_current_object()).run(SentTasks())["fired"] == []


def test_a_job_waiting_in_a_backlog_is_not_republished_every_minute(db_session) -> None:
    """Review finding 2. The lost-message sweep cannot tell a lost message from one still
    waiting in a backlog: every queued job published more than ``PLANT_REQUEUE_AFTER_SECONDS``
    ago is published again, each time that long has passed since the last. A backlog that
    takes T minutes to drain gets about T more messages per waiting job (quadratic in its
    size; the sweep stamps up to 500 jobs per 5 s pass, 6,000 extra messages a minute), each a
    claim that does nothing but costs a worker slot while the backlog it adds to drains. Here
    one job waits 10 minutes behind busy workers, its first message still queued."""
    from sqlalchemy import text

    from models.job_lifecycle import create_job
    from models.job_recovery import claim_lost_messages

    job = create_job(db_session, kind="diagnostics.sleep", params={"seconds": 0}, to_publish=True)
    republished = 0
    for _ in range(120):  # a sweep every 5 s for 10 minutes: move the job's times 5 s back each pass
        db_session.execute(text("UPDATE jobs SET created_at = created_at - interval '5 seconds', "
                                "enqueued_at = enqueued_at - interval '5 seconds' WHERE id = :id"), {"id": job.id})
        republished += len(claim_lost_messages(db_session, older_than=dt.timedelta(minutes=1)))
    assert republished <= 4, f"{republished} extra messages for one job that was never lost"


def test_a_fire_that_waited_most_of_an_interval_still_claims_its_own_tick(worker_sessions, monkeypatch) -> None:
    """README: a fire that waited behind busy workers "claims its own tick, never the next
    one". It goes to the ``default`` queue, behind every job, and named its slot by the clock
    of the worker that ran it, plus a minute for skew: with an hourly schedule, a fire run 59 m
    30 s after its tick claimed the next hour's slot, and that tick's own fire then found it
    taken: one audit for two ticks. Beat now sends its clock with the fire (a BeatLazyFunc,
    evaluated as it sends), and the slot is taken from that."""
    from celery.beat import BeatLazyFunc

    import tasks.audit as audit_tasks
    from tasks.audit import schedule_fire
    from tests.conftest import SentTasks
    from worker.schedule import beat_schedule

    interval = 3600.0
    *_, sent = beat_schedule(load_settings(audit_interval_seconds=interval))["full-audit"]["args"]
    assert isinstance(sent, BeatLazyFunc) and abs(sent() - dt.datetime.now(dt.UTC).timestamp()) < 5
    tick = dt.datetime(2026, 12, 6, 10, tzinfo=dt.UTC)
    late = tick + dt.timedelta(minutes=59, seconds=30)
    assert audit_tasks.fire_slot(late.timestamp(), interval) == tick + dt.timedelta(hours=1)  # by a worker's clock
    monkeypatch.setattr(audit_tasks, "fire", lambda app, sessions, job, slot: {"fire_at": slot.isoformat()})
    fired = type(schedule_fire._get_current_object()).run(SentTasks(), "test-late", "audit.run", {}, interval,
                                                           (tick + dt.timedelta(seconds=2)).timestamp())
    assert fired["fire_at"] == tick.isoformat()


def test_beat_sends_a_recovery_sweep_as_it_starts_not_an_interval_later(settings, tmp_path) -> None:
    """Celery runs an interval entry first once a whole interval has passed: with beat's sweep every
    hour, jobs lost while beat was down waited that hour, and ``/health``'s beat check (the mark a
    completed sweep leaves) read degraded all of it after every deploy. Beat now sends one as it starts."""
    import redis

    from tasks.maintenance import SWEEP_MARK_KEY
    from tests.conftest import wait_for
    from tests.stack import ChaosStack

    stack = ChaosStack(settings, tmp_path, PLANT_REQUEUE_INTERVAL_SECONDS="3600")
    marks = redis.Redis.from_url(stack.settings.redis_url)
    marks.delete(SWEEP_MARK_KEY)
    try:
        stack.start_worker("sweeper", concurrency=1)
        stack.start_beat()
        wait_for(lambda: marks.exists(SWEEP_MARK_KEY), timeout=60, what="the sweep beat sends as it starts")
    finally:
        stack.stop()
        marks.close()
