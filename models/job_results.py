"""The result of a job that something other than its own attempt ends.

An attempt writes its job's result when it ends the job or hands it back to the queue
(``finish_job``, ``models.job_recovery``). A cancel (``request_cancel``: a queued job, or one
whose lease expired) and the dead-worker sweep (``rescue_expired``) end jobs that no attempt
is running; most then have nothing to report. A kind whose work commits part by part, each
part recorded with it, has: a bulk assignment's batches seat agents and record them in
``bulk_assignment_moves``. Such a kind names here how its result is read from its records,
and whatever ends one of its jobs writes that result in the same transaction, once it holds
the job's row: no attempt can commit more work under it then (``check_attempt``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from models.jobs import Job

# (session, job id, the job's result as it stands) -> the result it ends with.
ResultWhenEnded = Callable[[Session, uuid.UUID, dict[str, Any] | None], dict[str, Any] | None]


def _bulk_assignment(session: Session, job_id: uuid.UUID, reported: dict[str, Any] | None) -> dict[str, Any] | None:
    # Imported here: models.bulk_records loads numpy and SciPy's solvers (0.4 s, tens of MB),
    # which every process that cancels or sweeps jobs (the API's every worker among them) would
    # otherwise load at start for a job kind it may never end.
    from models.bulk_records import result_when_ended
    return result_when_ended(session, job_id, reported)


RESULT_WHEN_ENDED: Mapping[str, ResultWhenEnded] = {
    "agents.assign_teams": _bulk_assignment,
}


def result_when_ended(session: Session, *, job_id: uuid.UUID, kind: str,
                      reported: dict[str, Any] | None) -> dict[str, Any] | None:
    """The result a job ends with when no attempt ends it: read from its records if its kind
    keeps any, else ``reported`` (its result as it stands). Costs a query only for such a kind."""
    read = RESULT_WHEN_ENDED.get(kind)
    return reported if read is None else read(session, job_id, reported)


def write_results_when_ended(session: Session, ended: Iterable[Any]) -> None:
    """Write the result of each job in ``ended`` (rows of ``id, kind, result``, just ended in
    this transaction, which holds their rows) whose kind reads one from its records."""
    for job in ended:
        if job.kind in RESULT_WHEN_ENDED:
            result = result_when_ended(session, job_id=job.id, kind=job.kind, reported=job.result)
            if result != job.result:
                session.execute(update(Job).where(Job.id == job.id).values(result=result))
