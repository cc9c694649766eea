"""Signing keys under rotation and sealing: a process that loads its key ring while a rotation runs
on the same key files ends up with a ring that trusts every key that signs; a sealed key's audit
records dated after its seal do not verify; sealing refuses a key also published as upcoming; a
generated key file's name is durable before anything signs with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models import keys
from models.keys import keyring_from_settings, promote_staged_key, stage_signing_key
from models.settings import Settings
from models.key_material import generate_ed25519
from tests.test_audit_record_signed import skills  # noqa: F401 - the fixture


def _run_once_after_reading(monkeypatch: pytest.MonkeyPatch, which: Any, action: Any) -> None:
    """Run ``action`` (a rotation step) once, right after the key ring's loader reads the
    first file ``which(path)`` picks: a rotation that lands between two of its reads."""
    original, original_private, state = keys.read_regular_file, keys.read_private_key_file, {"done": False, "busy": False}

    def after(path: Path, data: bytes) -> bytes:
        if not state["done"] and not state["busy"] and which(path):
            state["busy"] = True
            try:
                action()
            finally:
                state["busy"], state["done"] = False, True
        return data

    monkeypatch.setattr(keys, "read_regular_file", lambda path: after(path, original(path)))  # the retired keys and seals
    monkeypatch.setattr(keys, "read_private_key_file", lambda path: after(path, original_private(path)))  # the active key


def test_a_process_starting_while_a_staged_key_is_promoted_trusts_the_promoted_key(
        key_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader read the active key (the old one), then the promotion made the staged key
    active and removed its upcoming copy, then the loader listed the retired keys: the ring
    signed with the old key and did not know the new one, so this process (a gunicorn worker
    respawned at that moment) took every version the new key signs for tampering, the very
    window the two-step rotation exists to close."""
    old_kid = keyring_from_settings(key_settings).active.kid
    new_kid = stage_signing_key(key_settings, generate_ed25519())
    active_path = key_settings.active_signing_key_path
    _run_once_after_reading(monkeypatch, lambda path: path == active_path, lambda: promote_staged_key(key_settings))

    ring = keyring_from_settings(key_settings)

    assert ring.verifier(new_kid) is not None and ring.verifier(old_kid) is not None
    assert keyring_from_settings(key_settings).active.kid == new_kid  # the promotion did happen


