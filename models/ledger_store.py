"""Storing a ledger digest with its leaves, and pruning old digests' leaf rows.

``store_digest`` signs a digest of every entity's head and keeps its leaves, so a later
check can name each entity whose head rolled back, vanished or was rewritten since, and
beside them the soft-deleted entities' heads (tombstones, whose own root the same signed
document carries: ``heads_root`` covers live entities only), so a later one can tell a
deleted entity brought back. It takes the same quiet moment as ``digest_now``
(:func:`_stored_digest_moment`), copies the heads into its leaf rows in one statement,
holds back each head that does not verify from the newest digest it can trust
(:mod:`models.digest_check`), and attests the rows (:func:`models.ledger_trust.attest_leaves`).
``prune_digest_leaves`` deletes the leaf rows no check reads any more.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

from psycopg.errors import LockNotAvailable
from psycopg.pq import TransactionStatus
from sqlalchemy import delete, desc, func, insert, literal, select, text, tuple_
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from models.audit_tables import LedgerDigest, LedgerDigestHead, LedgerDigestTombstone
from models.digest_base import trusted_base
from models.digest_check import check_heads
from models.errors import LedgerBusy
from models.ledger import LOCK_ENTITY_TABLES, HeadNotAHash, heads_query, shared_id, versions_held
from models.ledger_digest import sign_root
from models.ledger_trust import (
    attest_leaves, base_problem, leaf_hashes, root_of_leaf_hashes, signed_row_problem, stored_digest_problem,
)
from models.merkle import HASH_SIZE
from models.signing import KeyRing

log = logging.getLogger(__name__)


def store_digest(session: Session, *, keyring: KeyRing, held_back: list[str] | None = None,
                 passed_over: list[str] | None = None) -> LedgerDigest:
    """Sign and keep a digest with its leaves (one row per entity head).

    A leaf's version is read from the chain, not from the row's ``version`` column: the
    incremental audit sums leaf versions to find chains that grew behind their rows, and
    the leaf attestation keeps that sum from being checked again. The leaf rows are copied
    by PostgreSQL from the heads in one ``INSERT ... SELECT``, and the root is computed from
    the leaf hashes PostgreSQL returns for the rows as stored (as a later check re-hashes
    them): no head passes through Python as a row. Raises :class:`HeadNotAHash` if a head
    link is not 32 bytes, as :func:`models.ledger.signed_digest` does. A head that does not
    verify from the newest digest it can trust is not attested
    (:func:`models.digest_check.check_heads`): each one is logged, and appended to
    ``held_back`` when a list is given. Each digest signed by Plant's keys that is newer than
    that one, passed over because its rows changed since, is logged too, and appended to
    ``passed_over``, with a count of the rows passed over that Plant did not sign, and why the
    search stopped short of the oldest digest, if it did (:func:`models.digest_base.base_search`:
    the heads are then checked from the genesis). Beside the leaves it keeps each
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
    if skipped:  # rows Plant did not sign, or signed whose rows changed since: the heads are checked from an older digest
        log.warning("a digest passes over stored digests for its base (%s): %s",
                    f"digest {trusted.id}" if trusted is not None else "none: the genesis", "; ".join(skipped[:10]))
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
    count, hashes, misshapen = leaf_hashes(session, digest.id)
    tombstones, tombstone_hashes, misshapen_tombstones = leaf_hashes(session, digest.id, LedgerDigestTombstone)
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
        count, hashes, _ = leaf_hashes(session, digest.id)  # the held rows replaced some
        tombstones, tombstone_hashes, _ = leaf_hashes(session, digest.id, LedgerDigestTombstone)
    document = sign_root(as_of, count, root_of_leaf_hashes(hashes), keyring,
                         tombstones=(tombstones, root_of_leaf_hashes(tombstone_hashes)))
    digest.entity_count, digest.heads_root = count, bytes.fromhex(document["heads_root"])
    digest.kid, digest.signature, digest.document = document["kid"], document["signature"], document
    attest_leaves(session, digest, keyring)
    session.flush()
    return digest


