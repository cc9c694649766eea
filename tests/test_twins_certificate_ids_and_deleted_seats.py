"""Review of the last session's fixes (3251e86..7029a14): names that read the same as
another's (``hidden_spelling``), and certificate numbers after the counter is tampered with."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from models.canonical import normalize_text
from models.entity_input import hidden_spelling
from models.errors import InvalidInput
from tests.test_registry_api import API, _post, gov, world  # noqa: F401  (fixtures)

CAFE = "Caf\u00e9"
MOSCOW = "\u041c\u043e\u0441\u043a\u0432\u0430"
PERSIAN = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
MONGOL = "\u1824\u1828\u1822\u180e\u1820"


# Each reads the same as the name without what it adds: nothing a reader sees tells them apart.
@pytest.mark.parametrize("twin", [
    CAFE + "\ufe0f",                                   # a variation selector after a letter with no variants
    MOSCOW + "\ufe00",
    MOSCOW + "\U000e0100",                             # an ideographic variation selector after a Cyrillic letter
    "Team \U0001f600\ufe0f\ufe0f",                     # VS16 twice
    "\u845b\U000e0100\U000e0100",                      # an IVS twice
    CAFE + "\u034f",                                   # the combining grapheme joiner after a letter
    MOSCOW[:3] + "\u034f" + MOSCOW[3:],
    "\u0430\u034f\u0308",                              # ... keeping a + diaeresis apart: reads as the composed letter
    PERSIAN.replace("\u200c", "\u200c\u200c"),         # ZWNJ twice
    "\u0645\u06cc\u200d\u200d\u062e",                  # ZWJ twice
    "\u00a9\u200d\u0416",                              # ZWJ between a symbol and a Cyrillic letter
    "\u0416\u0303\u200d\u0416",                        # ... after a Latin-block combining mark
    "Ops \U0001f3f4\U000e007f",                        # a black flag and a cancel tag alone
    "Ops \U0001f3f4\U000e0078",                        # a tag with no cancel tag
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f\U000e007f Ops",  # Scotland, cancel twice
    MONGOL.replace("\u180e", "\u180e\u180e"),          # the vowel separator twice
    "\u1810\u180e\u1811",                              # ... between Mongolian digits
    "\u1824\u180b\u180b\u1828",                        # a free variation selector twice
    "\u1810\u180b",                                    # ... after a digit
    "\u1780\u17b4",                                    # Khmer's inherent vowel, which Unicode draws as nothing
    "\u1780\u17b4\u17b4",
    "\u1140\u1161\u115f",                              # a leading-consonant filler with no vowel after it
    "\u1100\u1160",                                    # a vowel filler with no trailing consonant after it
    "Logistics\u2065",                                 # default-ignorable code points not yet assigned
    "Logistics\ufff0",
    "Logistics\U000e0000",
    "Logistics\U000e0080",
    "Logistics\U000e01f0",
])
def test_a_twin_that_differs_only_by_what_draws_nothing_is_refused(twin) -> None:
    assert hidden_spelling(normalize_text(twin)) is not None, twin


# Names real scripts and emoji write keep being taken.
@pytest.mark.parametrize("name", [
    "\U0001f3f3\ufe0f\u200d\U0001f308 Pride", "\U0001f3f3\ufe0f\u200d\u26a7\ufe0f Team", "\u2764\ufe0f\u200d\U0001f525 Ops",
    "\U0001f441\ufe0f\u200d\U0001f5e8\ufe0f Watch", "\U0001f468\u200d\U0001f469\u200d\U0001f467 Family",
    "\U0001f469\U0001f3fd\u200d\U0001f4bb Devs", "\U0001f3c3\u200d\u2640\ufe0f Runners", "\U0001f43b\u200d\u2744\ufe0f",
    "\u2764\ufe0f Care", "\u00a9\ufe0f Legal", "\u203c\ufe0f Alerts", "\u2139\ufe0f Info", "\u2600\ufe0e Sun",
    "*\ufe0f\u20e3 Star", "Team 1\ufe0f\u20e3",
    "\U0001f3f4\U000e0067\U000e0062\U000e0077\U000e006c\U000e0073\U000e007f Wales",
    "\u845b\U000e0100\u57ce",                          # Katsuragi with its ideographic variation
    "\u1000\ufe00", "\u2205\ufe00 Math",              # standardized variants: Myanmar, a math symbol
    MONGOL, "\u182a\u180b\u1822",
    "\u0d05\u0d35\u0d28\u0d4d\u200d", "\u0915\u094d\u200c\u0937", "\u0dc1\u0dca\u200d\u0dbb\u0dd3", PERSIAN,
    "\u0644\u200d\u200c\u200d\u0627",                  # Arabic: joined forms without the ligature
    "\u05d9\u05b0\u05e8\u05d5\u05bc\u05e9\u05b8\u05c1\u05dc\u05b7\u034f\u05b4\u05dd",  # Yerushalayim: CGJ keeps patah before hiriq
    "\u1100\u1160\u11a8",                              # a syllable of a leading and a trailing consonant
    "\U0001e900\u200c\U0001e901",                      # Adlam, a joining script
    "\ua9a4\ua9c0\u200d\ua9b2",                        # Javanese
    "\u1703\u1714\u200c\u170e",                        # Baybayin, ZWNJ after its virama
    CAFE, MOSCOW, "\u7269\u6d41", "\ud55c\uad6d",
])
def test_a_name_real_scripts_and_emoji_write_is_still_taken(name) -> None:
    assert hidden_spelling(normalize_text(name)) is None, (name, hidden_spelling(normalize_text(name)))


def test_a_name_beyond_ascii_with_a_variation_selector_is_422_not_a_second_name(client, gov) -> None:  # noqa: F811
    """docs/guarantees.md: no two entities of a type hold names that read the same but for
    "selectors where they show nothing". A selector after any character beyond ASCII passed:
    "Café" and "Café\\ufe0f" were two industries."""
    _post(client, "/genesis/industries", {**gov, "name": CAFE, "code": "CAF"})
    response = client.post(API + "/genesis/industries", json={**gov, "name": CAFE + "\ufe0f", "code": "CAG"})
    assert response.status_code == 422, response.get_json()
    assert [e["field"] for e in response.get_json()["errors"]] == ["name"]
    keyed = client.post(API + "/genesis/industries", json={**gov, "name": "Cafe Two", "code": "CAH",
                                                           "external_key": MOSCOW + "\u034f"})
    assert keyed.status_code == 422 and [e["field"] for e in keyed.get_json()["errors"]] == ["external_key"]


# --- certificate numbers ----------------------------------------------------------------------


def test_a_certificate_id_is_not_issued_again_once_its_row_and_the_counter_are_both_edited(
        db_session, write_ctx, steward) -> None:
    """docs/guarantees.md: "A certificate id is never issued twice, even after the numbering
    counter is set back or deleted through SQL." The fix (60a53fa) reads the highest number
    from the skills' rows as well; a row edited through SQL is the audit's finding, but Plant
    has signed the duplicate id into a second chain by then, and no audit finding names it."""
    from models.chain import history
    from models.entities import Skill
    from tests.test_certificate_inputs import OTHER
    from tests.test_certification import _certified

    _certified(db_session, write_ctx, steward, "Pipeline Engineering")
    second = _certified(db_session, write_ctx, steward, "Procurement", description=OTHER)
    issued = db_session.get(Skill, second.id).certificate["certificate_id"]
    db_session.execute(text("DELETE FROM certificate_sequences"))
    db_session.execute(text("UPDATE skills SET certificate = NULL WHERE id = :id"), {"id": second.id})
    third = _certified(db_session, write_ctx, steward, "Fleet Telemetry",
                       description="Collects vehicle sensor readings and reports engine faults to the depot crews")
    db_session.expire_all()
    signed = [json.loads(bytes(v.content)).get("certificate") for s in (second, third)
              for v in history(db_session, entity_id=s.id)]
    ids = [c["certificate_id"] for c in signed if c]
    assert ids.count(issued) == 1, ids


def test_a_name_stored_before_the_check_is_kept_when_a_patch_sends_it_back_unchanged(
        db_session, write_ctx, steward, monkeypatch) -> None:
    """README: "Names written before this check are kept as they are." A client that sends
    an entity back whole (its name unchanged) to change its description got 422 on the name
    it was not changing."""
    from models.entities import EntityType
    from models.registry import create_entity, update_entity

    with monkeypatch.context() as earlier_release:  # one that took this name
        earlier_release.setattr("models.entity_input.hidden_spelling", lambda text: None)
        industry = create_entity(db_session, entity_type=EntityType.INDUSTRY, ctx=write_ctx,
                                 data={"name": CAFE + "\ufe0f", "code": "LOG", "governance_agent_id": steward})
    changed = update_entity(db_session, entity_type=EntityType.INDUSTRY, entity_id=industry.id, ctx=write_ctx,
                            changes={"name": CAFE + "\ufe0f", "description": "Moving goods"})
    assert changed.description == "Moving goods" and changed.name == CAFE + "\ufe0f"
    with pytest.raises(InvalidInput):  # a new name is judged all the same
        update_entity(db_session, entity_type=EntityType.INDUSTRY, entity_id=industry.id, ctx=write_ctx,
                      changes={"name": MOSCOW + "\ufe0f"})


# --- deleted entities and seats ---------------------------------------------------------------


def test_a_deleted_agent_holds_no_seat(client, world, engine, write_ctx) -> None:  # noqa: F811
    import datetime as dt
    import uuid

    from sqlalchemy.orm import Session

    from models.entities import EntityType
    from models.errors import PlantError
    from models.registry import update_entity

    gone = {"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}
    agent = uuid.UUID(world["agent"]["id"])
    with pytest.raises(PlantError, match="agent is deleted"), Session(engine) as session, session.begin():
        update_entity(session, entity_type=EntityType.AGENT, entity_id=agent, changes=gone, ctx=write_ctx)
    with Session(engine) as session, session.begin():  # unseated in the same write, it is deleted
        update_entity(session, entity_type=EntityType.AGENT, entity_id=agent, changes={**gone, "team_id": None},
                      ctx=write_ctx)
    with Session(engine) as session, session.begin():  # the team's only member is deleted: it has none
        update_entity(session, entity_type=EntityType.TEAM, entity_id=uuid.UUID(world["team"]["id"]),
                      changes=gone, ctx=write_ctx)
