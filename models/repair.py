"""Restoring an entity row that was edited outside Plant to its signed head version.

A row that no longer equals its head version (a SQL edit, a moved head pointer, a
reset) is frozen: every write refuses it with ``entity-tampered`` so that the evidence
is never signed over. :func:`restore_entity` is the operator's way out. It restores the
row only when the entity's whole chain verifies (every hash, link and signature), sets
every governed field back to what the newest version holds, recomputes the derived
data (embedding, constitution results), and records what it found and undid as a
signed, append-only :class:`EntityRepair`. A certified skill whose row equals its head
but whose stored embedding is not its text's (``embedding-mismatch``) is restored too:
only its embedding changes. A chain that does not verify is never
"repaired": there is no signed truth to go back to, and the evidence stays as it is.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import DateTime, Integer, LargeBinary, String, func, select, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, UUIDPk
from models.canonical import (
    as_jsonb_keeps_it, canonical_bytes, matches_canonical, rfc3339_utc, sha256, strict_json_loads, to_json_tree,
)
from models.certification_gates import certified_embedding_drift
from models.chain import GENESIS_LINK, ChainFinding, history
from models.chain_verification import HEAD_FINDINGS, verify_loaded
from models.seal_check import seal_findings
from models.constitution import L0, L1, evaluate
from models.db_statements import uuid_in
from models.embeddings import Embedder
from models.entities import ENTITY_MODELS, EntityType, governed_content, typed_content
from models.errors import CanonicalizationError, Conflict
from models.jws import KeySource, b64url_encode, verify_b64url_signature
from models.audit_tables import LedgerDigestHead, LedgerDigestTombstone
from models.digest_base import base_search
from models.key_seals import seal_problems, with_seal_lists
from models.entity_input import apply_fields, holds_nul, lock_parents
from models.entity_locks import lock_entity
from models.ledger_trust import base_problem
from models.registry import embed_text_of, integrity_as_domain_errors, rule_subject, snapshot
from models.seat_guards import guard_membership
from models.signing import KeyRing

REPAIR_FORMAT = "plant.entity-repair.v1"
MAX_UNSIGNABLE_TEXT = 20_000
# The arrays and objects around a row's content in a signed audit report's document: the
# document, its report, the report's repairs, the record, its row_before. Content that fits
# canonical JSON's depth alone but not there made every later run's report fail to export.
CONTENT_IN_REPORT_DOCUMENT = 5
RECORD_IN_REPORT_DOCUMENT = CONTENT_IN_REPORT_DOCUMENT - 2  # the document, its report, the report's repairs


class EntityRepair(Base):
    """One restore: the entity, the head version it was set back to, and what the row held."""

    __tablename__ = "entity_repairs"

    id: Mapped[UUIDPk]
    entity_type: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    version: Mapped[int] = mapped_column(Integer)
    head_link_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    finding: Mapped[str] = mapped_column(String(64))
    row_before: Mapped[dict[str, Any]] = mapped_column(JSONB)
    actor: Mapped[str] = mapped_column(String(255))
    repaired_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    kid: Mapped[str] = mapped_column(String(128))
    signature: Mapped[bytes] = mapped_column(LargeBinary)

    def as_json(self) -> dict[str, Any]:
        statement = _statement(self)
        try:
            canonical_bytes(statement)
        except CanonicalizationError:  # a row written outside Plant (what Plant signs reads back the same): as
            statement["row_before"] = _signable(statement["row_before"], enclosed=0)  # text, so it can be signed
        return {**statement, "id": str(self.id), "kid": self.kid, "signature": b64url_encode(bytes(self.signature))}


class NotRestorable(Conflict):
    code = "not-restorable"
    title = "The entity cannot be restored from its chain"


@dataclass(frozen=True)
class RestoreOutcome:
    entity_type: str
    entity_id: uuid.UUID
    version: int
    restored: bool
    finding: str | None = None
    changed_fields: tuple[str, ...] = ()
    repair: EntityRepair | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "entity_type": self.entity_type,
            "entity_id": str(self.entity_id),
            "version": self.version,
            "restored": self.restored,
            "finding": self.finding,
            "changed_fields": list(self.changed_fields),
            "repair": self.repair.as_json() if self.repair is not None else None,
        }


# Advisory lock key ("repairs" in ASCII) that keeps every export of an audit run listing
# the same repairs: see :func:`hold_repairs_open` and :func:`settle_repairs`.
REPAIRS_LOCK = int.from_bytes(b"repairs", "big")


def hold_repairs_open(session: Session) -> None:
    """Taken (shared, until the transaction ends) by a restore before anything else.

    A report lists the repairs made before its run started (``repaired_at`` earlier than
    the run's ``created_at``, its transaction's start). A restore reads its time before it
    commits, so without this a run could start between the two: exports made before the
    commit would leave the repair out and later ones list it. Restores share the lock.
    """
    session.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": REPAIRS_LOCK})


# Lock and unlock in one statement, so the session-level lock is never left held on a
# pooled connection between statements. PostgreSQL does not flatten a subquery whose
# output calls a volatile function, so the lock is taken before the unlock runs (the test's
# second part, a restore that must not wait, fails if it were the other way round).
_BARRIER = text("SELECT pg_advisory_unlock(:key) FROM (SELECT pg_advisory_lock(:key)) AS waited")


def settle_repairs(session: Session) -> None:
    """Called by a new audit run: waits until every restore that holds the lock has
    committed, then lets go at once. A restore that was in flight is visible to every
    export of the run; one that starts later reads a time after the run's start, so no
    export lists it. The run holds nothing while it plans or audits."""
    session.execute(_BARRIER, {"key": REPAIRS_LOCK})


def _digest_head_lost(session: Session, entity_id: uuid.UUID, rows: Sequence[Any], keyring: KeyRing) -> str | None:
    """Why the chain ``rows`` is not all the entity had, if the newest trusted stored digest
    (the base the next digest is checked from, :func:`models.digest_base.trusted_base`)
    holds a head for it, leaf or tombstone, that the chain no longer has: versions deleted
    past the guard. A chain that verifies to an earlier head is still a rollback. A head a
    later digest held back at version 0 with a real link (``models.digest_check._held``: the
    link its chain lost) is one too; only the placeholder (the genesis link) names nothing.
    A search for that digest stopped short (:func:`models.digest_base.base_search`: rows made
    up through SQL by the thousand) shows nothing either way: that is said instead, and the
    restore refused, where the genesis would have taken the rollback as all the chain had."""
    search = base_search(session, keyring, base_problem)
    trusted = search.digest
    if trusted is None:
        return f"no stored digest could be trusted to hold it to: {search.cut_short}" if search.cut_short else None
    chain = {(row.version, bytes(row.link_hash)) for row in rows}
    links = {link for _, link in chain}
    for table in (LedgerDigestHead, LedgerDigestTombstone):
        held = session.execute(select(table.version, table.link_hash).where(
            table.digest_id == trusted.id, table.entity_id == entity_id)).one_or_none()
        if held is None or bytes(held.link_hash) == GENESIS_LINK:
            continue
        if held.version > 0 and (held.version, bytes(held.link_hash)) not in chain:
            return (f"the ledger digest of {trusted.as_of.isoformat()} (id {trusted.id}) holds its version {held.version}, "
                    f"which its chain no longer has (it ends at version {rows[-1].version})")
        if held.version == 0 and bytes(held.link_hash) not in links:
            return (f"the ledger digest of {trusted.as_of.isoformat()} (id {trusted.id}) holds it back at a link its chain "
                    f"no longer has (it ends at version {rows[-1].version})")
    return None


def restore_entity(
    session: Session, *, entity_type: EntityType, entity_id: uuid.UUID, keyring: KeyRing, embedder: Embedder, actor: str
) -> RestoreOutcome:
    """Set a drifted entity row back to its newest signed version, under the row lock.

    Returns ``restored=False`` (and writes nothing) when the row already equals its head.
    Raises :class:`NotRestorable` when the chain itself does not verify, and the registry's
    409/422 errors when the restored row would break a membership or unique rule (free the
    seat or the name first). Flushes; the caller commits.
    """
    hold_repairs_open(session)  # before the row lock: a run holding the lock may lock rows
    lock_parents(session, ENTITY_MODELS[entity_type])  # before the row lock too: the restore may put a parent back
    entity = lock_entity(session, entity_type, entity_id)
    rows = history(session, entity_id=entity_id)
    if not rows:
        raise NotRestorable(f"{entity_type.value} {entity_id} has no versions to restore from", id=str(entity_id))
    head = rows[-1]
    before = governed_content(entity)
    if keyring.sealed and (problems := seal_problems(session, keyring)):
        raise NotRestorable(f"a key seal cannot be trusted, so neither can what it vouches for: {problems[0]}; "
                            "nothing was changed", id=str(entity_id))
    findings = [*verify_loaded(entity, rows, keyring=keyring, content=before).findings,
                *seal_findings(session, [(entity, rows)], keyring).values()]
    broken = [f for f in findings if f.code not in HEAD_FINDINGS]
    if broken:
        first = broken[0]
        raise NotRestorable(f"the chain of {entity_type.value} {entity_id} does not verify ({first.code} at version "
                            f"{first.version}: {first.detail}); nothing was changed", id=str(entity_id),
                            findings=[{"code": f.code, "version": f.version} for f in broken[:20]])
    if findings and (lost := _digest_head_lost(session, entity_id, rows, keyring)) is not None:
        raise NotRestorable(f"{entity_type.value} {entity_id}: {lost}: its newest versions may have been removed, and "
                            "restoring it to what is left would vouch for a rollback; nothing was changed", id=str(entity_id))
    if not findings and (stale := certified_embedding_drift(entity, embedder)) is not None:
        findings = [ChainFinding(stale.code, entity.version, stale.detail)]  # the row is its head; its vector is not
    if not findings:
        return RestoreOutcome(entity_type.value, entity.id, entity.version, restored=False)
    drift = findings[0]
    signed = strict_json_loads(bytes(head.content))
    row_before = {"version": entity.version, "head_link_hash": _hex(entity.head_link_hash), "content": _signable(before)}
    snapshot_before = snapshot(entity)
    # No autoflush until the flush below, where unique violations become 409s naming the field.
    with session.no_autoflush:
        apply_fields(session, entity, typed_content(entity_type, signed), pending=frozenset(), signed=True)
        entity.version, entity.head_link_hash = head.version, bytes(head.link_hash)
        if not matches_canonical(governed_content(entity), bytes(head.content)):
            raise NotRestorable(f"{entity_type.value} {entity_id}: the restored row does not reproduce its head version")
        seat = guard_membership(session, entity, before=snapshot_before, after=snapshot(entity), keyring=keyring)
        embed_text_of(entity, embedder)
        # Recorded as they come out: the signed content is what it is.
        subject = rule_subject(session, entity, keyring=keyring, seat_problems=seat)
        l0, l1 = evaluate(subject, L0), evaluate(subject, L1)
        entity.constitution_l0, entity.constitution_l1 = l0.as_json(), l1.as_json()
        # The database's clock, as audit runs use, read last: reports list repairs made before
        # a run started, and a slow embedder must not leave a window before the commit.
        repaired_at = session.scalar(select(func.clock_timestamp()))
    repair = EntityRepair(
        id=uuid.uuid4(), entity_type=entity_type.value, entity_id=entity.id, version=head.version,
        head_link_hash=bytes(head.link_hash), finding=drift.code, row_before=row_before, actor=actor,
        repaired_at=repaired_at, kid=keyring.active.kid,
    )
    _, repair.signature = keyring.sign(repair_statement(repair))  # the statement names the active key's kid
    with integrity_as_domain_errors(session, entity_type):
        session.add(entity)
        session.add(repair)
        session.flush()
    changed = tuple(sorted(name for name in signed if before.get(name) != signed[name]))
    return RestoreOutcome(entity_type.value, entity.id, head.version, restored=True, finding=drift.code,
                          changed_fields=changed, repair=repair)


def repairs(
    session: Session,
    *,
    entity_id: uuid.UUID | None = None,
    entity_type: str | None = None,
    entity_ids: Sequence[uuid.UUID] | None = None,
    before: dt.datetime | None = None,
) -> list[EntityRepair]:
    """Repair records, oldest first: of one entity, of a type or id list, made before a time."""
    query = select(EntityRepair).order_by(EntityRepair.repaired_at, EntityRepair.id)
    if entity_id is not None:
        query = query.where(EntityRepair.entity_id == entity_id)
    if entity_type is not None:
        query = query.where(EntityRepair.entity_type == entity_type)
    if entity_ids:
        query = query.where(uuid_in(EntityRepair.entity_id, entity_ids))
    if before is not None:
        query = query.where(EntityRepair.repaired_at < before)
    return list(session.scalars(query))


def verified_repairs(session: Session, *, entity_type: str | None, entity_ids: Sequence[uuid.UUID] | None,
                     before: dt.datetime, keyring: KeyRing) -> list[dict[str, Any]]:
    """The exports (:meth:`EntityRepair.as_json`) of the repair records of a type or id list
    made before ``before`` whose own signature verifies (:func:`verify_repair`, a sealed
    key's against its seal's list): what an audit run that started then lists. A record
    written outside Plant is left out, whatever it says."""
    checking = with_seal_lists(keyring, session)
    exported = (r.as_json() for r in repairs(session, entity_type=entity_type, entity_ids=entity_ids, before=before))
    return [record for record in exported if verify_repair(record, checking)]


def repairs_by_id(session: Session, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, EntityRepair]:
    return {r.id: r for r in session.scalars(select(EntityRepair).where(uuid_in(EntityRepair.id, ids)))} if ids else {}


def record_sha256(record: dict[str, Any]) -> str:
    """Hex SHA-256 of an exported repair record's RFC 8785 bytes, signature included: how an
    audit run's plan and close name it."""
    return sha256(canonical_bytes(record)).hex()


