"""Letters drawn alike (models/lookalikes.py): the duplicate gate and the audit's second look
compare what texts read as, reserved key names too, and nothing stored changes.

A copy of a certified skill spelled with Cyrillic look-alikes or fullwidth letters embedded far
from its original and was certified; the gate now also compares skeletons. These tests pin what
must hold around that: the stored embedding stays the vector of the written text (beside it
``reading_embedding``, the skeleton's, only where that is not the text), real Russian and
Greek text is no duplicate of unrelated Latin text, the audit judges as the gate does, in
either order (a plain copy of a look-alike spelling certified first too), and a reading vector
missing or changed is the skill's ``embedding-mismatch`` until a restore recomputes it.
"""

import pytest
from sqlalchemy import text

from models.certification import certify_skill
from models.embeddings import cosine
from models.entities import EntityType, Skill
from models.lookalikes import skeleton
from models.registry import create_entity, embedding_text
from tests.conftest import EMBEDDER
from tests.test_certification import GOOD, _certified, _certify_while_hidden, _codes, _skill

CYRILLIC = str.maketrans("aceopxy", "\u0430\u0441\u0435\u043e\u0440\u0445\u0443")  # drawn as the Latin letters
RUSSIAN = "Проверяет платёжные операции банка и сообщает аналитикам о подозрительных переводах каждый день"
RUSSIAN_OTHER = "Планирует маршруты грузовиков по складам региона и следит за сроками доставки заказов"
GREEK = "Ελέγχει τις πληρωμές της τράπεζας και ειδοποιεί τους αναλυτές για ύποπτες μεταφορές κάθε μέρα"
ENGLISH = "Checks the bank's payment operations and tells analysts about suspicious transfers every day"


def _named(session, ctx, steward, name: str, description: str) -> Skill:
    """A skill named in any script (its skill_key derived by Plant)."""
    return create_entity(session, entity_type=EntityType.SKILL, ctx=ctx, data={
        "name": name, "category": "technical", "description": description, "governance_agent_id": steward})


def _certify(session, ctx, skill) -> str:
    return certify_skill(session, skill_id=skill.id, notes=None, ctx=ctx).status


# --- the skeleton ------------------------------------------------------------------------


def test_the_skeleton_reads_lookalike_and_fullwidth_letters_as_latin_and_leaves_the_rest() -> None:
    assert skeleton(GOOD.translate(CYRILLIC)) == GOOD
    assert skeleton("".join(chr(ord(c) + 0xFEE0) if "a" <= c <= "z" else c for c in GOOD)) == GOOD
    assert skeleton("\U0001d41f\U0001d42b\U0001d41a\U0001d42e\U0001d41d") == "fraud"  # mathematical bold
    assert skeleton("Ver 10, l|0") == "Ver 10, l|0"  # digits and signs drawn like letters stay
    assert skeleton("Café Münster") == "Café Münster"  # Latin letters stay, accents too
    russian = skeleton(RUSSIAN)
    assert russian != RUSSIAN and {"д", "л", "б", "щ"} <= set(russian)  # letters with no Latin look-alike stay


# --- the gate: no false duplicate, nothing stored changes ----------------------------------


def test_real_russian_and_greek_descriptions_are_no_duplicates_of_unrelated_skills(
        db_session, write_ctx, steward, keyring) -> None:
    """A skeleton maps only the letters drawn as Latin ones: real Russian or Greek text keeps the
    rest and reads as no Latin text, nor as other Russian or Greek text (a skeleton dropping
    or transliterating them would make them all one). The audit agrees: nothing to report."""
    from tests.test_audit import run_audit

    _certified(db_session, write_ctx, steward, "Pipeline Engineering")
    _certified(db_session, write_ctx, steward, "Payment Screening", description=ENGLISH)
    for name, description in [("Проверка платежей", RUSSIAN), ("Планирование маршрутов", RUSSIAN_OTHER),
                              ("Έλεγχος πληρωμών", GREEK)]:
        assert _certify(db_session, write_ctx, _named(db_session, write_ctx, steward, name, description)) == "certified"
    db_session.expire_all()
    _, findings = run_audit(db_session, keyring)
    assert _codes(findings) == []


