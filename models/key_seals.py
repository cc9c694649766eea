"""Sealing retired signing keys: after its seal, a retired key signs nothing valid.

A retired key stays trusted to verify the versions it signed. Were its private half ever
to leak (an old backup, a decommissioned disk), it could sign new versions that verify
like old ones. A seal closes that. Once every API and worker process has restarted on the
new key, ``plant signing-keys seal`` stores a ledger digest signed by the active key and
writes, beside each unsealed retired key, a seal file naming that digest by id and by the
roots of its leaves and of its tombstones, the soft-deleted entities' heads (``models.keys.write_seal``;
a seal written before it named the tombstones' root lists those heads itself). From then on a version signed by a sealed key is valid only
when the seal's digest holds its entity at that version or a later one; otherwise it is
``signed-after-seal`` (:func:`models.seal_check.seal_findings`): a write on top of it is
refused (409 ``entity-tampered``), audits report it, and ``plant entity restore`` refuses
to restore to it. Every audit run first checks each seal's digest (:func:`seal_problems`),
so a digest deleted or edited to cover a forged version is ``key-seal-invalid``.

The seal also lists what its key signed outside the chain (reports of finished runs,
repair records, certificates, and its audit records: :func:`audit_records_signed`):
:func:`record_seal_list` keeps the list in the database and the seal file commits to it by
count and root; :func:`with_seal_lists` reads and checks it for the checks that need it
(:func:`models.jws.listed_by_seal`, :func:`seal_lists_signature`). A seal file written
before seals listed audit records lacks their mark (``KeySeal.lists_audit_records``): its
key's audit records are judged by the times they name alone.

The seal files, like the keys, live outside the database: someone who can write the
database can neither add a seal nor move one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from sqlalchemy import Row, Select, column, delete, exists, func, insert, select, table
from sqlalchemy.orm import Session, sessionmaker

from models.audit_tables import AuditChunk, AuditRun, KeySealSignature, LedgerDigest, SignedExport, SignedExportsBegan
from models.canonical import sha256
from models.chain import EntityVersion
from models.db import transaction
from models.entities import ENTITY_MODELS, EntityType
from models.errors import CanonicalizationError, SealListInvalid, SigningKeyError
from models.jws import b64url_decode, b64url_encode, signature_sha256
from models.keys import key_files_lock, keyring_from_settings, write_seal
from models.ledger import current_heads
from models.ledger_digest import digest_problem
from models.ledger_store import store_digest
from models.ledger_trust import stored_digest_problem
from models.settings import Settings
from models.signing import KeyRing, KeySeal, VerifyingKey

SEAL_INVALID_CODE = "key-seal-invalid"
SHA256_SIZE = 32  # each listed hash (models.jws.signature_sha256)
# models.repair's table (which imports this module), named here only for its signer columns.
_REPAIR_SIGNERS = table("entity_repairs", column("kid"), column("signature"), column("repaired_at"))


def seal_retired_keys(settings: Settings, sessions: sessionmaker[Session], *,
                      unverified: list[str] | None = None) -> list[KeySeal]:
    """Seal every unsealed retired key with one new digest signed by the active key.

    Run it only after every process signs with the active key: a version a lagging
    process signs with the old key after the seal is indistinguishable from a forgery.
    Returns the seals written (none when every retired key is sealed already). Rows that
    name an upcoming key without its signature are described in ``unverified``, when given
    (:func:`signed_by_upcoming_keys`), whether or not the keys are sealed.
    """
    with key_files_lock(settings):
        keyring = keyring_from_settings(settings)
        # A key also published as upcoming (a retired key staged to sign again) is upcoming to the
        # ring: sealed, it would stop every process at start (models.signing.KeyRing).
        signers = {keyring.active.kid, *(key.kid for key in keyring.upcoming)}
        unsealed = [key.kid for key in keyring.retired if key.kid not in signers and keyring.seal(key.kid) is None]
        if not unsealed:
            return []
        with transaction(sessions) as session:
            # The digest first: begun inside its quiet moment, the transaction stamps it exactly
            # (models.ledger_store.store_digest) and reads the checks below in the same snapshot.
            held_back: list[str] = []
            digest = store_digest(session, keyring=keyring, held_back=held_back)
            early = signed_by_upcoming_keys(session, keyring, unverified=unverified)
            if early:
                signers = ", ".join(f"{kid} (in {', '.join(tables)})" for kid, tables in early.items())
                raise SigningKeyError(f"upcoming key(s) {signers} signed records before becoming active: a process "
                                      "already signs with one (run this where the active key is the newest), or a "
                                      "forgery with its private key; nothing was sealed")
            astray = rows_off_their_chain_heads(session)
            if astray:
                raise SigningKeyError(f"{len(astray)} entity row(s) do not point at the newest version of their chain "
                                      f"(e.g. {astray[0]}): a seal would vouch for them; audit and restore them first")
            if held_back:  # the seal would hold them at older versions for good: whatever the key signed since, forged
                raise SigningKeyError(f"{len(held_back)} entity head(s) do not verify (e.g. {held_back[0]}): a seal would "
                                      "vouch for them; audit and restore them first; nothing was sealed")
            digest.keep_leaves = True  # the seal's checks read them for good
            digest_id, root, as_of = digest.id, bytes(digest.heads_root).hex(), digest.document["as_of"]
            tombstones = digest.document["tombstones_root"]  # the soft-deleted entities' heads, which no leaf holds
            listed = {kid: record_seal_list(session, kid) or (None, None) for kid in unsealed}
        seals = [KeySeal(kid, digest_id, root, as_of, signed_count=listed[kid][0], signed_root=listed[kid][1],
                         tombstones_root=tombstones) for kid in unsealed]
        for seal in seals:
            write_seal(settings, seal)
    return seals


def signed_by_upcoming_keys(session: Session, keyring: KeyRing, *,
                            unverified: list[str] | None = None) -> dict[str, list[str]]:
    """The upcoming keys (other than the active one) whose signature verifies on a version
    (over its link), a stored digest (over its document) or a repair record (over its
    statement), each with the tables where it does. Once every process runs on the active
    key, an upcoming key has signed nothing; anything it did sign is a process ahead of
    this one, or a forgery made with its private key.

    A row that only names an upcoming key proves neither: the kid is public (the JWKS),
    anyone with INSERT can write one, and none of these tables takes a DELETE, so such a
    row taken as signed would stop every seal for good. The rows naming a key that it did
    not sign are described in ``unverified`` instead, and so are the ``signed_exports``
    rows naming one: Plant keeps only the SHA-256 of the report a recorded JWS signs, so
    none can be checked. Reads only the rows naming an upcoming key, in batches (one scan
    of each table, as a look-up by kid was before; ``signed_exports`` by its primary key)."""
    keys = {key.kid: key for key in keyring.upcoming if key.kid != keyring.active.kid}
    if not keys:
        return {}
    signed: dict[str, list[str]] = {}
    for where, rows in _rows_naming(session, keys):
        refuted: dict[str, list[str]] = {}  # kid -> a few of the rows naming it that it did not sign
        counts: Counter[str] = Counter()
        for kid, row, verifies in rows:
            if verifies:
                if where not in (tables := signed.setdefault(kid, [])):
                    tables.append(where)
                continue
            counts[kid] += 1
            if counts[kid] <= UNVERIFIED_EXAMPLES:
                refuted.setdefault(kid, []).append(row)
        if unverified is not None:
            unverified += [_unverified_rows(where, kid, counts[kid], refuted[kid]) for kid in sorted(counts)]
    return dict(sorted(signed.items()))


UNVERIFIED_EXAMPLES = 3  # rows named in each warning about rows an upcoming key did not sign
_BATCH = 1_000


def _rows_naming(session: Session, keys: dict[str, VerifyingKey]) -> Iterator[tuple[str, Iterator[tuple[str, str, bool]]]]:
    """Each table's rows naming one of ``keys``, lazily: (kid, the row's name, whether its key signed it)."""
    from models.repair import EntityRepair, repair_statement  # models.repair imports this module: read at call time

    kids = sorted(keys)
    versions = select(EntityVersion.id, EntityVersion.kid, EntityVersion.link_hash, EntityVersion.signature)
    yield "entity_versions", ((r.kid, f"id {r.id}", keys[r.kid].verify(bytes(r.signature), bytes(r.link_hash)))
                              for r in _batches(session, versions.where(EntityVersion.kid.in_(kids))))
    digests = select(LedgerDigest.id, LedgerDigest.kid, LedgerDigest.document).where(LedgerDigest.kid.in_(kids))
    yield "ledger_digests", ((r.kid, f"id {r.id}", _digest_signed_by(r.document, keys[r.kid]))
                             for r in _batches(session, digests))
    repairs = session.scalars(select(EntityRepair).where(EntityRepair.kid.in_(kids)).execution_options(yield_per=_BATCH))
    yield "entity_repairs", ((r.kid, f"id {r.id}", _repair_signed_by(repair_statement, r, keys[r.kid])) for r in repairs)
    exports = select(SignedExport.kid, SignedExport.document_sha256).where(SignedExport.kid.in_(kids))
    yield "signed_exports", ((r.kid, f"report SHA-256 {bytes(r.document_sha256).hex()}", False)
                             for r in _batches(session, exports))


def _batches(session: Session, query: Select[Any]) -> Iterator[Row[Any]]:
    return iter(session.execute(query.execution_options(yield_per=_BATCH)))


def _digest_signed_by(document: Any, key: VerifyingKey) -> bool:
    """Whether ``key`` signed a stored digest's document, as :func:`models.ledger_digest.digest_problem`
    checks one (leaves aside: a stored document has none, and they are not what is signed)."""
    return isinstance(document, dict) and digest_problem({n: v for n, v in document.items() if n != "leaves"}, [key]) is None


def _repair_signed_by(statement: Callable[[Any], bytes], repair: Any, key: VerifyingKey) -> bool:
    """Whether ``key`` signed a repair record's statement (``models.repair.repair_statement``)."""
    try:
        signed = statement(repair)
    except (CanonicalizationError, TypeError, ValueError):  # a row no restore wrote: nothing signable
        return False
    return key.verify(bytes(repair.signature), signed)


