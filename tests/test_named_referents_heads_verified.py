"""A write newly naming an entity reads that entity's signed head to tell whether it is deleted,
and verifies it (models/reference_guards.py::referents_now): a head edited through SQL is 409
``entity-tampered`` naming the field, not taken for what Plant signed."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from models.entities import EntityType
from models.errors import EntityTampered, InvalidInput
from models.registry import update_entity
from tests.test_assignment import world  # noqa: F401  (fixture)
from tests.test_seals_seen_later_retired_private_keys_and_verified_deletion_heads import tamper_head
from web.problems import status_for


def _deleted_industry(world, db_session, write_ctx, code: str):  # noqa: F811
    industry = world.make(EntityType.INDUSTRY, name=f"Deleted {code}", code=code)
    db_session.flush()
    update_entity(db_session, entity_type=EntityType.INDUSTRY, entity_id=industry.id,
                  changes={"deleted_at": dt.datetime(2026, 2, 1, tzinfo=dt.UTC)}, ctx=write_ctx)
    db_session.flush()
    return industry


def test_a_deleted_entity_whose_head_and_row_were_edited_to_read_as_live_is_not_named(
        world, db_session, write_ctx) -> None:  # noqa: F811
    """Its row's deleted_at nulled and its head rewritten live (content hash covered): the write
    used to read both as live and sign a skill naming a deleted industry."""
    industry = _deleted_industry(world, db_session, write_ctx, "UNDEAD")
    db_session.execute(text("UPDATE industries SET deleted_at = NULL WHERE id = :id"), {"id": industry.id})
    tamper_head(db_session, industry.id, deleted_at=None)
    db_session.expire_all()
    with pytest.raises(EntityTampered) as refused, db_session.begin_nested():
        world.make(EntityType.SKILL, name="Names the undead", category="technical", description="d",
                   industry_id=industry.id)
        db_session.flush()
    problem = refused.value.problem(status_for(refused.value))
    assert problem["status"] == 409 and problem["type"] == "/problems/entity-tampered", problem
    assert problem["field"] == "industry_id" and problem["id"] == str(industry.id), problem
    assert problem["entity_type"] == "industry" and problem["finding"] == "link-hash-mismatch", problem


def test_a_deleted_entity_whose_row_alone_reads_as_live_is_still_refused_as_deleted(
        world, db_session, write_ctx) -> None:  # noqa: F811
    """Its signed head (untouched, verified) says deleted: 422 naming the field, as before."""
    industry = _deleted_industry(world, db_session, write_ctx, "ROWLIVE")
    db_session.execute(text("UPDATE industries SET deleted_at = NULL WHERE id = :id"), {"id": industry.id})
    db_session.expire_all()
    with pytest.raises(InvalidInput) as refused, db_session.begin_nested():
        world.make(EntityType.SKILL, name="Names the deleted", category="technical", description="d",
                   industry_id=industry.id)
        db_session.flush()
    problem = refused.value.problem(422)
    assert [e["field"] for e in problem["errors"]] == ["industry_id"], problem