def as_listed(record: dict[str, Any]) -> dict[str, Any]:
    """An exported repair record as a signed audit report lists it: as it is, or, when
    canonical JSON cannot hold it where the report's document does (content nested deeper
    than that, signed by a release before :data:`CONTENT_IN_REPORT_DOCUMENT`), with its
    ``row_before`` replaced by why, and the SHA-256 of the record (:func:`record_sha256`, as
    the run's plan and close name it). Marked, it verifies no more (``INVALID`` on the page,
    ``NOT verify`` to ``plant report verify``), and every report listing it still exports."""
    try:
        to_json_tree(record, depth=RECORD_IN_REPORT_DOCUMENT)
    except CanonicalizationError as exc:
        return {**record, "row_before": {"not_exported": f"it cannot sit in a signed report's document: {exc.detail}",
                                         "record_sha256": record_sha256(record)}}
    return record


def repair_statement(repair: EntityRepair) -> bytes:
    """The bytes a repair record's signature covers: RFC 8785 JSON of every member of its
    export but the signature (never 32 bytes, so no chain link signature doubles as one)."""
    return canonical_bytes({**_statement(repair), "id": str(repair.id), "kid": repair.kid})


def verify_repair(record: Any, keyring: KeySource) -> bool:
    """Whether an exported repair record (:meth:`EntityRepair.as_json`, as in a signed audit
    report) reads exactly as Plant signed it, before its key was sealed: checked with a key
    ring (its seal lists read: :func:`models.key_seals.with_seal_lists`) or, offline, the
    published JWK Set (``keyring`` either)."""
    if not isinstance(record, dict) or record.get("format") != REPAIR_FORMAT:
        return False
    unsigned = {name: value for name, value in record.items() if name != "signature"}
    try:
        statement = canonical_bytes(unsigned)
    except (CanonicalizationError, TypeError):  # nothing Plant signed
        return False
    return verify_b64url_signature(keyring, record.get("kid"), record.get("signature"), statement,
                                   named=record.get("repaired_at"))


