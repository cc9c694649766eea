"""README's promises that the code had not kept, found by reading it against the code.

Each test names the README sentence it holds the code to.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, child_env, stop_process_group, wait_for

API = "/api/v1"


def test_a_misspelt_embedder_stops_the_worker_at_start(settings, tmp_path) -> None:
    """Configuration: ``PLANT_EMBEDDER`` is ``hashing`` or ``sentence-transformers``. Any other
    name was read as it was: the API refused to start on it, but a worker started and failed
    every certification and audit it took with ``embedder-unavailable``."""
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "readme-nothing", "-c", "1",
             "-n", "readme-embedder@%h", "--without-mingle", "--without-gossip"],
            cwd=REPO_ROOT, env=child_env(settings, PLANT_EMBEDDER="hashin"), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: process.poll() is not None, timeout=60, what="the worker to refuse to start")
    finally:
        stop_process_group(process)
    assert process.returncode != 0
    assert "embedder" in log_path.read_text()


def test_the_settings_name_the_embedders_there_are(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from models.settings import load_settings

    monkeypatch.setenv("PLANT_EMBEDDER", "sentence-transformers")
    assert load_settings().embedder == "sentence-transformers"
    monkeypatch.setenv("PLANT_EMBEDDER", "Hashing")
    with pytest.raises(ValidationError, match="embedder"):
        load_settings()
