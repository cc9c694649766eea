"""The signed, linked chain: appends, verification, tamper detection, the database guard."""

import dataclasses
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models.chain import GENESIS_LINK, EntityVersion, history, link_hash
from models.chain_verification import verify_entity, verify_versions
from models.constitution import (
    APPEND_ONLY_TRIGGERS,
    GUARDS_FINGERPRINT,
    GUARDS_SQL,
    PLANT_SCHEMA_CTE,
    append_only_enforced,
    guards_fingerprint,
)
from models.migrate import upgrade_head
from models.settings import libpq_url
from models.entities import EntityType, Industry, Skill
from models.registry import create_entity, update_entity
from models.signing import KeyRing
from models.key_material import generate_ed25519


def _skill(session: Session, ctx, steward, name: str = "Chain Skill") -> Skill:
    return create_entity(session, entity_type=EntityType.SKILL, ctx=ctx, data={
        "name": name, "skill_key": name.lower().replace(" ", "-"), "category": "technical",
        "description": "A skill used to exercise the chain", "governance_agent_id": steward,
    })


def test_versions_link_to_each_other_and_verify(db_session, write_ctx, steward, keyring) -> None:
    skill = _skill(db_session, write_ctx, steward)
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"description": "Changed once now"}, ctx=write_ctx)
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"tags": ["b", "a"]}, ctx=write_ctx)
    rows = history(db_session, entity_id=skill.id)
    assert [r.version for r in rows] == [1, 2, 3]
    assert bytes(rows[0].prev_link) == GENESIS_LINK
    assert [bytes(r.prev_link) for r in rows[1:]] == [bytes(r.link_hash) for r in rows[:-1]]
    assert skill.version == 3 and skill.head_link_hash == bytes(rows[-1].link_hash)
    result = verify_entity(db_session, entity=skill, keyring=keyring)
    assert result.ok, result.findings
    assert result.versions == 3


def test_a_no_op_update_appends_nothing(db_session, write_ctx, steward) -> None:
    skill = _skill(db_session, write_ctx, steward)
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"name": skill.name}, ctx=write_ctx)
    assert len(history(db_session, entity_id=skill.id)) == 1


