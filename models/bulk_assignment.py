"""Bulk team assignment: one optimal plan for many agents, applied in committed batches.

The plan maximizes, first, how many agents get a seat and then their total similarity
(agent embedding · team embedding) under the eligibility rules and the teams' free
seats (``models.assignment_solver``). It is then applied under the same rules and
locks as a single assignment, so a seat taken meanwhile by someone else shows up as an
unplaced agent with its reason instead of an over-full team. Because it commits per
batch, and applies two batches at a time, it takes a session factory rather than one
session.

This module plans and applies the rounds; the plan's inputs and solve are in
``models.bulk_plan``, one batch's moves and refusals in ``models.bulk_apply``, and the
job's records and outcome in ``models.bulk_records``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from models.assignment_solver import ELIGIBLE_TEAMS_FULL
from models.bulk_apply import DELETED_DETAIL, ENTITY_DELETED, SEAT_CHANGED, apply_batch, seat_changed_detail
from models.bulk_plan import Plan, PlanInputs, PlannedAgent, read_plan_inputs, similarity, solve_plan
from models.bulk_records import NOT_APPLIED, NOT_APPLIED_DETAIL, BulkOutcome, Recorder, unplaced_entry_for
from models.db import transaction
from models.progress import ProgressSink
from models.registry import WriteContext

APPLY_BATCH = 500
APPLY_IN_FLIGHT = 2


def assign_teams_in_bulk(
    sessions: sessionmaker[Session],
    *,
    agent_ids: list[uuid.UUID] | None,
    all_unassigned: bool,
    ctx: WriteContext,
    progress: ProgressSink,
    fence: Callable[[Session], None] = lambda session: None,
    record: Recorder | None = None,
) -> BulkOutcome:
    """Plan, then apply the moves in committed batches, ``APPLY_IN_FLIGHT`` at a time.

    ``fence`` runs first in every batch's transaction: the task checks there that its
    attempt still owns the job (:func:`models.job_lifecycle.check_attempt`), so a worker
    that stalled while its job was ended, re-claimed or asked to stop starts no further
    batch, and holds the job row until the batch commits, so the job cannot change hands
    under a batch in flight.

    Batches never share an agent or a team (see :func:`_batches`), so the ones in flight
    never wait on each other's row locks; running two lets one batch's Python work
    overlap the other's time in the database (mostly index maintenance on the agent
    rows). Progress is reported, and cancellation honoured, as batches finish: on
    cancellation the batches not started are dropped and those in flight complete.

    With ``record`` (a job's :class:`models.bulk_records.Recorder`), the agents the plan
    leaves out and each batch's agents are recorded in the same transactions as the
    batches, and the outcome is read back from those records: it then covers every attempt
    of the job, not only this one. A retry plans only the agents no earlier attempt seated or left where another
    write had put it (``seat-changed``): it does what an attempt that ran through would.

    A move a batch refuses leaves its planned seat empty; when the plan left agents out for
    want of a seat, they are planned again on the seats as they then are (up to
    ``MAX_ROUNDS`` plans), so an agent edited outside Plant takes no seat from a clean one.
    """
    rounds = _rounds(sessions, agent_ids=agent_ids, all_unassigned=all_unassigned, ctx=ctx, progress=progress,
                     fence=fence, record=record)
    return _outcome(sessions, rounds, record)


def _rounds(
    sessions: sessionmaker[Session], *, agent_ids: list[uuid.UUID] | None, all_unassigned: bool, ctx: WriteContext,
    progress: ProgressSink, fence: Callable[[Session], None], record: Recorder | None,
) -> list[_Round]:
    """The first plan and its batches, then the plans made again while batches refuse moves and
    so free seats, up to ``MAX_ROUNDS`` plans in all."""
    first = _plan_and_apply(sessions, agent_ids=agent_ids, all_unassigned=all_unassigned, ctx=ctx, progress=progress,
                            fence=fence, record=record, before=_seated_before(sessions, record))
    rounds = [first]
    # A move the batches refused (an agent edited outside Plant, a seat taken meanwhile) left its
    # seat empty, while the plan may have left agents out for want of one: plan those again, on
    # the seats as they are now. Nothing more runs when every planned move was applied.
    while len(rounds) < MAX_ROUNDS and rounds[-1].refused and (waiting := rounds[-1].left_out_for_seats()):
        rounds.append(_plan_and_apply(sessions, agent_ids=list(waiting), all_unassigned=False, ctx=ctx, progress=progress,
                                      fence=fence, record=record, before=rounds[-1].progress_after, seen=waiting))
    return rounds


def _seated_before(sessions: sessionmaker[Session], record: Recorder | None) -> tuple[int, int]:
    """The progress (done, total) an attempt starts from: the agents its job's earlier attempts
    seated, which a retry does not plan again. From 0, a retry's progress went back on the job row."""
    if record is None:
        return 0, 0
    with sessions() as session:
        seated = record.seated_before(session)
    return seated, seated


def _outcome(sessions: sessionmaker[Session], rounds: list[_Round], record: Recorder | None) -> BulkOutcome:
    """The job's outcome: read back from its records (every attempt's) when it keeps them, else
    from this attempt's rounds."""
    if record is not None:
        with sessions() as session:
            return record.outcome(session)
    first = rounds[0]
    unplaced: dict[str, dict[str, Any]] = {}
    seats: list[float] = []
    for one in rounds:  # a later round's word on an agent replaces an earlier one's
        refused = {entry["agent_id"] for entry in one.refused}
        for entry in (*one.unplaced, *one.refused):
            unplaced[entry["agent_id"]] = entry
        for a, t in one.plan.placements.items():
            if str(one.plan.agents[a].id) not in refused:
                unplaced.pop(str(one.plan.agents[a].id), None)
                seats.append(similarity(one.plan.problem, a, t))
    return BulkOutcome(len(first.plan.agents), len(seats), list(unplaced.values()), math.fsum(seats), first.plan.method)


# How many times a bulk job plans: the first plan, then again for the agents it left out for
# want of a seat while its batches refused moves (which freed seats), as long as they do.
MAX_ROUNDS = 3


@dataclass(frozen=True)
class _Round:
    plan: Plan
    unplaced: list[dict[str, Any]]  # the agents the plan left out, with its reasons
    refused: list[dict[str, Any]]  # the moves the batches refused, with theirs
    progress_after: tuple[int, int]

    def left_out_for_seats(self) -> dict[uuid.UUID, uuid.UUID | None]:
        """The agents the plan left out for want of a seat, each with the team it saw it in."""
        return {self.plan.agents[a].id: self.plan.agents[a].team_id
                for a, reason in sorted(self.plan.unplaced.items()) if reason == ELIGIBLE_TEAMS_FULL}


def _plan_and_apply(
    sessions: sessionmaker[Session], *, agent_ids: list[uuid.UUID] | None, all_unassigned: bool, ctx: WriteContext,
    progress: ProgressSink, fence: Callable[[Session], None], record: Recorder | None,
    before: tuple[int, int] = (0, 0), seen: Mapping[uuid.UUID, uuid.UUID | None] | None = None,
) -> _Round:
    """One plan and its batches. ``before`` is the progress (done, total) of earlier rounds;
    ``seen``, for a plan made again, where the earlier plan saw each agent: one another write
    seated, moved or unseated since is left as that write made it, not planned again. A retry's
    first plan does the same with where the earlier attempts' plans saw the agents they did not
    seat, and records those moved since as ``seat-changed``, as their batch would have."""
    inputs, moved = _plan_inputs(sessions, agent_ids=agent_ids, all_unassigned=all_unassigned, ctx=ctx, record=record,
                                 seen=seen)
    plan = solve_plan(inputs)  # its connection is back in the pool, and no snapshot is held, while it solves
    if record is not None and not record.method:
        record.method = plan.method
    unplaced = [_left_out(plan.agents[i], reason) for i, reason in sorted(plan.unplaced.items())] + [m for _, m in moved]
    batches = _batches(plan.placements)
    done, total = before[0], before[1] + len(plan.placements)
    progress(done, total, "plan computed")  # renews the lease after the solve, before any fence
    if record is not None:
        _record_plan(sessions, plan, moved, unplaced, fence=fence, record=record)
    refused, done = _apply_batches(sessions, plan, batches, ctx=ctx, fence=fence, record=record, progress=progress,
                                   done=done, total=total)
    return _Round(plan, unplaced, refused, (done, total))


def _plan_inputs(
    sessions: sessionmaker[Session], *, agent_ids: list[uuid.UUID] | None, all_unassigned: bool, ctx: WriteContext,
    record: Recorder | None, seen: Mapping[uuid.UUID, uuid.UUID | None] | None,
) -> tuple[PlanInputs, list[tuple[PlannedAgent, dict[str, Any]]]]:
    """The plan's inputs, less the agents an earlier attempt settled and those another write
    moved since an earlier plan saw them; and those a retry finds so moved, as ``seat-changed``."""
    with sessions() as session:
        # Given or unassigned: an agent an earlier attempt seated may have been unseated since.
        settled = record.settled(session) if record is not None else set()
        earlier = record.seen_before(session) if record is not None and seen is None else {}
        if agent_ids:
            agent_ids = [agent_id for agent_id in agent_ids if agent_id not in settled]
        inputs = read_plan_inputs(session, agent_ids=agent_ids, all_unassigned=all_unassigned, excluding=settled,
                                  keyring=ctx.keyring)
    moved = [_seat_changed(agent, earlier[agent.id], "since an earlier attempt of the job planned it")
             for agent in inputs.agents if agent.id in earlier and earlier[agent.id] != agent.team_id]
    if looked := {**earlier, **(seen or {})}:
        kept = [i for i, agent in enumerate(inputs.agents) if looked.get(agent.id, agent.team_id) == agent.team_id]
        inputs = replace(inputs, agents=[inputs.agents[i] for i in kept], agent_vectors=inputs.agent_vectors[kept])
    return inputs, moved


def _record_plan(
    sessions: sessionmaker[Session], plan: Plan, moved: list[tuple[PlannedAgent, dict[str, Any]]],
    unplaced: list[dict[str, Any]], *, fence: Callable[[Session], None], record: Recorder,
) -> None:
    """Record every agent of the plan, in one fenced transaction, before any batch runs."""
    # Every agent of the plan is recorded before any batch: those it leaves out with their
    # reason, and those it places as not applied yet, which their batch's record replaces.
    # A job stopped part-way (a cancel, its time limit, a failure) so still accounts for
    # every agent it was asked to place: those whose batch never ran say so.
    waiting = [unplaced_entry_for(plan.agents[a], NOT_APPLIED, NOT_APPLIED_DETAIL) for a in sorted(plan.placements)]
    with transaction(sessions) as session:
        fence(session)
        record.forget_unapplied(session)  # an earlier attempt's plan: this one's replaces it
        record.left_alone(session, moved)
        record.moves(session, plan, [(i, None) for i in sorted({*plan.unplaced, *plan.placements})],
                     unplaced + waiting)


def _apply_batches(
    sessions: sessionmaker[Session], plan: Plan, batches: list[list[tuple[int, int]]], *, ctx: WriteContext,
    fence: Callable[[Session], None], record: Recorder | None, progress: ProgressSink, done: int, total: int,
) -> tuple[list[dict[str, Any]], int]:
    """Apply the batches, ``APPLY_IN_FLIGHT`` at a time, reporting progress as each finishes:
    the moves they refused, and ``done`` plus the moves of every batch."""
    refused: list[list[dict[str, Any]]] = [[] for _ in batches]
    with ThreadPoolExecutor(max_workers=APPLY_IN_FLIGHT, thread_name_prefix="bulk-apply") as pool:
        futures = {pool.submit(_apply_committed, sessions, plan, batch, ctx, fence, record): i
                   for i, batch in enumerate(batches)}
        try:
            for future in as_completed(futures):
                refused[futures[future]] = future.result()
                done += len(batches[futures[future]])
                progress(done, total, "applying")
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [entry for batch in refused for entry in batch], done


def _batches(placements: dict[int, int]) -> list[list[tuple[int, int]]]:
    """The (agent, team) moves in batches of about ``APPLY_BATCH``, cut between teams.

    Every agent has one move and all moves into a team share a batch, so no two batches
    lock the same row. (Were they to share one, the second would only wait: every batch
    locks its agents and then its teams in id order.)
    """
    by_team: dict[int, list[tuple[int, int]]] = {}
    for agent, team in sorted(placements.items()):
        by_team.setdefault(team, []).append((agent, team))
    batches: list[list[tuple[int, int]]] = [[]]
    for team in sorted(by_team):
        if len(batches[-1]) >= APPLY_BATCH:
            batches.append([])
        batches[-1] += by_team[team]
    return [batch for batch in batches if batch]


def _apply_committed(
    sessions: sessionmaker[Session], plan: Plan, batch: list[tuple[int, int]], ctx: WriteContext,
    fence: Callable[[Session], None], record: Recorder | None = None,
) -> list[dict[str, Any]]:
    """One batch in its own transaction (with its record); the refused moves as unplaced entries."""
    agents = {plan.agents[a].id: plan.agents[a] for a, _ in batch}
    with transaction(sessions) as session:
        fence(session)
        refused = apply_batch(session, [(plan.agents[a].id, plan.teams[t].id) for a, t in batch], ctx=ctx,
                              seated={plan.agents[a].id: plan.agents[a].team_id for a, _ in batch})
        entries = [unplaced_entry_for(agents[agent_id], reason, detail=detail) for agent_id, reason, detail in refused]
        if record is not None:
            record.moves(session, plan, list(batch), entries)
    return entries


def _left_out(agent: PlannedAgent, reason: str) -> dict[str, Any]:
    """The unplaced entry of an agent the plan left out: a deleted one says so (``entity-deleted``,
    as a single assignment's 409 and a batch name it), not that no team would take it."""
    if agent.deleted:
        return unplaced_entry_for(agent, ENTITY_DELETED, DELETED_DETAIL)
    return unplaced_entry_for(agent, reason)


def _seat_changed(agent: PlannedAgent, seen: uuid.UUID | None, when: str) -> tuple[PlannedAgent, dict[str, Any]]:
    return agent, unplaced_entry_for(agent, SEAT_CHANGED, seat_changed_detail(seen, agent.team_id, when))