_LOCK_ENTITY_TABLES_NOWAIT = text(LOCK_ENTITY_TABLES.text + " NOWAIT")


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
    heads = heads_query(deleted=None, chain_versions=True).cte("heads")
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
        raise shared_id(shared.entity_type, shared.id) from exc


# Two rows (both live, or both deleted) with one id: the leaf (or tombstone) rows' primary key refuses the second.
_SHARED_HEADS = heads_query(deleted=None).subquery()
_SHARED_ID = (select(_SHARED_HEADS.c.id, func.min(_SHARED_HEADS.c.entity_type).label("entity_type"))
              .group_by(_SHARED_HEADS.c.id, _SHARED_HEADS.c.deleted).having(func.count() > 1).limit(1))


PRUNE_ROWS_READ = 1_000  # stored digest rows, newest first, a prune reads at most for the newest ones Plant signed
PRUNE_SECONDS = 30.0  # and for at most this long


def prune_digest_leaves(session: Session, *, keyring: KeyRing, keep_latest: int, unpruned: list[str] | None = None) -> int:
    """Delete the leaf rows (and tombstone rows) of every stored digest but the newest
    ``keep_latest`` Plant signed (:func:`_newest_signed`) and those marked ``keep_leaves`` (a
    key seal's); returns how many leaf rows went. Only the latest
    digest's leaves and a seal digest's are read (the incremental audit, which passes over
    newer rows Plant did not sign, :func:`newest_trusted_digest`; the tampering check; the
    seal's checks), and, should those not be trusted, the newest trusted one's
    (a new digest's base: :func:`models.digest_base.trusted_base`). Rows INSERTed through
    SQL without Plant's key (unsigned, forged, or a copy of a signed document dated now)
    count for nothing here, so they cannot push real digests' leaves out; nor is a row newer
    than the newest kept one pruned (it may be signed by a key ``keyring`` does not hold yet:
    Plant's newest digest to a process that holds it). A pruned digest
    keeps its signed row; should it ever become
    the latest again (the newer ones deleted by whoever owns the table, past its triggers:
    migration 0013), its missing leaves make it
    ``digest-invalid``, never trusted. Should the newest ``keep_latest`` not be found among
    the :data:`PRUNE_ROWS_READ` newest rows within :data:`PRUNE_SECONDS` (rows made up through
    SQL by the thousand), or no row verify at all, nothing is pruned, and why is logged and
    appended to ``unpruned``: deleting past what was read could take a kept digest's leaves.

    It first locks ``ledger_digests`` (SHARE, until its transaction ends): it waits for the
    digests being stored, and holds new ones off, so that none commits between the read of
    which to keep and the delete, which took such a one's leaves, the newest digest's."""
    session.execute(text(f"LOCK TABLE {LedgerDigest.__tablename__} IN SHARE MODE"))
    newest, short = _newest_signed(session, keyring, keep_latest)
    if short is not None:
        log.warning("no digest leaves are pruned: %s", short)
        if unpruned is not None:
            unpruned.append(short)
    if short is not None or not newest:  # none found Plant's (a key missing from the ring): keep all
        return 0
    kept = LedgerDigest.document["signature"].astext.in_([signature for signature, _ in newest])  # copies keep theirs too
    # Nothing newer than the newest kept: a digest signed by a key this ring does not hold yet
    # is Plant's newest to a process that holds it; a row forged dated now goes at the next prune.
    older = tuple_(LedgerDigest.as_of, LedgerDigest.id) < tuple_(*newest[0][1])
    doomed = select(LedgerDigest.id).where(LedgerDigest.keep_leaves.is_(False), kept.is_not(True), older)  # no signature: NULL
    session.execute(delete(LedgerDigestTombstone).where(LedgerDigestTombstone.digest_id.in_(doomed)))
    return session.execute(delete(LedgerDigestHead).where(LedgerDigestHead.digest_id.in_(doomed))).rowcount


