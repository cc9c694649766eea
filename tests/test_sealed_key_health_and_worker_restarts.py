"""Processes on a signing key sealed after they started get replaced: an API process's ``/health``
is down (503, naming the ``signing_key`` check), rather than ok while every write answers 503
``signing-key-sealed``; a worker exits 0 by itself (the e2e test beside the sealing ones), and
``plant dev``'s supervisor starts a worker that exits 0 again, where any other exit stops it all."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cli.supervisor import Supervisor
from cli.watchdog import Watchdog

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


def test_the_dev_supervisor_starts_again_a_worker_that_exits_0_and_stops_for_any_other_exit(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # exits 0 twice (a worker whose key was sealed stopping itself), then crashes
    script = (f"import pathlib, sys; p = pathlib.Path({str(runs)!r}); n = len(p.read_text()) if p.exists() else 0; "
              "p.write_text('x' * (n + 1)); sys.exit(0 if n < 2 else 3)")
    worker = _first_failure("worker", [sys.executable, "-c", script])
    api = _first_failure("api", [sys.executable, "-c", "pass"])  # another role's exit 0 stops it all
    assert (worker, runs.read_text()) == (("worker", 3), "xxx")
    assert api == ("api", 0)


def _first_failure(role: str, argv: list[str]) -> tuple[str, int]:
    with Watchdog.start() as watchdog:
        supervisor = Supervisor(dict(os.environ), watchdog)
        try:
            supervisor.spawn(role, argv)
            child, status = supervisor.wait_for_failure(restarted_on_exit_0=frozenset({"worker"}))
        finally:
            supervisor.stop_all(grace=5)
    return child.role, status
