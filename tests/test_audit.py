"""The compliance audit and the tampering check: the tamper battery on real Postgres.

Each kind of tampering is injected with SQL as a superuser (lifting the append-only
triggers inside the test's rolled-back transaction) and must be reported under its
own code by both the batch audit and the single-entity tampering check.
"""

import contextlib
import datetime as dt
import hashlib
import json
import os
import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models.audit import FindingRow, audit_batch, check_entity, load_entities
from models.audit_chunks import audit_chunk_step, pending_chunks
from models.audit_close import summarize_run
from models.audit_runs import AuditParams, digest_findings, start_run
from models.audit_tables import AuditFinding
from models.canonical import canonical_bytes
from models.chain import EntityVersion, history, link_hash
from models.constitution import APPEND_ONLY_TRIGGERS, L0, L1, RuleSubject, evaluate
from models.embeddings import Embedder
from models.entities import EntityType, Skill, governed_content
from models.job_lifecycle import create_job
from models.ledger import current_heads, digest_now, signed_digest
from models.ledger_store import store_digest
from models.registry import create_entity, update_entity
from models.signing import KeyRing
from models.key_material import generate_ed25519
from tests.conftest import EMBEDDER, recorded_statements, wait_for

E = EntityType


def run_audit(session: Session, keyring: KeyRing, params: dict | None = None, batch_size: int = 2,
              embedder: Embedder = EMBEDDER) -> tuple[dict, list]:
    job = create_job(session, kind="audit.run", params=params or {"verify_signatures": "all"}, queue="audit")
    run = start_run(session, job_id=job.id, params=job.params, keyring=keyring, embedder=embedder, chunk_entities=3)
    for chunk_id in pending_chunks(session, run.id):
        while not audit_chunk_step(session, chunk_id=chunk_id, keyring=keyring, embedder=embedder, batch_size=batch_size).done:
            pass
    summary = summarize_run(session, keyring=keyring, run_id=run.id)
    findings = session.query(AuditFinding).filter_by(run_id=run.id).all()
    return summary, findings


def digest_of(session: Session, keyring: KeyRing, *, with_leaves: bool = False) -> dict:
    """A digest of the heads as this test's own transaction sees them. ``digest_now`` would
    wait for a moment with no version write in flight, and this transaction's are."""
    as_of = session.scalar(select(func.clock_timestamp()))
    return signed_digest(current_heads(session), as_of, keyring, with_leaves=with_leaves)