def _newest_signed(session: Session, keyring: KeyRing, count: int) -> tuple[list[tuple[str, tuple[dt.datetime, int]]], str | None]:
    """The signatures of the newest ``count`` stored digests, by ``as_of`` and then id, whose
    row Plant signed (:func:`models.ledger_trust.signed_row_problem`), copies of one document
    counting once, each with the ``(as_of, id)`` of its newest row; and why fewer were found,
    when the rows read (at most :data:`PRUNE_ROWS_READ`, for at most :data:`PRUNE_SECONDS`) do
    not show they are all there are."""
    signatures: list[tuple[str, tuple[dt.datetime, int]]] = []
    deadline = time.monotonic() + PRUNE_SECONDS
    read = 0
    query = select(LedgerDigest).order_by(desc(LedgerDigest.as_of), desc(LedgerDigest.id)).limit(PRUNE_ROWS_READ)
    with closing(session.scalars(query.execution_options(yield_per=100))) as rows:
        for read, digest in enumerate(rows, 1):
            signature = digest.document.get("signature") if isinstance(digest.document, dict) else None
            if signed_row_problem(session, digest, keyring) is None and signature not in dict(signatures):
                signatures.append((signature, (digest.as_of, digest.id)))
            if len(signatures) == count:
                return signatures, None
            if time.monotonic() > deadline:
                return signatures, _read_too_few(read, len(signatures), count, f"in {PRUNE_SECONDS:g} s")
    if read == PRUNE_ROWS_READ:
        return signatures, _read_too_few(read, len(signatures), count, "(the most a prune reads)")
    return signatures, None if signatures or not read else f"none of the {read} stored digest rows is one Plant signed (a key missing from the ring?)"


def _read_too_few(read: int, found: int, count: int, bound: str) -> str:
    return (f"the {read} newest stored digest rows read {bound} hold {found} of the {count} newest documents Plant "
            "signed; the rest are unsigned, forged or signed by a key the ring does not hold")


def signed_digests(session: Session, keyring: KeyRing, *, rows: int | None = None,
                   rejected: list[tuple[LedgerDigest, str]] | None = None) -> Iterator[LedgerDigest]:
    """The stored digests whose row Plant signed (:func:`models.ledger_trust.signed_row_problem`:
    not forged, unsigned, planted or signed by a sealed key after its seal), newest first by
    ``as_of`` and then id, of the newest ``rows`` rows (every row, with None: each costs a
    signature check). Each row read that is not one is appended to ``rejected``, with why.
    Close it (:func:`contextlib.closing`) when leaving it early: it reads through a cursor."""
    query = select(LedgerDigest).order_by(desc(LedgerDigest.as_of), desc(LedgerDigest.id))
    found = session.scalars((query if rows is None else query.limit(rows)).execution_options(yield_per=100))
    try:
        for digest in found:
            problem = signed_row_problem(session, digest, keyring)
            if problem is None:
                yield digest
            elif rejected is not None:
                rejected.append((digest, problem))
    finally:
        found.close()


LATEST_DIGESTS_READ = 32  # stored digest rows, newest first, the incremental audit looks through for its base


def newest_trusted_digest(session: Session, keyring: KeyRing, *, rows: int = LATEST_DIGESTS_READ
                          ) -> tuple[LedgerDigest | None, list[tuple[LedgerDigest, str]]]:
    """The digest an incremental audit trusts, and each stored digest newer than it (or, with
    none, each of the ``rows`` newest) with why it is not trusted.

    It is the newest document Plant signed (:func:`signed_digests`), taken from the newest of
    its rows (copies of it INSERTed through SQL share its signature and ``as_of``) whose leaf
    and tombstone rows verify (:func:`models.ledger_trust.stored_digest_problem`). Rows
    INSERTed without Plant's key, dated now, are passed over, so they no longer stop every
    incremental audit; an older signed document is never the base (its leaves may be pruned,
    and Plant's own newest digest damaged calls for a full audit): None then. At most ``rows``
    rows are read, so millions of forged rows cost ``rows`` signature checks: beyond them, None."""
    passed: list[tuple[LedgerDigest, str]] = []
    newest: str | None = None  # the newest signed document's signature
    with closing(signed_digests(session, keyring, rows=rows, rejected=passed)) as signed:
        for digest in signed:
            newest = newest or digest.document["signature"]
            if digest.document["signature"] != newest:
                break  # an older document: none of the newest one's rows verify
            problem = stored_digest_problem(session, digest, keyring)
            if problem is None:
                return digest, passed
            passed.append((digest, problem))
    return None, passed
