"""The ledger digest over every entity's chain head, stored and compared.

``current_heads`` streams (entity_id, type, version, head link) over all entity tables
in id order. ``store_digest`` signs a digest of them and keeps its leaves, so a later
check can name each entity whose head rolled back, vanished or was rewritten since, and
beside them the soft-deleted entities' heads (tombstones, whose own root the same signed
document carries: ``heads_root`` covers live entities only), so a later one can tell a
deleted entity brought back.
``compare_heads`` does that comparison for any digest's leaves; a digest that brings
only its root is checked by recomputing the root of the heads as of its time. A stored
digest sits in tables anyone with SQL access can edit, so before its leaves are trusted
``stored_digest_problem`` checks its signed document and recomputes ``heads_root`` from
the stored leaf rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from psycopg.errors import LockNotAvailable
from psycopg.pq import TransactionStatus
from sqlalchemy import CompoundSelect, and_, delete, desc, func, insert, literal, literal_column, or_, select, text, union_all
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from models.audit_tables import LedgerDigest, LedgerDigestHead, LedgerDigestTombstone
from models.canonical import canonical_bytes
from models.chain import ChainFinding, EntityVersion, records_a_deletion
from models.db import binary_row, bytes_in, uuid_in
from models.digest_check import check_heads, planted, trusted_base
from models.entities import ENTITY_MODELS
from models.errors import Conflict, LedgerBusy
from models.ledger_digest import build_digest, digest_problem, digest_with_leaves, keeps_tombstones, sign_root
from models.merkle import HASH_SIZE, MerkleAccumulator, head_leaf
from models.signing import KeyRing

log = logging.getLogger(__name__)
HEAD_BATCH = 5000
# How long a digest looks for a moment with no version write in flight, and how often.
DIGEST_WAIT_SECONDS = 5.0
DIGEST_RETRY_SECONDS = 0.01
# Advisory lock key ("versions" in ASCII): every version INSERT shares it (the created_at
# default, migration 0008); a digest takes it alone (:func:`versions_held`).
VERSIONS_LOCK = int.from_bytes(b"versions", "big")
_TRY_VERSIONS_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
_LOCK_ENTITY_TABLES = text(f"LOCK TABLE {', '.join(m.__tablename__ for m in ENTITY_MODELS.values())} IN ACCESS SHARE MODE")
_HEADS_CURSOR = "digest_heads"
DIGEST_LOCK_TIMEOUT = "1s"
LEAVES_ATTESTATION_TYPE = "plant.digest-leaves.v1"


@dataclass(frozen=True)
class HeadRecord:
    entity_id: uuid.UUID
    entity_type: str
    version: int
    link_hash: bytes


def current_heads(
    session: Session, entity_ids: Iterable[uuid.UUID] | None = None, *, deleted: bool = False, chain_versions: bool = False
) -> Iterator[HeadRecord]:
    """Every live entity's head (or, with ``deleted``, every soft-deleted one's), ascending
    by id, streamed in batches. Each head's version is the row's ``version`` column, or with
    ``chain_versions`` that of the chain version its head link names (0 when no version of
    that entity and type has that link): what a stored digest's leaf must say."""
    query = _heads_query(entity_ids, deleted=deleted, chain_versions=chain_versions)
    result = session.execute(query.execution_options(yield_per=HEAD_BATCH))
    return (_head_record(row) for row in result)


def _head_record(row: Any) -> HeadRecord:
    """A row of :func:`_heads_query` (id, entity type, version, head link)."""
    return HeadRecord(row[0], row[1], row[2], bytes(row[3]))


def _heads_query(
    entity_ids: Iterable[uuid.UUID] | None = None, *, deleted: bool | None = False, chain_versions: bool = False
) -> CompoundSelect:
    """The heads :func:`current_heads` streams; with ``deleted=None``, live and deleted ones
    alike, each with a fifth column saying whether its row is deleted."""
    parts = []
    ids = list(entity_ids) if entity_ids is not None else None
    for entity_type, model in ENTITY_MODELS.items():
        if chain_versions:
            named = and_(EntityVersion.link_hash == model.head_link_hash, EntityVersion.entity_id == model.id,
                         EntityVersion.entity_type == entity_type.value)
            query = select(model.id, literal(entity_type.value).label("entity_type"),
                           func.coalesce(EntityVersion.version, 0), model.head_link_hash).outerjoin(EntityVersion, named)
        else:
            query = select(model.id, literal(entity_type.value).label("entity_type"), model.version, model.head_link_hash)
        if deleted is None:
            query = query.add_columns(model.deleted_at.is_not(None).label("deleted"))
        else:
            query = query.where(model.deleted_at.is_not(None) if deleted else model.deleted_at.is_(None))
        query = query.where(model.head_link_hash.is_not(None))
        if ids is not None:
            query = query.where(uuid_in(model.id, ids))
        parts.append(query)
    return union_all(*parts).order_by("id")