def lift_guard(session: Session, sql: str, *, table: str = "entity_versions", **params) -> None:
    """Run ``sql`` with a guarded table's triggers lifted (``entity_versions``, or any other of
    ``APPEND_ONLY_TRIGGERS``), as someone who owns the table could; they are enabled ALWAYS again after."""
    session.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))  # ALTER TABLE refuses a table with deferred checks pending
    for trigger in APPEND_ONLY_TRIGGERS[table]:
        session.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}"))
    for statement in sql.split(";"):
        session.execute(text(statement), params)
    for trigger in APPEND_ONLY_TRIGGERS[table]:
        session.execute(text(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}"))
    session.execute(text("SET CONSTRAINTS ALL DEFERRED"))
    session.expire_all()


def version_row(session: Session, entity_id: uuid.UUID, version: int) -> EntityVersion:
    return next(v for v in history(session, entity_id=entity_id) if v.version == version)


def reset_row_to(session: Session, skill: Skill, version: int) -> None:
    """Point the entity row at an older version, fields and head, as an attacker would."""
    old = version_row(session, skill.id, version)
    import json
    session.execute(text("UPDATE skills SET description = :d, version = :v, head_link_hash = :h WHERE id = :id"),
                    {"d": json.loads(old.content)["description"], "v": version, "h": bytes(old.link_hash), "id": skill.id})
    session.expire_all()


def tamper_content(s, skill, keyring):
    row = version_row(s, skill.id, 2)
    lift_guard(s, "UPDATE entity_versions SET content = :c WHERE id = :id", c=bytes(row.content).replace(b"two", b"TWO"), id=row.id)


def tamper_rehash(s, skill, keyring):
    row = version_row(s, skill.id, 2)
    content = bytes(row.content).replace(b"two", b"2wo")
    digest = hashlib.sha256(content).digest()
    link = link_hash("skill", skill.id, 2, bytes(row.prev_link), digest)
    lift_guard(s, "UPDATE entity_versions SET content = :c, content_hash = :h, link_hash = :l WHERE id = :id",
               c=content, h=digest, l=link, id=row.id)


def tamper_delete_middle(s, skill, keyring):
    lift_guard(s, "DELETE FROM entity_versions WHERE entity_id = :e AND version = 2", e=skill.id)


def tamper_delete_newest(s, skill, keyring):
    lift_guard(s, "DELETE FROM entity_versions WHERE entity_id = :e AND version = 3", e=skill.id)
    reset_row_to(s, skill, 2)


def tamper_swap(s, skill, keyring):
    lift_guard(s, "UPDATE entity_versions SET version = 99 WHERE entity_id = :e AND version = 2;"
                  "UPDATE entity_versions SET version = 2 WHERE entity_id = :e AND version = 3;"
                  "UPDATE entity_versions SET version = 3 WHERE entity_id = :e AND version = 99", e=skill.id)


def tamper_forge_signature(s, skill, keyring):
    lift_guard(s, "UPDATE entity_versions SET signature = :g WHERE entity_id = :e AND version = 2", g=os.urandom(64), e=skill.id)


def tamper_other_key(s, skill, keyring):
    row, intruder = version_row(s, skill.id, 2), generate_ed25519()
    lift_guard(s, "UPDATE entity_versions SET kid = :k, signature = :g WHERE id = :id",
               k=intruder.kid, g=intruder.sign(bytes(row.link_hash)), id=row.id)


def tamper_row(s, skill, keyring):
    s.execute(text("UPDATE skills SET description = 'forged in place' WHERE id = :id"), {"id": skill.id})
    s.expire_all()


def tamper_rewrite_chain(s, skill, keyring):
    """An insider with the signing key rewrites the whole chain consistently."""
    s.execute(text("UPDATE skills SET description = 'rewritten history' WHERE id = :id"), {"id": skill.id})
    s.expire_all()
    entity = s.get(Skill, skill.id)
    lift_guard(s, "DELETE FROM entity_versions WHERE entity_id = :e", e=skill.id)
    prev = bytes(32)
    content = canonical_bytes(governed_content(entity))
    for version in (1, 2, 3):
        digest = hashlib.sha256(content).digest()
        link = link_hash("skill", skill.id, version, prev, digest)
        kid, signature = keyring.sign(link)
        s.add(EntityVersion(entity_type="skill", entity_id=skill.id, version=version, content=content, content_hash=digest,
                            prev_link=prev, link_hash=link, kid=kid, signature=signature, actor="insider"))
        prev = link
    s.flush()
    s.execute(text("UPDATE skills SET head_link_hash = :h WHERE id = :id"), {"h": prev, "id": skill.id})
    s.expire_all()


def tamper_replay_old_head(s, skill, keyring):
    reset_row_to(s, skill, 1)


BATTERY = {
    "content-hash-mismatch": tamper_content,
    "rehashed-version": tamper_rehash,
    "version-gap": tamper_delete_middle,
    "head-rolled-back": tamper_delete_newest,
    "versions-out-of-order": tamper_swap,
    "bad-signature": tamper_forge_signature,
    "unknown-signing-key": tamper_other_key,
    "row-content-mismatch": tamper_row,
    "chain-rewritten": tamper_rewrite_chain,
    "stale-head": tamper_replay_old_head,
}


def test_a_clean_registry_has_zero_findings(db_session, skill, keyring) -> None:
    summary, findings = run_audit(db_session, keyring)
    assert findings == []
    assert summary["non_compliant"] == 0 and summary["compliant"] == summary["total_entities"] >= 5
    assert summary["versions_verified"] >= 7
    assert not check_entity(db_session, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER).findings


@pytest.mark.parametrize("code", list(BATTERY))
def test_each_tampering_is_caught_under_its_own_code(db_session, skill, keyring, code) -> None:
    outside_digest = digest_of(db_session, keyring, with_leaves=True)
    store_digest(db_session, keyring=keyring)
    BATTERY[code](db_session, skill, keyring)

    summary, findings = run_audit(db_session, keyring, {"verify_signatures": "all", "against_digest": outside_digest})
    codes = {f.code for f in findings if f.entity_id == skill.id}
    assert code in codes, codes
    others = set(BATTERY) - {code}
    assert not codes & others - {"broken-link"}, f"{code} also reported as {codes & others}"
    assert summary["non_compliant"] == 1 and summary["by_code"][code] >= 1

    check = check_entity(db_session, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER)
    assert check.tampered and code in {f.code for f in check.findings}


def test_the_tampering_check_reads_the_digest_leaf_before_it_trusts_the_digest(db_session, skill, keyring,
                                                                               monkeypatch) -> None:
    """The digest was checked, then its leaf read: a leaf row deleted in between (the guard lets
    an unkept digest's go) left a consistent rollback (versions deleted, row reset to match)
    with nothing to compare, and the check found nothing. Its rows are counted again after
    the leaf is read: one gone meanwhile is ``digest-invalid``, never silently absent
    (helper-214: the digest is now chosen by ``newest_trusted_digest``, which checks it)."""
    import models.audit

    store_digest(db_session, keyring=keyring)
    tamper_delete_newest(db_session, skill, keyring)
    chosen = models.audit.newest_trusted_digest

    def check_then_delete_the_leaf(session, ring):
        found = chosen(session, ring)
        session.execute(text("DELETE FROM ledger_digest_heads WHERE entity_id = :e"), {"e": skill.id})
        return found

    monkeypatch.setattr(models.audit, "newest_trusted_digest", check_then_delete_the_leaf)
    check = check_entity(db_session, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER)
    [invalid] = [f.detail for f in check.findings if f.code == "digest-invalid"]
    assert check.tampered and "leaf rows are left after it was checked" in invalid


def _insert_junk_version(s, skill, *, version=4, entity_type="skill", content=None, prev_link=None, link=None,
                         signature=None, kid=None, as_head=False) -> None:
    """A version row written straight into the table (INSERT is what the triggers allow)."""
    head = version_row(s, skill.id, 3)
    content = bytes(head.content) if content is None else content
    s.execute(text(
        "INSERT INTO entity_versions (entity_type, entity_id, version, content, content_hash, prev_link, link_hash,"
        " kid, signature, actor) VALUES (:t, :e, :v, :c, :h, :p, :l, :k, :g, 'intruder')"),
        {"t": entity_type, "e": skill.id, "v": version, "c": content, "h": hashlib.sha256(content).digest(),
         "p": bytes(head.link_hash) if prev_link is None else prev_link, "l": link or os.urandom(32),
         "k": head.kid if kid is None else kid, "g": os.urandom(64) if signature is None else signature})
    if as_head:
        s.execute(text("UPDATE skills SET version = :v, head_link_hash = (SELECT link_hash FROM entity_versions"
                       " WHERE entity_id = :e AND version = :v) WHERE id = :e"), {"v": version, "e": skill.id})
    s.expire_all()


JUNK = {
    "a negative version": dict(version=-1),
    "version zero": dict(version=0),
    "a version past the chain": dict(version=2**31 - 1),
    "a type that is not ASCII": dict(entity_type="skïll"),
    "a type of another kind": dict(entity_type="agent"),
    "short hashes": dict(prev_link=b"\x01", link=b"\x02"),
    "a short signature under an unknown kid": dict(signature=b"\x00", kid="k" * 128),
    "content that is not JSON, made the head": dict(content=b"\xff\xfe not json", as_head=True),
    "content that is a JSON list, made the head": dict(content=b"[1,2]", as_head=True),
}


def test_a_row_edited_to_another_unicode_spelling_of_its_text_is_tampering(db_session, skill, write_ctx, keyring) -> None:
    """NFC makes both spellings one, but the row holds other bytes than Plant stored and
    signed: what reads the column sees them, and a unique constraint takes a second
    "Café Ω Skill" beside it. Plant writes only NFC, so the row was edited outside it."""
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"name": "Caf\u00e9 \u03a9 Skill"}, ctx=write_ctx)
    db_session.flush()
    assert run_audit(db_session, keyring)[1] == []
    db_session.execute(text("UPDATE skills SET name = :name WHERE id = :id"), {"name": "Cafe\u0301 \u2126 Skill", "id": skill.id})
    db_session.expire_all()
    summary, findings = run_audit(db_session, keyring)
    assert [(f.code, f.entity_id) for f in findings] == [("row-content-mismatch", skill.id)]
    assert summary["non_compliant"] == 1 and "name" in findings[0].detail


