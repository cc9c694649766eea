"""A sealed key's audit records (plans, checkpoints, closes) verify only where its seal lists them.

Run rows take any ``created_at`` and ``finished_at`` through SQL, so the times a record
names prove nothing: a copy of a sealed key could close a running run, backdated, and Plant
would sign that run's report with its active key. A seal written since lists what the key
signed of the audit record (each run's close, a running run's plan and checkpoints) and says
so in its file (``lists_audit_records``); one written before is read as listing none of
them, and keeps the older rule, by the times named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from models.audit_close import summarize_run
from models.audit_record import AuditRecordInvalid
from models.audit_tables import AuditRun
from models.key_material import generate_ed25519
from models.key_seals import record_seal_list, seal_list_root
from models.keys import AUDIT_RECORDS_MEMBER, load_seal, write_seal
from models.reports import export_report, verify_report
from models.settings import Settings
from models.signing import KeyRing, KeySeal
from tests.test_audit_record_signed import _closed_by_plant, _codes, _started, _steps, skills  # noqa: F401 - the fixture

LATER = "2999-01-01T00:00:00Z"  # a seal time after every record the tests write: the times named never refuse


def _ring_sealed_by(keyring: KeyRing, seal: KeySeal) -> KeyRing:
    """A ring whose active key is new, ``keyring``'s active key retired and sealed by ``seal``."""
    return KeyRing(generate_ed25519(), (keyring.active,), (seal,))


def _seal_file(tmp_path: Path, kid: str, **members: Any) -> Path:
    """A seal file as ``plant signing-keys seal`` wrote it, with ``members`` besides."""
    path = tmp_path / f"{kid}.seal.json"
    path.write_text(json.dumps({"kid": kid, "digest_id": 1, "heads_root": "00" * 32, "as_of": LATER,
                                "tombstones_root": "00" * 32, **members}))
    return path


@pytest.mark.usefixtures("skills")
def test_a_seal_file_from_before_seals_listed_audit_records_still_verifies_a_run_its_key_closed(
        db_session: Session, keyring: KeyRing, tmp_path: Path) -> None:
    """A seal file written by an earlier release lists what the key signed outside the chain,
    but none of its audit records: read as the new kind, it would refuse every close the key
    made, and every report of those runs with it. It keeps the time rule instead (weaker: a
    backdated close still verifies), and only the file's mark makes a seal list them."""
    closed = _closed_by_plant(db_session, keyring)
    listing = {"signed_count": 0, "signed_root": seal_list_root([])}  # the old release's list: no audit record on it

    old = load_seal(_seal_file(tmp_path, keyring.active.kid, **listing))
    assert old.lists and not old.attests_audit_records
    ring = _ring_sealed_by(keyring, old)
    assert verify_report(export_report(db_session, run_id=closed.id, keyring=ring), ring).kid == ring.active.kid
    early = _ring_sealed_by(keyring, load_seal(_seal_file(tmp_path, keyring.active.kid, **listing, as_of="2000-01-01T00:00:00Z")))
    with pytest.raises(AuditRecordInvalid, match="sealed"):  # the time rule still stands for it
        export_report(db_session, run_id=closed.id, keyring=early)

    marked = load_seal(_seal_file(tmp_path, keyring.active.kid, **listing, **{AUDIT_RECORDS_MEMBER: True}))
    assert marked.attests_audit_records
    with pytest.raises(AuditRecordInvalid, match="does not list this record"):
        export_report(db_session, run_id=closed.id, keyring=_ring_sealed_by(keyring, marked))


def test_the_seal_file_marks_a_list_of_audit_records_and_refuses_the_mark_without_a_list(
        key_settings: Settings, tmp_path: Path) -> None:
    """``write_seal`` marks a listing seal; the mark on a seal that lists nothing is malformed
    (it would claim an attestation no list backs)."""
    from models.errors import SigningKeyError

    seal = KeySeal("kid-a", 7, "ab" * 32, "2026-12-05T00:00:00.000000Z", (), 2, "cd" * 32, tombstones_root="ef" * 32)
    key_settings.retired_signing_keys_path.mkdir(parents=True)
    path = write_seal(key_settings, seal)
    assert json.loads(path.read_bytes())[AUDIT_RECORDS_MEMBER] is True
    assert load_seal(path) == seal and load_seal(path).attests_audit_records
    with pytest.raises(SigningKeyError, match="malformed key seal"):
        load_seal(_seal_file(tmp_path, "kid-b", **{AUDIT_RECORDS_MEMBER: True}))


@pytest.mark.usefixtures("skills")
def test_a_seal_refuses_a_close_its_key_signed_after_it_and_verifies_the_one_it_lists(
        db_session: Session, keyring: KeyRing) -> None:
    """The seal's list, kept in the database and committed to by the seal file, holds the
    closes the key made before the seal; a close a copy of the key makes after it is on no
    list, and Plant refuses to sign that run's report, whatever times the run names."""
    before = _closed_by_plant(db_session, keyring)
    seal = KeySeal(keyring.active.kid, 1, "00" * 32, LATER, (), *record_seal_list(db_session, keyring.active.kid))
    after = _closed_by_plant(db_session, keyring)  # the leaked copy, after the seal
    ring = _ring_sealed_by(keyring, seal)

    assert verify_report(export_report(db_session, run_id=before.id, keyring=ring), ring).kid == ring.active.kid
    with pytest.raises(AuditRecordInvalid, match="does not list this record"):
        export_report(db_session, run_id=after.id, keyring=ring)


@pytest.mark.usefixtures("skills")
def test_a_seal_taken_while_its_key_s_run_runs_attests_the_records_so_far(db_session: Session, keyring: KeyRing) -> None:
    """Sealing does not wait for running audits: it lists the plan and checkpoints the key
    signed of a running run so far, and the run goes on under the active key. A checkpoint
    or plan the sealed key signs later is on no list: the chunk counts as nothing audited and
    the close says why; a running run whose plan the key signs later has no report."""
    honest, continued_by_leak = _started(db_session, keyring), _started(db_session, keyring)
    seal = KeySeal(keyring.active.kid, 1, "00" * 32, LATER, (), *record_seal_list(db_session, keyring.active.kid))
    ring = _ring_sealed_by(keyring, seal)
    planned_by_leak = _started(db_session, keyring)

    _steps(db_session, honest, ring)  # resumes from the listed checkpoints
    summarize_run(db_session, run_id=honest.id, keyring=ring)
    assert "audit-record-invalid" not in _codes(db_session, honest.id)
    assert verify_report(export_report(db_session, run_id=honest.id, keyring=ring), ring).kid == ring.active.kid

    _steps(db_session, continued_by_leak, keyring)  # new checkpoints, signed with the sealed key
    summarize_run(db_session, run_id=continued_by_leak.id, keyring=ring)
    db_session.refresh(continued_by_leak)
    assert "audit-record-invalid" in _codes(db_session, continued_by_leak.id)
    assert continued_by_leak.summary["total_entities"] == 0  # what the unlisted checkpoints say is not counted
    with pytest.raises(AuditRecordInvalid, match="does not list this record"):
        export_report(db_session, run_id=planned_by_leak.id, keyring=ring)
    assert db_session.get(AuditRun, planned_by_leak.id).finished_at is None