def digest_now(session: Session, *, keyring: KeyRing, with_leaves: bool = False) -> dict[str, Any]:
    """A signed digest of every entity's head, now.

    ``session`` must be in a READ COMMITTED transaction that has not written versions: a
    digest waits for a moment with no version write in flight (:func:`versions_held`).
    Inside that moment it only DECLAREs the cursor over the heads, which fixes what the
    digest reads; the rows are fetched after writes may go on again. The entity tables are
    locked (ACCESS SHARE) before the moment, so DDL queued on an entity table behind a write
    that waits for the moment cannot hold the digest up in turn, and no lock is waited for
    longer than ``DIGEST_LOCK_TIMEOUT`` (``LedgerBusy``; the setting lasts until the caller's
    transaction ends).
    """
    _require_read_committed(session)
    declare = text(f"DECLARE {_HEADS_CURSOR} NO SCROLL CURSOR FOR "
                   + str(_heads_query().compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True})))
    try:
        session.execute(text(f"SET LOCAL lock_timeout = '{DIGEST_LOCK_TIMEOUT}'"))  # for the rest of the transaction
        session.execute(_LOCK_ENTITY_TABLES)
        with versions_held(session) as as_of:
            session.execute(declare)
    except OperationalError as exc:
        if isinstance(exc.orig, LockNotAvailable):
            raise LedgerBusy(f"the ledger's tables stayed locked for {DIGEST_LOCK_TIMEOUT}; retry shortly") from exc
        raise
    return signed_digest(_fetch_declared_heads(session), as_of, keyring, with_leaves=with_leaves)


def _require_read_committed(session: Session) -> None:
    """A digest's statements each take their own snapshot, inside one transaction."""
    isolation = session.scalar(text("SHOW transaction_isolation"))
    if isolation != "read committed" or session.connection().connection.driver_connection.autocommit:
        raise RuntimeError(f"a digest needs a read committed transaction, not {isolation}"
                           f"{' in autocommit' if isolation == 'read committed' else ''}")


def _fetch_declared_heads(session: Session) -> Iterator[HeadRecord]:
    fetch = text(f"FETCH FORWARD {HEAD_BATCH} FROM {_HEADS_CURSOR}")
    while rows := session.execute(fetch).all():
        yield from map(_head_record, rows)
    session.execute(text(f"CLOSE {_HEADS_CURSOR}"))


class HeadNotAHash(Conflict):
    """An entity's head link is not 32 bytes: its row was changed outside Plant."""

    code = "ledger-head-invalid"
    title = "An entity's head cannot be held by a digest"


class HeadIdShared(HeadNotAHash):
    """Two entity rows (of two types, or a live and a deleted one) share an id: a digest holds
    one leaf per id, so one of them was written outside Plant (ids are unique per table only)."""


def _shared_id(entity_type: str, entity_id: uuid.UUID) -> HeadIdShared:
    return HeadIdShared(f"{entity_type} {entity_id}: another entity row has its id, so no digest can hold both; "
                        "one of them was written outside Plant (audit it)", entity_id=str(entity_id))


def _hashes_only(heads: Iterable[HeadRecord]) -> Iterator[HeadRecord]:
    previous: uuid.UUID | None = None
    for head in heads:
        if len(head.link_hash) != HASH_SIZE:
            raise HeadNotAHash(f"{head.entity_type} {head.entity_id}: its head link is {len(head.link_hash)} bytes, not "
                               f"{HASH_SIZE}, so no digest can cover it; its row was changed outside Plant (audit it)",
                               entity_id=str(head.entity_id))
        if head.entity_id == previous:  # heads come in id order: a shared id is the one before
            raise _shared_id(head.entity_type, head.entity_id)
        previous = head.entity_id
        yield head


def signed_digest(heads: Iterable[HeadRecord], as_of: dt.datetime, keyring: KeyRing, *, with_leaves: bool = False) -> dict[str, Any]:
    """Sign a digest of ``heads`` stamped ``as_of``; with ``with_leaves``, listing each head.
    :class:`HeadNotAHash` if a head link is not a hash (no digest is signed)."""
    heads = _hashes_only(heads)
    if with_leaves:
        heads = list(heads)
        pairs = ((h.entity_id, h.link_hash) for h in heads)
        return digest_with_leaves(as_of, pairs, keyring, versions={h.entity_id: h.version for h in heads})
    return build_digest(as_of, ((h.entity_id, h.link_hash) for h in heads), keyring)


