"""Review of beat and the scheduled work: findings proved by tests."""

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