EXACT_FLOATS = [0.1, 1 / 3, 1e-07, -2.5e-300, 5e-324, 2.2250738585072014e-308, 123456.789, -0.0, 4503599627370495.5,
                9007199254740991.0]


def test_every_float_plant_writes_reads_back_from_jsonb_as_that_float(db_session) -> None:
    """jsonb keeps the decimal Plant writes (a float's shortest spelling) and spells it back its
    own way, ``0.0000001`` for ``1e-07`` and 324 places for ``5e-324``: each must still be read as
    that float, not as a value Python cannot read. (Plant refuses the floats jsonb would give
    back as integers: ``as_jsonb_keeps_it``.)"""
    from models.db_json import UNREADABLE_JSON
    spelled, read = db_session.execute(text("SELECT CAST(:v AS jsonb)::text, CAST(:v AS jsonb)"),
                                       {"v": json.dumps(EXACT_FLOATS)}).one()
    assert "0.0000001" in spelled and "e" not in spelled.lower()  # jsonb's own spelling, not Python's
    assert read != UNREADABLE_JSON and read == EXACT_FLOATS


@pytest.mark.parametrize("respelled", ["100.0000000000000000001", "0.1000000000000000000001", "99.99999999999999999999"])
def test_a_number_respelled_through_sql_to_one_a_float_would_round_to_the_same_is_tampering(
        db_session, skill, write_ctx, keyring, respelled) -> None:
    """``100.0000000000000000001`` reads as the float ``100.0``: it matched the head that signed
    ``100`` while every SQL reader saw another number."""
    signed = {"limit": 100, "rate": 0.1}
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"attributes": signed}, ctx=write_ctx)
    db_session.flush()
    assert run_audit(db_session, keyring)[1] == []
    field = "rate" if respelled.startswith("0.1") else "limit"
    db_session.execute(text(f"UPDATE skills SET attributes = jsonb_set(attributes, '{{{field}}}', CAST(:n AS jsonb)) "
                            "WHERE id = :id"), {"n": respelled, "id": skill.id})
    db_session.expire_all()
    summary, findings = run_audit(db_session, keyring)
    assert [(f.code, f.entity_id) for f in findings] == [("row-content-mismatch", skill.id)]
    assert summary["non_compliant"] == 1


