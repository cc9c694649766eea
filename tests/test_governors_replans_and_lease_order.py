"""Adversarial review of the session 7029a14..HEAD (review-stop39): the bulk job's re-plan of
left-out agents, the audit batches' lease renewals, the bootstrap admin key's rotation.

Each test proves a finding on real PostgreSQL; one still open is marked xfail(strict).
"""

from __future__ import annotations

import uuid

import numpy as np
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from models.assignment import assign_agent
from models.audit_chunks import record_chunks_published
from models.audit_runs import start_run
from models.bulk_assignment import assign_teams_in_bulk
from models.db import make_session_factory, transaction
from models.entities import Agent, EntityType, Team
from models.job_lifecycle import claim_job
from models.job_recovery import release_for_retry
from models.registry import create_entity, update_entity
from tests.conftest import EMBEDDER
from tests.test_assignment import World
from tests.test_audit_leases_and_worker_lost import renewal_of, running_audit


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


def test_an_audit_handed_back_after_a_later_one_began_is_kept_leased_while_its_chunks_wait_behind_that_one(
        engine, keyring, committed_steward) -> None:
    """def5507: a batch renews only the audits whose *run* began after its own, taking the run's
    start for the place of its chunks in the queue. An audit whose worker shut down mid-run (a
    deploy's restart: the attempt hands the job back) or died (the sweep republishes it) is run
    again from its next message, which comes after the audits begun meanwhile; its new attempt
    publishes its chunks behind theirs (one audit worker, first in, first out). Its run began
    first, so their batches no longer renew its lease: it runs out while the job waits, alive, in
    the queue, and the sweep takes it for a dead worker's again (attempts spent, worker-lost)."""
    with Session(engine) as session, session.begin():
        claim = running_audit(session, keyring, worker="shut-down")
        earlier = claim.job_id
    with Session(engine) as session, session.begin():  # begun while the earlier one ran
        me = running_audit(session, keyring, worker="me").job_id
    with Session(engine) as session, session.begin():  # the earlier one's worker shuts down: handed back
        release_for_retry(session, claim=claim, error={"type": "/problems/handed-back"}, handed_back=True)
    with Session(engine) as session, session.begin():  # its next message, behind mine: it republishes its chunks
        again = claim_job(session, job_id=earlier, worker="after-restart", lease_seconds=300)
        assert again is not None and again.attempt == 2
        run = start_run(session, job_id=earlier, params=again.params, keyring=keyring, embedder=EMBEDDER,
                        chunk_entities=1000)
        record_chunks_published(session, run_id=run.id, attempt=again.attempt)
    renewed, left = renewal_of(engine, waiting=earlier, running=me)  # past half its term, its chunks behind mine
    assert renewed == 1 and left > 250, (renewed, left)


def test_a_key_plant_dev_generates_does_not_revoke_the_configured_admin_key(settings, engine, clean_db, tmp_path) -> None:
    """README: "A new configured key (a rotation) revokes the live admin keys named
    `bootstrap-admin` before it". The key `plant dev` generates into its data dir (none
    configured; `DATABASE_URL` may name a database a compose deployment also uses) is no
    configured key, yet it is ensured under the same name and revoked the deployment's
    configured admin key, which every later deploy then leaves revoked."""
    import secrets

    from pydantic import SecretStr

    from cli.bootstrap import ensure_configured_admin, ensure_dev_admin
    from models.api_keys import Caller, authenticate

    configured = f"plant_{secrets.token_urlsafe(32)}"
    assert ensure_configured_admin(settings.model_copy(update={"admin_api_key": SecretStr(configured)})) == "created"
    generated, _ = ensure_dev_admin(settings.model_copy(update={"admin_api_key": None}), tmp_path)
    with Session(engine) as session:
        assert isinstance(authenticate(session, generated), Caller)
        assert isinstance(authenticate(session, configured), Caller), "plant dev's own key revoked the configured one"


