"""The skill key derived for a skill created without one (``models.skill_keys``), through
``models.registry.create_entity`` itself: the seed, jobs and the API all create through it."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from models.entities import EntityType, Skill
from models.errors import Conflict
from models.registry import create_entity


def _create(session, ctx, steward, name, **fields):
    return create_entity(session, entity_type=EntityType.SKILL, ctx=ctx, data={
        "name": name, "category": "technical", "description": f"{name} programming for compilers and tools",
        "governance_agent_id": steward, **fields})


def test_a_skill_created_without_a_key_through_the_models_gets_one_derived(db_session, write_ctx, steward) -> None:
    """The derivation lived in the API's view, so only an HTTP create got a key; it is the
    registry's now, and "C#" after "C++" (both "c") gets the hashed key, not a 409."""
    first = _create(db_session, write_ctx, steward, "C++")
    second = _create(db_session, write_ctx, steward, "C#")
    assert first.skill_key == "c"
    assert second.skill_key == "c-" + hashlib.sha256("C#".encode()).hexdigest()[:16]
    assert _create(db_session, write_ctx, steward, "Rust", skill_key="rust-lang").skill_key == "rust-lang"


def test_a_derived_create_refused_for_another_field_leaves_the_transaction_usable(db_session, write_ctx,
                                                                                    steward) -> None:
    """The derived create runs in a savepoint: a refusal (here a second skill named "C++", whose
    hashed key is free but whose name is not) is the caller's to handle, and the work the same
    transaction did before it (the first "C++") is still there to commit."""
    first = _create(db_session, write_ctx, steward, "C++")
    with pytest.raises(Conflict) as refused:
        _create(db_session, write_ctx, steward, "C++")
    assert refused.value.extensions.get("field") == "name"
    assert db_session.scalars(select(Skill.skill_key).where(Skill.id == first.id)).one() == "c"
