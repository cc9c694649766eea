"""Adversarial review of the hash chain, signing and keys (branch review-keys)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from sqlalchemy import text

from models.canonical import canonical_bytes, sha256
from models.jws import REPORT_TYPE, JwsError, b64url_encode, verify_detached
from models.signing import EDDSA, generate_ed25519
from tests.test_audit import run_audit

PAYLOAD = b'{"report":"r"}'


def _jws_with_header(key, header: dict[str, Any], payload: bytes = PAYLOAD) -> str:
    encoded = b64url_encode(json.dumps(header).encode())
    signature = key.sign(f"{encoded}.{b64url_encode(payload)}".encode())
    return f"{encoded}..{b64url_encode(signature)}"


@pytest.mark.parametrize("alg", [[], {}, ["EdDSA"], {"EdDSA": 1}])
def test_a_jws_header_whose_alg_is_not_a_string_is_a_jws_error_not_a_type_error(alg: Any) -> None:
    """An ``alg`` that is a JSON array or object is unhashable: the membership test against
    the supported algorithms raised TypeError, which no caller expects from a refusal."""
    key = generate_ed25519()
    jws = _jws_with_header(key, {"alg": alg, "kid": key.kid, "typ": REPORT_TYPE})
    with pytest.raises(JwsError):
        verify_detached(PAYLOAD, jws, [key])


def test_an_insider_row_whose_jws_alg_is_an_array_does_not_break_the_report_export(db_session, skill, keyring) -> None:
    """signed_exports takes INSERTs (anyone with INSERT can record a JWS for a finished run's
    predictable report); such a row "cannot block the report" (models/signed_exports.py). One
    whose header names ``"alg": []`` made every export of that report raise TypeError (a 500)."""
    from models.reports import build_report, export_report, verify_report

    db_session.execute(text("UPDATE skills SET description = 'tampered by insider' WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    run_audit(db_session, keyring)
    run_id = db_session.scalar(text("SELECT id FROM audit_runs ORDER BY created_at DESC LIMIT 1"))
    predicted = sha256(canonical_bytes(build_report(db_session, run_id=run_id, keyring=keyring)))
    junk_header = b64url_encode(json.dumps({"alg": [], "kid": keyring.active.kid, "typ": REPORT_TYPE}).encode())
    db_session.execute(text("INSERT INTO signed_exports (kid, document_sha256, jws, signature_sha256) "
                            "VALUES (:k, :d, :j, :s)"),
                       {"k": keyring.active.kid, "d": predicted, "j": f"{junk_header}..{b64url_encode(b'x' * 64)}",
                        "s": os.urandom(32)})
    document = export_report(db_session, run_id=run_id, keyring=keyring)
    assert verify_report(document, keyring).kid == keyring.active.kid
