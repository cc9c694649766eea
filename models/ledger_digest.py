"""The signed ledger digest: one small document that pins every entity's chain head at once.

At ``as_of`` each entity's hash chain ends in a head link; the digest commits to all of
them through ``heads_root``, the RFC 6962 Merkle root over the leaves
``entity_id.bytes || head link_hash`` in ascending entity-id order (UUID byte order, the
order PostgreSQL sorts ``uuid`` columns in). The signed object is the JCS canonical form of
``{"type", "as_of", "entity_count", "heads_root"}``; the digest adds the signer's ``kid``
and the unpadded base64url ``signature``. An auditor holding the published JWKS can check
the signature offline and, given the optional ``leaves`` list, recompute the root; a single
head can later be proven with :func:`models.merkle.inclusion_proof`. A digest Plant stores
(type ``plant.ledger-digest.v2``, migration 0018) also signs ``tombstone_count`` and
``tombstones_root``: the soft-deleted entities' heads it keeps, hashed as leaves are.
Everything here is pure: callers read the heads from the database and pass them in.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from models.canonical import aware_time, canonical_bytes, to_json_tree
from models.errors import CanonicalizationError, JwsError
from models.jws import KeySource, b64url_decode, b64url_encode, find_verifier
from models.merkle import HASH_SIZE, MerkleAccumulator, head_leaf, merkle_root
from models.signing import KeyRing

DIGEST_TYPE = "plant.ledger-digest.v1"
SIGNED_MEMBERS = frozenset({"type", "as_of", "entity_count", "heads_root"})
DIGEST_MEMBERS = SIGNED_MEMBERS | {"kid", "signature"}
# A digest Plant stores (migration 0018) also signs how many soft-deleted entities' heads it
# keeps beside its leaves, and their RFC 6962 root (leaves hashed as the heads'): its tombstones.
STORED_DIGEST_TYPE = "plant.ledger-digest.v2"
TOMBSTONE_MEMBERS = frozenset({"tombstone_count", "tombstones_root"})
_SIGNED_BY_TYPE = {DIGEST_TYPE: SIGNED_MEMBERS, STORED_DIGEST_TYPE: SIGNED_MEMBERS | TOMBSTONE_MEMBERS}
LEAF_MEMBERS = frozenset({"entity_id", "head"})
# The most leaves a digest handed back to the API (``against_digest``) may list: at most 160
# bytes a leaf as JSON, so that the request fits PLANT_MAX_REQUEST_BYTES' default (1 MiB).
MAX_DIGEST_LEAVES = 5_000
_HEX_HASH = re.compile(rf"[0-9a-f]{{{2 * HASH_SIZE}}}")

Head = tuple[uuid.UUID, bytes]


def build_digest(as_of: dt.datetime, heads: Iterable[Head], keyring: KeyRing) -> dict[str, Any]:
    """The digest of ``heads`` (``(entity_id, head link_hash)``, ascending by id) at ``as_of``.

    ``heads`` is consumed once in bounded memory. Raises ``ValueError`` if the ids are not
    strictly ascending, a hash is not 32 bytes or ``as_of`` is naive. Signs with the
    ring's active key.
    """
    accumulator = MerkleAccumulator()
    accumulator.extend(head_leaf(entity_id, link_hash) for entity_id, link_hash in _in_id_order(heads))
    return sign_root(as_of, accumulator.size, accumulator.root(), keyring)


def sign_root(as_of: dt.datetime, entity_count: int, heads_root: bytes, keyring: KeyRing,
              tombstones: tuple[int, bytes] | None = None) -> dict[str, Any]:
    """The digest of ``entity_count`` heads whose RFC 6962 root, computed by the caller, is
    ``heads_root``; with ``tombstones`` (their count and root), a stored one's (``v2``)."""
    signed: dict[str, Any] = {
        "type": DIGEST_TYPE,
        "as_of": _rfc3339_utc(as_of),
        "entity_count": entity_count,
        "heads_root": heads_root.hex(),
    }
    if tombstones is not None:
        signed |= {"type": STORED_DIGEST_TYPE, "tombstone_count": tombstones[0], "tombstones_root": tombstones[1].hex()}
    kid, signature = keyring.sign(canonical_bytes(signed))
    return {**signed, "kid": kid, "signature": b64url_encode(signature)}


def digest_with_leaves(
    as_of: dt.datetime, heads: Iterable[Head], keyring: KeyRing, versions: Mapping[uuid.UUID, int] | None = None
) -> dict[str, Any]:
    """:func:`build_digest` plus ``leaves``: each ``{"entity_id", "head"}``, covered by ``heads_root``.

    With ``versions``, each leaf also names its head's version number. That member is not
    covered by the root; it only lets a later audit tell a rollback from a rewrite.
    """
    ordered = list(_in_id_order(heads))
    digest = build_digest(as_of, ordered, keyring)
    # A version below 1 names no version (a row edited outside Plant): the leaf leaves it out,
    # as a leaf may, rather than carry what the digest's own check refuses.
    digest["leaves"] = [
        {"entity_id": str(entity_id), "head": link_hash.hex(),
         **({"version": versions[entity_id]} if versions and versions[entity_id] >= 1 else {})}
        for entity_id, link_hash in ordered
    ]
    return digest


def keeps_tombstones(document: Any) -> bool:
    """Whether a stored digest's ``document`` signs its tombstones: every one stored since
    migration 0018 does (type ``v2``); one stored before keeps none, and tombstone rows
    written for it past their guard are read by nothing."""
    return isinstance(document, dict) and document.get("type") == STORED_DIGEST_TYPE