@contextmanager
def versions_held(session: Session) -> Iterator[dt.datetime]:
    """Hold version writes off for the body of the ``with``, and give the time to stamp a digest with.

    A root-only digest is checked by recomputing the heads of the versions stamped at or
    before its ``as_of`` (:func:`root_as_of`). A version is stamped when it is inserted,
    which can be before a digest that it only commits after; and a transaction that began
    before a digest can insert after it. So every version INSERT takes ``VERSIONS_LOCK``
    shared, until its transaction ends, right before it reads the clock for its stamp (the
    column default ``entity_version_stamp()``, migration 0008). Here a second connection
    takes that lock exclusively at a moment when no version write holds it, and reads
    ``as_of``. A statement of ``session`` that begins inside the ``with`` then sees exactly
    the versions stamped before ``as_of``, and every later one is stamped after it. The lock
    goes when the ``with`` ends.

    The lock is only ever tried (every 10 ms): a digest waiting in the lock queue would make
    every new write queue behind it. After ``DIGEST_WAIT_SECONDS`` with a write always in
    flight it raises ``LedgerBusy``. A stored digest takes the same moment
    (:func:`_stored_digest_moment`), so that its ``as_of`` names exactly the heads it holds
    too (its signed document, handed back root-only, is checked by :func:`root_as_of`).
    """
    deadline = time.monotonic() + DIGEST_WAIT_SECONDS
    with session.get_bind().engine.connect() as holder:
        while not holder.scalar(_TRY_VERSIONS_LOCK, {"key": VERSIONS_LOCK}):
            if time.monotonic() >= deadline:
                raise LedgerBusy(f"version writes stayed in flight for {DIGEST_WAIT_SECONDS:g} s; retry the digest shortly")
            wait_for_writes_in_flight()
        yield holder.scalar(select(func.clock_timestamp()))
    # Leaving connect() rolls the holder's transaction back, which releases the lock.


def wait_for_writes_in_flight() -> None:
    """The pause before a digest tries its lock again."""
    time.sleep(DIGEST_RETRY_SECONDS)


def store_digest(session: Session, *, keyring: KeyRing, held_back: list[str] | None = None,
                 passed_over: list[str] | None = None) -> LedgerDigest:
    """Sign and keep a digest with its leaves (one row per entity head).

    A leaf's version is read from the chain, not from the row's ``version`` column: the
    incremental audit sums leaf versions to find chains that grew behind their rows, and
    the leaf attestation keeps that sum from being checked again. The leaf rows are copied
    by PostgreSQL from the heads in one ``INSERT ... SELECT``, and the root is computed from
    the leaf hashes PostgreSQL returns for the rows as stored (as a later check re-hashes
    them): no head passes through Python as a row. Raises :class:`HeadNotAHash` if a head
    link is not 32 bytes, as :func:`signed_digest` does. A head that does not verify from
    the newest digest it can trust is not attested (:func:`models.digest_check.check_heads`):
    each one is logged, and appended to ``held_back`` when a list is given. Each digest
    signed by Plant's keys that is newer than that one, passed over because its rows changed
    since, is logged too, and appended to ``passed_over``. Beside the leaves it keeps each
    soft-deleted entity's head as a tombstone, and signs their count and root in the same
    document (type ``v2``).

    Its ``as_of`` names exactly the heads it holds when ``session`` has not begun its
    transaction yet (:func:`_stored_digest_moment`; ``LedgerBusy`` when no quiet moment
    comes within ``DIGEST_WAIT_SECONDS``): the transaction then reads everything in one
    snapshot (REPEATABLE READ). In a transaction that has begun (one that wrote versions
    itself, say), it is stamped with that transaction's start, and is exact only if no version
    write committed between then and its leaves' read.
    """
    as_of = _stored_digest_moment(session)
    skipped: list[str] = []
    trusted = trusted_base(session, keyring, base_problem, skipped)
    if skipped:  # signed by Plant's key, yet its rows changed since: the heads are checked from an older digest
        log.warning("a digest passes over %d signed digests whose rows cannot be trusted: %s", len(skipped), "; ".join(skipped[:10]))
        if passed_over is not None:
            passed_over += skipped
    digest = LedgerDigest(as_of=as_of, entity_count=0, heads_root=bytes(HASH_SIZE), kid="", signature="", document={})
    session.add(digest)
    session.flush()  # the id the leaf rows name; the columns are signed and set below
    _insert_heads(session, digest.id)
    # Statistics that know the new digest's id: to PostgreSQL an id newer than its statistics
    # holds a few rows, and the joins between two digests' rows (the check below, the next
    # incremental audits) were then planned as nested loops over every pair of leaves.
    _analyze_digest_rows(session)
    count, hashes, misshapen = _leaf_hashes(session, digest.id)
    tombstones, tombstone_hashes, misshapen_tombstones = _leaf_hashes(session, digest.id, LedgerDigestTombstone)
    if misshapen or misshapen_tombstones:
        raise HeadNotAHash(f"{misshapen + misshapen_tombstones} head links are not {HASH_SIZE} bytes; no digest can cover "
                           "them: their rows were changed outside Plant (audit them)")
    held = check_heads(session, digest_id=digest.id, trusted=trusted, keyring=keyring)
    if held:
        base = f"digest {trusted.id}" if trusted is not None else "the genesis (no stored digest can be trusted)"
        log.warning("digest %s holds back %d entity heads that do not verify from %s: %s", digest.id, len(held), base,
                    "; ".join(map(str, held[:10])) + ("; …" if len(held) > 10 else ""))
        if held_back is not None:
            held_back += map(str, held)
        count, hashes, _ = _leaf_hashes(session, digest.id)  # the held rows replaced some
        tombstones, tombstone_hashes, _ = _leaf_hashes(session, digest.id, LedgerDigestTombstone)
    document = sign_root(as_of, count, root_of_leaf_hashes(hashes), keyring,
                         tombstones=(tombstones, root_of_leaf_hashes(tombstone_hashes)))
    digest.entity_count, digest.heads_root = count, bytes.fromhex(document["heads_root"])
    digest.kid, digest.signature, digest.document = document["kid"], document["signature"], document
    _attest_leaves(session, digest, keyring)
    session.flush()
    return digest


