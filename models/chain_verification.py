"""Checking a governed entity's chain, and its row against the chain's head.

Each kind of damage to a chain (see :mod:`models.chain` for its layout) has its own
:class:`~models.chain.ChainFinding` code: a version's content or link that no longer
hashes, a gap, a broken or out-of-order link, a signature by an unknown or another key,
a version re-hashed after an edit; and for the entity's row, a head that points at no
version or replays an earlier one, or content that differs from the head's.
:func:`verify_versions` is the audit's check (and the offline history check's);
:func:`head_drift` is the one every write makes before it signs a new version on top.
"""

from __future__ import annotations

import hashlib
import struct
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.orm import Session

from models.canonical import matches_canonical
from models.chain import GENESIS_LINK, ChainFinding, EntityVersion, link_prefix, link_rest, history
from models.db_statements import uuid_in
from models.entities import EntityType, GovernedEntity, governed_content
from models.seal_check import seal_findings
from models.signing import KeyRing


@dataclass(frozen=True)
class ChainVerification:
    entity_type: str
    entity_id: uuid.UUID
    versions: int
    findings: list[ChainFinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def verify_versions(
    rows: Sequence[EntityVersion],
    *,
    keyring: KeyRing,
    head_link: bytes | None = None,
    signatures: str = "all",
    after: tuple[int, bytes] = (0, GENESIS_LINK),
    signed_from: int | None = None,
) -> tuple[int, list[ChainFinding]]:
    """Check one entity's versions, given in version order. Each kind of damage has its code.

    ``head_link`` (the entity row's head) lets a re-hashed version, one whose link no
    longer matches what its successor or the head points at, be told apart from a
    plain forged signature. ``signatures`` is ``"all"`` or ``"heads"`` (last version only);
    ``signed_from``, with ``"heads"``, checks every signature from that row index on too
    (the versions after a digest's leaf). ``after`` is the (version, link) the rows
    continue from: the genesis for a whole chain, or a trusted earlier head for an
    incremental check.
    """
    findings: list[ChainFinding] = []
    links = [bytes(r.link_hash) for r in rows]
    position: dict[bytes, int] | None = None  # built only when a link is out of place
    last = len(rows) - 1
    first_signed = 0 if signatures == "all" else signed_from if signed_from is not None else len(rows) - 1
    expected_version, expected_prev = after
    prefix = _LinkPrefix()
    for i, row in enumerate(rows):
        expected_version += 1
        prev = bytes(row.prev_link)
        if row.version != expected_version or prev != expected_prev:
            if position is None:
                position = {link: n for n, link in enumerate(links)}
            findings += _continuity(row, i, links, position, after)
        expected_prev = link = links[i]
        mismatch = _hash_mismatch(row, prev, link, prefix)
        if mismatch is not None:
            findings.append(mismatch)
        if i >= first_signed or i == last:
            findings += _signature(row, keyring, referenced=_is_referenced(rows, i, link, head_link))
    return len(rows), findings


class _LinkPrefix:
    """The link layout's (type, id) prefix, hashed once per entity; each version copies it."""

    def __init__(self) -> None:
        self._of: tuple[str, uuid.UUID] | None = None
        self._hash = hashlib.sha256()

    def link_of(self, row: EntityVersion, prev: bytes, content_hash: bytes) -> bytes:
        """The link ``row`` hashes to. Raises ``UnicodeEncodeError`` or ``struct.error`` for a
        type or version out of the layout's range."""
        if self._of != (row.entity_type, row.entity_id):
            self._hash = hashlib.sha256(link_prefix(row.entity_type, row.entity_id))
            self._of = (row.entity_type, row.entity_id)
        recomputed = self._hash.copy()
        recomputed.update(link_rest(row.version, prev, content_hash))
        return recomputed.digest()


def _hash_mismatch(row: EntityVersion, prev: bytes, link: bytes, prefix: _LinkPrefix) -> ChainFinding | None:
    """The finding for a version whose content, or else whose link, no longer hashes as stored."""
    content_hash = bytes(row.content_hash)
    if hashlib.sha256(bytes(row.content)).digest() != content_hash:
        return ChainFinding("content-hash-mismatch", row.version, "content does not hash to content_hash")
    try:
        matches = prefix.link_of(row, prev, content_hash) == link
    except (UnicodeEncodeError, struct.error):  # a row no write could have made: a type or version out of range
        matches = False
    if not matches:
        return ChainFinding("link-hash-mismatch", row.version, "link_hash does not match its inputs")
    return None


def _is_referenced(rows: Sequence[EntityVersion], i: int, link: bytes, head_link: bytes | None) -> bool:
    """Whether what points at version ``i`` holds its ``link``: its successor's ``prev_link``, or
    for the last version ``head_link`` (a version re-hashed after an edit is not referenced)."""
    pointer = bytes(rows[i + 1].prev_link) if i < len(rows) - 1 else b""
    return (pointer or head_link) == link


def _continuity(
    row: EntityVersion, i: int, links: list[bytes], position: dict[bytes, int], after: tuple[int, bytes]
) -> list[ChainFinding]:
    prev = bytes(row.prev_link)
    if row.version != after[0] + i + 1:
        return [ChainFinding("version-gap", row.version, f"expected version {after[0] + i + 1}")]
    expected = links[i - 1] if i else after[1]
    if prev == expected:
        return []
    if position.get(prev, -1) > i:
        return [ChainFinding("versions-out-of-order", row.version, "prev_link points at a later version")]
    return [ChainFinding("broken-link", row.version, "prev_link does not match the previous link")]


def _signature(row: EntityVersion, keyring: KeyRing, *, referenced: bool) -> list[ChainFinding]:
    signature, link = bytes(row.signature), bytes(row.link_hash)
    if keyring.verifier(row.kid) is None:
        return [ChainFinding("unknown-signing-key", row.version, f"kid {row.kid} is not a trusted key")]
    if keyring.verify(row.kid, signature, link):
        return []
    if any(key.verify(signature, link) for key in keyring.verifiers() if key.kid != row.kid):
        return [ChainFinding("signature-key-mismatch", row.version, f"signed by a key other than {row.kid}")]
    if not referenced:
        return [ChainFinding("rehashed-version", row.version, "hashes recomputed after an edit; the signature no longer matches")]
    return [ChainFinding("bad-signature", row.version, f"signature does not verify with kid {row.kid}")]


def verify_entity(session: Session, *, entity: GovernedEntity, keyring: KeyRing, signatures: str = "all") -> ChainVerification:
    """Verify the entity's chain and that the row still equals its head version."""
    rows = history(session, entity_id=entity.id)
    return verify_loaded(entity, rows, keyring=keyring, signatures=signatures)


def verify_loaded(
    entity: GovernedEntity,
    rows: Sequence[EntityVersion],
    *,
    keyring: KeyRing,
    signatures: str = "all",
    content: dict | None = None,
    signed_from: int | None = None,
) -> ChainVerification:
    """``verify_entity`` over already loaded versions (the audit loads them in batches).

    ``content`` is the entity's governed content when the caller already built it;
    ``signed_from`` is as for :func:`verify_versions`.
    """
    head_link = bytes(entity.head_link_hash) if entity.head_link_hash is not None else None
    count, findings = verify_versions(rows, keyring=keyring, head_link=head_link, signatures=signatures,
                                      signed_from=signed_from)
    entity_type = EntityType(entity.entity_type_value).value
    if not rows:
        findings.append(ChainFinding("no-history", None, "entity has no versions"))
        return ChainVerification(entity_type, entity.id, 0, findings)
    if not any(f.code in ("versions-out-of-order", "version-gap") for f in findings):
        # A reordered chain has no meaningful "last" version to compare the head with.
        findings += _head_findings(entity, rows, head_link, content or governed_content(entity))
    return ChainVerification(entity_type, entity.id, count, findings)


def head_drift(
    session: Session, entities: Sequence[tuple[GovernedEntity, dict]], keyring: KeyRing
) -> dict[uuid.UUID, ChainFinding]:
    """For each existing (entity, its governed content) about to take a new version: why it
    must not, if its row is not what its signed head version recorded.

    A new version is signed over the row as it is. Were the row edited outside Plant
    (SQL), its head pointer moved, or a forged version inserted and the row pointed at
    it, the next write would sign the tampering into a valid version and the evidence
    would be gone. So the newest version must hash, link and verify with a trusted key
    (the checks of :func:`verify_versions` on it alone: its ``prev_link`` is covered by
    its signed link) and the row must equal it; otherwise the entity gets that finding
    and no new version. One query for all of them; the caller holds their row locks.
    """
    if not entities:
        return {}
    heads = {row.entity_id: row for row in session.scalars(
        select(EntityVersion).where(uuid_in(EntityVersion.entity_id, (entity.id for entity, _ in entities)))
        .ext(distinct_on(EntityVersion.entity_id)).order_by(EntityVersion.entity_id, EntityVersion.version.desc()))}
    drift: dict[uuid.UUID, ChainFinding] = {}
    for entity, content in entities:
        head = heads.get(entity.id)
        if head is None:
            drift[entity.id] = ChainFinding("no-history", None, "entity has no versions")
            continue
        head_link = bytes(entity.head_link_hash) if entity.head_link_hash is not None else None
        findings = _head_version_findings(head, keyring, head_link) or _head_findings(entity, [head], head_link, content)
        if findings:
            drift[entity.id] = findings[0]
    sealed = seal_findings(session, ((entity, [heads[entity.id]]) for entity, _ in entities
                                     if entity.id not in drift and entity.id in heads), keyring)
    return {**drift, **sealed}


@dataclass(frozen=True)
class _ChainOf:
    """What :func:`models.seal_check.seal_findings` reads of an entity: its id."""

    id: uuid.UUID


def unsigned_heads(session: Session, heads: Sequence[EntityVersion], keyring: KeyRing) -> dict[uuid.UUID, ChainFinding]:
    """For each head version given (an entity's newest, read to decide on something other than
    a write to that entity, such as whether it names one being deleted): why it must not be
    taken for what Plant signed, if it must not. The checks :func:`head_drift` makes of a head
    on it alone (content and link hash, a trusted key's signature, not after its key's seal),
    not the entity's row against it. One query at most (the seal check's)."""
    found = {head.entity_id: findings[0] for head in heads
             if (findings := _head_version_findings(head, keyring, bytes(head.link_hash)))}
    sealed = seal_findings(session, ((_ChainOf(head.entity_id), [head]) for head in heads if head.entity_id not in found),
                           keyring)
    return {**found, **sealed}


def _head_version_findings(head: EntityVersion, keyring: KeyRing, head_link: bytes | None) -> list[ChainFinding]:
    """:func:`verify_versions` on ``head`` alone: its ``prev_link`` is covered by its signed link."""
    return verify_versions([head], keyring=keyring, head_link=head_link, after=(head.version - 1, bytes(head.prev_link)))[1]


# What _head_findings reports: the row differs from an intact chain's newest version.
STALE_HEAD, HEAD_MISMATCH, ROW_CONTENT_MISMATCH = "stale-head", "head-mismatch", "row-content-mismatch"
HEAD_FINDINGS = frozenset({STALE_HEAD, HEAD_MISMATCH, ROW_CONTENT_MISMATCH})


def _head_findings(
    entity: GovernedEntity, rows: Sequence[EntityVersion], head_link: bytes | None, content: dict
) -> list[ChainFinding]:
    last = rows[-1]
    if head_link != bytes(last.link_hash) or entity.version != last.version:
        earlier = [r for r in rows[:-1] if bytes(r.link_hash) == head_link]
        if earlier:
            return [ChainFinding(STALE_HEAD, earlier[0].version, f"entity head replays version {earlier[0].version} of {last.version}")]
        return [ChainFinding(HEAD_MISMATCH, last.version, "entity head does not point at a version of its chain")]
    if not matches_canonical(content, bytes(last.content)):
        return [ChainFinding(ROW_CONTENT_MISMATCH, last.version, "entity row differs from its head version")]
    respelled = [name for name in UNIQUE_TEXT_FIELDS if isinstance(content.get(name), str)
                 and not unicodedata.is_normalized("NFC", content[name])]
    if respelled:
        return [ChainFinding(ROW_CONTENT_MISMATCH, last.version,
                             f"entity row holds {', '.join(respelled)} in another Unicode spelling than its head version")]
    return []


# Canonical JSON is NFC, so a row is compared with its head as NFC; but these columns are
# unique, and PostgreSQL compares their bytes: respelled through SQL in another form that
# reads the same (e and a combining accent for é), a name lets a second, visibly identical one
# in beside it. Plant has stored them NFC since its first release, so any other spelling was
# written outside it. (Other strings, nested attributes and notes among them, were stored as
# sent by earlier releases, and still match their head as NFC.)
UNIQUE_TEXT_FIELDS = ("name", "code", "skill_key", "external_key")
