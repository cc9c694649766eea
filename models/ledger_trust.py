"""Whether a stored ledger digest may be trusted: its checks, leaf hashes and leaf attestation.

A stored digest sits in tables anyone with SQL access can edit, so before its leaves are
trusted ``stored_digest_problem`` checks its signed document and recomputes ``heads_root``
(and ``tombstones_root``) from the stored leaf rows, unless they are the very rows
``store_digest`` wrote and attested (:func:`attest_leaves`: the transaction id that wrote
them, signed). ``base_problem`` says whether a stored digest may be the base a new one is
checked from; ``signed_after_seal`` whether a sealed retired key signed a digest after its seal.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, func, literal_column, or_, select, text
from sqlalchemy.orm import Session

from models.audit_tables import LedgerDigest, LedgerDigestHead, LedgerDigestTombstone
from models.canonical import canonical_bytes
from models.chain import EntityVersion
from models.db_statements import binary_row
from models.digest_check import planted
from models.entities import ENTITY_MODELS
from models.ledger_digest import digest_problem, keeps_tombstones
from models.merkle import HASH_SIZE, MerkleAccumulator
from models.signing import KeyRing

LEAVES_ATTESTATION_TYPE = "plant.digest-leaves.v1"


# Each stored leaf's RFC 6962 leaf hash, SHA-256(0x00 || entity id's 16 bytes || head link),
# computed by PostgreSQL and sent as one value in entity-id order: Python is left only the
# inner nodes, and no row or UUID object is built for each of the digest's leaves.
LEAF_HASHES_SQL = (
    "SELECT count(*), string_agg(sha256('\\x00'::bytea || uuid_send(entity_id) || link_hash), ''::bytea "
    f"ORDER BY entity_id), count(*) FILTER (WHERE octet_length(link_hash) <> {HASH_SIZE}) "
    "FROM {table} WHERE digest_id = %s"
)
DigestHeads = type[LedgerDigestHead] | type[LedgerDigestTombstone]


def leaf_hashes(session: Session, digest_id: int, table: DigestHeads = LedgerDigestHead) -> tuple[int, bytes, int]:
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


def attest_leaves(session: Session, digest: LedgerDigest, keyring: KeyRing) -> None:
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
    problem = signed_row_problem(session, digest, keyring)
    if problem is not None:
        return problem
    document = digest.document
    writer = _attested_writer(session, digest, keyring)
    problem = _rows_problem(session, digest.id, LedgerDigestHead, document["entity_count"], document["heads_root"], writer)
    if problem is not None or not keeps_tombstones(document):
        return problem
    return _rows_problem(session, digest.id, LedgerDigestTombstone, document["tombstone_count"], document["tombstones_root"],
                         writer)


def signed_row_problem(session: Session, digest: LedgerDigest, keyring: KeyRing) -> str | None:
    """Why the stored ``digest``'s row is not one Plant signed, or None when it is: its
    document verifies with ``keyring``'s keys and agrees with the row's ``heads_root``,
    ``entity_count`` and ``as_of`` (which picks "the latest"), no sealed key signed it after
    its seal, and it is no published digest planted as a stored one. Its leaf and tombstone
    rows are not read (:func:`stored_digest_problem` checks them too); a copy of a signed
    document stored through SQL at the ``as_of`` it signs passes."""
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
    return None


def _rows_problem(session: Session, digest_id: int, table: DigestHeads, count: int, root: str, writer: str | None) -> str | None:
    """Why the digest's rows in ``table`` are not the ``count`` rows whose signed root is
    ``root`` (hex), as ``store_digest`` read them from the chain; None when they are, which
    rows all written by the attested ``writer`` are without hashing them."""
    if writer is not None and _all_written_by(session, table, digest_id, writer, count):
        return None
    what, signed = ("leaves", "heads_root") if table is LedgerDigestHead else ("tombstones", "tombstones_root")
    got, hashes, _ = leaf_hashes(session, digest_id, table)
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