def test_a_process_starting_while_a_key_is_staged_again_starts(
        key_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Staging again removes the key staged before (its ``*.next.pem``); a loader that had
    listed it and read it after it went refused to start ("cannot be read"): a worker exits."""
    first = stage_signing_key(key_settings, generate_ed25519())
    retired = key_settings.retired_signing_keys_path
    (retired / "0-old.pem").write_bytes(generate_ed25519().verifier().public_pem())  # listed before the staged key
    second_key = generate_ed25519()
    _run_once_after_reading(monkeypatch, lambda path: path.parent == retired,
                            lambda: stage_signing_key(key_settings, second_key))

    ring = keyring_from_settings(key_settings)

    assert not (retired / f"{first}{keys.UPCOMING_SUFFIX}").exists()
    assert ring.verifier(second_key.kid) is not None


def test_a_retired_key_link_whose_target_is_gone_is_still_refused_naming_it(key_settings: Settings) -> None:
    """Read again while a rotation runs, a key file that stays gone (a volume not mounted)
    still stops the process, after a few reads, naming the file."""
    from models.errors import SigningKeyError

    retired = key_settings.retired_signing_keys_path
    retired.mkdir(parents=True)
    (retired / "old.pem").symlink_to(retired / "nowhere" / "old.pem")

    with pytest.raises(SigningKeyError, match=r"old\.pem: cannot be read: it is gone"):
        keyring_from_settings(key_settings)


@pytest.mark.usefixtures("skills")
def test_plant_never_signs_the_report_of_a_run_a_sealed_key_closed_after_its_seal(db_session: Any, keyring: Any) -> None:
    """A running run takes UPDATEs, so only its signatures tell Plant's close from anyone's.
    A close (or plan) signed by a sealed key verified whatever time it named, so whoever holds
    a copy of the retired private key and can write the database closed a run with a summary
    of their own, and Plant signed that run's report with its active key: a sealed key's
    forgery laundered into a signature that verifies everywhere, offline too."""
    from models.audit_record import AuditRecordInvalid
    from models.reports import export_report, verify_report
    from tests.conftest import ring_sealing
    from tests.test_audit_record_signed import _closed_by_plant, _started

    closed = _closed_by_plant(db_session, keyring)  # signed by the key that is sealed below, after the seal's time
    running = _started(db_session, keyring)
    sealed_before = ring_sealing(keyring, "2000-01-01T00:00:00Z")

    with pytest.raises(AuditRecordInvalid, match="sealed"):
        export_report(db_session, run_id=closed.id, keyring=sealed_before)
    with pytest.raises(AuditRecordInvalid, match="sealed"):
        export_report(db_session, run_id=running.id, keyring=sealed_before)

    sealed_after = ring_sealing(keyring, "2999-01-01T00:00:00Z")  # the same run, closed before its key's seal
    assert verify_report(export_report(db_session, run_id=closed.id, keyring=sealed_after),
                         sealed_after).kid == sealed_after.active.kid


@pytest.mark.usefixtures("skills")
def test_a_sealed_key_s_backdated_close_is_refused_when_its_seal_does_not_list_it(db_session: Any, keyring: Any) -> None:
    """The seal lists what its key signed outside the chain (reports, repair records,
    certificates) because a time a document names proves nothing: whoever signs can backdate.
    An audit run's plan and close are signed outside the chain too: a seal lists them now,
    and one that does not list a close refuses it, whatever times it names."""
    from models.audit_record import AuditRecordInvalid
    from models.key_seals import seal_list_root
    from models.reports import export_report
    from models.signing import KeyRing, KeySeal
    from tests.test_audit_record_signed import _closed_by_plant

    closed = _closed_by_plant(db_session, keyring)  # a copy of the key, after its seal, naming times before it
    seal = KeySeal(keyring.active.kid, 1, "00" * 32, "2999-01-01T00:00:00Z", signed_count=0,
                   signed_root=seal_list_root([]), signed=frozenset())  # it lists nothing the key signed
    sealed = KeyRing(generate_ed25519(), (keyring.active,), (seal,))

    with pytest.raises(AuditRecordInvalid, match="does not list this record"):
        export_report(db_session, run_id=closed.id, keyring=sealed)


def test_sealing_never_seals_a_key_that_is_also_published_as_upcoming(engine: Any, settings: Settings, clean_db: None,
                                                                      tmp_path: Path) -> None:
    """A key both in ``<kid>.pem`` and ``<kid>.next.pem`` (a retired key staged to sign again,
    by hand) is upcoming to the ring and its JWKS; sealed as a retired key, its seal named a
    key that would sign, and every API and worker process refused to start."""
    from sqlalchemy.orm import sessionmaker

    from models.key_seals import seal_retired_keys
    from models.settings import load_settings

    active, both = generate_ed25519(), generate_ed25519()
    own = load_settings(database_url=settings.database_url, data_dir=tmp_path / "data")
    own.active_signing_key_path.parent.mkdir(parents=True)
    own.active_signing_key_path.write_bytes(active.private_pem())
    own.active_signing_key_path.chmod(0o600)
    retired = own.retired_signing_keys_path
    retired.mkdir(parents=True)
    for name in (f"{both.kid}.pem", f"{both.kid}{keys.UPCOMING_SUFFIX}"):
        (retired / name).write_bytes(both.verifier().public_pem())

    assert [seal.kid for seal in seal_retired_keys(own, sessionmaker(engine))] == []
    assert [key.kid for key in keyring_from_settings(own).upcoming] == [both.kid]  # every process still starts


def test_a_generated_key_file_s_name_is_made_durable_before_anything_signs_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ensure_key_file`` fsynced the key's bytes but not the directory holding its new name:
    after a power cut the versions it signed (committed, fsynced by PostgreSQL) could outlive
    the file, and ``plant dev`` then refuses to start on a registry no key it has signed."""
    import os
    import stat

    from models.key_material import ensure_key_file

    synced: list[bool] = []  # for each fsync: whether it was of a directory
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real(fd))[1])

    ensure_key_file(tmp_path / "keys" / "active.pem")

    assert synced and synced[-1] is True
