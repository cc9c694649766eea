"""The demo seed: idempotent, realistic in size, and every entity signed and compliant."""

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models.chain_verification import verify_entity
from models.entities import ENTITY_MODELS, Agent, Industry, JobRole, Skill, Team
from models.seed import seed_registry


def test_seed_loads_the_demo_set_once_and_everything_verifies(db_session: Session, write_ctx, keyring) -> None:
    first = seed_registry(db_session, write_ctx)
    counts = {m: db_session.scalar(select(func.count()).select_from(m)) for m in (Industry, Skill, JobRole, Team, Agent)}
    assert counts[Industry] >= 3 and counts[Skill] >= 18 and counts[JobRole] >= 10
    assert counts[Team] >= 6 and counts[Agent] >= 50
    assert sum(first.created.values()) == sum(counts.values())

    again = seed_registry(db_session, write_ctx)
    assert sum(again.created.values()) == 0 and again.steward_id == first.steward_id
    assert {m: db_session.scalar(select(func.count()).select_from(m)) for m in counts} == counts

    for entity_type, model in ENTITY_MODELS.items():
        for entity in db_session.scalars(select(model)):
            result = verify_entity(db_session, entity=entity, keyring=keyring)
            assert result.ok, (entity_type, entity.id, result.findings)
            assert entity.constitution_l0["passed"] and entity.constitution_l1["passed"], entity.id
            assert entity.governance_agent_id == first.steward_id
    # The deferred governance foreign keys hold, as they will at commit.
    db_session.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