_LOCK_ENTITY_TABLES_NOWAIT = text(_LOCK_ENTITY_TABLES.text + " NOWAIT")


def _stored_digest_moment(session: Session) -> dt.datetime:
    """The ``as_of`` of a digest :func:`store_digest` is about to store.

    The digest row may not be dated after its transaction's start (``now()``, migration
    0013), so exactness needs the transaction to begin inside a moment with no version write
    in flight (:func:`versions_held`), and to read every head in one snapshot taken there:
    a version stamped before ``as_of`` has committed by then, and one stamped after is not
    in the snapshot. So, when ``session`` has not begun its transaction, it begins it inside
    the moment as REPEATABLE READ, locks the entity tables (ACCESS SHARE, NOWAIT: a DDL
    statement holding or queued for one, perhaps behind a write that waits for this very
    moment, makes it ``LedgerBusy`` at once, rather than it waiting holding writes off;
    and no table rewrite can commit between its snapshot and its reads), and then takes its
    snapshot and ``now()`` in one statement; the moment ends there. A session whose
    transaction has begun is stamped ``now()``, as before: its transaction began earlier.
    """
    driver = session.connection().connection.driver_connection
    if driver.autocommit or driver.info.transaction_status != TransactionStatus.IDLE:
        return session.scalar(select(func.now()))
    with versions_held(session):
        try:
            session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))  # sends BEGIN first: now() is in the moment
            session.execute(_LOCK_ENTITY_TABLES_NOWAIT)
        except OperationalError as exc:
            if isinstance(exc.orig, LockNotAvailable):
                raise LedgerBusy("an entity table is locked, or a lock on one is queued; retry the digest shortly") from exc
            raise
        return session.scalar(select(func.now()))


ANALYZE_LOCK_TIMEOUT = "1s"


def _analyze_digest_rows(session: Session) -> None:
    """ANALYZE the leaf and tombstone tables, in a savepoint that gives up after
    ``ANALYZE_LOCK_TIMEOUT``: its lock (held until the digest commits) is one another digest
    or a VACUUM may hold, and the check runs without it (its joins plan no nested loops).
    Without it, later incremental audits may plan theirs as such until autovacuum analyzes
    the tables. A role that neither owns the tables nor may maintain them is skipped by
    PostgreSQL with a warning."""
    tables = f"{LedgerDigestHead.__tablename__}, {LedgerDigestTombstone.__tablename__}"
    try:
        with session.begin_nested():  # a timeout rolls back to here, the setting with it
            previous = session.scalar(text("SELECT current_setting('lock_timeout')"))
            session.execute(text(f"SET LOCAL lock_timeout = '{ANALYZE_LOCK_TIMEOUT}'"))
            session.execute(text(f"ANALYZE {tables}"))
            session.execute(text("SELECT set_config('lock_timeout', :previous, true)"), {"previous": previous})
    except OperationalError as exc:
        if not isinstance(exc.orig, LockNotAvailable):
            raise
        log.warning("a digest did not analyze %s: their lock stayed taken for %s", tables, ANALYZE_LOCK_TIMEOUT)


_HEAD_COLUMNS = ["digest_id", "entity_id", "entity_type", "version", "link_hash"]


def _insert_heads(session: Session, digest_id: int) -> None:
    """Copy every live entity's head into ``digest_id``'s leaf rows and every soft-deleted
    one's into its tombstone rows, in one statement (one snapshot: no entity in both), each
    at the version of the chain its head link names (0 when none does)."""
    heads = _heads_query(deleted=None, chain_versions=True).cte("heads")
    entity_id, entity_type, version, link, deleted = heads.c

    def rows(tombstones: bool) -> Any:
        return select(literal(digest_id), entity_id, entity_type, version, link).where(deleted.is_(tombstones))

    leaves = insert(LedgerDigestHead).from_select(_HEAD_COLUMNS, rows(False)).cte("leaves")
    try:
        with session.begin_nested():  # a savepoint, so that a shared id can be named after the failure
            session.execute(insert(LedgerDigestTombstone).from_select(_HEAD_COLUMNS, rows(True)).add_cte(leaves))
    except IntegrityError as exc:
        shared = session.execute(_SHARED_ID).first()
        if shared is None:
            raise
        raise _shared_id(shared.entity_type, shared.id) from exc


# Two rows (both live, or both deleted) with one id: the leaf (or tombstone) rows' primary key refuses the second.
_SHARED_HEADS = _heads_query(deleted=None).subquery()
_SHARED_ID = (select(_SHARED_HEADS.c.id, func.min(_SHARED_HEADS.c.entity_type).label("entity_type"))
              .group_by(_SHARED_HEADS.c.id, _SHARED_HEADS.c.deleted).having(func.count() > 1).limit(1))