def _unverified_rows(where: str, kid: str, count: int, examples: list[str]) -> str:
    if where == SignedExport.__tablename__:
        why = ("Plant keeps no copy of the reports they sign, so their signatures cannot be checked; should a process "
               "sign with that key already, seal where it is the active key instead")
    else:
        why = "its signature does not verify on them: they were written without its private key"
    more = ", …" if count > len(examples) else ""
    return f"{count} row(s) of {where} name upcoming key {kid} ({', '.join(examples)}{more}), but {why}; they do not stop the seal"


def signed_outside_the_chain(session: Session, kid: str) -> list[bytes]:
    """The SHA-256 of every signature key ``kid`` made outside the chain, sorted: the reports
    of finished runs it signed on their way out (``signed_exports``), its repair records, the
    certificates in skill versions, and its audit records (:func:`audit_records_signed`).
    Certificates are read from the chain's signed
    contents, never from a skill row; a content that cannot be read holds none. Digests are
    left out (any read key could multiply them): a stored one signed by a sealed key is
    trusted only if older than the seal's own digest (:func:`models.ledger_trust.signed_after_seal`),
    and any digest naming a time at or after the seal is refused."""
    hashes = {bytes(h) for h in session.scalars(select(SignedExport.signature_sha256).where(SignedExport.kid == kid))}
    hashes |= {signature_sha256(bytes(raw)) for raw in session.scalars(
        select(_REPAIR_SIGNERS.c.signature).where(_REPAIR_SIGNERS.c.kid == kid))}
    hashes |= audit_records_signed(session, kid)
    mentions = func.position(func.convert_to(kid, "UTF8").op("IN")(EntityVersion.content)) > 0
    for content in session.scalars(select(EntityVersion.content).where(EntityVersion.entity_type == EntityType.SKILL.value,
                                                                       mentions)):
        signature = _certificate_signature(bytes(content), kid)
        if signature is not None:
            hashes.add(signature_sha256(signature))
    return sorted(hashes)


