"""Review of job leases, recovery, the outbox and cancellation: what the sweep reads under a
backlog, which clocks its messages are judged by, how it publishes to a broker gone away, which
task may run a job, and where a retried bulk job's progress starts."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text, update
from sqlalchemy.orm import Session

from models.job_lifecycle import create_job, get_job
from models.job_recovery import claim_lost_messages, claim_unpublished, rescue_expired
from models.jobs import Job
from tests.conftest import wait_for

MINUTE = dt.timedelta(minutes=1)
BACKLOG = 100_000


@pytest.fixture
def backlog(engine: Engine) -> Iterator[Session]:
    """A session whose work is rolled back, over a jobs table the planner has statistics for;
    the table is vacuumed and analyzed again afterwards, so later tests plan on what it holds."""
    with engine.connect() as connection:
        outer = connection.begin()
        session = Session(bind=connection)
        try:
            yield session
        finally:
            session.close()
            outer.rollback()
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE jobs"))


def _rows_read(plan: dict[str, Any]) -> int:
    """Rows the scans of a table in an EXPLAIN ANALYZE plan read: those they returned and those
    their filter dropped."""
    read = 0
    if "Relation Name" in plan and "Scan" in plan["Node Type"]:  # not the UPDATE itself
        loops = float(plan.get("Actual Loops", 1))
        read += round((float(plan.get("Actual Rows", 0)) + float(plan.get("Rows Removed by Filter", 0))) * loops)
    return read + sum(_rows_read(child) for child in plan.get("Plans", []))


@pytest.fixture
def rows_read_by_statement(backlog: Session) -> Iterator[list[tuple[str, int]]]:
    """Every query and UPDATE on jobs the session runs, with the rows its scans read (EXPLAIN ANALYZE,
    run first on the same transaction: the statement itself then runs as usual)."""
    seen: list[tuple[str, int]] = []
    connection = backlog.connection()

    @event.listens_for(connection, "before_cursor_execute")
    def explain(_conn: Any, cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if " jobs" in statement and statement.startswith(("SELECT", "UPDATE")):
            cursor.execute("SAVEPOINT explained")
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            plan = cursor.fetchone()[0]
            cursor.execute("ROLLBACK TO SAVEPOINT explained")  # the statement runs for real next
            plan = json.loads(plan) if isinstance(plan, str) else plan
            seen.append((statement, _rows_read(plan[0]["Plan"])))

    yield seen
    event.remove(connection, "before_cursor_execute", explain)


def _fill_jobs(session: Session, *, queued_published_ago: str, republishes: int) -> None:
    """BACKLOG queued jobs published ``queued_published_ago`` (each republished ``republishes``
    times), beside twice as many finished ones, as a busy deployment holds them."""
    session.execute(text(
        "INSERT INTO jobs (kind, params, status, created_at, enqueued_at, finished_at)"
        " SELECT 'diagnostics.sleep', '{}', 'succeeded', now() - interval '1 day', now() - interval '1 day', now()"
        " FROM generate_series(1, :n)"), {"n": 2 * BACKLOG})
    session.execute(text(
        "INSERT INTO jobs (kind, params, status, created_at, enqueued_at, republishes)"
        " SELECT 'diagnostics.sleep', '{}', 'queued', now() - CAST(:ago AS interval), now() - CAST(:ago AS interval), :r"
        " FROM generate_series(1, :n)"), {"n": BACKLOG, "ago": queued_published_ago, "r": republishes})
    session.execute(text("ANALYZE jobs"))


def _sweep(session: Session, seen: list[tuple[str, int]]) -> dict[str, list[int]]:
    """Beat's three recovery passes; the rows each statement of each read."""
    passes = {
        "outbox": lambda: claim_unpublished(session, min_age=dt.timedelta(seconds=2)),
        "lost messages": lambda: claim_lost_messages(session, older_than=MINUTE),
        "dead workers": lambda: rescue_expired(session, max_attempts=5, base=1.0, cap=60.0, older_than=MINUTE),
    }
    read: dict[str, list[int]] = {}
    for name, sweep in passes.items():
        before = len(seen)
        sweep()
        read[name] = [rows for _, rows in seen[before:]]
        assert read[name], f"{name}: no statement on jobs was seen"
    return read


def test_a_sweep_over_a_backlog_of_freshly_published_jobs_reads_none_of_them(backlog, rows_read_by_statement) -> None:
    # 100,000 jobs submitted in a burst wait for busy workers, published 30 s ago: no message is
    # overdue and no job asked to stop, so the sweep, every 5 s, has nothing to read. It read
    # every queued row twice: the planner walked the (status, created_at) index for the lost
    # messages' ORDER BY created_at, and scanned every queued row for a cancel request.
    _fill_jobs(backlog, queued_published_ago="30 seconds", republishes=0)
    read = _sweep(backlog, rows_read_by_statement)
    assert {name: max(rows) for name, rows in read.items()} == {"outbox": 0, "lost messages": 0, "dead workers": 0}


