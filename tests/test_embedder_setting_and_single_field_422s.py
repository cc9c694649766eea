"""README's promises that the code had not kept, found by reading it against the code.

Each test names the README sentence it holds the code to.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli.client import problem_line
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


def test_a_refused_page_token_is_an_errors_entry(client) -> None:
    """Errors: "422 with one ``errors`` entry per bad field". A page token or an
    ``Idempotency-Key`` refused by the domain named its field in a ``field`` member alone."""
    refused = client.get(f"{API}/jobs", query_string={"page_token": "not-a-token"})
    assert refused.status_code == 422
    problem = refused.get_json()
    assert problem["errors"] == [{"field": "page_token", "message": problem["detail"]}]
    assert problem["field"] == "page_token"  # as it was served before


def test_a_reused_idempotency_key_is_an_errors_entry(client) -> None:
    headers = {"Idempotency-Key": "readme-reused"}
    first = client.post(f"{API}/diagnostics/sleep", json={"seconds": 0.1}, headers=headers)
    assert first.status_code == 202
    reused = client.post(f"{API}/diagnostics/sleep", json={"seconds": 0.2}, headers=headers)
    assert reused.status_code == 422
    problem = reused.get_json()
    assert problem["type"] == "/problems/idempotency-key-reused"
    assert [error["field"] for error in problem["errors"]] == ["Idempotency-Key"]


def test_the_cli_does_not_repeat_an_errors_entry_that_is_the_detail() -> None:
    """``plant: 422 Invalid input: …`` stays one readable line with the new entries: one whose message
    is the detail adds only its field."""
    problem = {"title": "Invalid input", "detail": "page_token is not a token this API issued",
               "errors": [{"field": "page_token", "message": "page_token is not a token this API issued"}]}
    assert problem_line(problem) == "Invalid input: page_token is not a token this API issued (page_token)"
    problem["errors"].append({"field": "k", "message": "too big"})
    assert problem_line(problem).endswith("(page_token; k: too big)")
