"""Adversarial review of the hash chain, signing and keys: malformed JWS headers, ids shared across tables, seal files."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from sqlalchemy import text

from models.canonical import canonical_bytes, sha256
from models.jws import REPORT_TYPE, JwsError, b64url_encode, verify_detached
from models.key_material import generate_ed25519
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
    from models.reports import export_report, verify_report
    from tests.report_builders import build_report

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


def _give_an_industry_row_the_id_of(connection, skill_id) -> None:
    """What anyone with INSERT on an entity table can do: a row whose id another entity table
    holds already (ids are unique per table only), here with that entity's head beside it."""
    connection.execute(text("INSERT INTO industries (id, name, code, version, head_link_hash) "
                            "SELECT id, 'Same Id', 'SAMEID', version, head_link_hash FROM skills WHERE id = :id"),
                       {"id": skill_id})


def test_a_row_sharing_another_entity_s_id_stops_a_stored_digest_with_a_409_not_an_integrity_error(
        db_session, skill, keyring) -> None:
    """A digest's leaves are one per entity id; two live rows with one id made the leaf rows'
    INSERT fail on their primary key (an IntegrityError: beat's hourly digest and ``plant
    signing-keys seal`` failed as a database error). Like a head link that is not a hash, it
    is a row changed outside Plant that no digest can hold: 409 ``ledger-head-invalid``, naming it."""
    from models.errors import Conflict
    from models.ledger_store import store_digest

    _give_an_industry_row_the_id_of(db_session.connection(), skill.id)
    with pytest.raises(Conflict) as raised:
        store_digest(db_session, keyring=keyring)
    assert raised.value.code == "ledger-head-invalid" and str(skill.id) in raised.value.detail


def test_a_row_sharing_another_entity_s_id_is_a_409_for_a_digest_not_a_500(client, engine, committed_steward) -> None:
    created = client.post("/api/v1/genesis/skills", json={
        "name": "Shared Id", "category": "technical", "description": "one", "governance_agent_id": str(committed_steward)})
    assert created.status_code == 201
    with engine.begin() as connection:
        _give_an_industry_row_the_id_of(connection, created.get_json()["id"])
    response = client.get("/api/v1/ledger/digest")
    assert response.status_code == 409 and response.mimetype == "application/problem+json", response.get_data()[:300]
    assert response.get_json()["type"] == "/problems/ledger-head-invalid"
    assert response.get_json()["entity_id"] == created.get_json()["id"]


@pytest.mark.parametrize("as_of", ["not a time", "2026-12-05", "2026-12-05T00:00:00"])
def test_a_seal_file_whose_as_of_is_no_time_is_refused_at_load_not_when_a_digest_is_checked(key_settings, as_of) -> None:
    """A seal's ``as_of`` is what every digest its key signed is compared with
    (``models.ledger_trust.signed_after_seal``, which parsed it with ``fromisoformat`` and raised
    ValueError, or TypeError comparing a naive time, on every stored digest that key signed:
    audits, digests and the seal's checks crashed) while ``models.jws.sealed_at`` read it as
    the earliest time. A seal file that names no time with an offset is malformed, refused when
    the key ring loads (a process refuses to start), like any other malformed seal."""
    from models.errors import SigningKeyError
    from models.keys import load_seal, write_seal
    from models.signing import KeySeal

    key_settings.retired_signing_keys_path.mkdir(parents=True, exist_ok=True)
    path = write_seal(key_settings, KeySeal("kid-a", 7, "ab" * 32, as_of))
    with pytest.raises(SigningKeyError, match="malformed"):
        load_seal(path)
