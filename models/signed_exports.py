"""Reports Plant hands out without keeping them, signed once per key and recorded.

An audit report is signed when it is exported (JSON, or the JWS on the HTML page). Plant
keeps no copy of the document, so for a finished run it keeps the signature: the report's
SHA-256, the JWS, and the SHA-256 of the signature's bytes. Later exports of the same report
hand out the same JWS (an RSA-PSS signature is randomised; making a new one on each export
would grow every seal's list, and the published JWKS, by one entry per request). Sealing the
key lists the signature among what the key signed before its seal (:mod:`models.key_seals`),
so the report keeps verifying after the seal while one signed later with a leaked copy of
the key does not. A running audit's report changes with every view and is not recorded
(such a report stops verifying once its key is sealed with a list).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.audit_record import AuditRecordInvalid
from models.audit_tables import SignedExport
from models.canonical import sha256
from models.errors import JwsError
from models.jws import b64url_decode, sign_detached, signature_sha256, verify_detached
from models.signing import KeyRing


def signed_once(session: Session, *, document: bytes, keyring: KeyRing) -> str:
    """The detached JWS over ``document`` by the ring's active key: the one recorded for it,
    or a new one, recorded (the caller commits). Of two exports racing to record one, the
    second waits for the first to commit and hands out the same JWS.

    Anyone with INSERT on the table could record a JWS for a report before its first export
    (the table is append-only: migration 0014), so a recorded JWS is handed out only if it
    is the active key's signature over ``document`` with the signature hash recorded beside
    it (what a seal lists); otherwise :class:`AuditRecordInvalid` (409), not a signature
    that fails every check."""
    kid, document_sha256 = keyring.active.kid, sha256(document)
    recorded = select(SignedExport.jws, SignedExport.signature_sha256).where(
        SignedExport.kid == kid, SignedExport.document_sha256 == document_sha256)
    row = session.execute(recorded).one_or_none()
    if row is None:
        jws = sign_detached(document, keyring.active)
        kept = session.scalar(insert(SignedExport).values(
            kid=kid, document_sha256=document_sha256, jws=jws, signature_sha256=_signature_sha256(jws),
        ).on_conflict_do_nothing().returning(SignedExport.jws))
        if kept is not None:
            return kept
        row = session.execute(recorded).one()
    if not _ours(document, row.jws, bytes(row.signature_sha256), keyring):
        raise AuditRecordInvalid(
            f"the signature recorded for this report (signed_exports, key {kid}, report SHA-256 {document_sha256.hex()}) "
            "is not Plant's: it was written through SQL. Plant hands out only its own; the table's owner must remove "
            "the row, past its append-only guard, for the report to be exported")
    return row.jws


def _signature_sha256(jws: str) -> bytes:
    return signature_sha256(b64url_decode(jws.rsplit(".", 1)[1]))


def _ours(document: bytes, jws: str, recorded_sha256: bytes, keyring: KeyRing) -> bool:
    """Whether ``jws`` is the active key's detached signature over ``document``, recorded
    with its signature's hash."""
    try:
        verified = verify_detached(document, jws, keyring)
        return verified.kid == keyring.active.kid and _signature_sha256(jws) == recorded_sha256
    except (JwsError, ValueError):
        return False
