"""``/health`` of an API process whose signing key was sealed after it started: down (503, naming
the ``signing_key`` check), so an orchestrator replaces it, rather than ok while every write
answers 503 ``signing-key-sealed``."""

from __future__ import annotations

from pathlib import Path

from models.keys import keyring_from_settings, write_seal
from models.settings import Settings
from models.signing import KeySeal
from tests.test_sealed_keys_in_running_processes_and_key_file_modes import own_key_dir
from web import create_app


def test_health_is_down_naming_the_signing_key_once_this_process_s_key_is_sealed(settings: Settings, tmp_path: Path) -> None:
    own = own_key_dir(settings, tmp_path)
    client = create_app(own).test_client()
    before = client.get("/health")
    assert before.get_json()["checks"]["signing_key"]["status"] == "up", before.get_json()
    kid = keyring_from_settings(own).active.kid
    seal = write_seal(own, KeySeal(kid, 1, "00" * 32, "2026-12-04T00:00:00.000000Z"))  # a rotation this process missed
    sealed = client.get("/health")
    body = sealed.get_json()
    assert sealed.status_code == 503 and body["status"] == "unavailable", body
    assert body["checks"]["signing_key"]["status"] == "down", body
    assert "sealed after it started" in body["checks"]["signing_key"]["error"]
    assert kid not in sealed.get_data(as_text=True) and str(seal) not in sealed.get_data(as_text=True)  # public
    assert sealed.headers["Retry-After"]
    seal.unlink()  # a seal made by mistake and removed: the key signs again, and the check says so
    assert client.get("/health").get_json()["checks"]["signing_key"]["status"] == "up"
