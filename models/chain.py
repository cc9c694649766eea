"""The signed, linked, append-only history of every governed entity.

Each create or update appends one ``entity_versions`` row::

    content      = RFC 8785 canonical bytes of the entity's governed fields
    content_hash = SHA-256(content)
    link_hash    = SHA-256(LINK_DOMAIN || u16 len(type) || type || entity_id (16 bytes)
                           || u64 version || prev_link (32 bytes) || content_hash)
    signature    = sign(link_hash) with the key named by ``kid``

``prev_link`` is the previous version's ``link_hash`` (32 zero bytes for version 1), so
deleting, reordering or editing any version breaks every later link. Verification
hashes the stored bytes and never re-serializes stored JSON. The database refuses
UPDATE, DELETE and TRUNCATE on the table (triggers enabled ALWAYS, so they fire even
under ``session_replication_role = replica``), and ``UNIQUE(entity_id, version)`` and
``UNIQUE(entity_id, prev_link)`` refuse forks. Appends to one entity are serialized by
the caller holding the entity row's lock.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import struct
import threading
import time
import unicodedata
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.rows import namedtuple_row
from sqlalchemy import BigInteger, DateTime, Identity, Integer, LargeBinary, String, UniqueConstraint, func, insert, select
from sqlalchemy.dialects.postgresql import UUID, distinct_on
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base
from models.canonical import canonical_bytes, matches_canonical, strict_json_loads
from models.db import binary_row, bytes_in, uuid_in
from models.entities import EntityType, GovernedEntity, governed_content
from models.merkle import HASH_SIZE, merkle_root
from models.signing import KeyRing, KeySeal

GENESIS_LINK = bytes(32)
LINK_DOMAIN = b"plant.entity-link.v1\x00"


class EntityVersion(Base):
    __tablename__ = "entity_versions"
    __table_args__ = (
        UniqueConstraint("entity_id", "version"),
        UniqueConstraint("entity_id", "prev_link"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    version: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    content_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    prev_link: Mapped[bytes] = mapped_column(LargeBinary(32))
    link_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    kid: Mapped[str] = mapped_column(String(128))
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    actor: Mapped[str] = mapped_column(String(255))
    # Stamped at INSERT, not at the transaction's start, after sharing the ledger's versions lock
    # (migration 0008): models.ledger.versions_held relies on both.
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.entity_version_stamp())


def link_hash(entity_type: str, entity_id: uuid.UUID, version: int, prev_link: bytes, content_hash: bytes) -> bytes:
    """SHA-256 over the fixed binary layout documented in the module docstring."""
    return hashlib.sha256(_link_prefix(entity_type, entity_id) + _link_rest(version, prev_link, content_hash)).digest()


# The layout in two parts, so that verification can hash an entity's prefix once.
_U64 = struct.Struct(">Q")


def _link_prefix(entity_type: str, entity_id: uuid.UUID) -> bytes:
    """The part of ``link_hash``'s layout before the version: domain, type and id."""
    kind = entity_type.encode("ascii")
    return LINK_DOMAIN + struct.pack(">H", len(kind)) + kind + entity_id.bytes


def _link_rest(version: int, prev_link: bytes, content_hash: bytes) -> bytes:
    return _U64.pack(version) + prev_link + content_hash


def append_version(
    session: Session,
    *,
    entity: GovernedEntity,
    actor: str,
    keyring: KeyRing,
    content: dict | None = None,
    pending: list[EntityVersion] | None = None,
) -> EntityVersion:
    """Append the entity's current governed content as its next version and advance its head.

    The caller must hold the entity row lock (``SELECT ... FOR UPDATE``) when the entity
    already exists; a concurrent append would otherwise hit a fork guard. ``content`` is
    the entity's governed content when the caller already built it. The version row goes
    into the session, or into ``pending`` for a bulk caller that writes many at once with
    :func:`insert_versions`.
    """
    content = canonical_bytes(content if content is not None else governed_content(entity))
    content_hash = hashlib.sha256(content).digest()
    prev = entity.head_link_hash or GENESIS_LINK
    version = entity.version + 1
    link = link_hash(entity.entity_type_value.value, entity.id, version, prev, content_hash)
    kid, signature = keyring.sign(link)
    row = EntityVersion(
        entity_type=entity.entity_type_value.value,
        entity_id=entity.id,
        version=version,
        content=content,
        content_hash=content_hash,
        prev_link=prev,
        link_hash=link,
        kid=kid,
        signature=signature,
        actor=actor,
    )
    if pending is None:
        session.add(row)
    else:
        pending.append(row)
    entity.version = version
    entity.head_link_hash = link
    return row