def test_strings_earlier_releases_stored_as_sent_still_match_their_head_as_nfc(db_session, skill, write_ctx, keyring) -> None:
    """Before 63df858 nested attributes, and before 8204a6d certification notes, were stored
    as sent while the chain signed them NFC: such rows are not tampering, and only the unique
    columns are held to their stored spelling."""
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id,
                  changes={"attributes": {"note": "Caf\u00e9"}, "description": "Caf\u00e9 skills for everyone"}, ctx=write_ctx)
    db_session.flush()
    db_session.execute(text("UPDATE skills SET attributes = CAST(:a AS jsonb), description = :d WHERE id = :id"),
                       {"a": '{"note": "Cafe\u0301"}', "d": "Cafe\u0301 skills for everyone", "id": skill.id})
    db_session.expire_all()
    assert run_audit(db_session, keyring)[1] == []


@pytest.mark.parametrize("junk", list(JUNK))
def test_a_junk_version_row_is_a_finding_never_a_failed_audit(db_session, skill, keyring, junk) -> None:
    """Whatever an INSERT puts into the ledger, the audit and the tampering check report it and go on."""
    _insert_junk_version(db_session, skill, **JUNK[junk])
    summary, findings = run_audit(db_session, keyring)
    assert {f.entity_id for f in findings} == {skill.id} and summary["non_compliant"] == 1
    check = check_entity(db_session, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER)
    assert check.tampered


def test_a_scope_of_more_ids_than_postgresql_takes_parameters_is_audited(db_session, skill, keyring) -> None:
    """A run's parameters may hold more ids than PostgreSQL takes parameters (at most 65,535;
    the API takes 5,000, but a job row holds what it is given): IN would need one each."""
    ids = [str(uuid.uuid4()) for _ in range(70_000)] + [str(skill.id)]
    summary, findings = run_audit(db_session, keyring, {"scope": {"entity_ids": ids}}, batch_size=500)
    assert findings == [] and summary["total_entities"] == 1


def test_a_run_stored_with_an_empty_id_list_before_it_was_refused_still_reads_as_its_whole_type(db_session, skill) -> None:
    """``[]`` is refused now (422, and start_run will not plan it), but runs stored with it
    earlier audited every entity of the type; their plans and every export of their reports
    must go on reading them so (helper-110)."""
    count = select(func.count()).select_from(Skill)
    stored = AuditParams.from_json({"scope": {"entity_type": "skill", "entity_ids": []}})
    assert stored.entity_ids is None and db_session.scalar(stored.ids_filter(Skill, count)) == db_session.scalar(count) > 0
    assert stored.coverage()["scope"]["entity_ids"] is None
    finding = FindingRow("skill", skill.id, 1, "stale-head", "")
    assert stored.scoped(db_session, [finding]) == [finding]


def test_a_deleted_entity_is_reported_against_the_digest(db_session, skill, keyring) -> None:
    outside_digest = digest_of(db_session, keyring, with_leaves=True)
    db_session.execute(text("UPDATE skills SET deleted_at = now() WHERE id = :id"), {"id": skill.id})
    _, findings = run_audit(db_session, keyring, {"against_digest": outside_digest})
    assert [(f.entity_id, f.code) for f in findings if f.code == "entity-deleted"] == [(skill.id, "entity-deleted")]


def test_a_root_only_digest_still_reveals_a_rewrite(db_session, skill, keyring) -> None:
    digest = digest_of(db_session, keyring)
    db_session.execute(text("SELECT pg_sleep(0.01)"))
    tamper_rewrite_chain(db_session, skill, keyring)
    lift_guard(db_session, "UPDATE entity_versions SET created_at = now() - interval '1 day' WHERE entity_id = :e", e=skill.id)
    _, findings = run_audit(db_session, keyring, {"against_digest": digest})
    assert "ledger-root-mismatch" in {f.code for f in findings}


@pytest.mark.parametrize("deleted", ["before", "after"])
def test_a_root_only_digest_matches_across_a_signed_deletion(db_session, skill, write_ctx, keyring, deleted) -> None:
    """A digest holds live entities only; the heads recomputed as of its time leave out exactly
    the entities whose head then was a deletion, whenever the deletion was signed."""
    def delete() -> None:
        update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, ctx=write_ctx,
                      changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)})
        db_session.flush()

    if deleted == "before":
        delete()
    digest = digest_of(db_session, keyring)
    if deleted == "after":
        delete()
    _, findings = run_audit(db_session, keyring, {"against_digest": digest})
    assert "ledger-root-mismatch" not in {f.code for f in findings}


def _waiting_locks(engine, *, only_versions: bool = False) -> int:
    """Lock requests waiting; with ``only_versions``, those on the versions table or an advisory lock."""
    versions = " AND (relation = 'entity_versions'::regclass OR locktype = 'advisory')" if only_versions else ""
    with engine.connect() as connection:
        return connection.scalar(text(f"SELECT count(*) FROM pg_locks WHERE NOT granted{versions}"))


def _waiting_on_versions(engine) -> int:
    return _waiting_locks(engine, only_versions=True)