def prune_digest_leaves(session: Session, *, keep_latest: int) -> int:
    """Delete the leaf rows (and tombstone rows) of every stored digest but the newest
    ``keep_latest`` and those marked ``keep_leaves`` (a key seal's); returns how many leaf
    rows went. Only the latest
    digest's leaves and a seal digest's are read (the incremental audit, the tampering
    check, the seal's checks). A pruned digest keeps its signed row; should it ever become
    the latest again (the newer ones deleted by whoever owns the table, past its triggers:
    migration 0013), its missing leaves make it
    ``digest-invalid``, never trusted."""
    newest = select(LedgerDigest.id).order_by(desc(LedgerDigest.as_of), desc(LedgerDigest.id)).limit(keep_latest)
    doomed = select(LedgerDigest.id).where(LedgerDigest.keep_leaves.is_(False), LedgerDigest.id.not_in(newest))
    session.execute(delete(LedgerDigestTombstone).where(LedgerDigestTombstone.digest_id.in_(doomed)))
    return session.execute(delete(LedgerDigestHead).where(LedgerDigestHead.digest_id.in_(doomed))).rowcount


def latest_digest(session: Session) -> LedgerDigest | None:
    return session.scalars(select(LedgerDigest).order_by(desc(LedgerDigest.as_of), desc(LedgerDigest.id)).limit(1)).first()


# Each stored leaf's RFC 6962 leaf hash, SHA-256(0x00 || entity id's 16 bytes || head link),
# computed by PostgreSQL and sent as one value in entity-id order: Python is left only the
# inner nodes, and no row or UUID object is built for each of the digest's leaves.
LEAF_HASHES_SQL = (
    "SELECT count(*), string_agg(sha256('\\x00'::bytea || uuid_send(entity_id) || link_hash), ''::bytea "
    f"ORDER BY entity_id), count(*) FILTER (WHERE octet_length(link_hash) <> {HASH_SIZE}) "
    "FROM {table} WHERE digest_id = %s"
)
DigestHeads = type[LedgerDigestHead] | type[LedgerDigestTombstone]


def _leaf_hashes(session: Session, digest_id: int, table: DigestHeads = LedgerDigestHead) -> tuple[int, bytes, int]:
    """(how many leaf rows, or with ``table`` tombstone rows, ``digest_id`` has, their leaf
    hashes in entity-id order, how many of their links are not 32 bytes long)."""
    count, hashes, misshapen = binary_row(session, LEAF_HASHES_SQL.replace("{table}", table.__tablename__), [digest_id])
    return count, bytes(hashes or b""), misshapen


def leaves_statement(digest: LedgerDigest, cluster: str) -> bytes:
    """What a stored digest's leaf attestation signs: the digest's id, root and count, the
    transaction id its leaf rows were written with (in full, 64 bits), and the database
    cluster's system identifier (see :func:`_attested_writer`)."""
    return canonical_bytes({
        "type": LEAVES_ATTESTATION_TYPE, "digest_id": digest.id, "heads_root": bytes(digest.heads_root).hex(),
        "entity_count": digest.entity_count, "leaves_xmin": digest.leaves_xmin, "cluster": cluster,
    })


XID_SPAN = 2**32  # a row's xmin holds the low 32 bits of its writer's 64-bit transaction id
# The next 64-bit transaction id (assigning none), and the cluster's identifier, which
# initdb draws at random: a restore into another cluster, whose ids start again, has another.
_XID_CLOCK = text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text, "
                  "has_function_privilege('pg_control_system()', 'EXECUTE')")
_CLUSTER = text("SELECT system_identifier::text FROM pg_control_system()")


def xid_clock(session: Session) -> tuple[int, str | None]:
    """(the next 64-bit transaction id, the cluster's system identifier, or None where this
    role may not read it: leaves are then never attested, and always re-hashed)."""
    next_id, may_read = session.execute(_XID_CLOCK).one()
    return int(next_id), session.scalar(_CLUSTER) if may_read else None