def insert_versions(session: Session, rows: list[EntityVersion]) -> None:
    """Write version rows in one executemany, not through the unit of work.

    The flush would INSERT ... RETURNING every row's generated id (nobody reads it) as one
    statement of thousands of parameters; parsing that in the driver cost more than the
    inserts themselves in a 500-agent batch.
    """
    if rows:
        columns = [c.key for c in EntityVersion.__table__.columns if c.key not in ("id", "created_at")]
        session.execute(insert(EntityVersion.__table__), [{c: getattr(row, c) for c in columns} for row in rows])


def signer_kids(session: Session, *, limit: int = 5) -> list[str]:
    """Up to ``limit`` of the kids that signed the registry's versions (none: an empty registry)."""
    return list(session.scalars(select(EntityVersion.kid).distinct().order_by(EntityVersion.kid).limit(limit)))


@dataclass(frozen=True)
class ChainFinding:
    code: str
    version: int | None
    detail: str


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
    prefix_of: tuple[str, uuid.UUID] | None = None
    prefix = hashlib.sha256()
    for i, row in enumerate(rows):
        expected_version += 1
        prev = bytes(row.prev_link)
        if row.version != expected_version or prev != expected_prev:
            if position is None:
                position = {link: n for n, link in enumerate(links)}
            findings += _continuity(row, i, links, position, after)
        expected_prev = link = links[i]
        content_hash = bytes(row.content_hash)
        if hashlib.sha256(bytes(row.content)).digest() != content_hash:
            findings.append(ChainFinding("content-hash-mismatch", row.version, "content does not hash to content_hash"))
        else:
            try:
                # The layout's (type, id) prefix is hashed once per entity; each version copies it.
                if prefix_of != (row.entity_type, row.entity_id):
                    prefix = hashlib.sha256(_link_prefix(row.entity_type, row.entity_id))
                    prefix_of = (row.entity_type, row.entity_id)
                recomputed = prefix.copy()
                recomputed.update(_link_rest(row.version, prev, content_hash))
                matches = recomputed.digest() == link
            except (UnicodeEncodeError, struct.error):  # a row no write could have made: a type or version out of range
                matches = False
            if not matches:
                findings.append(ChainFinding("link-hash-mismatch", row.version, "link_hash does not match its inputs"))
        if i >= first_signed or i == last:
            pointer = bytes(rows[i + 1].prev_link) if i < last else b""
            referenced = (pointer or head_link) == link
            findings += _signature(row, keyring, referenced=referenced)
    return len(rows), findings


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


VERSIONS_SQL = (
    "SELECT entity_type, entity_id, version, content, content_hash, prev_link, link_hash, kid, signature "
    "FROM entity_versions WHERE entity_id = ANY(%s) ORDER BY entity_id, version"
)


