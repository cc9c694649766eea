"""Skill certification under hostile data: certificate numbers past rows INSERTed ahead, copies
hidden with characters that draw nothing, the reserved GEN code, and look-alike letters.

Each test proves a defect found in review (fixed, or a strict xfail until it is), or pins
down behaviour the review checked and found sound.
"""

import uuid

import pytest
from sqlalchemy import text

from models.certification import certify_skill
from models.embeddings import HashingEmbedder, cosine
from models.entities import EntityType, Skill
from models.errors import InvalidInput
from models.registry import update_entity
from tests.test_certificate_inputs import OTHER
from tests.test_certification import GOOD, _certified, _industry, _skill

THIRD = "Collects vehicle sensor readings and reports engine faults to the depot crews"


def _forge_issued(session, number: int, code: str = "GEN") -> None:
    """A row INSERTed into issued_certificates (it refuses UPDATE and DELETE, not INSERT)."""
    session.execute(text("INSERT INTO issued_certificates VALUES (:id, :code, :n, :skill)"),
                    {"id": f"SKILL-{code}-{number:03d}", "code": code, "n": number, "skill": uuid.uuid4()})


def _ids(session, *skills) -> list[str]:
    session.expire_all()
    return [session.get(Skill, s.id).certificate["certificate_id"] for s in skills]


# --- certificate numbers -------------------------------------------------------------------


def test_a_row_inserted_into_issued_certificates_at_the_top_of_the_range_blocks_no_certification(
        db_session, write_ctx, steward) -> None:
    """The next number was one after the highest issued_certificates holds: one INSERT of
    number 2**31 - 1, which no DELETE can take back, made every later certification of the
    code fail (the counter is an integer: "integer out of range", an internal error)."""
    _forge_issued(db_session, 2**31 - 1)
    first = _certified(db_session, write_ctx, steward, "Pipeline Engineering")
    assert _ids(db_session, first) == ["SKILL-GEN-001"]


@pytest.mark.parametrize("counter", [None, "UPDATE certificate_sequences SET last_number = 0",
                                     "DELETE FROM certificate_sequences"])
def test_a_number_inserted_far_ahead_leaves_no_gap_and_none_is_issued_twice(db_session, write_ctx, steward,
                                                                             counter) -> None:
    """A forged row far ahead (SKILL-GEN-500) made the next certificate SKILL-GEN-501: a gap
    of 498 numbers no skill ever held. The first number after the counter that no issued
    certificate holds is taken, also once the counter is set back or deleted through SQL."""
    first = _certified(db_session, write_ctx, steward, "Pipeline Engineering")
    _forge_issued(db_session, 500)
    if counter:
        db_session.execute(text(counter))
    second = _certified(db_session, write_ctx, steward, "Procurement", description=OTHER)
    assert _ids(db_session, first, second) == ["SKILL-GEN-001", "SKILL-GEN-002"]


def test_a_forged_row_at_the_next_number_is_stepped_over_not_issued_again(db_session, write_ctx, steward) -> None:
    """Checked and sound: a number the table holds is never issued again, forged or not."""
    first = _certified(db_session, write_ctx, steward, "Pipeline Engineering")
    _forge_issued(db_session, 2)
    db_session.execute(text("DELETE FROM certificate_sequences"))
    second = _certified(db_session, write_ctx, steward, "Procurement", description=OTHER)
    assert _ids(db_session, first, second) == ["SKILL-GEN-001", "SKILL-GEN-003"]


def test_no_industry_takes_the_code_certificates_name_for_skills_without_one(db_session, write_ctx, steward) -> None:
    """An industry coded GEN shared the series of the skills with no industry: its skill's
    certificate was SKILL-GEN-002 between two industry-less ones, and no id told them apart
    (nor was either series gap-free). GEN is refused, at creation and by a PATCH."""
    with pytest.raises(InvalidInput) as created, db_session.begin_nested():
        _industry(db_session, write_ctx, steward, "GEN")
    assert created.value.extensions["errors"][0]["field"] == "code"
    industry = _industry(db_session, write_ctx, steward, "FIN")
    with pytest.raises(InvalidInput) as patched, db_session.begin_nested():
        update_entity(db_session, entity_type=EntityType.INDUSTRY, entity_id=industry.id, changes={"code": "GEN"},
                      ctx=write_ctx)
    assert patched.value.extensions["errors"][0]["field"] == "code"


def test_an_industry_coded_gen_over_http_is_a_422_naming_the_code(client, committed_steward) -> None:
    response = client.post("/api/v1/genesis/industries", json={
        "name": "General", "code": "GEN", "governance_agent_id": str(committed_steward)})
    assert response.status_code == 422, response.get_json()
    assert response.content_type == "application/problem+json"
    assert [e["field"] for e in response.get_json()["errors"]] == ["code"]


# --- the duplicate gate ------------------------------------------------------------------------


def _laced(text_: str, mark: str) -> str:
    return " ".join(word[:2] + mark + word[2:] for word in text_.split())


@pytest.mark.parametrize("mark", ["\u200b", "\u00ad", "\u2060", "\u3164", "\ufe0f", "\x07"])
def test_a_copy_with_what_draws_nothing_inside_its_words_is_a_near_duplicate(db_session, write_ctx, steward,
                                                                            mark) -> None:
    """The hashing embedder split a word at any character that is not a word character: a
    certified skill's description with U+200B inside every word reads the same, embedded
    at cosine 0.46 with the original's, and the duplicate gate certified the copy (the
    audit's second look, with the same vectors, never reported it)."""
    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy", description=_laced(GOOD, mark))
    outcome = certify_skill(db_session, skill_id=copy.id, notes=None, ctx=write_ctx)
    assert outcome.status == "rejected", outcome
    assert outcome.blocking_duplicate["id"] == str(original.id)


def test_what_draws_nothing_leaves_the_vector_as_it_is() -> None:
    embedder = HashingEmbedder()
    plain, laced = embedder.embed([GOOD, _laced(GOOD, "\u200b\u200d")])
    assert cosine(plain, laced) > 0.9999
    assert embedder.embed(["\u200b"]) == embedder.embed([""])  # no token: the fixed unit vector


HOMOGLYPHS = str.maketrans("aceopx", "\u0430\u0441\u0435\u043e\u0440\u0445")  # Cyrillic letters drawn as the Latin


@pytest.mark.parametrize("spell", [lambda t: t.translate(HOMOGLYPHS),
                                   lambda t: "".join(chr(ord(c) + 0xFEE0) if "a" <= c <= "z" else c for c in t)],
                         ids=["cyrillic", "fullwidth"])
def test_a_copy_spelled_with_letters_drawn_alike_is_a_near_duplicate(db_session, write_ctx, steward, spell) -> None:
    """The embedders read letters, not how they are drawn: a copy spelled with Cyrillic
    homoglyphs (or fullwidth letters, which NFC keeps) embedded far from its original and
    passed the duplicate gate. The gate also compares what the texts read as
    (models/lookalikes.py::skeleton); the copy's stored text and vector stay as written."""
    original = _certified(db_session, write_ctx, steward, "Fraud Detection")
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy", description=spell(GOOD))
    outcome = certify_skill(db_session, skill_id=copy.id, notes=None, ctx=write_ctx)
    assert outcome.status == "rejected", outcome
    assert outcome.blocking_duplicate["id"] == str(original.id)
