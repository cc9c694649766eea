"""Checking an entity's exported history offline: the chain an auditor holds, with the published keys.

``GET /api/v1/<type>/<id>/history`` (``plant history export``) answers every version of one
entity with what its link is made of: the stored canonical content, its hash, the previous
link, the link and the signature. :func:`check_history` checks all of it with nothing but
that document and a JWK Set, the way the audit checks a chain (:func:`models.chain_verification.verify_versions`:
versions numbered from 1 with no gap, each ``prev_link`` the link before it, each content
hashing to its ``content_hash``, each link recomputed, each signature verified by the key its
``kid`` names), and each content must be RFC 8785 canonical JSON, as Plant writes it.

Given a ledger digest exported with its leaves (:func:`digest_holds`), it also checks that the
chain still holds the head the digest attested for the entity: a chain rewritten after the
digest, however well re-signed, does not.

What no file can show: that a version signed by a key sealed since was signed before its seal
(the seal's digest is in Plant's database; its audits check it), and the ``actor`` and
``created_at`` beside each version, which no link or signature covers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from models.canonical import parse_canonical_json
from models.chain import GENESIS_LINK, ChainFinding, records_a_deletion
from models.chain_verification import verify_versions
from models.entities import EntityType
from models.jws import KeySource, b64url_decode, find_verifier, sealed_at
from models.signing import VerifyingKey

VERSION_MEMBERS = frozenset({"version", "content", "content_hash", "prev_link", "link_hash", "kid", "signature", "actor",
                             "created_at"})
HISTORY_MEMBERS = frozenset({"entity_type", "entity_id", "items"})


@dataclass(frozen=True)
class HistoryCheck:
    """What :func:`check_history` found: ``findings`` empty means every version verified."""

    entity_type: str
    entity_id: uuid.UUID
    versions: int
    head: str  # the newest version's link, hex
    deleted: bool  # the newest version records a deletion
    signers: list[str]
    sealed_signers: list[str]  # kids sealed since: see the module's note
    findings: list[ChainFinding] = field(default_factory=list)
    links: dict[int, str] = field(default_factory=dict, repr=False)  # version -> link, hex


class _JwksVerifiers:
    """The three questions :func:`verify_versions` asks of a key ring, answered from a JWK Set."""

    def __init__(self, keys: KeySource) -> None:
        self._keys = keys
        self._found: dict[str, VerifyingKey | None] = {}

    def verifier(self, kid: str) -> VerifyingKey | None:
        if kid not in self._found:
            self._found[kid] = find_verifier(self._keys, kid)
        return self._found[kid]

    def verify(self, kid: str, signature: bytes, data: bytes) -> bool:
        key = self.verifier(kid)
        return key is not None and key.verify(signature, data)

    def verifiers(self) -> tuple[VerifyingKey, ...]:
        entries = self._keys.get("keys") if isinstance(self._keys, dict) else None
        kids = {entry.get("kid") for entry in entries if isinstance(entry, dict)} if isinstance(entries, list) else set()
        return tuple(key for kid in sorted(k for k in kids if isinstance(k, str)) if (key := self.verifier(kid)))


def _hash(value: Any, name: str, version: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 64 or value != value.lower():
        raise ValueError(f"version {version!r}: {name} is not a lowercase hex SHA-256")
    return bytes.fromhex(value)


def _row(item: Any, entity_type: str, entity_id: uuid.UUID) -> SimpleNamespace:
    if not isinstance(item, dict) or set(item) != VERSION_MEMBERS:
        raise ValueError(f"a version has exactly the members {', '.join(sorted(VERSION_MEMBERS))}")
    version = item["version"]
    if type(version) is not int or version < 1:  # noqa: E721 (a bool is no version)
        raise ValueError(f"version {version!r} is not a positive integer")
    if not isinstance(item["content"], str) or not isinstance(item["kid"], str):
        raise ValueError(f"version {version}: content and kid are text")
    try:
        content, signature = item["content"].encode("utf-8"), b64url_decode(item["signature"])
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        raise ValueError(f"version {version}: {exc}") from exc
    return SimpleNamespace(entity_type=entity_type, entity_id=entity_id, version=version, content=content,
                           content_hash=_hash(item["content_hash"], "content_hash", version),
                           prev_link=_hash(item["prev_link"], "prev_link", version),
                           link_hash=_hash(item["link_hash"], "link_hash", version), kid=item["kid"], signature=signature)


def exact_uuid(value: Any, name: str) -> uuid.UUID:
    """``value`` as a UUID, if it is one written as Plant writes them (lowercase, hyphenated);
    ``ValueError`` naming ``name`` otherwise: an export is checked as it was signed, not as it
    could be read."""
    try:
        parsed = uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or str(parsed) != value:
        raise ValueError(f"{name} {value!r} is not a lowercase hyphenated UUID")
    return parsed


def check_history(document: Any, keys: KeySource) -> HistoryCheck:
    """Check an exported history with the keys of ``keys`` (a JWK Set). ``ValueError`` if it is
    not a history export at all; otherwise every way its chain fails is a finding."""
    if not isinstance(document, dict) or set(document) != HISTORY_MEMBERS:
        raise ValueError(f"a history export is an object of exactly {', '.join(sorted(HISTORY_MEMBERS))}")
    entity_type, raw_id, items = document["entity_type"], document["entity_id"], document["items"]
    if entity_type not in {t.value for t in EntityType}:
        raise ValueError(f"{entity_type!r} is not an entity type")
    entity_id = exact_uuid(raw_id, "entity_id")
    if not isinstance(items, list) or not items:
        raise ValueError("its items are not a non-empty list of versions")
    rows = [_row(item, entity_type, entity_id) for item in items]
    _, findings = verify_versions(rows, keyring=_JwksVerifiers(keys), signatures="all", after=(0, GENESIS_LINK))  # type: ignore[arg-type]
    for row in rows:
        try:
            parse_canonical_json(row.content)
        except ValueError as exc:
            findings.append(ChainFinding("content-not-canonical", row.version, f"content is not RFC 8785 canonical JSON: {exc}"))
    signers = sorted({row.kid for row in rows})
    return HistoryCheck(entity_type=entity_type, entity_id=entity_id, versions=len(rows), head=rows[-1].link_hash.hex(),
                        deleted=records_a_deletion(rows[-1].content), signers=signers,
                        sealed_signers=[kid for kid in signers if sealed_at(keys, kid) is not None], findings=findings,
                        links={row.version: row.link_hash.hex() for row in rows})


def digest_holds(checked: HistoryCheck, digest: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The digest's leaf for the entity (None if it holds none: created after it, or deleted
    before it) and why the history does not hold that leaf's head, or None when it does.
    ``digest`` must have been verified, with its leaves (:func:`models.ledger_digest.digest_problem`)."""
    entity_id = str(checked.entity_id)
    leaf = next((leaf for leaf in digest["leaves"] if leaf["entity_id"] == entity_id), None)
    if leaf is None:
        return None, None
    at = [version for version, link in checked.links.items() if link == leaf["head"]]
    if not at:
        return leaf, (f"the digest of {digest['as_of']} holds head {leaf['head']} for this {checked.entity_type}, and no "
                      "version of this history has that link: its chain was rewritten after the digest")
    if "version" in leaf and leaf["version"] not in at:
        return leaf, (f"the digest of {digest['as_of']} holds this {checked.entity_type}'s head at version "
                      f"{leaf['version']}, and this history has that link at version {at[0]}")
    return leaf, None


def digest_dates_head(checked: HistoryCheck, digest: dict[str, Any]) -> str | None:
    """Why the history is not the entity's chain exactly as the digest attests it, or None
    when its head is the digest's leaf for the entity: so the history's head stands as of the
    digest's ``as_of``. A history cut short (its newest versions dropped) still verifies on its
    own; it does not hold the digest's head as its own. ``digest`` as for :func:`digest_holds`."""
    leaf, problem = digest_holds(checked, digest)
    if leaf is None:
        return (f"the digest of {digest['as_of']} holds no head for this {checked.entity_type} (created after the "
                "digest, or deleted before it)")
    if leaf["head"] != checked.head:
        held = f" at version {leaf['version']}" if "version" in leaf else ""
        return (f"the digest of {digest['as_of']} holds head {leaf['head']}{held} for this {checked.entity_type}, and "
                f"this history's head is {checked.head} at version {checked.versions}: it is not the chain as of the "
                "digest (cut short, exported at another time, or rewritten)")
    return problem
