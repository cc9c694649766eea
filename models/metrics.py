"""The state the API exposes as metrics, read with a few aggregate queries.

Everything here is counted in PostgreSQL when /metrics reads it, so every API process reports
the same numbers and nothing has to be kept in step with the tables. Only counts, ages
and durations come out, grouped by bounded labels (job kind and status, queue, finding
code and severity): never an id or a name.

Audit choices: run durations cover every ``succeeded`` run (a count and a sum, which only
grow, so ``rate(sum) / rate(count)`` is the mean duration over any window), plus the
latest succeeded run's duration and finish time; findings are those of the latest
succeeded run, i.e. the registry's compliance as last measured (summing over every run
would count one standing problem once per audit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import extract, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from models.audit_tables import AuditFinding, AuditRun
from models.jobs import Job, JobStatus

FINISHED_AUDIT_STATUS = "succeeded"


@dataclass(frozen=True)
class JobCount:
    kind: str
    status: str
    count: int


@dataclass(frozen=True)
class QueueBacklog:
    """Jobs waiting in ``queued`` on one queue, and how long the oldest has waited."""

    queue: str
    queued: int
    oldest_age_seconds: float


@dataclass(frozen=True)
class FindingCount:
    code: str
    severity: str
    count: int


@dataclass(frozen=True)
class AuditStats:
    runs_by_status: dict[str, int]
    finished_runs: int  # status succeeded
    finished_duration_sum_seconds: float
    last_duration_seconds: float | None
    last_finished_at_epoch: float | None
    last_run_findings: tuple[FindingCount, ...]


def job_counts(session: Session) -> list[JobCount]:
    rows = session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))
    return [JobCount(kind, status, count) for kind, status, count in rows]


def queue_backlog(session: Session) -> list[QueueBacklog]:
    """Queued jobs per queue, counted from the rows (published or still in the outbox), and how
    long the one queued longest has waited since it last entered the queue (``queued_at``: a
    job handed back or retried after a long run waits from then, not from its creation)."""
    age = extract("epoch", func.now() - func.min(Job.queued_at))
    rows = session.execute(
        select(Job.queue, func.count(), age).where(Job.status == JobStatus.QUEUED.value).group_by(Job.queue)
    )
    return [QueueBacklog(queue, count, max(float(seconds or 0), 0.0)) for queue, count, seconds in rows]


def _duration() -> ColumnElement[Any]:
    return extract("epoch", AuditRun.finished_at - AuditRun.created_at)


def audit_stats(session: Session) -> AuditStats:
    by_status = dict(session.execute(select(AuditRun.status, func.count()).group_by(AuditRun.status)).all())
    finished = AuditRun.status == FINISHED_AUDIT_STATUS
    count, total = session.execute(
        select(func.count(), func.coalesce(func.sum(_duration()), 0)).where(finished)
    ).one()
    last = session.execute(
        select(AuditRun.id, _duration(), extract("epoch", AuditRun.finished_at))
        .where(finished).order_by(AuditRun.finished_at.desc()).limit(1)
    ).first()
    findings: tuple[FindingCount, ...] = ()
    if last is not None:
        rows = session.execute(
            select(AuditFinding.code, AuditFinding.severity, func.count())
            .where(AuditFinding.run_id == last[0]).group_by(AuditFinding.code, AuditFinding.severity)
        )
        findings = tuple(FindingCount(code, severity, n) for code, severity, n in rows)
    return AuditStats(
        runs_by_status={str(k): int(v) for k, v in by_status.items()},
        finished_runs=int(count),
        finished_duration_sum_seconds=float(total),
        last_duration_seconds=float(last[1]) if last is not None else None,
        last_finished_at_epoch=float(last[2]) if last is not None else None,
        last_run_findings=findings,
    )
