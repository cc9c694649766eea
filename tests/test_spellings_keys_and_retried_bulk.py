"""Review of the lead's own fixes: hidden spellings of names, the derived skill key, bulk
``not-applied`` records across attempts, and the counting of ``entity-row-missing``."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models.entities import EntityType, Skill
from models.entity_input import hidden_spelling
from models.registry import create_entity, update_entity


# Names real scripts and emoji write: each character shows, or joins what its script joins.
@pytest.mark.parametrize("name", [
    "\u0d05\u0d35\u0d28\u0d4d\u200d",              # Malayalam, a chillu spelled as before Unicode 5.1: na, virama, ZWJ
    "\u0d05\u0d35\u0d28\u0d4d\u200d Team",
    "Team 1\ufe0f\u20e3",                            # keycap one: digit, VS16, enclosing keycap
    "#\ufe0f\u20e3 Support",                         # keycap number sign
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f Ops",  # the flag of Scotland (tags)
    "\u1824\u1828\u1822\u180e\u1820",                # Mongolian with its vowel separator
    "\u0915\u094d\u200d\u0937",                      # Devanagari explicit half form
    "\u0dc1\u0dca\u200d\u0dbb\u0dd3",                # Sinhala "Sri" (rakaaraansaya)
    "\U0001f44d\U0001f3fd Team",                     # skin tone
    "\U0001f1eb\U0001f1f7 Ops",                      # a flag of regional indicators
    "\u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd",    # Hebrew with points
    "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian with ZWNJ
    "\u7269\u6d41",                                  # CJK
])
def test_a_name_real_scripts_and_emoji_write_is_not_refused(name) -> None:
    assert hidden_spelling(name) is None, (name, hidden_spelling(name))


# Twins of a taken name that read the same: something that draws nothing, or a blank drawn
# for a space, beside characters beyond ASCII.
@pytest.mark.parametrize("twin", [
    "\u041b\u043e\u0433\u200d\u0438\u0441\u0442\u0438\u043a\u0430",  # Cyrillic with ZWJ inside: no script joining there
    "\u041b\u043e\u0433\u200c\u0438\u0441\u0442\u0438\u043a\u0430",  # ... with ZWNJ
    "\u7269\u200d\u6d41",                                              # CJK with ZWJ
    "Caf\u00e9\u3164",                                                 # a Hangul filler after e-acute
    "Caf\u00e9\u2800",                                                 # the blank Braille pattern
    "Caf\u00e9\u2800Ops",                                              # ... drawn for a space
    "Caf\u00e9\u17b4",                                                 # Khmer inherent vowel, outside Khmer
])
def test_a_twin_of_a_name_beyond_ascii_is_refused(twin) -> None:
    assert hidden_spelling(twin) is not None, twin


def test_two_cyrillic_names_that_read_the_same_are_not_both_taken(db_session, write_ctx, steward) -> None:
    """The guarantee (README: "so no spelling reads the same as another's") for a name in
    any script but Latin: a ZWJ between two Cyrillic letters passed."""
    from models.errors import InvalidInput

    data = {"code": "LOG", "governance_agent_id": steward}
    create_entity(db_session, entity_type=EntityType.INDUSTRY, ctx=write_ctx,
                  data={**data, "name": "\u041b\u043e\u0433\u0438\u0441\u0442\u0438\u043a\u0430"})
    with pytest.raises(InvalidInput):
        create_entity(db_session, entity_type=EntityType.INDUSTRY, ctx=write_ctx,
                      data={**data, "code": "LOH", "name": "\u041b\u043e\u0433\u200d\u0438\u0441\u0442\u0438\u043a\u0430"})


def _skill(session, ctx, steward, name, **fields):
    return create_entity(session, entity_type=EntityType.SKILL, ctx=ctx, data={
        "name": name, "category": "technical", "description": f"{name} programming for compilers and tools",
        "governance_agent_id": steward, **fields})


def test_a_third_skill_of_a_name_renamed_twice_gets_a_key_not_a_409(db_session, write_ctx, steward) -> None:
    """A skill's key stays when it is renamed. "Rust" took "rust"; renamed, the next "Rust"
    took "rust-<hash of Rust>"; renamed too, a third "Rust" derived that same hashed key and
    was a 409 on a ``skill_key`` its client never sent."""
    keys = []
    for n in range(3):
        skill = _skill(db_session, write_ctx, steward, "Rust")
        keys.append(skill.skill_key)
        update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id,
                      changes={"name": f"Rust {2015 + 3 * n}"}, ctx=write_ctx)
        db_session.flush()
    assert len(set(keys)) == 3
    assert set(db_session.scalars(select(Skill.skill_key))) >= set(keys)


def test_a_retried_bulk_job_reports_no_agent_not_applied_that_its_retry_no_longer_plans(
        engine, write_ctx, committed_steward) -> None:
    """Attempt 1 records every planned agent ``not-applied`` and stops before any batch (a
    worker lost, say). Meanwhile one of them is seated by a single assignment. Attempt 2 plans
    the unassigned ones left and applies them all: the job ended succeeded, yet its outcome
    still said the seated agent was not applied because the job stopped (helper-146). Each
    attempt now drops the earlier attempts' not-applied records before recording its plan."""
    from models.assignment import assign_agent
    from models.bulk_assignment import assign_teams_in_bulk
    from models.bulk_records import NOT_APPLIED, Recorder
    from models.db import transaction
    from models.job_lifecycle import create_job
    from tests.test_bulk_plans_and_stops import _world

    sessions, teams, agents = _world(engine, write_ctx, committed_steward, teams=3, agents=3)
    with transaction(sessions) as session:
        job_id = create_job(session, kind="agents.assign_teams", params={"all_unassigned": True}).id
    fences = []

    def stops_before_the_first_batch(session):
        fences.append(session)
        if len(fences) > 1:
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError):
        assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx, progress=lambda *a: None,
                             fence=stops_before_the_first_batch, record=Recorder(job_id, 1))
    with transaction(sessions) as session:
        assign_agent(session, agent_id=agents[0], team_id=teams[0], ctx=write_ctx)
    outcome = assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx,
                                   progress=lambda *a: None, record=Recorder(job_id, 2))
    assert [e for e in outcome.unplaced if e["reason"] == NOT_APPLIED] == []