def test_a_sweep_over_a_backlog_reads_only_the_messages_it_republishes(backlog, rows_read_by_statement) -> None:
    # Published 3 minutes ago and once republished since (a 2-minute wait): all are due; the
    # sweep republishes 500 and reads little more.
    _fill_jobs(backlog, queued_published_ago="3 minutes", republishes=1)
    read = _sweep(backlog, rows_read_by_statement)
    assert max(read["lost messages"]) <= 2 * 500 + 100 and max(read["outbox"]) == 0, read  # found, then updated
    # Nothing running, nothing asked to stop: the queued jobs a cancel request could be left on
    # are looked for in the two windows of at most 500 (overdue, never published), not in all.
    assert max(read["dead workers"]) <= 2 * 2 * 500, read


def test_a_queued_job_left_asked_to_stop_is_cancelled_not_published_again(db_session) -> None:
    # Rows a release before cancel requests ended them left (or SQL wrote): the outbox and the
    # lost-message sweep leave them where they are, so they come to the front of the windows
    # the dead-worker sweep looks in, and it cancels them.
    never_published = create_job(db_session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1})
    overdue = create_job(db_session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}, to_publish=True)
    long_ago = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    db_session.execute(update(Job).where(Job.id == never_published.id).values(created_at=long_ago,
                                                                                cancel_requested_at=long_ago))
    db_session.execute(update(Job).where(Job.id == overdue.id).values(enqueued_at=long_ago, cancel_requested_at=long_ago))
    assert claim_unpublished(db_session, min_age=MINUTE) == []
    assert claim_lost_messages(db_session, older_than=MINUTE) == []
    assert rescue_expired(db_session, max_attempts=5, base=0.001, cap=0.001, older_than=MINUTE).cancelled == 2
    assert {get_job(db_session, job.id).status for job in (never_published, overdue)} == {"cancelled"}


def test_a_recovery_sweep_sent_by_a_beat_whose_clock_lags_the_workers_still_runs(
    settings, worker, engine, clean_db, monkeypatch
) -> None:
    # Celery turns a message's `expires` into a time by the sender's clock, and the worker drops
    # the message once its own clock is past it: beat's sweeps expired after 60 s, so a worker whose
    # clock ran a minute or more ahead of beat's dropped every one, and nothing was recovered.
    from tasks.celery_app import create_celery
    from worker.app import RECOVERY_SWEEP
    from worker.schedule import beat_schedule

    with Session(engine) as session, session.begin():
        job = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1})  # in the outbox
        session.execute(update(Job).where(Job.id == job.id).values(created_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))
    beat = create_celery(settings)
    monkeypatch.setattr(beat, "now", lambda: dt.datetime.now(dt.UTC) - 2 * MINUTE)  # beat's clock, behind
    entry = beat_schedule(settings)[RECOVERY_SWEEP]
    beat.send_task(entry["task"], kwargs=entry.get("kwargs"), **entry.get("options", {}))

    def status() -> str | None:
        with Session(engine) as session:
            found = get_job(session, job.id).status
        return found if found == "succeeded" else None

    wait_for(status, timeout=30, what="the outbox job, published by the sweep, to succeed")


def test_a_scheduled_sweep_that_piled_up_behind_busy_workers_returns_at_once(
    worker_sessions, settings, redis_client, monkeypatch
) -> None:
    # With no expiry, what keeps the sweeps beat sent while every worker slot was busy from each
    # running in full, one after another, once a slot frees: a scheduled one skips when another
    # completed within a tenth of an interval, by the age of the mark in Redis (Redis's clock alone).
    from tasks import runtime
    from tasks.maintenance import SWEEP_MARK_KEY, requeue_stale_jobs, sweep_mark_lifetime_seconds
    from tests.conftest import SentTasks

    monkeypatch.setattr(runtime, "settings", lambda: settings)
    monkeypatch.setattr(runtime, "redis_client", lambda: redis_client)
    sweep = type(requeue_stale_jobs._get_current_object()).run
    redis_client.delete(SWEEP_MARK_KEY)
    assert "published" in sweep(SentTasks(), scheduled=True)  # none completed lately: it runs
    assert sweep(SentTasks(), scheduled=True) == {"skipped": "a recovery sweep completed within a tenth of an interval"}
    assert "published" in sweep(SentTasks())  # one sent by hand (not beat's) always runs
    lifetime_ms = int(sweep_mark_lifetime_seconds(settings) * 1000)
    interval_ms = int(settings.requeue_interval_seconds * 1000)
    # One completed a fifth of an interval ago: beat's next, sent on time after a slow sweep, runs.
    redis_client.set(SWEEP_MARK_KEY, lifetime_ms, px=lifetime_ms - interval_ms // 5)
    assert "published" in sweep(SentTasks(), scheduled=True)


def test_a_job_whose_kind_was_edited_through_sql_is_not_run_by_another_kinds_task(
    worker_sessions, settings, monkeypatch
) -> None:
    # The handler is the message's task's; the row's kind named none of it. A sleep job whose
    # row was made to say `skill.certify` was run by the sleep task and ended a `succeeded`
    # certification holding `{"slept": 0.0}`. The claim now takes only a job of the task's own
    # kind: the job stays queued, and the lost-message sweep publishes it to its kind's task.
    from models.db import transaction
    from tasks import runtime
    from tasks.diagnostics import diagnostics_sleep
    from tests.conftest import SentTasks

    monkeypatch.setattr(runtime, "settings", lambda: settings)
    with transaction(worker_sessions) as session:
        job = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}, to_publish=True)
        session.execute(update(Job).where(Job.id == job.id).values(kind="skill.certify"))
    task = diagnostics_sleep._get_current_object()
    outcome = type(task).run(SentTasks(name=task.name), str(job.id))
    with worker_sessions() as session:
        row = get_job(session, job.id)
    assert outcome == {"job_id": str(job.id), "skipped": "not claimable"}
    assert (row.status, row.attempts, row.result) == ("queued", 0, None)