def _root_only_findings(engine, digest, keyring) -> list:
    with Session(engine) as auditor, auditor.begin():
        return digest_findings(auditor, digest, keyring)


def test_a_root_only_digest_waits_for_a_write_in_flight_and_holds_no_other_write_up(
        engine, write_ctx, keyring, committed_steward, monkeypatch) -> None:
    """A version written before the digest but committed after it: the digest waits for it,
    without queueing for the lock, so other writes go on meanwhile."""
    import models.ledger as ledger

    skill_id = _committed_skill(engine, write_ctx, committed_steward)
    retried, real_wait = threading.Event(), ledger.wait_for_writes_in_flight
    monkeypatch.setattr(ledger, "wait_for_writes_in_flight", lambda: (retried.set(), real_wait()))
    digest: dict = {}

    def take_digest() -> None:
        with Session(engine) as reader, reader.begin():
            digest.update(digest_now(reader, keyring=keyring))

    def another_write() -> None:
        with Session(engine) as other, other.begin():
            update_entity(other, entity_type=E.AGENT, entity_id=committed_steward,
                          changes={"description": "written while the digest waits"}, ctx=write_ctx)

    with Session(engine) as writer, writer.begin():
        update_entity(writer, entity_type=E.SKILL, entity_id=skill_id, changes={"description": "in flight"}, ctx=write_ctx)
        writer.flush()
        taking = threading.Thread(target=take_digest)
        taking.start()
        wait_for(retried.is_set, timeout=10, what="the digest to find a write in flight")
        writing = threading.Thread(target=another_write)
        writing.start()
        wait_for(lambda: not writing.is_alive() or _waiting_on_versions(engine), what="the other write to end or wait")
        assert not _waiting_on_versions(engine)
        writing.join()
    taking.join()
    assert digest and _root_only_findings(engine, digest, keyring) == []


@pytest.mark.parametrize("when", ["after the moment", "before the first fetch"])
def test_a_write_committed_after_the_digest_s_moment_is_not_in_it(engine, write_ctx, keyring, committed_steward,
                                                                  monkeypatch, when) -> None:
    """What the digest reads is fixed inside its moment (the DECLARE), not when it lets go of
    the lock or fetches its first row."""
    import models.ledger as ledger

    skill_id = _committed_skill(engine, write_ctx, committed_steward)

    def commit_a_write() -> None:
        with Session(engine) as writer, writer.begin():
            update_entity(writer, entity_type=E.SKILL, entity_id=skill_id, changes={"description": "raced"}, ctx=write_ctx)

    if when == "after the moment":
        real_hold = ledger.versions_held

        @contextlib.contextmanager
        def hold_then_write(session):
            with real_hold(session) as as_of:
                yield as_of
            commit_a_write()

        monkeypatch.setattr(ledger, "versions_held", hold_then_write)
    else:
        real_fetch = ledger._fetch_declared_heads

        def write_then_fetch(session):
            commit_a_write()
            yield from real_fetch(session)

        monkeypatch.setattr(ledger, "_fetch_declared_heads", write_then_fetch)
    with Session(engine) as reader, reader.begin():
        digest = digest_now(reader, keyring=keyring)
    assert _root_only_findings(engine, digest, keyring) == []


def test_a_root_only_digest_excludes_a_write_whose_transaction_began_before_it(engine, write_ctx, keyring,
                                                                              committed_steward) -> None:
    """A transaction that began before the digest but writes after it: its version is stamped
    after the digest's as_of, not at the transaction's start."""
    skill_id = _committed_skill(engine, write_ctx, committed_steward)
    with Session(engine) as writer:
        writer.execute(text("SELECT 1"))  # its transaction, and now(), begin before the digest
        with Session(engine) as reader, reader.begin():
            digest = digest_now(reader, keyring=keyring)
        update_entity(writer, entity_type=E.SKILL, entity_id=skill_id, changes={"description": "late"}, ctx=write_ctx)
        writer.commit()
    assert _root_only_findings(engine, digest, keyring) == []


def test_a_digest_that_finds_no_moment_without_a_write_in_flight_is_503_ledger_busy(
        client, engine, write_ctx, committed_steward, monkeypatch) -> None:
    import models.ledger as ledger

    monkeypatch.setattr(ledger, "DIGEST_WAIT_SECONDS", 0.05)
    skill_id = _committed_skill(engine, write_ctx, committed_steward)
    with Session(engine) as writer, writer.begin():
        update_entity(writer, entity_type=E.SKILL, entity_id=skill_id, changes={"description": "slow"}, ctx=write_ctx)
        writer.flush()
        busy = client.get("/api/v1/ledger/digest")
        assert busy.status_code == 503 and busy.mimetype == "application/problem+json"
        assert busy.get_json()["type"].endswith("/ledger-busy") and int(busy.headers["Retry-After"]) > 0
    assert client.get("/api/v1/ledger/digest").status_code == 200


