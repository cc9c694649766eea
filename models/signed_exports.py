"""Signatures over reports Plant hands out without keeping them, recorded on the way out.

An audit report is signed when it is exported (JSON, or the JWS on the HTML page). Plant
keeps no copy, so the signature's SHA-256 is kept instead, with its key: sealing that key
then lists the signature among what the key signed before its seal (:mod:`models.key_seals`),
and the report keeps verifying after the seal while one signed later with a leaked copy of
the key does not. Only reports of finished runs are recorded: a running audit's report
changes with every view, and a list that grows with each page view would bloat every seal
and the published JWKS (such a report stops verifying once its key is sealed).
"""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.audit_tables import SignedExport
from models.jws import b64url_decode, signature_sha256


def record_export(session: Session, *, kind: str, kid: str, signature: bytes) -> None:
    """Keep ``signature``'s hash; the same signature twice (an Ed25519 key signs a report the
    same way each time) is kept once. The caller commits."""
    session.execute(insert(SignedExport).values(signature_sha256=signature_sha256(signature), kid=kid, kind=kind)
                    .on_conflict_do_nothing())


def record_detached_jws(session: Session, *, kind: str, kid: str, jws: str) -> None:
    """:func:`record_export` for a compact detached JWS (``header..signature``)."""
    record_export(session, kind=kind, kid=kid, signature=b64url_decode(jws.rsplit(".", 1)[1]))

