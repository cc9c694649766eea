"""Every entity's chain head, and a digest signed over them now.

``current_heads`` streams (entity_id, type, version, head link) over all entity tables
in id order. ``digest_now`` signs a digest of them (``GET /ledger/digest``) inside a moment
with no version write in flight (:func:`versions_held`), so that its ``as_of`` names exactly
the heads it holds; ``signed_digest`` signs a digest of given heads. A digest Plant keeps,
with its leaves, is stored by :mod:`models.ledger_store`; a stored one is trusted only as
:mod:`models.ledger_trust` checks it; :mod:`models.ledger_compare` compares a digest's
leaves, or its root, with the heads.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from psycopg.errors import LockNotAvailable
from sqlalchemy import CompoundSelect, and_, func, literal, select, text, union_all
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from models.chain import EntityVersion
from models.db_statements import uuid_in
from models.entities import ENTITY_MODELS
from models.errors import Conflict, LedgerBusy
from models.ledger_digest import build_digest, digest_with_leaves
from models.merkle import HASH_SIZE
from models.signing import KeyRing

HEAD_BATCH = 5000
# How long a digest looks for a moment with no version write in flight, and how often.
DIGEST_WAIT_SECONDS = 5.0
DIGEST_RETRY_SECONDS = 0.01
# Advisory lock key ("versions" in ASCII): every version INSERT shares it (the created_at
# default, migration 0008); a digest takes it alone (:func:`versions_held`).
VERSIONS_LOCK = int.from_bytes(b"versions", "big")
_TRY_VERSIONS_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
LOCK_ENTITY_TABLES = text(f"LOCK TABLE {', '.join(m.__tablename__ for m in ENTITY_MODELS.values())} IN ACCESS SHARE MODE")
_HEADS_CURSOR = "digest_heads"
DIGEST_LOCK_TIMEOUT = "1s"


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
    query = heads_query(entity_ids, deleted=deleted, chain_versions=chain_versions)
    result = session.execute(query.execution_options(yield_per=HEAD_BATCH))
    return (_head_record(row) for row in result)


def _head_record(row: Any) -> HeadRecord:
    """A row of :func:`heads_query` (id, entity type, version, head link)."""
    return HeadRecord(row[0], row[1], row[2], bytes(row[3]))


def heads_query(
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
                   + str(heads_query().compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True})))
    try:
        session.execute(text(f"SET LOCAL lock_timeout = '{DIGEST_LOCK_TIMEOUT}'"))  # for the rest of the transaction
        session.execute(LOCK_ENTITY_TABLES)
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


def shared_id(entity_type: str, entity_id: uuid.UUID) -> HeadIdShared:
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
            raise shared_id(head.entity_type, head.entity_id)
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
    before its ``as_of`` (:func:`models.ledger_compare.root_as_of`). A version is stamped
    when it is inserted, which can be before a digest that it only commits after; and a
    transaction that began before a digest can insert after it. So every version INSERT takes ``VERSIONS_LOCK``
    shared, until its transaction ends, right before it reads the clock for its stamp (the
    column default ``entity_version_stamp()``, migration 0008). Here a second connection
    takes that lock exclusively at a moment when no version write holds it, and reads
    ``as_of``. A statement of ``session`` that begins inside the ``with`` then sees exactly
    the versions stamped before ``as_of``, and every later one is stamped after it. The lock
    goes when the ``with`` ends.

    The lock is only ever tried (every 10 ms): a digest waiting in the lock queue would make
    every new write queue behind it. After ``DIGEST_WAIT_SECONDS`` with a write always in
    flight it raises ``LedgerBusy``. A stored digest takes the same moment
    (:func:`models.ledger_store._stored_digest_moment`), so that its ``as_of`` names exactly
    the heads it holds too (its signed document, handed back root-only, is checked by
    :func:`models.ledger_compare.root_as_of`).
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