def audit_records_signed(session: Session, kid: str) -> set[bytes]:
    """The SHA-256 of each audit record signature key ``kid`` made that a check may still ask
    for: every run's close, and a running run's plan and its chunks' checkpoints (a finished
    run's are never checked again, and a chunk keeps only its latest). A seal taken while such
    a run runs so attests what the key signed of it so far; the active key signs the rest."""
    running = AuditRun.finished_at.is_(None)
    signed = [select(AuditRun.close_signed["signature"].astext).where(AuditRun.close_signed["kid"].astext == kid),
              select(AuditRun.plan_signed["signature"].astext).where(AuditRun.plan_signed["kid"].astext == kid, running),
              select(AuditChunk.checkpoint_signed["signature"].astext).join(AuditRun, AuditRun.id == AuditChunk.run_id)
              .where(AuditChunk.checkpoint_signed["kid"].astext == kid, running)]
    hashes = set()
    for query in signed:
        for text in session.scalars(query.execution_options(yield_per=_BATCH)):
            try:
                hashes.add(signature_sha256(b64url_decode(text)))
            except ValueError:  # not a signature at all: it verifies nothing, so it needs no place
                continue
    return hashes


def seal_lists_signature(session: Session, seal: KeySeal, signature: bytes) -> bool:
    """Whether ``seal``'s list holds ``signature``: the list as already read into the seal,
    or else read from the database and checked against the seal (a list that does not match
    holds nothing, and :func:`seal_problems` says why)."""
    listed = seal.signed if seal.signed is not None else _checked_list(session, seal) or frozenset()
    return b64url_encode(signature_sha256(signature)) in listed