def test_a_digest_asked_for_while_this_process_takes_one_is_503_digests_busy_at_once(
        client, engine, committed_steward, monkeypatch) -> None:
    """PLANT_DIGESTS_AT_ONCE (1): a second digest does not queue for a thread and two connections."""
    import models.ledger as ledger

    monkeypatch.setattr(ledger, "DIGEST_WAIT_SECONDS", 30.0)
    other_client = client.application.test_client()
    other_client.environ_base.update(client.environ_base)
    answers: dict[str, Any] = {}
    first = threading.Thread(target=lambda: answers.update(first=client.get("/api/v1/ledger/digest")))

    def trying_the_versions_lock() -> bool:
        with engine.connect() as connection:
            return bool(connection.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND state IN ('active', 'idle in transaction') AND query LIKE 'SELECT pg_try_advisory_xact_lock%'")))

    with engine.connect() as writer:  # a version write in flight: the first digest waits for it
        writer.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": ledger.VERSIONS_LOCK})
        first.start()
        wait_for(trying_the_versions_lock, what="the first digest waiting for a quiet moment")
        started = time.monotonic()
        second = other_client.get("/api/v1/ledger/digest")
        assert time.monotonic() - started < 5
        assert second.status_code == 503 and second.mimetype == "application/problem+json"
        assert second.get_json()["type"].endswith("/digests-busy") and second.headers["Retry-After"] == "2"
        writer.rollback()
    first.join(timeout=30)
    assert answers["first"].status_code == 200
    assert other_client.get("/api/v1/ledger/digest").status_code == 200  # the slot is free again


def test_a_digest_that_fails_gives_its_slot_back(client, engine, committed_steward, monkeypatch) -> None:
    import models.ledger as ledger

    monkeypatch.setattr(ledger, "DIGEST_WAIT_SECONDS", 0.05)
    with engine.connect() as writer:
        writer.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": ledger.VERSIONS_LOCK})
        for _ in range(3):
            assert client.get("/api/v1/ledger/digest").get_json()["type"].endswith("/ledger-busy")
        writer.rollback()
    assert client.get("/api/v1/ledger/digest").status_code == 200


def test_a_digest_is_not_held_up_by_a_vacuum_of_the_versions_table(engine, keyring, committed_steward) -> None:
    with Session(engine) as vacuum, vacuum.begin():
        vacuum.execute(text("LOCK TABLE entity_versions IN SHARE UPDATE EXCLUSIVE MODE"))  # what (auto)VACUUM holds
        with Session(engine) as reader, reader.begin():
            assert digest_now(reader, keyring=keyring)["entity_count"] >= 1


def test_a_digest_refuses_a_session_that_is_not_read_committed(engine, keyring, committed_steward) -> None:
    with Session(engine) as reader, reader.begin():
        reader.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        with pytest.raises(RuntimeError, match="read committed"):
            digest_now(reader, keyring=keyring)


def test_a_digest_refuses_an_autocommit_session(engine, keyring, committed_steward) -> None:
    with Session(engine.execution_options(isolation_level="AUTOCOMMIT")) as reader:
        with pytest.raises(RuntimeError, match="autocommit"):
            digest_now(reader, keyring=keyring)


def test_every_version_insert_shares_the_lock_the_digest_takes(engine) -> None:
    import models.ledger as ledger

    with engine.connect() as connection:
        definition = connection.scalar(text("SELECT pg_get_functiondef('entity_version_stamp'::regproc)"))
        default = connection.scalar(text(
            "SELECT column_default FROM information_schema.columns"
            " WHERE table_name = 'entity_versions' AND column_name = 'created_at'"))
    assert f"pg_advisory_xact_lock_shared({ledger.VERSIONS_LOCK})" in definition
    assert default == "entity_version_stamp()"


def test_ddl_queued_behind_a_waiting_write_does_not_hold_a_digest_up(engine, write_ctx, keyring, committed_steward,
                                                                     monkeypatch) -> None:
    """A write waits for the digest's moment while it holds a skill row; an ALTER TABLE of skills
    queues behind that write. The digest, which locked the entity tables before its moment,
    finishes instead of queueing behind the ALTER (a wait no deadlock check sees)."""
    import models.ledger as ledger

    skill_id = _committed_skill(engine, write_ctx, committed_steward)
    held, go, outcome = threading.Event(), threading.Event(), {}
    real_hold = ledger.versions_held

    @contextlib.contextmanager
    def slow_hold(session):
        with real_hold(session) as as_of:
            held.set()
            go.wait(10)
            yield as_of

    monkeypatch.setattr(ledger, "versions_held", slow_hold)

    def take_digest() -> None:
        try:
            with Session(engine) as reader, reader.begin():
                outcome["digest"] = digest_now(reader, keyring=keyring)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    def write() -> None:
        with Session(engine) as writer, writer.begin():
            update_entity(writer, entity_type=E.SKILL, entity_id=skill_id, changes={"description": "v2"}, ctx=write_ctx)

    def alter() -> None:
        with engine.connect() as connection:
            connection.execute(text("LOCK TABLE skills IN ACCESS EXCLUSIVE MODE"))  # what ALTER TABLE takes
            connection.rollback()

    threads = [threading.Thread(target=take_digest)]
    threads[0].start()
    assert held.wait(10)
    threads.append(threading.Thread(target=write))
    threads[1].start()
    wait_for(lambda: _waiting_on_versions(engine) >= 1, what="the write to wait for the digest's moment")
    threads.append(threading.Thread(target=alter))
    threads[2].start()
    wait_for(lambda: _waiting_locks(engine) >= 2, what="the ALTER to queue")
    go.set()
    threads[0].join(timeout=15)
    assert not threads[0].is_alive() and "error" not in outcome, outcome
    for thread in threads[1:]:
        thread.join(timeout=15)
    assert outcome["digest"]["entity_count"] >= 2


def test_content_that_is_not_json_does_not_stop_a_root_only_audit(db_session, skill, keyring) -> None:
    digest = digest_of(db_session, keyring)
    lift_guard(db_session, "UPDATE entity_versions SET content = :c WHERE entity_id = :e AND version = 3",
               c=b"\xff not json", e=skill.id)
    summary, findings = run_audit(db_session, keyring, {"against_digest": digest})
    codes = {f.code for f in findings}
    assert "content-hash-mismatch" in codes and "ledger-root-mismatch" not in codes


def test_a_forged_digest_is_refused(db_session, skill, keyring) -> None:
    digest = {**digest_of(db_session, keyring), "entity_count": 1}
    _, findings = run_audit(db_session, keyring, {"against_digest": digest})
    assert [f.code for f in findings] == ["digest-invalid"]


def test_rule_violations_are_counted_by_rule(db_session, skill, keyring) -> None:
    db_session.execute(text("UPDATE skills SET governance_agent_id = NULL WHERE id = :id"), {"id": skill.id})
    summary, _ = run_audit(db_session, keyring)
    assert summary["by_rule"]["L0-01"] == 1
    assert summary["by_code"]["row-content-mismatch"] == 1


def test_heads_mode_verifies_only_head_signatures(db_session, skill, keyring) -> None:
    tamper_forge_signature(db_session, skill, keyring)
    summary, findings = run_audit(db_session, keyring, {"verify_signatures": "heads"})
    assert "bad-signature" not in {f.code for f in findings}
    assert summary["signatures"] == "heads"


def run_incremental(session: Session, keyring: KeyRing) -> tuple[dict, list]:
    return run_audit(session, keyring, {"since": "latest-digest"})


def test_incremental_audit_checks_only_what_changed_since_the_digest(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "version four"}, ctx=write_ctx)
    summary, findings = run_incremental(db_session, keyring)
    assert findings == []
    assert summary["total_entities"] == 1 and summary["versions_verified"] == 1