def test_every_job_task_claims_the_kind_it_is_published_for() -> None:
    """The kind a task claims comes from the routes the jobs are published by, so the two cannot
    disagree (each task named its kind a second time, where a typo fenced the kind off for good)."""
    from tasks.dispatch import JOB_ROUTES, KIND_BY_TASK
    from worker.app import JOB_TASKS, build_app

    app = build_app()
    app.loader.import_default_modules()  # as a worker does at start: else only the task modules this process imported
    registered = set(app.tasks)
    assert {KIND_BY_TASK[route.task_name] for route in JOB_ROUTES.values()} == set(JOB_ROUTES)
    assert set(KIND_BY_TASK) <= registered & JOB_TASKS


def test_a_retried_bulk_assignment_s_progress_starts_from_what_earlier_attempts_seated(
    engine, write_ctx, committed_steward, monkeypatch
) -> None:
    # Its earlier attempts' seats stay seated and in its result, and a retry plans only the agents
    # left: its progress restarted at 0 of those (3 of 8 went back to 0 of 6 on the job row).
    from models.bulk_assignment import assign_teams_in_bulk
    from models.bulk_records import Recorder
    from models.errors import TransientJobError
    from tests.test_assignment import _retry_world

    sessions, job_id, _world, lost_at = _retry_world(engine, write_ctx, committed_steward, monkeypatch, agents=8)
    first: list[tuple[int, int | None]] = []
    with pytest.raises(TransientJobError):  # fence 1 records the plan, 2-4 are batches: 3 agents seated
        assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx,
                             progress=lambda done, total, _m=None: first.append((done, total)),
                             fence=lost_at(5), record=Recorder(job_id, 1))
    second: list[tuple[int, int | None]] = []
    assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx,
                         progress=lambda done, total, _m=None: second.append((done, total)),
                         fence=lambda session: None, record=Recorder(job_id, 2))
    assert first[-1][0] == 3
    reports = first + second
    assert all(a[0] <= b[0] for a, b in zip(reports, reports[1:], strict=False)), reports
    assert second[-1][0] == second[-1][1] == 8, second  # the 8 seats, 3 of them taken by the first attempt


class _BrokerGone:
    """Stands in for beat's app: every publish fails, as Redis gone in the middle of a sweep. The
    real one waits up to a read timeout (10 s) on each of three tries before it fails."""

    def __init__(self) -> None:
        self.app = self
        self.tries = 0

    def send_task(self, *_args: Any, **_kwargs: Any) -> None:
        self.tries += 1
        raise ConnectionRefusedError("the broker is gone")


def test_a_sweep_stops_publishing_at_the_first_publish_the_broker_refuses(worker_sessions, settings, monkeypatch) -> None:
    # It went on to the next job, and the next: up to 1,500 publishes of up to 30 s each held a
    # worker slot for hours (the soft time limit ended it after one). The jobs stay stamped as
    # published: the lost-message sweep publishes them once the broker is back.
    from models.db import transaction
    from tasks import runtime
    from tasks.maintenance import requeue_stale_jobs

    monkeypatch.setattr(runtime, "settings", lambda: settings)
    with transaction(worker_sessions) as session:
        for _ in range(3):
            job = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1})
            session.execute(update(Job).where(Job.id == job.id).values(created_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))
    beat = _BrokerGone()
    outcome = type(requeue_stale_jobs._get_current_object()).run(beat)
    assert (outcome["unpublished"], outcome["published"], beat.tries) == (3, 0, 1)