def test_a_lookalike_spelled_skill_is_stored_and_embedded_as_written_and_as_it_reads(
        db_session, write_ctx, steward, keyring) -> None:
    """The skeleton is for comparing only: the stored text and embedding are the written text's;
    the vector of what it reads as is kept beside them, and only for a text that reads otherwise."""
    from tests.test_audit import run_audit

    spelled = GOOD.translate(CYRILLIC)
    skill = _certified(db_session, write_ctx, steward, "Pipeline Engineering", description=spelled)
    plain = _certified(db_session, write_ctx, steward, "Payment Screening", description=ENGLISH)
    db_session.expire_all()
    stored = db_session.get(Skill, skill.id)
    written, read = EMBEDDER.embed([embedding_text(skill), skeleton(embedding_text(skill))])
    assert stored.description == spelled
    assert cosine([float(x) for x in stored.embedding], written) > 0.9999 and cosine(written, read) < 0.95
    assert cosine([float(x) for x in stored.reading_embedding], read) > 0.9999
    assert db_session.get(Skill, plain.id).reading_embedding is None
    _, findings = run_audit(db_session, keyring)
    assert _codes(findings) == []


def test_a_lookalike_copy_of_a_certified_skill_is_refused_whatever_it_is_named(db_session, write_ctx, steward) -> None:
    """The name is read with the description: a copy in Cyrillic look-alikes throughout."""
    original = _certified(db_session, write_ctx, steward, "Pipeline Operations")
    copy = _named(db_session, write_ctx, steward, "Pipeline Operations".translate(CYRILLIC), GOOD.translate(CYRILLIC))
    outcome = certify_skill(db_session, skill_id=copy.id, notes=None, ctx=write_ctx)
    assert outcome.status == "rejected" and outcome.blocking_duplicate["id"] == str(original.id)


# --- the audit's second look judges as the gate -------------------------------------------


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
@pytest.mark.parametrize("spelled", ["copy", "original"])
def test_a_lookalike_copy_certified_while_its_original_was_hidden_is_found_by_the_audit(
        db_session, write_ctx, steward, keyring, incremental, spelled) -> None:
    """The gate saw no certified original (set to draft through SQL, then put back): the audit
    compares what the texts read as, as the gate does, and names the copy, whichever of the two
    is spelled with look-alikes (a plain copy is found by the original's reading vector)."""
    from models.ledger_store import store_digest
    from tests.test_audit import run_audit, run_incremental

    lookalike = {spelled: GOOD.translate(CYRILLIC)}
    original = _certified(db_session, write_ctx, steward, "Fraud Detection", description=lookalike.get("original", GOOD))
    copy = _skill(db_session, write_ctx, steward, "Fraud Detection Copy", description=lookalike.get("copy", GOOD))
    if incremental:
        store_digest(db_session, keyring=keyring)
    _certify_while_hidden(db_session, write_ctx, copy, original)
    db_session.expire_all()
    _, findings = (run_incremental if incremental else run_audit)(db_session, keyring)
    assert _codes(findings) == [("certified-near-duplicate", copy.id)]
    assert "as they read" in next(f.detail for f in findings)


def test_a_stored_vector_made_to_read_as_a_lookalike_text_gets_it_no_rejection_and_accuses_no_one(
        db_session, write_ctx, steward, keyring) -> None:
    """Candidates the skeleton's vector finds are confirmed from signed text, as the others:
    an unrelated certified skill whose stored vector was set through SQL to the vector of what
    a look-alike text reads as rejects no one, and the audit names only that skill."""
    from tests.test_audit import run_audit

    other = _certified(db_session, write_ctx, steward, "Payment Screening", description=ENGLISH)
    spelled = _skill(db_session, write_ctx, steward, "Pipeline Engineering", description=GOOD.translate(CYRILLIC))
    read = EMBEDDER.embed([skeleton(embedding_text(spelled))])[0]
    db_session.execute(text("UPDATE skills SET embedding = CAST(:read AS vector) WHERE id = :id"),
                       {"read": str(read), "id": other.id})
    assert _certify(db_session, write_ctx, spelled) == "certified"
    db_session.expire_all()
    _, findings = run_audit(db_session, keyring)
    assert _codes(findings) == [("embedding-mismatch", other.id)]