def test_a_direct_sql_edit_of_the_entity_row_is_detected(db_session, write_ctx, steward, keyring) -> None:
    skill = _skill(db_session, write_ctx, steward)
    db_session.execute(text("UPDATE skills SET name = 'Forged' WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    result = verify_entity(db_session, entity=db_session.get(Skill, skill.id), keyring=keyring)
    assert [f.code for f in result.findings] == ["row-content-mismatch"]


@pytest.mark.parametrize("statement", [
    "UPDATE entity_versions SET actor = 'mallory'",
    "DELETE FROM entity_versions",
    "TRUNCATE entity_versions",
])
@pytest.mark.parametrize("replica", [False, True])
def test_the_database_refuses_changes_to_history(db_session, write_ctx, steward, statement, replica) -> None:
    _skill(db_session, write_ctx, steward)
    db_session.flush()
    savepoint = db_session.begin_nested()
    if replica:
        db_session.execute(text("SET LOCAL session_replication_role = replica"))
    with pytest.raises(DBAPIError, match="append-only"):
        db_session.execute(text(statement))
    savepoint.rollback()
    assert append_only_enforced(db_session)


def test_the_guards_fingerprint_is_what_the_migrations_make(db_session) -> None:
    found = guards_fingerprint(db_session)
    assert found == GUARDS_FINGERPRINT, (
        f"the guards changed; if a migration changed them on purpose, GUARDS_FINGERPRINT is now {found}")
    assert append_only_enforced(db_session)


# Each leaves every guard trigger in place and enabled ALWAYS, which L0-03 used to check alone.
GUARD_TAMPERING = {
    "a guard function rewritten in place": [
        "CREATE OR REPLACE FUNCTION entity_versions_refuse_change() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END; END$$"],
    "an extra trigger dropping findings": [
        "CREATE FUNCTION pg_temp.drop_it() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$",
        "CREATE TRIGGER a_first BEFORE INSERT ON audit_findings FOR EACH ROW EXECUTE FUNCTION pg_temp.drop_it()"],
    "a rule instead of inserts": ["CREATE RULE swallow AS ON INSERT TO audit_findings DO INSTEAD NOTHING"],
    "row-level security hiding rows": [
        "ALTER TABLE audit_findings ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY hide ON audit_findings USING (severity <> 'critical')"],
    "a child table outside the guards": ["CREATE TABLE pg_temp.sneaky () INHERITS (audit_findings)"],
    "a WHEN clause that never holds": [
        "CREATE OR REPLACE TRIGGER entity_versions_no_update_delete BEFORE UPDATE OR DELETE ON entity_versions"
        " FOR EACH ROW WHEN (false) EXECUTE FUNCTION entity_versions_refuse_change()",
        "ALTER TABLE entity_versions ENABLE ALWAYS TRIGGER entity_versions_no_update_delete"],
    "an UPDATE guard narrowed to one column": [
        "CREATE OR REPLACE TRIGGER entity_versions_no_update_delete BEFORE UPDATE OF kid OR DELETE ON entity_versions"
        " FOR EACH ROW EXECUTE FUNCTION entity_versions_refuse_change()",
        "ALTER TABLE entity_versions ENABLE ALWAYS TRIGGER entity_versions_no_update_delete"],
    "the sequence a guard reads swapped for a view": [
        "ALTER SEQUENCE audit_findings_id_seq RENAME TO audit_findings_id_seq_real",
        "CREATE VIEW audit_findings_id_seq AS SELECT 9007199254740991::bigint AS last_value, true AS is_called"],
        "a guard's trigger added to another table": [
        "CREATE TRIGGER entity_versions_no_update_delete BEFORE UPDATE ON jobs FOR EACH ROW"
        " EXECUTE FUNCTION entity_versions_refuse_change()"],
}


@pytest.mark.parametrize("tampering", GUARD_TAMPERING.values(), ids=GUARD_TAMPERING.keys())
def test_guards_changed_behind_their_names_fail_l0_03(db_session, tampering: list[str]) -> None:
    assert append_only_enforced(db_session)
    savepoint = db_session.begin_nested()
    for statement in tampering:
        db_session.execute(text(statement))
    try:
        assert guards_fingerprint(db_session) != GUARDS_FINGERPRINT
        assert not append_only_enforced(db_session)
    finally:
        savepoint.rollback()
    assert append_only_enforced(db_session)


def test_writes_read_the_guards_fingerprint_at_most_once_a_second(db_session, monkeypatch) -> None:
    from models import constitution, registry

    monkeypatch.setattr(constitution, "_FINGERPRINT_CHECKED", {})
    assert registry._append_only(db_session)  # read, and right: remembered for a second
    savepoint = db_session.begin_nested()
    db_session.execute(text(GUARD_TAMPERING["a rule instead of inserts"][0]))
    try:
        db_session.info.pop("append_only_enforced")
        assert registry._append_only(db_session)  # within the second: not read again
        assert not append_only_enforced(db_session)  # audits read it every time
        monkeypatch.setattr(registry, "WRITE_FINGERPRINT_MAX_AGE", 0.0)
        db_session.info.pop("append_only_enforced")
        assert not registry._append_only(db_session)  # once the second is over, writes are refused
    finally:
        savepoint.rollback()


def test_a_wrong_fingerprint_is_never_remembered_as_right(db_session, monkeypatch) -> None:
    from models import constitution, registry

    monkeypatch.setattr(constitution, "_FINGERPRINT_CHECKED", {})
    savepoint = db_session.begin_nested()
    db_session.execute(text(GUARD_TAMPERING["a rule instead of inserts"][0]))
    try:
        assert not registry._append_only(db_session)  # read: wrong
        db_session.info.pop("append_only_enforced")
        assert not registry._append_only(db_session)  # within the second: read again, still wrong
    finally:
        savepoint.rollback()


def test_another_database_s_right_fingerprint_does_not_answer_for_this_one(db_session, make_database, monkeypatch) -> None:
    from sqlalchemy import create_engine

    from models import constitution, registry

    monkeypatch.setattr(constitution, "_FINGERPRINT_CHECKED", {})
    other = make_database("plant_fingerprint_other")
    upgrade_head(other)
    engine = create_engine(other)
    try:
        with Session(engine) as session:
            assert registry._append_only(session)  # the other database: right, remembered
        savepoint = db_session.begin_nested()
        db_session.execute(text(GUARD_TAMPERING["a rule instead of inserts"][0]))
        try:
            assert not registry._append_only(db_session)  # this one: read, wrong
        finally:
            savepoint.rollback()
    finally:
        engine.dispose()


def test_a_session_s_temporary_copies_do_not_answer_for_the_guards(db_session) -> None:
    """The check reads Plant's schema, never pg_temp, which a session's search path puts first."""
    savepoint = db_session.begin_nested()
    db_session.execute(text("ALTER TABLE entity_versions DISABLE TRIGGER entity_versions_no_update_delete"))
    for table, names in APPEND_ONLY_TRIGGERS.items():
        db_session.execute(text(f"CREATE TEMP TABLE {table} (x int)"))
        for name in names:
            db_session.execute(text(f"CREATE TRIGGER {name} BEFORE INSERT ON pg_temp.{table} FOR EACH ROW"
                                    " EXECUTE FUNCTION public.plant_append_only_refuse()"))
            db_session.execute(text(f"ALTER TABLE pg_temp.{table} ENABLE ALWAYS TRIGGER {name}"))
    try:
        assert db_session.scalar(text(  # what an unqualified name now finds
            "SELECT relnamespace = pg_my_temp_schema() FROM pg_class WHERE oid = to_regclass('entity_versions')"))
        assert db_session.scalar(text(f"WITH {PLANT_SCHEMA_CTE} SELECT name FROM s")) == "public"  # what is checked
        db_session.execute(text("SET LOCAL search_path = pg_temp, public"))  # pg_temp named: still not it
        assert db_session.scalar(text(f"WITH {PLANT_SCHEMA_CTE} SELECT name FROM s")) == "public"
        assert not append_only_enforced(db_session)
    finally:
        savepoint.rollback()
    assert append_only_enforced(db_session)


IN_PLANT_APP = "?options=-csearch_path%3Dplant_app"  # a URL's query: the search path of schema plant_app


def _migrated_into_plant_app(make_database, name: str) -> str:
    """A database whose tables live in schema ``plant_app``; its URL without the search path."""
    url = make_database(name)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA plant_app")
    upgrade_head(url + IN_PLANT_APP)
    return url


def test_the_guards_fingerprint_is_the_same_in_another_schema(make_database) -> None:
    url = _migrated_into_plant_app(make_database, "plant_other_schema")
    with psycopg.connect(libpq_url(url), options="-c search_path=plant_app", autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('entity_versions')::text").fetchone()[0] == "entity_versions"
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'entity_versions' AND schemaname = 'public'").fetchone()[0] == 0
        assert conn.execute(GUARDS_SQL).fetchone()[0] == GUARDS_FINGERPRINT


def test_plants_engine_keeps_the_search_path_its_url_gives(make_database, settings) -> None:
    """``make_engine``'s own ``options`` (its server-side limits) replaced the URL's, so the API
    and the workers looked for the tables in ``public`` while the migrations put them in
    ``plant_app`` (helper-94, stop 29)."""
    from models.db import make_engine

    url = _migrated_into_plant_app(make_database, "plant_url_options")
    engine = make_engine(settings.model_copy(update={"database_url": url + IN_PLANT_APP}), pool_size=1)
    try:
        with engine.connect() as connection:
            assert connection.scalar(text("SHOW search_path")) == "plant_app"
            assert connection.scalar(text("SHOW statement_timeout")) == "30s"  # Plant's limits too
            assert connection.scalar(text("SELECT count(*) FROM entity_versions")) == 0
    finally:
        engine.dispose()


def test_rotation_keeps_old_signatures_valid(db_session, write_ctx, steward, keyring) -> None:
    skill = _skill(db_session, write_ctx, steward)
    rotated = keyring.rotate(generate_ed25519())
    ctx = dataclasses.replace(write_ctx, keyring=rotated)
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"description": "Signed by the new key"}, ctx=ctx)
    rows = history(db_session, entity_id=skill.id)
    assert rows[0].kid == keyring.active.kid and rows[1].kid == rotated.active.kid != keyring.active.kid
    assert verify_entity(db_session, entity=skill, keyring=rotated).ok
    # A ring that never trusted the new key flags exactly the version it signed.
    findings = verify_entity(db_session, entity=skill, keyring=keyring).findings
    assert [(f.code, f.version) for f in findings] == [("unknown-signing-key", 2)]


# Property tests on in-memory chains: no database needed for the pure verifier.

def _chain(keyring: KeyRing, contents: list[bytes]) -> list[EntityVersion]:
    import hashlib

    entity_id, prev, rows = uuid.uuid4(), GENESIS_LINK, []
    for number, content in enumerate(contents, start=1):
        digest = hashlib.sha256(content).digest()
        link = link_hash("skill", entity_id, number, prev, digest)
        kid, signature = keyring.sign(link)
        rows.append(EntityVersion(entity_type="skill", entity_id=entity_id, version=number, content=content,
                                  content_hash=digest, prev_link=prev, link_hash=link, kid=kid, signature=signature,
                                  actor="t"))
        prev = link
    return rows


_KEYRING = KeyRing(generate_ed25519())
contents = st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=6)