def versions_by_entity(session: Session, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    """Plain rows grouped by entity, in version order.

    The audit's hottest read (every version of every entity): it goes straight to
    psycopg in binary format, which skips decoding hex for each bytea column.
    """
    grouped: dict[uuid.UUID, list[Any]] = defaultdict(list)
    connection = session.connection().connection.driver_connection
    with connection.cursor(binary=True, row_factory=namedtuple_row) as cursor:
        # fetchall builds the rows in one call; iterating the cursor costs a Python step per row.
        for row in cursor.execute(VERSIONS_SQL, [ids]).fetchall():
            grouped[row.entity_id].append(row)
    return grouped


def records_a_deletion(content: bytes) -> bool:
    """Whether a version's content has a top-level ``deleted_at``; unreadable content counts as live."""
    try:
        document = strict_json_loads(content)  # the parse for signed JSON: a repeated member is refused
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("deleted_at") is not None


def history(session: Session, *, entity_id: uuid.UUID) -> list[EntityVersion]:
    return list(session.scalars(select(EntityVersion).where(EntityVersion.entity_id == entity_id).order_by(EntityVersion.version)))


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


SEALED_CODE = "signed-after-seal"


def seal_findings(session: Session, chains: Iterable[tuple[Any, Sequence[Any]]], keyring: KeyRing) -> dict[uuid.UUID, ChainFinding]:
    """For each (entity, its version rows) given: the first version signed by a sealed
    retired key after its seal, if any (see :mod:`models.key_seals`).

    Such a version is valid only if the seal's digest holds the entity at that version or
    a later one; the digest was signed by the key's successor after every process had
    switched, so anything the old key signed later was signed by someone holding a key
    Plant retired. The version a leaf holds is the chain's own version of the leaf's
    link, never the number stored beside it. An entity soft-deleted before the seal is in
    no digest: the seal file lists its head link instead. An entity in neither (created
    after the seal) is held to nothing, so all it got from a sealed key is reported. The
    digest's leaves are taken only as checked against the root the seal file names
    (:func:`sealed_leaves`, once per process); leaves that fail it hold nothing. One query
    for all of them once the leaves are checked, and none when no retired key is sealed.
    """
    if not keyring.sealed:
        return {}
    suspects: dict[uuid.UUID, list[tuple[Any, KeySeal]]] = {}
    for entity, rows in chains:
        signed = [(row, seal) for row in rows if (seal := keyring.seal(row.kid)) is not None]
        if signed:
            suspects[entity.id] = signed
    if not suspects:
        return {}
    seals = {seal.kid: seal for signed in suspects.values() for _, seal in signed}
    held, unchecked = _held(session, seals.values(), suspects)
    findings: dict[uuid.UUID, ChainFinding] = {}
    for entity_id, signed in suspects.items():
        for row, seal in signed:
            version = held.get((seal.digest_id, entity_id))
            if version is None or row.version > version:
                holds = ("does not hold this entity's chain" if version is None else f"holds version {version}") + (
                    "; its leaves no longer hash to the root the seal names" if seal.digest_id in unchecked else "")
                findings[entity_id] = ChainFinding(SEALED_CODE, row.version, (
                    f"signed by retired key {row.kid} after its seal (digest {seal.digest_id} of {seal.as_of} {holds})"))
                break
    return findings


LEAF_SIZE = 16 + HASH_SIZE  # a ledger leaf: the entity id's 16 bytes, then its head link (models.merkle.head_leaf)
# One seal digest's leaves as one value, in entity-id order (the digest's leaf order); a
# missing link leaves the whole a length no leaf count gives (links of other lengths are
# caught by the root).
_SEALED_LEAVES_SQL = ("SELECT count(*), string_agg(uuid_send(entity_id) || link_hash, ''::bytea ORDER BY entity_id) "
                      "FROM {table} WHERE digest_id = %s")
SEALED_LEAVES_RECHECK_SECONDS = 60.0  # how long a failed check stands before the rows are read again
# Per (seal digest, root): its checked leaves, kept for the process's life (one entry per
# sealing the process has needed: its keyring's seals are fixed at start), or the monotonic
# time until which a failed check stands.
_sealed_leaves: dict[tuple[int, str, str | None], SealedLeaves | float] = {}
_sealed_leaves_lock = threading.Lock()  # one reader at a time: API threads share the process's


@dataclass(frozen=True)
class SealedLeaves:
    """A seal digest's leaves as checked against the root its seal file names."""

    leaves: bytes  # LEAF_SIZE bytes each, in entity-id order
    # The digest's tombstones (soft-deleted entities' heads), for a seal that names their root.
    tombstones: SealedLeaves | None = None

    def __len__(self) -> int:
        return len(self.leaves) // LEAF_SIZE

    def __getitem__(self, index: int) -> bytes:  # the entity id of leaf ``index``, for bisect
        return self.leaves[index * LEAF_SIZE : index * LEAF_SIZE + 16]

    def link(self, entity_id: uuid.UUID) -> bytes | None:
        """The head link the digest held for ``entity_id``, or None when it held none."""
        key = entity_id.bytes
        index = bisect.bisect_left(self, key)
        if index == len(self) or self[index] != key:
            return None
        return self.leaves[index * LEAF_SIZE + 16 : (index + 1) * LEAF_SIZE]

    def held(self, entity_id: uuid.UUID) -> bytes | None:
        """The head link the seal holds for ``entity_id``: its leaf's, or its tombstone's."""
        return self.link(entity_id) or (self.tombstones.link(entity_id) if self.tombstones is not None else None)


def sealed_leaves(session: Session, seal: KeySeal) -> SealedLeaves | None:
    """The leaves of ``seal``'s digest (and its tombstones, where the seal file names their
    root), or None when its leaf rows (or tombstone rows) do not hash to the root the seal
    file names (a row edited, added or removed through SQL): then they hold nothing.

    The seal file, kept beside the retired key, is the anchor; the leaf rows sit in a table
    that refuses UPDATE, and INSERT and DELETE of a seal's rows (migration 0017), but whose owner could
    lift that, say to name a version a leaked copy of the key signed after the seal. So they
    are read whole and checked against the seal's root once per process (O(leaves): 48 bytes
    a leaf are kept, per sealing the process needs), and never read again: an edit made later
    cannot reach a process that checked them before it, and a row rewritten unchanged
    (pg_repack, a dump and restore) changes nothing. Threads needing the same leaves wait for
    one read. A failed check stands for ``SEALED_LEAVES_RECHECK_SECONDS``, then the rows are
    read again, in case they were put back from a backup.
    """
    key = (seal.digest_id, seal.heads_root, seal.tombstones_root)
    if isinstance(kept := _sealed_leaves.get(key), SealedLeaves):
        return kept
    with _sealed_leaves_lock:
        kept = _sealed_leaves.get(key)
        if isinstance(kept, SealedLeaves):
            return kept
        if kept is not None and time.monotonic() < kept:
            return None
        leaves = _checked_rows(session, "ledger_digest_heads", seal.digest_id, seal.heads_root)
        tombstones = b"" if seal.tombstones_root is None else _checked_rows(
            session, "ledger_digest_tombstones", seal.digest_id, seal.tombstones_root)
        if leaves is not None and tombstones is not None:
            _sealed_leaves[key] = SealedLeaves(leaves, SealedLeaves(tombstones))
            return _sealed_leaves[key]
        _sealed_leaves[key] = time.monotonic() + SEALED_LEAVES_RECHECK_SECONDS
        return None


def _checked_rows(session: Session, table: str, digest_id: int, root: str) -> bytes | None:
    """A digest's leaf (or tombstone) rows in ``table``, LEAF_SIZE bytes each in entity-id
    order, if they hash to ``root``; else None."""
    count, leaves = binary_row(session, _SEALED_LEAVES_SQL.replace("{table}", table), [digest_id])
    leaves = bytes(leaves or b"")
    if len(leaves) == count * LEAF_SIZE and merkle_root(
            leaves[start : start + LEAF_SIZE] for start in range(0, len(leaves), LEAF_SIZE)).hex() == root:
        return leaves
    return None


def _held(session: Session, seals: Iterable[KeySeal], entity_ids: Iterable[uuid.UUID]) -> tuple[dict[tuple[int, uuid.UUID], int], set[int]]:
    """((seal digest, entity) -> the chain version of the head link the seal holds for the
    entity, the seal digests whose leaves failed their check). A seal holds an entity by its
    digest's leaf (:func:`sealed_leaves`), or, for one soft-deleted before the seal, by the
    digest's tombstone, whose root the seal file names (a seal written before it did lists
    their head links itself, parsed once per process: ``KeySeal.deleted_heads``). The version is the chain's own version of that link, never
    the number stored beside a leaf. One query, and none when no seal holds one of ``entity_ids``."""
    entity_ids = list(entity_ids)
    listed: list[tuple[int, uuid.UUID, bytes]] = []
    unchecked: set[int] = set()
    for seal in seals:
        leaves = sealed_leaves(session, seal)
        if leaves is None:
            unchecked.add(seal.digest_id)
        for entity_id in entity_ids:
            link = seal.deleted_heads.get(entity_id) or (leaves.held(entity_id) if leaves is not None else None)
            if link is not None:
                listed.append((seal.digest_id, entity_id, link))
    if not listed:
        return {}, unchecked
    versions = {(row.entity_id, bytes(row.link_hash)): row.version for row in session.execute(
        select(EntityVersion.entity_id, EntityVersion.link_hash, EntityVersion.version).where(
            uuid_in(EntityVersion.entity_id, {entity_id for _, entity_id, _ in listed}),
            bytes_in(EntityVersion.link_hash, {link for _, _, link in listed})))}
    return {(digest_id, entity_id): versions[entity_id, link]
            for digest_id, entity_id, link in listed if (entity_id, link) in versions}, unchecked


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
        _, findings = verify_versions([head], keyring=keyring, head_link=head_link, after=(head.version - 1, bytes(head.prev_link)))
        findings = findings or _head_findings(entity, [head], head_link, content)
        if findings:
            drift[entity.id] = findings[0]
    sealed = seal_findings(session, ((entity, [heads[entity.id]]) for entity, _ in entities
                                     if entity.id not in drift and entity.id in heads), keyring)
    return {**drift, **sealed}


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