def _certificate_signature(content: bytes, kid: str) -> bytes | None:
    """The signature of the certificate key ``kid`` issued in a skill version's content, if any."""
    try:
        certificate = json.loads(content).get("certificate")
        return b64url_decode(certificate["signature"]) if certificate.get("kid") == kid else None
    except (ValueError, AttributeError, TypeError, KeyError, RecursionError):
        return None


def seal_list_root(hashes: list[bytes]) -> str:
    """What a seal file holds of its list: the SHA-256 of the sorted signature hashes, concatenated."""
    return sha256(b"".join(sorted(hashes))).hex()


def record_seal_list(session: Session, kid: str) -> tuple[int, str] | None:
    """Keep the list of what key ``kid`` signed outside the chain for its seal, and return
    (count, root) for the seal file; None when no list can be complete: the key signed
    before Plant began recording what it hands out (migration 0010), so documents it
    handed out then are on no list, and listing would refuse them."""
    began = session.scalar(select(SignedExportsBegan.began_at))
    if began is None:
        raise SigningKeyError("signed_exports_began is empty (migration 0010 writes its one row): without it no "
                              "seal can tell whether its list is complete; nothing was sealed")
    first = min((t for t in (
        session.scalar(select(func.min(EntityVersion.created_at)).where(EntityVersion.kid == kid)),
        session.scalar(select(func.min(LedgerDigest.created_at)).where(LedgerDigest.kid == kid)),
        session.scalar(select(func.min(_REPAIR_SIGNERS.c.repaired_at)).where(_REPAIR_SIGNERS.c.kid == kid)),
    ) if t is not None), default=None)
    if first is not None and first < began:
        return None
    hashes = signed_outside_the_chain(session, kid)
    session.execute(delete(KeySealSignature).where(KeySealSignature.kid == kid))  # a seal attempt's, not written out
    if hashes:
        session.execute(insert(KeySealSignature), [{"kid": kid, "signature_sha256": h} for h in hashes])
    return len(hashes), seal_list_root(hashes)


# Lists read from the database and found to match their seal: (kid, root) -> base64url hashes.
# A seal file never changes its root, so a list that matched once stays right for good.
_CHECKED_LISTS: dict[tuple[str, str], frozenset[str]] = {}


def with_seal_lists(keyring: KeyRing, session: Session) -> KeyRing:
    """``keyring`` with each listing seal's list read from the database and checked against
    the seal's count and root; a list that does not match is empty (every signature of the
    key outside the chain is then refused, and :func:`seal_problems` says why)."""
    return _with_lists(keyring, lambda seal: _checked_list(session, seal) or frozenset())


def _with_lists(keyring: KeyRing, read: Callable[[KeySeal], frozenset[str]]) -> KeyRing:
    """``keyring`` as it is now (a seal written since it was loaded included, and none written
    later: such a seal's list would go unread), each listing seal's list read by ``read``."""
    keyring = keyring.snapshot()
    if not any(seal.lists for seal in keyring.seals):
        return keyring
    return replace(keyring, seals=tuple(replace(seal, signed=read(seal)) if seal.lists else seal for seal in keyring.seals))


def _checked_list(session: Session, seal: KeySeal) -> frozenset[str] | None:
    """The database's list for ``seal`` if it matches the seal's count and root, else None
    (a match is kept for the process: it stays right whatever the table holds later)."""
    key = (seal.kid, str(seal.signed_root))
    if key not in _CHECKED_LISTS:
        listed = _list_as_stored(session, seal)
        if listed is None:
            return None
        _CHECKED_LISTS[key] = listed
    return _CHECKED_LISTS[key]