def verify_digest(digest: Any, keys: KeySource) -> bool:
    """Whether ``digest`` is intact and signed by one of ``keys`` (:func:`digest_problem`)."""
    return digest_problem(digest, keys) is None


def digest_problem(digest: Any, keys: KeySource) -> str | None:
    """Why ``digest`` is not intact and signed by one of ``keys`` (see :func:`models.jws.find_verifier`),
    or None when it is.

    A seal lists no digest (any read key could grow the list, one ``GET /ledger/digest`` at
    a time), and this does not hold one signed by a sealed key to its seal: Plant holds
    stored and handed-in ones to the seal's own digest (:func:`models.ledger_trust.signed_after_seal`),
    ``plant digest verify`` holds a file's to the seal time the JWKS names
    (:func:`models.jws.signed_after_its_seal`).

    Any malformed, extended, altered or unsigned digest has a problem, never an exception;
    when ``leaves`` are present they must also be ordered, counted and hash to ``heads_root``.
    A digest read from a file must be parsed with :func:`models.canonical.strict_json_loads`:
    the signature is checked over the parsed members, so a repeated member name would let
    the file show one value while another is verified.
    """
    if not _has_digest_shape(digest):
        return "its members are not a ledger digest's"
    try:
        verifier = find_verifier(keys, digest["kid"])
    except JwsError as exc:  # a key set that is not one (a JWKS whose "keys" is not a list, a string)
        return f"its keys cannot be looked up: {exc}"
    if verifier is None:
        return f"no trusted key has kid {digest['kid']!r}"
    try:
        signature = b64url_decode(digest["signature"])
        signed = canonical_bytes({name: digest[name] for name in _SIGNED_BY_TYPE[digest["type"]]})
    except (ValueError, CanonicalizationError):
        return "its signature or signed members cannot be read"
    if not verifier.verify(signature, signed):
        return "its signature does not match its members"
    if "leaves" in digest:
        return _leaves_problem(digest["leaves"], digest)
    return None


def _in_id_order(heads: Iterable[Head]) -> Iterator[Head]:
    previous: uuid.UUID | None = None
    for entity_id, link_hash in heads:
        if not isinstance(entity_id, uuid.UUID):
            raise ValueError(f"entity id {entity_id!r} is not a UUID")
        if previous is not None and entity_id <= previous:
            raise ValueError(f"heads are not in strictly ascending entity id order at {entity_id}")
        previous = entity_id
        yield entity_id, link_hash


def _rfc3339_utc(as_of: dt.datetime) -> str:
    if not isinstance(as_of, dt.datetime) or as_of.utcoffset() is None:
        raise ValueError("as_of must be a timezone-aware datetime")
    return str(to_json_tree(as_of))


def _has_digest_shape(digest: Any) -> bool:
    if not isinstance(digest, dict) or not isinstance(digest.get("type"), str) or digest["type"] not in _SIGNED_BY_TYPE:
        return False
    if set(digest) - {"leaves"} != _SIGNED_BY_TYPE[digest["type"]] | {"kid", "signature"}:
        return False
    counts = [digest["entity_count"], digest.get("tombstone_count", 0)]
    return (
        aware_time(digest["as_of"]) is not None  # a sealed key's digest is judged by it (plant digest verify)
        and all(type(count) is int and count >= 0 for count in counts)  # noqa: E721 - a bool is not a count
        and all(_is_hex_hash(digest[root]) for root in ("heads_root", "tombstones_root") if root in digest)
        and isinstance(digest["kid"], str)
        and isinstance(digest["signature"], str)
    )


def _leaves_problem(leaves: Any, digest: dict[str, Any]) -> str | None:
    """Why ``leaves`` are not the digest's, or None: malformed (said as such), or not hashing
    to its signed ``heads_root``."""
    if not isinstance(leaves, list) or len(leaves) != digest["entity_count"]:
        return "its leaves are not a list of entity_count leaves"
    try:
        heads = [_parse_leaf(leaf) for leaf in leaves]
        root = merkle_root(head_leaf(entity_id, link_hash) for entity_id, link_hash in _in_id_order(heads))
    except ValueError as exc:
        return f"its leaves cannot be read: {exc}"
    return None if root.hex() == digest["heads_root"] else "its leaves do not hash to its heads_root"


def _parse_leaf(leaf: Any) -> Head:
    """One published leaf, in the exact spelling :func:`digest_with_leaves` writes."""
    if not isinstance(leaf, dict) or not LEAF_MEMBERS <= set(leaf) <= LEAF_MEMBERS | {"version"}:
        raise ValueError("a leaf has 'entity_id', 'head' and optionally 'version'")
    if "version" in leaf and (type(leaf["version"]) is not int or leaf["version"] < 1):  # noqa: E721
        raise ValueError("a leaf's version is a positive integer")
    entity_id, head = leaf["entity_id"], leaf["head"]
    if not isinstance(entity_id, str) or str(uuid.UUID(entity_id)) != entity_id:
        raise ValueError(f"{entity_id!r} is not a lowercase hyphenated UUID")
    if not _is_hex_hash(head):
        raise ValueError(f"{head!r} is not a lowercase hex SHA-256")
    return uuid.UUID(entity_id), bytes.fromhex(head)


def _is_hex_hash(value: Any) -> bool:
    return isinstance(value, str) and _HEX_HASH.fullmatch(value) is not None
