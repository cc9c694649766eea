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

A row is recorded under the key's ``kid`` and the report's SHA-256, which anyone can
predict for a finished run; the table takes INSERTs and refuses DELETE. A row there that
is not Plant's signature over the report is never handed out, and cannot block the report
either: Plant then records its signature under a second name, which only the key can
compute (:func:`second_name`), and hands that one out on every export.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.audit_record import AuditRecordInvalid
from models.audit_tables import SignedExport
from models.canonical import sha256
from models.errors import JwsError
from models.jws import b64url_decode, sign_detached, signature_sha256, verify_detached
from models.signing import KeyRing


SECOND_NAME = b"plant.signed-export.second-name.v1\x00"
log = logging.getLogger(__name__)


def signed_once(session: Session, *, document: bytes, keyring: KeyRing) -> str:
    """The detached JWS over ``document`` by the ring's active key: the one recorded for it,
    or a new one, recorded (the caller commits). Of two exports racing to record one, the
    second waits for the first to commit and hands out the same JWS.

    Anyone with INSERT on the table can record a JWS for a report before its first export
    (the table is append-only: migration 0014), so a recorded JWS is handed out only if it
    is the active key's signature over ``document`` with the signature hash recorded beside
    it (what a seal lists). One that is not is logged, and the signature is recorded (or
    found) under the report's :func:`second_name` instead; only if that row too is not
    Plant's (its writer holds the key) is it :class:`AuditRecordInvalid` (409)."""
    kid, document_sha256 = keyring.active.kid, sha256(document)
    jws = _recorded_or_new(session, document, document_sha256, keyring)
    if jws is not None:
        return jws
    log.warning("signed_exports holds a signature for report SHA-256 %s (key %s) that is not Plant's: written "
                "through SQL; the report's signature is recorded under its second name", document_sha256.hex(), kid)
    jws = _recorded_or_new(session, document, second_name(document_sha256, keyring), keyring)
    if jws is None:
        raise AuditRecordInvalid(
            f"the signatures recorded for this report (signed_exports, key {kid}, report SHA-256 {document_sha256.hex()}, "
            "and under its second name) are not Plant's: they were written through SQL, the second by someone who "
            "holds the key's private half")
    return jws


def second_name(document_sha256: bytes, keyring: KeyRing) -> bytes:
    """Where the active key's signature of a report is recorded when the row under the
    report's own SHA-256 is not Plant's: a MAC of that hash under the private key, which no
    one without the key can predict, so no one can take it ahead."""
    return keyring.active.secret_mac(SECOND_NAME + document_sha256)


def _recorded_or_new(session: Session, document: bytes, name: bytes, keyring: KeyRing) -> str | None:
    """The JWS recorded under ``(kid, name)`` if it is Plant's over ``document``, or a new
    one recorded there if none is; None if the one recorded is not Plant's."""
    kid = keyring.active.kid
    recorded = select(SignedExport.jws, SignedExport.signature_sha256).where(
        SignedExport.kid == kid, SignedExport.document_sha256 == name)
    row = session.execute(recorded).one_or_none()
    if row is None:
        jws = sign_detached(document, keyring.active)
        kept = session.scalar(insert(SignedExport).values(
            kid=kid, document_sha256=name, jws=jws, signature_sha256=_signature_sha256(jws),
        ).on_conflict_do_nothing().returning(SignedExport.jws))
        if kept is not None:
            return kept
        row = session.execute(recorded).one()
    return row.jws if _ours(document, row.jws, bytes(row.signature_sha256), keyring) else None


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
