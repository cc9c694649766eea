"""A sealed key's document is judged by the times it names; one it names but that cannot be
read counts as after the seal (fail closed), never as "names no time".

Whoever holds a copy of a sealed key can write any text where a time goes: a leap second
(``23:59:60Z``), a time without an offset, ``24:00``, a trailing space. People read those
as dates after the seal; :func:`models.canonical.aware_time` reads none of them, and before
this a document naming one verified as if it named no time at all.
"""

from __future__ import annotations

import base64
import uuid

import pytest

from models.canonical import canonical_bytes
from models.errors import JwsError
from models.jws import b64url_encode, signed_after_its_seal, time_named, verify_b64url_signature
from models.ledger_digest import DIGEST_TYPE, digest_problem
from models.reports import verify_report
from tests.report_builders import signed_report
from tests.conftest import ring_sealing

SEALED_AT = "2026-06-01T00:00:00Z"
UNREADABLE = ["2099-12-31T23:59:60Z", "2099-01-01T00:00:00", "2099-01-01T24:00:00Z", "2026-07-01T00:00:00Z ",
              "2099-01-01 00:00 UTC", "tomorrow", "", 20990101, None]


def _digest_naming(as_of, keyring) -> dict:
    signed = {"type": DIGEST_TYPE, "as_of": as_of, "entity_count": 0, "heads_root": "00" * 32}
    kid, signature = keyring.sign(canonical_bytes(signed))
    return {**signed, "kid": kid, "signature": b64url_encode(signature)}


@pytest.mark.parametrize("as_of", UNREADABLE)
def test_a_digest_naming_a_time_that_cannot_be_read_is_not_a_digest(keyring, as_of) -> None:
    assert digest_problem(_digest_naming(as_of, keyring), keyring) == "its members are not a ledger digest's"


def test_a_digest_naming_a_readable_time_still_verifies(keyring) -> None:
    for as_of in ("2026-05-01T00:00:00.000000Z", "2026-05-01T02:00:00+02:00"):
        assert digest_problem(_digest_naming(as_of, keyring), keyring) is None


@pytest.mark.parametrize("finished_at", [t for t in UNREADABLE if t is not None])
def test_a_sealed_key_s_report_naming_a_time_that_cannot_be_read_is_refused(keyring, finished_at) -> None:
    sealed = ring_sealing(keyring, SEALED_AT)
    report = {"type": "plant.audit-report.v1", "findings": [],
              "run": {"id": "r", "created_at": "2026-05-01T00:00:00Z", "finished_at": finished_at}}
    with pytest.raises(JwsError, match="cannot be read"):
        verify_report(signed_report(report, keyring), sealed)
    assert verify_report(signed_report(report, keyring), keyring).kid == keyring.active.kid  # not sealed: no date rule


def test_a_sealed_key_s_report_naming_no_time_at_all_still_verifies_as_before(keyring) -> None:
    sealed = ring_sealing(keyring, SEALED_AT)
    report = {"type": "plant.audit-report.v1", "findings": [], "run": {"id": "r"}}
    assert verify_report(signed_report(report, keyring), sealed).kid == keyring.active.kid


@pytest.mark.parametrize("named", UNREADABLE)
def test_a_sealed_key_s_record_naming_a_time_that_cannot_be_read_does_not_verify(keyring, named) -> None:
    sealed = ring_sealing(keyring, SEALED_AT)
    data = canonical_bytes({"record": str(uuid.uuid4()), "named": named})
    kid, raw = keyring.sign(data)
    signature = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert verify_b64url_signature(keyring, kid, signature, data, named=named) is True  # not sealed
    assert verify_b64url_signature(sealed, kid, signature, data, named=named) is False
    assert verify_b64url_signature(sealed, kid, signature, data, named="2026-05-01T00:00:00Z") is True


def test_time_named_tells_no_time_from_a_time_that_cannot_be_read(keyring) -> None:
    assert time_named(None) is None
    assert time_named("2026-05-01T00:00:00Z").year == 2026
    unreadable = time_named("2099-12-31T23:59:60Z")
    why = signed_after_its_seal(ring_sealing(keyring, SEALED_AT), keyring.active.kid, unreadable)
    assert why is not None and "cannot be read" in why