class _CountingEmbedder:
    """The suite's embedder, counting the texts it is asked to embed."""

    dim = EMBEDDER.dim

    def __init__(self) -> None:
        self.texts = 0

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.texts += len(texts)
        return EMBEDDER.embed(texts)


def test_the_second_look_costs_nothing_more_for_texts_the_skeleton_leaves_as_they_are(
        db_session, write_ctx, steward, keyring) -> None:
    """ASCII texts (most) are their own skeletons: no text embedded twice, no statement more.
    A look-alike spelling adds its skeleton's vector and one candidate statement."""
    from models.certification_gates import gates_rechecked
    from tests.conftest import recorded_statements

    skills = [_certified(db_session, write_ctx, steward, name, description=description) for name, description in [
        ("Pipeline Engineering", GOOD), ("Payment Screening", ENGLISH), ("Route Planning", "Plans delivery routes "
                                                                       "for trucks between regional depots every week")]]

    def second_look(audited) -> tuple[int, int]:
        embedder = _CountingEmbedder()
        with recorded_statements(db_session.connection()) as seen:
            assert gates_rechecked(db_session, audited, keyring=keyring, embedder=embedder) == []
        return embedder.texts, sum("unnest(" in statement for _, statement in seen)

    assert second_look(skills) == (3, 1)
    spelled = _certified(db_session, write_ctx, steward, "Fraud Detection",
                         description="Flags card payments that look stolen to the bank's analysts at once".translate(CYRILLIC))
    assert second_look([*skills, spelled]) == (5, 2)


def test_a_plain_copy_of_a_certified_lookalike_spelling_is_refused(db_session, write_ctx, steward) -> None:
    """The look-alike spelling certified first: its stored embedding is far from the plain text,
    and it is found by its reading vector (models/certification_gates.py)."""
    original = _certified(db_session, write_ctx, steward, "Fraud Detection", description=GOOD.translate(CYRILLIC))
    plain = _skill(db_session, write_ctx, steward, "Fraud Detection Copy")
    outcome = certify_skill(db_session, skill_id=plain.id, notes=None, ctx=write_ctx)
    assert outcome.status == "rejected" and outcome.blocking_duplicate["id"] == str(original.id)


@pytest.mark.parametrize("edit", ["missing", "on-a-plain-text"])
def test_a_reading_vector_missing_or_where_none_belongs_is_the_skills_mismatch_until_restored(
        db_session, write_ctx, steward, keyring, edit) -> None:
    """A look-alike skill certified before migration 0026 has no reading vector, so a plain copy
    would not find it: the audit says so (embedding-mismatch) and `plant entity restore`
    recomputes it. One set on a text that reads as written is derived data that is not its text's."""
    from models.repair import restore_entity
    from tests.test_audit import run_audit

    skill = _certified(db_session, write_ctx, steward, "Fraud Detection",
                       description=GOOD.translate(CYRILLIC) if edit == "missing" else GOOD)
    vector = None if edit == "missing" else str(EMBEDDER.embed([ENGLISH])[0])
    db_session.execute(text("UPDATE skills SET reading_embedding = CAST(:v AS vector) WHERE id = :id"),
                       {"v": vector, "id": skill.id})
    db_session.expire_all()
    _, findings = run_audit(db_session, keyring)
    assert _codes(findings) == [("embedding-mismatch", skill.id)]
    outcome = restore_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, keyring=keyring,
                             embedder=write_ctx.embedder, actor="operator:test")
    assert outcome.restored
    db_session.expire_all()
    _, findings = run_audit(db_session, keyring)
    assert _codes(findings) == []


# --- reserved key names -------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "b\u043e\u043etstrap-admin",  # Cyrillic о
    "BOOTS\u0422RAP-ADM\u0399N",  # Cyrillic Т (small т is drawn as ᴛ) and Greek Ι (drawn as l; its small ι as i)
    "b\u03bf\u03bftstr\u0430p\u2010\u0430dmin",  # Greek ο, Cyrillic а, U+2010
])
def test_a_key_name_spelled_with_lookalikes_of_bootstrap_admin_is_a_422(client, name) -> None:
    response = client.post("/api/v1/api-keys", json={"name": name, "scopes": ["read"]})
    assert response.status_code == 422, (name, response.get_json())
    assert "reserved" in str(response.get_json()["errors"])


