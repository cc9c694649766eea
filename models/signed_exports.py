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

from models.audit_tables import SignedExport
from models.canonical import sha256
from models.jws import b64url_decode, sign_detached, signature_sha256
from models.signing import KeyRing


def signed_once(session: Session, *, document: bytes, keyring: KeyRing) -> str:
    """The detached JWS over ``document`` by the ring's active key: the one recorded for it,
    or a new one, recorded (the caller commits). Of two exports racing to record one, the
    second waits for the first to commit and hands out the same JWS."""
    kid, document_sha256 = keyring.active.kid, sha256(document)
    recorded = select(SignedExport.jws).where(SignedExport.kid == kid, SignedExport.document_sha256 == document_sha256)
    jws = session.scalar(recorded)
    if jws is not None:
        return jws
    jws = sign_detached(document, keyring.active)
    kept = session.scalar(insert(SignedExport).values(
        kid=kid, document_sha256=document_sha256, jws=jws, signature_sha256=signature_sha256(b64url_decode(jws.rsplit(".", 1)[1])),
    ).on_conflict_do_nothing().returning(SignedExport.jws))
    return kept if kept is not None else session.scalar(recorded)