def test_a_governor_suspended_by_its_chain_but_set_active_through_sql_is_not_named(
        engine, write_ctx, committed_steward) -> None:
    """README: a write naming a retired or suspended agent as governance agent is 422. The check
    (and governor_fence's re-read) judge the agent's *row*: one suspended through Plant (its signed
    head says so) and set back to active through SQL was named, and the new entity's chain signed
    a governor its own chain says is suspended. Seats are judged on the signed values for this
    reason (a row edited outside Plant is entity-tampered)."""
    import pytest

    from models.errors import EntityTampered, PlantError

    with Session(engine) as session, session.begin():
        steward = session.get(Agent, committed_steward)
        governor = create_entity(session, entity_type=EntityType.AGENT, ctx=write_ctx, data={
            "name": "Suspended Governor", "governance_agent_id": committed_steward, "job_role_id": steward.job_role_id,
            "industry_id": steward.industry_id, "skill_ids": [s.id for s in steward.skills]}).id
    with Session(engine) as session, session.begin():
        update_entity(session, entity_type=EntityType.AGENT, entity_id=governor, changes={"status": "suspended"},
                      ctx=write_ctx)
    with Session(engine) as session, session.begin():
        session.execute(text("UPDATE agents SET status = 'active' WHERE id = :a"), {"a": governor})
    with Session(engine) as session, session.begin(), pytest.raises(PlantError) as refused:
        create_entity(session, entity_type=EntityType.INDUSTRY, ctx=write_ctx, data={
            "name": "Governed By A Tampered Row", "code": "TAMPG", "governance_agent_id": governor})
    assert isinstance(refused.value, EntityTampered) and refused.value.extensions["id"] == str(governor), refused.value


def test_two_agents_each_stood_down_and_handing_governance_to_the_other_do_not_deadlock(
        engine, write_ctx, committed_steward) -> None:
    """governor_fence says its locks close no cycle. A write that suspends an agent and names
    another as its governance agent (handing governance over, as README says to) takes two: the
    named agent's shared, then its own exclusive. Two such writes crossed (A suspended naming B,
    B suspended naming A) took them in opposite orders: each held its shared lock and waited for
    the other's, and PostgreSQL broke the deadlock by failing one (a 500 through the API)."""
    import threading

    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    from models.errors import PlantError

    with Session(engine) as session, session.begin():
        steward = session.get(Agent, committed_steward)
        first, second = (create_entity(session, entity_type=EntityType.AGENT, ctx=write_ctx, data={
            "name": f"Crossed Governor {n}", "governance_agent_id": committed_steward, "job_role_id": steward.job_role_id,
            "industry_id": steward.industry_id, "skill_ids": [s.id for s in steward.skills]}).id for n in (1, 2))
    took_shared = {first: threading.Event(), second: threading.Event()}
    outcomes: dict[uuid.UUID, object] = {}

    def stand_down(agent: uuid.UUID, other: uuid.UUID) -> None:
        with Session(engine) as session:
            try:
                with session.begin():
                    connection = session.connection()

                    def after(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
                        if "pg_advisory_xact_lock_shared" in statement:
                            took_shared[agent].set()

                    def before(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
                        if "pg_advisory_xact_lock(" in statement:  # its exclusive lock: once the other holds its shared
                            took_shared[other].wait(timeout=5)

                    event.listen(connection, "after_cursor_execute", after)
                    event.listen(connection, "before_cursor_execute", before)
                    update_entity(session, entity_type=EntityType.AGENT, entity_id=agent, ctx=write_ctx,
                                  changes={"status": "suspended", "governance_agent_id": other})
                outcomes[agent] = "committed"
            except (PlantError, OperationalError) as exc:
                outcomes[agent] = exc

    threads = [threading.Thread(target=stand_down, args=pair) for pair in ((first, second), (second, first))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    deadlocked = [o for o in outcomes.values() if isinstance(o, OperationalError)]
    assert not deadlocked, deadlocked[0]
    assert sorted(o if isinstance(o, str) else type(o).__name__ for o in outcomes.values()) == ["InvalidInput", "committed"]