def test_incremental_audit_finds_tampering_after_the_digest(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "version four"}, ctx=write_ctx)
    lift_guard(db_session, "UPDATE entity_versions SET signature = :g WHERE entity_id = :e AND version = 4",
               g=os.urandom(64), e=skill.id)
    _, findings = run_incremental(db_session, keyring)
    assert [f.code for f in findings] == ["bad-signature"]


@pytest.mark.parametrize("code", ["head-rolled-back", "chain-rewritten"])
def test_incremental_audit_sees_history_changed_behind_the_digest(db_session, skill, keyring, code) -> None:
    store_digest(db_session, keyring=keyring)
    BATTERY[code](db_session, skill, keyring)
    _, findings = run_incremental(db_session, keyring)
    assert code in {f.code for f in findings}


def test_incremental_audit_reports_a_deletion_made_in_the_row_alone_as_tampering_like_the_full_audit(
        db_session, skill, keyring) -> None:
    """No signed version records the deletion: the row no longer equals its head, which
    both audits count as non-compliant (a deletion signed since is clean: see
    tests/test_incremental_audit_coverage.py)."""
    store_digest(db_session, keyring=keyring)
    db_session.execute(text("UPDATE skills SET deleted_at = now() WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    incremental, findings = run_incremental(db_session, keyring)
    full, full_findings = run_audit(db_session, keyring)
    assert [(f.entity_id, f.code, f.severity) for f in findings] == [(skill.id, "row-content-mismatch", "critical")]
    assert [(f.entity_id, f.code) for f in full_findings] == [(skill.id, "row-content-mismatch")]
    assert incremental["total_entities"] == 1 and incremental["non_compliant"] == 1 == full["non_compliant"]


def test_incremental_audit_needs_a_digest(db_session, skill, keyring) -> None:
    from models.errors import NotFound

    with pytest.raises(NotFound):
        run_incremental(db_session, keyring)


def _committed_skill(engine, write_ctx, steward) -> uuid.UUID:
    with Session(engine) as session, session.begin():
        return create_entity(session, entity_type=E.SKILL, ctx=write_ctx, data={
            "name": "Raced Skill", "skill_key": "raced-skill", "category": "technical",
            "description": "version one", "governance_agent_id": steward}).id


def test_a_write_committed_between_reading_rows_and_versions_is_not_tampering(engine, write_ctx, keyring,
                                                                             committed_steward) -> None:
    skill_id = _committed_skill(engine, write_ctx, committed_steward)
    with Session(engine) as auditor, auditor.begin():
        entities = load_entities(auditor, E.SKILL, [skill_id])  # the row at version 1
        with Session(engine) as writer, writer.begin():  # version 2 commits before the versions are read
            update_entity(writer, entity_type=E.SKILL, entity_id=skill_id, changes={"description": "two"}, ctx=write_ctx)
        result = audit_batch(auditor, entities, keyring=keyring, embedder=EMBEDDER, signatures="all", append_only=True)
    assert result.findings == []
    assert result.entities == 1


def test_tampering_is_still_found_when_the_suspect_is_checked_again(engine, write_ctx, keyring,
                                                                   committed_steward) -> None:
    skill_id = _committed_skill(engine, write_ctx, committed_steward)
    with Session(engine) as session, session.begin():  # a version past the head, the row left behind
        update_entity(session, entity_type=E.SKILL, entity_id=skill_id, changes={"description": "two"}, ctx=write_ctx)
        session.execute(text("UPDATE skills SET version = 1 WHERE id = :id"), {"id": skill_id})
    with Session(engine) as auditor, auditor.begin():
        result = audit_batch(auditor, load_entities(auditor, E.SKILL, [skill_id]), keyring=keyring, embedder=EMBEDDER,
                             signatures="all", append_only=True)
    assert "head-mismatch" in {f.code for f in result.findings}


def test_the_incremental_audit_also_checks_a_suspect_again(engine, write_ctx, keyring, committed_steward,
                                                          monkeypatch) -> None:
    import models.incremental_audit as incremental

    skill_id = _committed_skill(engine, write_ctx, committed_steward)
    with Session(engine) as session, session.begin():
        store_digest(session, keyring=keyring)
        update_entity(session, entity_type=E.SKILL, entity_id=skill_id, changes={"description": "two"}, ctx=write_ctx)
    real_read, writes = incremental.versions_by_entity, []

    def write_first_then_read(session, ids):
        if not writes:  # version 3 commits after the rows were read, before their versions are
            with Session(engine) as writer, writer.begin():
                update_entity(writer, entity_type=E.SKILL, entity_id=skill_id, changes={"description": "three"},
                              ctx=write_ctx)
            writes.append(skill_id)
        return real_read(session, ids)

    monkeypatch.setattr(incremental, "versions_by_entity", write_first_then_read)
    found: list = []
    with Session(engine) as auditor, auditor.begin():
        result = incremental.audit_since_latest_digest(auditor, keyring=keyring, embedder=EMBEDDER, sink=found.extend)
    assert writes and found == [] and result.findings_written == 0
    assert result.versions_verified == 2


@pytest.mark.parametrize("vanish", [False, True])
def test_the_incremental_audit_names_vanished_leaves_only_when_the_counts_say_some_vanished(
        db_session, skill, write_ctx, keyring, vanish) -> None:
    store_digest(db_session, keyring=keyring)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "four"}, ctx=write_ctx)
    if vanish:  # the row gone, as its owner could: a deletion signed or marked in the row is examined instead
        lift_guard(db_session, "DELETE FROM skills WHERE id = :id", table="skills", id=skill.id)
    with recorded_statements(db_session.get_bind()) as statements:
        _, findings = run_incremental(db_session, keyring)
    anti_joins = [statement for _, statement in statements
                  if statement.startswith("SELECT ledger_digest_heads.entity_id, ledger_digest_heads.version")]
    assert [f.code for f in findings] == (["entity-row-missing"] if vanish else [])  # as a full audit reports it
    assert bool(anti_joins) == vanish