@pytest.mark.parametrize("name", ["админ", "Ελεγκτής", "bootstrap-admin-2", "b\u043e\u043etstrap-\u0434min"])
def test_names_in_other_scripts_are_taken(name) -> None:
    from models.api_keys import key_name_problem

    assert key_name_problem(name) is None


def test_db_upgrade_stores_the_reading_vectors_a_migration_could_not(
        settings, engine, committed_steward, write_ctx, keyring, monkeypatch) -> None:
    """Skills written before migration 0026 have no reading vector, and a plain copy of a
    look-alike one passed the gate: `plant db upgrade` fills them after the migrations, reading
    only texts beyond ASCII and leaving a text that reads as written (and one filled) alone."""
    from click.testing import CliRunner
    from sqlalchemy.orm import Session

    from cli.main import cli
    from tests.test_audit import run_audit

    steward = committed_steward
    with Session(engine) as session, session.begin():
        spelled = _certified(session, write_ctx, steward, "Fraud Detection", description=GOOD.translate(CYRILLIC))
        accented = _named(session, write_ctx, steward, "Café Münster", ENGLISH)
        assert _certify(session, write_ctx, accented) == "certified"
        plain = _skill(session, write_ctx, steward, "Fraud Detection Copy")
        spelled, accented, plain = spelled.id, accented.id, plain.id
        session.execute(text("UPDATE skills SET reading_embedding = NULL"))
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PLANT_DATA_DIR", str(settings.data_dir))
    result = CliRunner().invoke(cli, ["db", "upgrade", "--json"])
    assert result.exit_code == 0 and '"reading_vectors_filled": 1' in result.output, result.output
    def no_embedder(name: str) -> None:
        raise RuntimeError(f"the {name} model could not be loaded")

    monkeypatch.setattr("cli.bootstrap.make_embedder", no_embedder)
    again = CliRunner().invoke(cli, ["db", "upgrade", "--json"])  # nothing to fill: no embedder loaded
    assert again.exit_code == 0 and '"reading_vectors_filled": 0' in again.output, again.output
    with Session(engine) as session, session.begin():
        session.execute(text("UPDATE skills SET reading_embedding = NULL WHERE id = :id"), {"id": spelled})
    failed = CliRunner().invoke(cli, ["db", "upgrade"])  # the schema and grants stand: a warning
    assert failed.exit_code == 0 and "could not store the reading vectors" in failed.output, failed.output
    monkeypatch.undo()
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PLANT_DATA_DIR", str(settings.data_dir))
    assert '"reading_vectors_filled": 1' in CliRunner().invoke(cli, ["db", "upgrade", "--json"]).output
    with Session(engine) as session, session.begin():
        assert session.get(Skill, accented).reading_embedding is None
        _, findings = run_audit(session, keyring)
        assert _codes(findings) == []
        assert _certify(session, write_ctx, session.get(Skill, plain)) == "rejected"
        assert session.get(Skill, spelled).reading_embedding is not None


def test_the_fill_leaves_a_skill_whose_text_changed_while_its_vector_was_made(engine, committed_steward, write_ctx) -> None:
    """The fill reads texts without a lock and writes a vector only where the text is still the
    one it was made of: a write meanwhile makes that skill's vectors itself."""
    from sqlalchemy.orm import Session

    from models.registry import fill_reading_vectors

    with Session(engine) as session, session.begin():
        skill = _skill(session, write_ctx, committed_steward, "Fraud Detection", description=GOOD.translate(CYRILLIC)).id
        session.execute(text("UPDATE skills SET reading_embedding = NULL"))

    def changed_meanwhile():  # the embedder loads while another write changes the text
        with engine.begin() as other:
            other.execute(text("UPDATE skills SET description = description || ' (edited)' WHERE id = :id"), {"id": skill})
        return EMBEDDER

    with Session(engine) as session:
        assert fill_reading_vectors(session, changed_meanwhile) == 0
    with Session(engine) as session:
        assert session.get(Skill, skill).reading_embedding is None
    with Session(engine) as session:
        assert fill_reading_vectors(session, lambda: EMBEDDER) == 1
