"""What a new ledger digest attests, checked before it is signed.

A stored digest is the base every later incremental audit trusts: the versions up to each
of its leaves are not checked again. So a digest must not take a head as its row names it
unchecked, or a version forged (or a head rolled back) before the hourly digest would be
trusted from then on and seen only by the next full audit.

``unverified_heads`` compares the new digest's leaves with those of the latest stored
digest it can trust (``models.ledger.stored_digest_problem``), in the transaction that
stores the new one, over the leaf rows as written, so nothing committed meanwhile escapes:

- a leaf that is new or moved: the versions after the trusted leaf (all of them, from the
  genesis, when there is no trusted leaf) re-hash and link on from it up to the new head,
  whose signature verifies (it signs the whole chain, link by link), and no version was
  signed by a sealed retired key after its seal;
- a leaf the trusted digest has and the new one lacks: its entity must have been deleted by
  a version of its own (the row's head records the deletion), checked the same way up to
  that head.

Unchanged leaves cost nothing; the rest cost what an incremental audit of them costs. With
no trusted digest, every chain is checked as a full audit checks it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased

from models.audit_tables import LedgerDigestHead
from models.chain import GENESIS_LINK, records_a_deletion, seal_findings, verify_versions, versions_by_entity
from models.entities import ENTITY_MODELS
from models.signing import KeyRing

BATCH = 500
NAMED = 10  # problems named in a refusal; the count covers them all


@dataclass(frozen=True)
class Target:
    """What to verify of one entity: from the trusted leaf (``base``) to the head the new
    digest attests, or for an entity it no longer holds, to the head of its deleted row."""

    entity_id: uuid.UUID
    entity_type: str
    base: tuple[int, bytes]
    head: tuple[int, bytes] | None  # None: a deleted entity, whose head is read from its row
    base_type: str | None = None


def unverified_heads(session: Session, *, digest_id: int, trusted_id: int | None, keyring: KeyRing) -> tuple[int, list[str]]:
    """How many heads of digest ``digest_id`` fail the checks above, and the first few
    problems, each naming its entity. ``trusted_id`` is the trusted digest, or None."""
    failed, named = 0, []
    for batch in _batches(_moved(session, digest_id, trusted_id), _gone(session, digest_id, trusted_id)):
        for problem in _batch_problems(session, batch, keyring):
            failed += 1
            if len(named) < NAMED:
                named.append(problem)
    return failed, named


def _moved(session: Session, digest_id: int, trusted_id: int | None) -> Any:
    new, old = LedgerDigestHead, aliased(LedgerDigestHead)
    query = select(new.entity_id, new.entity_type, new.version, new.link_hash, old.version, old.link_hash, old.entity_type).outerjoin(
        old, and_(old.digest_id == trusted_id, old.entity_id == new.entity_id)
    ).where(new.digest_id == digest_id, old.link_hash.is_distinct_from(new.link_hash) | old.entity_type.is_distinct_from(new.entity_type))
    for entity_id, kind, version, link, old_version, old_link, old_kind in session.execute(query.execution_options(yield_per=BATCH)):
        base = (old_version, bytes(old_link)) if old_link is not None else (0, GENESIS_LINK)
        yield Target(entity_id, kind, base, (version, bytes(link)), old_kind)


def _gone(session: Session, digest_id: int, trusted_id: int | None) -> Any:
    if trusted_id is None:
        return
    new, old = aliased(LedgerDigestHead), LedgerDigestHead
    held = select(new.entity_id).where(new.digest_id == digest_id, new.entity_id == old.entity_id).exists()
    query = select(old.entity_id, old.entity_type, old.version, old.link_hash).where(old.digest_id == trusted_id, ~held)
    for entity_id, kind, version, link in session.execute(query.execution_options(yield_per=BATCH)):
        yield Target(entity_id, kind, (version, bytes(link)), None)


def _batches(*sources: Any) -> Any:
    batch: list[Target] = []
    for source in sources:
        for target in source:
            batch.append(target)
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _deleted_heads(session: Session, targets: list[Target]) -> dict[uuid.UUID, bytes]:
    """The head link of each target's row, where the row is marked deleted."""
    heads: dict[uuid.UUID, bytes] = {}
    for entity_type, model in ENTITY_MODELS.items():
        ids = [t.entity_id for t in targets if t.entity_type == entity_type.value]
        if ids:
            heads.update((entity_id, bytes(link)) for entity_id, link in session.execute(
                select(model.id, model.head_link_hash).where(model.id.in_(ids), model.deleted_at.is_not(None),
                                                             model.head_link_hash.is_not(None))))
    return heads


def _batch_problems(session: Session, targets: list[Target], keyring: KeyRing) -> list[str]:
    versions = versions_by_entity(session, [t.entity_id for t in targets])
    deleted = _deleted_heads(session, [t for t in targets if t.head is None])
    problems, checked = [], []
    for target in targets:
        rows = versions.get(target.entity_id, [])
        problem, chain = _problem(target, rows, deleted, keyring)
        if problem is not None:
            problems.append(f"{target.entity_type} {target.entity_id}: {problem}")
        else:
            checked.append((SimpleNamespace(id=target.entity_id), chain))
    sealed = seal_findings(session, checked, keyring)
    problems += [f"{_kind(targets, entity_id)} {entity_id}: {finding.code} at version {finding.version}"
                 for entity_id, finding in sealed.items()]
    return problems


def _kind(targets: list[Target], entity_id: uuid.UUID) -> str:
    return next(t.entity_type for t in targets if t.entity_id == entity_id)


def _problem(target: Target, rows: list[Any], deleted: dict[uuid.UUID, bytes], keyring: KeyRing) -> tuple[str | None, list[Any]]:
    """Why the head cannot be attested, or None with the versions it covers."""
    if target.base_type is not None and target.base_type != target.entity_type:
        return f"its type changed from {target.base_type}", []
    if target.head is None:  # no longer held: it must have been deleted by a version of its own
        link = deleted.get(target.entity_id)
        if link is None:
            return "held by the last digest, now neither live nor deleted with a head", []
        version = next((row.version for row in rows if bytes(row.link_hash) == link), 0)
    else:
        version, link = target.head
    base_version, base_link = target.base
    if not version:
        return "its head names no version of its chain", []
    if target.head is None and (version, link) == target.base:
        return "its row is marked deleted, and no version records the deletion", []
    if version < base_version or (version == base_version and link != base_link):
        return f"its head went back from version {base_version} to {version}", []
    chain = [row for row in rows if row.version <= version]
    if len(chain) < base_version or (base_version and bytes(chain[base_version - 1].link_hash) != base_link):
        return f"version {base_version}, which the last digest holds, is gone from its chain", []
    tail = chain[base_version:]
    if not tail or bytes(tail[-1].link_hash) != link:
        return f"version {version} is not the one its head names", []
    _, findings = verify_versions(tail, keyring=keyring, head_link=link, signatures="heads",
                                  after=(base_version, base_link))
    if findings:
        return f"{findings[0].code} at version {findings[0].version}", []
    if target.head is None and not records_a_deletion(bytes(tail[-1].content)):
        return f"its row is marked deleted but version {version} does not record a deletion", []
    return None, tail