L1_PREFIX = {EntityType.INDUSTRY: "INDUSTRY-", EntityType.SKILL: "SKILL-", EntityType.JOB_ROLE: "JOBROLE-",
             EntityType.TEAM: "TEAM-", EntityType.AGENT: "AGENT-"}


@pytest.mark.parametrize("entity_type", list(EntityType))
def test_a_subject_failing_everything_breaks_exactly_its_levels_rules(entity_type: EntityType) -> None:
    # Every rule fails on this subject, so evaluate() must name each rule of the level and
    # type, in catalogue order, and no other (the rules are looked up per level and type).
    nothing = RuleSubject(entity_type=entity_type, content={}, versions=0, head_link_hash=None, genesis_linked=False,
                          append_only_enforced=False, members=0)
    l0, l1 = evaluate(nothing, L0), evaluate(nothing, L1)
    assert l0.violations == ("L0-01", "L0-02", "L0-03", "L0-04", "L0-05") and l0.warnings == ()
    named = [*l1.violations, *l1.warnings]
    assert named and all(rule_id.startswith(L1_PREFIX[entity_type]) for rule_id in named)
    assert len(named) == {EntityType.INDUSTRY: 1, EntityType.SKILL: 3, EntityType.JOB_ROLE: 3, EntityType.TEAM: 4,
                          EntityType.AGENT: 5}[entity_type]
    assert l1.warnings == (("TEAM-01",) if entity_type is EntityType.TEAM else ())