def _statement(repair: EntityRepair) -> dict[str, Any]:
    return {
        "format": REPAIR_FORMAT,
        "entity_type": repair.entity_type,
        "entity_id": str(repair.entity_id),
        "version": repair.version,
        "head_link_hash": bytes(repair.head_link_hash).hex(),
        "finding": repair.finding,
        "row_before": repair.row_before,
        "actor": repair.actor,
        "repaired_at": rfc3339_utc(repair.repaired_at),
    }


def _signable(content: dict[str, Any], *, enclosed: int = CONTENT_IN_REPORT_DOCUMENT) -> dict[str, Any]:
    """What the row held, as a repair record can sign it: as it was, or, when it holds
    something canonical JSON refuses (an integer past 2**53, or nesting too deep for where a
    report document holds it: ``enclosed``), something jsonb would give back otherwise (a float
    of 1e21 or more comes back an integer past 2**53), or something jsonb cannot store (a NUL:
    what JSON Python cannot read is read as), as escaped JSON text."""
    text = json.dumps(content, default=str, ensure_ascii=True)
    try:
        canonical_bytes(as_jsonb_keeps_it(to_json_tree(content, depth=enclosed)))  # as the record reads once stored
    except CanonicalizationError as exc:
        return {"unsignable": exc.detail, "json": text[:MAX_UNSIGNABLE_TEXT]}
    if holds_nul(content):  # a NUL no jsonb column takes (what JSON Python cannot read is read as: models.db_json)
        return {"unsignable": "it holds a NUL, which no jsonb value can", "json": text[:MAX_UNSIGNABLE_TEXT]}
    return content


def _hex(value: bytes | None) -> str | None:
    return bytes(value).hex() if value is not None else None