def full_xid(xmin: int, near: int) -> int:
    """The 64-bit transaction id whose low 32 bits are ``xmin`` and that lies within 2**31 of
    the 64-bit id ``near`` (a transaction still running, ours included, can be past the
    snapshot's ``xmax``: that counts completed transactions only)."""
    return near + (xmin - near + XID_SPAN // 2) % XID_SPAN - XID_SPAN // 2


def _attest_leaves(session: Session, digest: LedgerDigest, keyring: KeyRing) -> None:
    """Sign the transaction id the leaf rows were just written with (see :func:`_attested_writer`)."""
    xmin = session.scalar(
        select(literal_column("xmin::text")).select_from(LedgerDigestHead).where(LedgerDigestHead.digest_id == digest.id).limit(1))
    next_id, cluster = xid_clock(session)
    if xmin is not None and cluster is not None:
        digest.leaves_xmin = str(full_xid(int(xmin), next_id))
        _, digest.leaves_attestation = keyring.sign(leaves_statement(digest, cluster))


def _attested_writer(session: Session, digest: LedgerDigest, keyring: KeyRing) -> str | None:
    """The low 32 bits of the transaction id that wrote the digest's leaf and tombstone rows,
    as its leaf attestation signs it, while that id can be trusted; None otherwise.

    Rows a transaction writes carry its id (``xmin``) for good, freezing included; any
    UPDATE, DELETE or INSERT since leaves another id or another count. So when the
    attestation verifies with the digest's key and all of a digest's rows carry the
    attested id, they are the rows ``store_digest`` wrote (:func:`_all_written_by`). A row's
    xmin is 32 bits, though, and ids wrap: once 2**32 more transactions have run, a later one
    could carry the same 32 bits (someone burning ids to rewrite leaves under the attested
    one). So the attestation names the full 64-bit id and is used only while fewer than
    2**32 transactions have started since, in the same cluster: after a dump and restore
    into another cluster, ids start again, and the attested one could be reached by
    burning far fewer. A digest from another cluster, one that old, or one stored before
    attestations falls back to re-hashing.
    """
    verifies, next_id = _attestation_verifies(session, digest, keyring)
    if not verifies:
        return None
    writer = int(digest.leaves_xmin)
    if next_id - writer >= XID_SPAN:  # the 32 bits may since have named another transaction
        return None
    return str(writer % XID_SPAN)


def _attestation_verifies(session: Session, digest: LedgerDigest, keyring: KeyRing) -> tuple[bool, int]:
    """(whether the digest's leaf attestation verifies in this cluster, by a key not sealed:
    only ``store_digest`` makes one; the next 64-bit transaction id)."""
    if digest.leaves_xmin is None or digest.leaves_attestation is None or keyring.seal(digest.kid) is not None:
        return False, 0  # unattested, or attested by a sealed key, whose leaked copy could attest anything
    next_id, cluster = xid_clock(session)
    verifies = cluster is not None and keyring.verify(digest.kid, bytes(digest.leaves_attestation), leaves_statement(digest, cluster))
    return verifies, next_id


def base_problem(session: Session, digest: LedgerDigest, keyring: KeyRing) -> str | None:
    """Why the stored ``digest`` must not be the base a new digest is checked from:
    :func:`stored_digest_problem`, or, for a v1 document (stored before migration 0018), a
    leaf attestation that does not verify. ``GET /ledger/digest`` signs v1 documents of the
    heads as the rows name them, unchecked, and one fetched before the upgrade passes as a
    stored one; only ``store_digest`` attests leaves. A v1 digest stored unattested (before
    migration 0005, or where this role cannot read the cluster's identifier) is no base
    either: the next digest checks from an older one, or from the genesis."""
    problem = stored_digest_problem(session, digest, keyring)
    if problem is None and not keeps_tombstones(digest.document) and not _attestation_verifies(session, digest, keyring)[0]:
        return "a v1 digest whose leaf attestation does not verify: nothing shows that Plant stored it"
    return problem


def _all_written_by(session: Session, table: DigestHeads, digest_id: int, writer: str, count: int) -> bool:
    """Whether ``digest_id`` has exactly ``count`` rows in ``table``, all written by transaction ``writer``."""
    same = func.count().filter(literal_column("xmin::text") == writer)
    rows, attested = session.execute(select(func.count(), same).select_from(table).where(table.digest_id == digest_id)).one()
    return rows == attested == count


def stored_digest_problem(session: Session, digest: LedgerDigest, keyring: KeyRing) -> str | None:
    """Why the stored ``digest`` must not be trusted, or None when it may be.

    Its leaves are rows anyone with SQL access can edit (say, to match a rolled-back
    head), so they are trusted only when its stored document verifies with ``keyring``'s
    keys, agrees with the row's columns, and the leaf rows hash to its signed
    ``heads_root``; likewise its tombstone rows must hash to its signed ``tombstones_root``
    (a ``v2`` document, migration 0018). Reads every leaf and tombstone of the digest: O(rows), in one
    statement each; when they are untouched since they were written and attested, without
    hashing them.
    """
    document = digest.document
    problem = digest_problem(document, keyring)
    if problem is not None:
        return f"its signed document cannot be trusted: {problem}"
    if (document["heads_root"] != bytes(digest.heads_root).hex() or document["entity_count"] != digest.entity_count
            or dt.datetime.fromisoformat(document["as_of"]) != digest.as_of):  # as_of picks "the latest"
        return "its row's heads_root, entity_count or as_of differs from its signed document"
    after_seal = signed_after_seal(keyring, document["kid"], digest.as_of, digest.id)
    if after_seal is not None:
        return after_seal
    if not keeps_tombstones(document) and session.scalar(select(planted()).where(LedgerDigest.id == digest.id)):
        return "it is a published digest's document (v1), dated after Plant began storing v2 digests (migration 0018)"
    writer = _attested_writer(session, digest, keyring)
    problem = _rows_problem(session, digest.id, LedgerDigestHead, document["entity_count"], document["heads_root"], writer)
    if problem is not None or not keeps_tombstones(document):
        return problem
    return _rows_problem(session, digest.id, LedgerDigestTombstone, document["tombstone_count"], document["tombstones_root"],
                         writer)


def _rows_problem(session: Session, digest_id: int, table: DigestHeads, count: int, root: str, writer: str | None) -> str | None:
    """Why the digest's rows in ``table`` are not the ``count`` rows whose signed root is
    ``root`` (hex), as ``store_digest`` read them from the chain; None when they are, which
    rows all written by the attested ``writer`` are without hashing them."""
    if writer is not None and _all_written_by(session, table, digest_id, writer, count):
        return None
    what, signed = ("leaves", "heads_root") if table is LedgerDigestHead else ("tombstones", "tombstones_root")
    got, hashes, _ = _leaf_hashes(session, digest_id, table)
    if got != count or root_of_leaf_hashes(hashes).hex() != root:
        return f"its {got} stored {what} do not hash to its signed {signed}"
    # The root covers each row's entity id and link, not the version and type stored beside
    # them, which the incremental audit reads (a leaf equal to its row's head is not
    # examined, and leaf versions are summed against the ledger's count): where a version
    # of the entity still carries the link, they must be its number and type; where none
    # does, the row must name no version (0), unless its entity's row has moved off that link
    # since. That is a rollback that deleted the version (examined, and the check's to hold),
    # not a reason to distrust the whole digest, which would send the next one to an older
    # base that never saw it. A row of version 0 names no version (a placeholder, or a
    # trusted link its chain no longer carries at its trusted version: models.digest_check).
    named = and_(EntityVersion.link_hash == table.link_hash, EntityVersion.entity_id == table.entity_id)
    carried = select(EntityVersion.id).where(named).exists()
    misnumbered = select(func.count()).select_from(table).join(EntityVersion, named).where(
        table.digest_id == digest_id, table.version != 0,
        (EntityVersion.version != table.version) | (EntityVersion.entity_type != table.entity_type)).scalar_subquery()
    still_named = [select(func.count()).select_from(table).join(model, model.id == table.entity_id).where(
        table.digest_id == digest_id, table.version != 0, model.head_link_hash == table.link_hash, ~carried).scalar_subquery()
        for model in ENTITY_MODELS.values()]
    # A row of version 0 names no version, so nothing above reads its type; but no digest
    # Plant stores holds a type it does not know, nor one its entity never had: a placeholder
    # takes its entity row's, a held row its trusted one's, which was its chain's (chains are
    # append-only). Such a row, in a copy of a signed digest made through SQL (the roots do not
    # cover types), was trusted, and every later digest held it again.
    untyped = select(func.count()).select_from(table).where(
        table.digest_id == digest_id, table.entity_type.not_in([entity_type.value for entity_type in ENTITY_MODELS])
    ).scalar_subquery()
    of_its_chain = select(EntityVersion.id).where(EntityVersion.entity_id == table.entity_id,
                                                  EntityVersion.entity_type == table.entity_type).exists()
    of_its_row = or_(*(and_(table.entity_type == kind.value, select(model.id).where(model.id == table.entity_id).exists())
                       for kind, model in ENTITY_MODELS.items()))
    mistyped = select(func.count()).select_from(table).where(
        table.digest_id == digest_id, table.version == 0, ~of_its_chain, ~of_its_row).scalar_subquery()
    if any(session.execute(select(misnumbered, untyped, mistyped, *still_named)).one()):
        return (f"its stored {what}' versions or types differ from the chain versions they name, or name no entity "
                "type, or one their entity never had")
    return None


def signed_after_seal(keyring: KeyRing, kid: str, as_of: dt.datetime, digest_id: int | None = None) -> str | None:
    """Why a digest signed by ``kid`` cannot be trusted, when ``kid`` is a sealed retired key
    and the digest does not come before the seal's own digest; None otherwise.

    A sealed key signs nothing valid after its seal (:mod:`models.key_seals`); every
    process signed with its successor by then, so only a leaked copy of it could sign a
    digest that is stored later (or is, by ``as_of`` and then id, the latest one)."""
    seal = keyring.seal(kid)
    if seal is None:
        return None
    sealed_as_of = dt.datetime.fromisoformat(seal.as_of.replace("Z", "+00:00"))
    if as_of < sealed_as_of or (as_of == sealed_as_of and digest_id is not None and digest_id < seal.digest_id):
        return None
    return f"it is signed by retired key {kid}, which was sealed as of {seal.as_of}, and is not older than that seal"


def root_of_leaf_hashes(hashes: bytes) -> bytes:
    """RFC 6962 root over already hashed leaves (32 bytes each, in order)."""
    accumulator = MerkleAccumulator()
    accumulator.extend_hashed(hashes[start : start + HASH_SIZE] for start in range(0, len(hashes), HASH_SIZE))
    return accumulator.root()


def stored_leaves(session: Session, digest_id: int, entity_ids: list[uuid.UUID] | None = None) -> list[tuple[uuid.UUID, int | None, bytes]]:
    query = select(LedgerDigestHead.entity_id, LedgerDigestHead.version, LedgerDigestHead.link_hash).where(
        LedgerDigestHead.digest_id == digest_id
    )
    if entity_ids is not None:
        query = query.where(uuid_in(LedgerDigestHead.entity_id, entity_ids))
    return [(r[0], r[1], bytes(r[2])) for r in session.execute(query.order_by(LedgerDigestHead.entity_id))]


@dataclass(frozen=True)
class HeadFinding:
    entity_id: uuid.UUID
    entity_type: str | None
    finding: ChainFinding


def compare_heads(session: Session, leaves: list[tuple[uuid.UUID, int | None, bytes]]) -> list[HeadFinding]:
    """Each digest leaf whose head is no longer in its entity's chain, classified.

    A leaf names its entity by id only; the version row holding its head also names the
    entity's type, and only a live row of that type answers for the leaf (ids are unique
    per table, so a row of another type given the id and head of a deleted one does not).
    A live row whose head was set to NULL has no head to compare, yet is not deleted: its
    chain was rewritten."""
    findings: list[HeadFinding] = []
    for start in range(0, len(leaves), HEAD_BATCH):
        batch = leaves[start : start + HEAD_BATCH]
        ids = [entity_id for entity_id, _, _ in batch]
        now: dict[uuid.UUID, list[HeadRecord]] = {}
        for head in current_heads(session, ids):
            now.setdefault(head.entity_id, []).append(head)
        found = session.execute(
            select(EntityVersion.entity_id, EntityVersion.link_hash, EntityVersion.entity_type)
            .where(bytes_in(EntityVersion.link_hash, [l for _, _, l in batch]))
        )
        kind_of = {(entity_id, bytes(link)): kind for entity_id, link, kind in found}
        headless = _live_without_head(session, [i for i in ids if i not in now])
        for entity_id, version, link in batch:
            kind = kind_of.get((entity_id, link))
            heads = [h for h in now.get(entity_id, []) if kind is None or h.entity_type == kind]
            nulled = [t for t in headless.get(entity_id, ()) if kind is None or t == kind]
            finding = _classify(entity_id, version, kind, heads[0] if heads else None, nulled[0] if nulled else None)
            if finding is not None:
                findings.append(finding)
    return findings


def _live_without_head(session: Session, entity_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """The types of the live rows among ``entity_ids`` whose head is NULL (no statement when none is asked)."""
    if not entity_ids:
        return {}
    parts = [select(model.id, literal(entity_type.value)).where(
        uuid_in(model.id, entity_ids), model.deleted_at.is_(None), model.head_link_hash.is_(None))
        for entity_type, model in ENTITY_MODELS.items()]
    types: dict[uuid.UUID, list[str]] = {}
    for entity_id, entity_type in session.execute(union_all(*parts)):
        types.setdefault(entity_id, []).append(entity_type)
    return types


def _classify(entity_id: uuid.UUID, version: int | None, kind: str | None, head: HeadRecord | None,
              nulled: str | None = None) -> HeadFinding | None:
    """``kind`` is the type of the chain that still holds the leaf's head, None when none
    does; ``nulled`` the type of a live row of the entity whose head is NULL."""
    if head is None and nulled is not None:
        return HeadFinding(entity_id, nulled, ChainFinding(
            "chain-rewritten", version, "the digest's head is no longer in the chain, and the row's head is NULL"))
    if head is None:
        return HeadFinding(entity_id, kind, ChainFinding("entity-deleted", version, "in the digest, gone from the registry"))
    if kind is not None:
        return None  # the digest's head is still in the chain (later versions may follow)
    if version is not None and head.version < version:
        return HeadFinding(entity_id, head.entity_type, ChainFinding(
            "head-rolled-back", head.version, f"head is version {head.version}; the digest saw version {version}"))
    return HeadFinding(entity_id, head.entity_type, ChainFinding(
        "chain-rewritten", head.version, "the digest's head is no longer in the chain: history was rewritten"))


def root_as_of(session: Session, as_of: dt.datetime) -> tuple[int, bytes]:
    """Entity count and Merkle root of each chain's last version created at or before ``as_of``,
    leaving out the chains whose last version then was a deletion: a digest holds live
    entities only. Only contents that mention a ``"deleted_at":"`` string are parsed, in
    Python, so a tampered content that is not JSON cannot stop the audit (it reports that
    content under its own code)."""
    accumulator = MerkleAccumulator()
    for entity_id, link, maybe_deleted in session.execute(_HEADS_AS_OF.execution_options(yield_per=HEAD_BATCH), {"as_of": as_of}):
        if maybe_deleted is not None and records_a_deletion(bytes(maybe_deleted)):
            continue
        accumulator.add(_leaf_of_any(entity_id, bytes(link)))
    return accumulator.size, accumulator.root()


def _leaf_of_any(entity_id: uuid.UUID, link: bytes) -> bytes:
    """:func:`head_leaf`, or for a link that is not a hash (a row written outside Plant) a leaf
    no genuine root holds: the id, then the SHA-256 of the link (finding the link that gives
    a genuine head's hash would take a preimage). The root then differs, as it should, where
    refusing the link stopped the whole comparison."""
    if len(link) == HASH_SIZE:
        return head_leaf(entity_id, link)
    return entity_id.bytes + hashlib.sha256(b"plant.not-a-link\x00" + link).digest()


_HEADS_AS_OF = text("""
    SELECT entity_id, link_hash,
           CASE WHEN position('"deleted_at":"'::bytea IN content) > 0 THEN content END AS maybe_deleted
    FROM (SELECT DISTINCT ON (entity_id) entity_id, link_hash, content FROM entity_versions
          WHERE created_at <= :as_of ORDER BY entity_id, version DESC) AS last
    ORDER BY entity_id
""")