@given(contents)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_property_append_then_verify_always_holds(chunks: list[bytes]) -> None:
    count, findings = verify_versions(_chain(_KEYRING, chunks), keyring=_KEYRING)
    assert count == len(chunks) and findings == []


FIELDS = ["content", "content_hash", "prev_link", "link_hash", "signature"]


@given(contents, st.data())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_property_any_single_byte_change_is_caught(chunks: list[bytes], data: st.DataObject) -> None:
    rows = _chain(_KEYRING, chunks)
    row = data.draw(st.sampled_from(rows))
    field = data.draw(st.sampled_from(FIELDS))
    value = bytearray(getattr(row, field))
    index = data.draw(st.integers(0, len(value) - 1))
    value[index] ^= data.draw(st.integers(1, 255))
    setattr(row, field, bytes(value))
    _, findings = verify_versions(rows, keyring=_KEYRING)
    assert findings, f"changing {field}[{index}] of version {row.version} went unnoticed"


def test_deleting_or_reordering_a_version_is_caught() -> None:
    rows = _chain(_KEYRING, [b"a", b"b", b"c"])
    assert verify_versions([rows[0], rows[2]], keyring=_KEYRING)[1]
    assert verify_versions([rows[1], rows[0], rows[2]], keyring=_KEYRING)[1]
    assert verify_versions(rows[1:], keyring=_KEYRING)[1]


def test_link_hash_uses_the_fixed_binary_layout() -> None:
    import hashlib
    import struct

    entity_id = uuid.UUID(int=1)
    expected = hashlib.sha256(
        b"plant.entity-link.v1\x00" + struct.pack(">H", 5) + b"skill" + entity_id.bytes + struct.pack(">Q", 2)
        + b"\x01" * 32 + b"\x02" * 32
    ).digest()
    assert link_hash("skill", entity_id, 2, b"\x01" * 32, b"\x02" * 32) == expected


def test_industry_history_starts_at_genesis(db_session, write_ctx, steward) -> None:
    industry = db_session.query(Industry).filter_by(code="GOV").one()
    assert bytes(history(db_session, entity_id=industry.id)[0].prev_link) == GENESIS_LINK
