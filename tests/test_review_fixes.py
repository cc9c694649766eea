"""Review of this session's fixes (review-fixes): each test shows a defect found in them."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from models.entities import EntityType
from models.ledger import store_digest
from models.registry import update_entity
from models.repair import NotRestorable, repairs
from tests.test_assignment import World
from tests.test_audit import lift_guard
from tests.test_repair import _restore, _sql

E = EntityType


@pytest.fixture
def world(db_session, write_ctx, steward) -> World:
    return World(db_session, write_ctx, steward)


def test_a_rollback_is_still_refused_once_a_later_digest_held_it_back(world, db_session, write_ctx, keyring) -> None:
    """Finding 1. A digest holds the skill at version 2; its owner deletes version 2 past the
    guard and points the row at version 1 (its content left as version 2 had it). The next
    hourly digest holds the entity back at its trusted link with version 0 ("a link its chain
    lost", models.digest_check._held); _digest_head_lost skipped every leaf of version 0, so
    from then on the restore set the row back to version 1 and signed a repair record vouching
    for the rollback, as before the fix."""
    skill = world.skills[0]
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "second text"}, ctx=write_ctx)
    store_digest(db_session, keyring=keyring)
    lift_guard(db_session, "DELETE FROM entity_versions WHERE entity_id = :id AND version = 2", id=skill.id)
    _sql(db_session, "UPDATE skills SET version = 1, head_link_hash = (SELECT link_hash FROM entity_versions "
                     "WHERE entity_id = :s AND version = 1) WHERE id = :s", s=skill.id)
    store_digest(db_session, keyring=keyring)  # beat's next digest
    held = db_session.execute(text("SELECT version FROM ledger_digest_heads WHERE entity_id = :s "
                                   "ORDER BY digest_id DESC LIMIT 1"), {"s": skill.id}).scalar_one()
    assert held == 0  # held back at the lost link
    with pytest.raises(NotRestorable, match="no longer has"):
        _restore(db_session, write_ctx, E.SKILL, skill.id)
    assert repairs(db_session, entity_id=skill.id) == []