def _list_as_stored(session: Session, seal: KeySeal) -> frozenset[str] | None:
    """The database's list for ``seal`` if it matches the seal, else None. The root frames
    nothing (seal files already issued commit to it as it is), so only hashes of exactly
    32 bytes each pin it down: rows [h1, h2] re-split as [b"", h1 + h2] keep count and root."""
    hashes = [bytes(h) for h in session.scalars(select(KeySealSignature.signature_sha256).where(KeySealSignature.kid == seal.kid))]
    if any(len(h) != SHA256_SIZE for h in hashes):
        return None
    if len(hashes) != seal.signed_count or seal_list_root(hashes) != seal.signed_root:
        return None
    return frozenset(b64url_encode(h) for h in hashes)


def published_keyring(keyring: KeyRing, session: Session) -> KeyRing:
    """``keyring`` with each listing seal's list read once, afresh, to publish (the JWKS);
    ``SealListInvalid`` when one does not match its seal: a published empty list would refuse,
    offline and for good, everything that key signed."""
    def read_afresh(seal: KeySeal) -> frozenset[str]:
        listed = _list_as_stored(session, seal)
        if listed is None:
            raise SealListInvalid(seal_list_mismatch(seal))
        return listed

    return _with_lists(keyring, read_afresh)


def seal_list_mismatch(seal: KeySeal) -> str:
    return (f"the database's list of what key {seal.kid} signed outside the chain does not match its seal "
            f"({seal.signed_count} signatures, root {seal.signed_root}); every such signature of that key is refused")


def seal_list_problem(session: Session, seal: KeySeal) -> str | None:
    """Why the database's list for ``seal`` cannot be relied on now, or None (read afresh:
    an edit made after this process first read the list is reported too)."""
    if not seal.lists or _list_as_stored(session, seal) is not None:
        return None
    return seal_list_mismatch(seal)


def deleted_heads(session: Session) -> tuple[tuple[str, str], ...]:
    """Each soft-deleted entity's (id, head link hex): a digest holds live entities only, so
    the seal file itself holds these (the file, not the database, is what is trusted)."""
    return tuple((str(head.entity_id), head.link_hash.hex()) for head in current_heads(session, deleted=True))


def rows_off_their_chain_heads(session: Session, *, limit: int = 20) -> list[str]:
    """Entities (live or soft-deleted) whose row's (version, head link) is not their chain's
    newest version: a seal of the rows would hold them at a version their chain does not
    have. One statement per entity type; it reads the head pointers only (audits check the rest)."""
    astray: list[str] = []
    for entity_type, model in ENTITY_MODELS.items():
        newest = (select(EntityVersion.version).where(EntityVersion.entity_id == model.id)
                  .order_by(EntityVersion.version.desc()).limit(1).scalar_subquery())
        matches = exists().where(EntityVersion.entity_id == model.id, EntityVersion.link_hash == model.head_link_hash,
                                 EntityVersion.version == model.version, EntityVersion.version == newest)
        astray += [f"{entity_type.value} {entity_id}" for entity_id in session.scalars(
            select(model.id).where(~matches).order_by(model.id).limit(limit))]
    return astray[:limit]


def seal_problems(session: Session, keyring: KeyRing) -> list[str]:
    """Why each seal of ``keyring`` cannot be relied on: its digest is gone, is not the one
    the seal names, or is not trustworthy itself (signature, root over its leaves), or the
    database's list of what its key signed outside the chain is not the one it commits to."""
    problems = []
    checked: dict[int, str | None] = {}  # one sealing seals every retired key with one digest: read its leaves once
    for seal in keyring.current_seals():
        if keyring.seal(seal.kid) is None:
            continue  # not a retired key of this ring
        digest = session.get(LedgerDigest, seal.digest_id)
        if digest is None:
            problems.append(f"the seal of key {seal.kid} names digest {seal.digest_id}, which is gone")
        elif bytes(digest.heads_root).hex() != seal.heads_root or (
                seal.tombstones_root is not None and not (
                    isinstance(digest.document, dict) and digest.document.get("tombstones_root") == seal.tombstones_root)):
            problems.append(f"digest {seal.digest_id} is not the one the seal of key {seal.kid} names (its root differs)")
        else:
            if digest.id not in checked:
                checked[digest.id] = stored_digest_problem(session, digest, keyring)
            if (problem := checked[digest.id]) is not None:
                problems.append(f"digest {seal.digest_id}, the seal of key {seal.kid}, cannot be trusted: {problem}")
        if (listing := seal_list_problem(session, seal)) is not None:
            problems.append(listing)
    return problems
