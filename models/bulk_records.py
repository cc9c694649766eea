"""A bulk assignment job's records: what it did with each agent, and its outcome.

Each batch records its agents in ``bulk_assignment_moves`` in its own transaction
(:class:`Recorder`), so the outcome of a job retried, cancelled or stopped part-way is
read back from those records and covers every attempt (:func:`result_when_ended` for a
job ended while no attempt runs it). :class:`BulkOutcome` is the result a job reports.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.bulk_apply import SEAT_CHANGED
from models.bulk_plan import Plan, PlannedAgent, similarity
from models.jobs import BulkAssignmentMove

NOT_APPLIED = "not-applied"
NOT_APPLIED_DETAIL = "the job stopped before the batch holding this agent's move ran"


@dataclass(frozen=True)
class BulkOutcome:
    requested: int
    placed: int
    unplaced: list[dict[str, Any]] = field(default_factory=list)
    total_similarity: float = 0.0
    method: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "placed": self.placed,
            "not_placed": len(self.unplaced),
            "unplaced": self.unplaced,
            "total_similarity": round(self.total_similarity, 6),
            "method": self.method,
        }


@dataclass
class Recorder:
    """Records a bulk job's agents in ``bulk_assignment_moves`` and reads its outcome back,
    when the attempt ends or is stopped part-way. ``method`` is that of the plan this
    attempt made, once it made one."""

    job_id: uuid.UUID
    attempt: int
    method: str = ""

    def moves(self, session: Session, plan: Plan, moves: list[tuple[int, int | None]],
              refused: list[dict[str, Any]]) -> None:
        """Each (agent index, team index or None) of ``moves``: seated, unless ``refused``
        (unplaced entries, by agent id) says why not."""
        if not moves:
            return
        why = {entry["agent_id"]: entry for entry in refused}
        rows = []
        for a, t in moves:
            agent, entry = plan.agents[a], why.get(str(plan.agents[a].id))
            seated = t is not None and entry is None
            rows.append(self._row(agent, plan.teams[t].id if seated else None,
                                  similarity(plan.problem, a, t) if seated else None, entry))
        self._upsert(session, rows)

    def left_alone(self, session: Session, moved: list[tuple[PlannedAgent, dict[str, Any]]]) -> None:
        """Record each agent (with its unplaced entry) that the job leaves where another write moved it."""
        if moved:
            self._upsert(session, [self._row(agent, None, None, entry) for agent, entry in moved])

    def _row(self, agent: PlannedAgent, seat: uuid.UUID | None, similarity: float | None,
             entry: dict[str, Any] | None) -> dict[str, Any]:
        """A placed agent's row names its seat; an unplaced one's, where the plan saw it (a retry
        leaves it alone if another write moved it since: :meth:`seen_before`)."""
        return {
            "job_id": self.job_id, "agent_id": agent.id, "agent_name": agent.name, "placed": entry is None,
            "team_id": seat if entry is None else agent.team_id, "similarity": similarity,
            "reason": None if entry is None else entry["reason"], "detail": None if entry is None else entry.get("detail"),
            "attempt": self.attempt,
        }

    def _upsert(self, session: Session, rows: list[dict[str, Any]]) -> None:
        statement = pg_insert(BulkAssignmentMove)
        session.execute(statement.on_conflict_do_update(
            index_elements=["job_id", "agent_id"],
            set_={c: statement.excluded[c] for c in ("agent_name", "placed", "team_id", "similarity", "reason", "detail", "attempt")},
        ), rows)

    def forget_unapplied(self, session: Session) -> None:
        """Drop the ``not-applied`` records of earlier attempts: this attempt plans again every
        agent no attempt seated, and records its own plan's. An agent an earlier plan held that
        this one does not (seated meanwhile by another write, say) was never touched by the job,
        and a succeeded job said it was not applied "because the job stopped"."""
        session.execute(delete(BulkAssignmentMove).where(
            BulkAssignmentMove.job_id == self.job_id, BulkAssignmentMove.reason == NOT_APPLIED,
            BulkAssignmentMove.attempt < self.attempt))

    def settled(self, session: Session) -> set[uuid.UUID]:
        """The agents the job is done with: those an earlier attempt (or round) seated, and those
        it left where another write had moved them meanwhile (``seat-changed``). A retry planned
        the latter anew and moved them, undoing the write the attempt had said it left alone;
        an attempt that ran through does not plan them again either."""
        return set(session.scalars(select(BulkAssignmentMove.agent_id).where(
            BulkAssignmentMove.job_id == self.job_id,
            BulkAssignmentMove.placed | (BulkAssignmentMove.reason == SEAT_CHANGED))))

    def seated_before(self, session: Session) -> int:
        """How many agents the job's earlier attempts seated: they stay in its result, and an
        attempt's progress counts from them."""
        return session.scalar(select(func.count()).select_from(BulkAssignmentMove).where(
            BulkAssignmentMove.job_id == self.job_id, BulkAssignmentMove.placed,
            BulkAssignmentMove.attempt < self.attempt)) or 0

    def seen_before(self, session: Session) -> dict[uuid.UUID, uuid.UUID | None]:
        """Where the earlier attempts' plans saw each agent they did not seat (``team_id`` of an
        unplaced record): the retry leaves one moved since where it is, as the batch holding its
        move would have (``seat-changed``), rather than planning it anew over that other write."""
        rows = session.execute(select(BulkAssignmentMove.agent_id, BulkAssignmentMove.team_id).where(
            BulkAssignmentMove.job_id == self.job_id, ~BulkAssignmentMove.placed, BulkAssignmentMove.attempt < self.attempt))
        return {agent_id: team_id for agent_id, team_id in rows}

    def outcome(self, session: Session) -> BulkOutcome:
        """Every agent the job has recorded, in every attempt: the latest word on each."""
        return _recorded_outcome(session, self.job_id, self.method)


def _recorded_outcome(session: Session, job_id: uuid.UUID, method: str) -> BulkOutcome:
    rows = list(session.scalars(select(BulkAssignmentMove).where(BulkAssignmentMove.job_id == job_id)
                                .order_by(BulkAssignmentMove.agent_id)))
    unplaced = [_unplaced_entry(r.agent_id, r.agent_name, r.reason, r.detail) for r in rows if not r.placed]
    seated = [r.similarity or 0.0 for r in rows if r.placed]
    return BulkOutcome(len(rows), len(seated), unplaced, math.fsum(seated), method)


def result_when_ended(session: Session, job_id: uuid.UUID, reported: dict[str, Any] | None) -> dict[str, Any] | None:
    """The result of a bulk job that a cancel or the sweep ends while no attempt runs it, read
    from its records (``models.job_results``). ``reported`` is its result as it stands, what an
    attempt last reported (at its release for a retry): kept when nothing was recorded (None
    when no attempt reported either). ``method`` is the reported one while the records are as
    that report left them; records it does not cover come from a plan whose worker died before
    reporting it, and its method is not known: ``""``."""
    outcome = _recorded_outcome(session, job_id, method="").as_json()
    if outcome["requested"] == 0 or (reported is not None and {**reported, "method": ""} == outcome):
        return reported
    return outcome


def unplaced_entry_for(agent: PlannedAgent, reason: str, detail: str | None = None) -> dict[str, Any]:
    return _unplaced_entry(agent.id, agent.name, reason, detail)


def _unplaced_entry(agent_id: uuid.UUID, name: str, reason: str | None, detail: str | None) -> dict[str, Any]:
    return {"agent_id": str(agent_id), "name": name, "reason": reason, **({"detail": detail} if detail else {})}
