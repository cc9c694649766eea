"""Adversarial review of the session 7029a14..HEAD (review-stop39): the bulk job's re-plan of
left-out agents, the audit batches' lease renewals, the bootstrap admin key's rotation.

Each test proves a finding on real PostgreSQL; one still open is marked xfail(strict).
"""

from __future__ import annotations

import uuid

import numpy as np
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from models.assignment import assign_agent
from models.audit_runs import keep_waiting_audits_leased, start_run
from models.bulk_assignment import assign_teams_in_bulk
from models.db import make_session_factory, transaction
from models.entities import Agent, EntityType, Team
from models.job_lifecycle import JobClaim, claim_job, create_job
from models.job_recovery import release_for_retry
from models.jobs import Job
from models.registry import update_entity
from tests.conftest import EMBEDDER
from tests.test_assignment import World


def test_a_bulk_re_plan_leaves_an_agent_another_write_seated_between_its_plans_where_it_was_put(
        engine, write_ctx, committed_steward) -> None:
    """README: a batch moves an agent only if it still sits where the plan saw it; one seated
    meanwhile by another write "is left as that write made it". The re-plan (7a34a64) plans the
    agents the first plan left out again, by id, on the agents as they are then: one that a
    single assignment seated between the two plans was read seated there, and a job over
    *unassigned* agents moved it to the seat the tampered agent's refusal left free."""
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        target, other = world.team("Replan target", capacity=1).id, world.team("Replan other", capacity=1).id
        tampered, clean, filler = (world.agent(f"Replan {name}").id for name in ("tampered", "clean", "filler"))
        assign_agent(session, agent_id=filler, team_id=other, ctx=write_ctx)  # the other team is full
    with transaction(sessions) as session:  # embeddings are no signed content: set to steer the plans
        near = np.asarray(session.scalar(select(Team.embedding).where(Team.id == target)), dtype=np.float64)
        mine = np.asarray(session.scalar(select(Agent.embedding).where(Agent.id == clean)), dtype=np.float64)
        mixed = near + mine
        session.execute(update(Agent).where(Agent.id == tampered).values(embedding=near.tolist()))
        session.execute(update(Agent).where(Agent.id == clean).values(embedding=(mixed / np.linalg.norm(mixed)).tolist()))
        session.execute(update(Team).where(Team.id == other).values(embedding=(-near).tolist()))
        session.execute(text("UPDATE agents SET description = 'edited by hand' WHERE id = :a"), {"a": tampered})
    seated_by_hand: list[uuid.UUID] = []

    def progress(done: int, total: int, message: str) -> None:
        # The first plan's batch committed (the tampered agent refused): an operator frees the other
        # team's seat and seats the clean agent there, by hand, before the job plans again.
        if message == "applying" and not seated_by_hand:
            with transaction(sessions) as session:
                update_entity(session, entity_type=EntityType.AGENT, entity_id=filler, changes={"team_id": None},
                              ctx=write_ctx)
                assign_agent(session, agent_id=clean, team_id=other, ctx=write_ctx)
            seated_by_hand.append(clean)

    outcome = assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx, progress=progress)
    assert seated_by_hand == [clean]
    assert {u["agent_id"]: u["reason"] for u in outcome.unplaced}.get(str(tampered)) == "entity-tampered"
    with sessions() as session:
        where = session.get(Agent, clean).team_id
    assert where == other, f"the job over unassigned agents moved the agent seated by hand to {where}"
