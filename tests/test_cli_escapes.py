"""Text from the server reaches the terminal with control codes escaped: a team or skill name,
a progress message or a job's error could otherwise erase lines, move the cursor or retitle the
terminal of whoever runs `plant` (helper-77). The verify commands already did this."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import cli.jobs as cli_jobs
from cli.client import PlantClient
from cli.main import cli
from cli.output import unmet_outcome


pytestmark = pytest.mark.usefixtures("no_server_log_lines")  # tests/conftest.py: CLI output without server log lines

JOB_ID = "00000000-0000-4000-8000-000000000001"
RUN_ID = "00000000-0000-4000-8000-000000000002"
EVIL = "Ops\x1b[2K\r\x1b[1A\x1b]0;owned\x07"  # erase the line, go up, retitle the terminal


def _job(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": JOB_ID, "kind": "agent.assign_team", "status": status, "attempts": 1,
            "created_at": "2026-12-05T00:00:00Z", "params": {},
            "progress": {"done": 1, "total": 1, "message": f"placing into {EVIL}"}, **extra}


def _handler(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path == f"/api/v1/jobs/{JOB_ID}":
        return httpx.Response(200, json=_job("succeeded", result={
            "agent_id": "a", "team_id": "t", "previous_team_id": None,
            "candidates": [{"name": EVIL, "score": 0.9, "free_seats": 1}]}))
    if path == f"/api/v1/audit/runs/{RUN_ID}/findings":
        return httpx.Response(200, json={"items": [{"code": "rule-violated", "severity": "error", "entity_type": "team",
                                                     "entity_id": "x", "version": 1, "detail": f"team {EVIL} is over"}],
                                         "next_page_token": None})
    return httpx.Response(404, json={"title": "Not Found"})


@pytest.fixture
def plant(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PLANT_URL", "http://plant.invalid")
    monkeypatch.setenv("PLANT_API_KEY", "k")
    monkeypatch.setattr(cli_jobs, "PlantClient",
                        lambda config: PlantClient(config, transport=httpx.MockTransport(_handler)))
    return lambda *args: CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("args", [("jobs", "show", JOB_ID), ("jobs", "watch", JOB_ID),
                                  ("audit", "findings", RUN_ID)])
def test_server_text_is_shown_with_control_codes_escaped(plant, args) -> None:
    result = plant(*args)
    assert result.exit_code == 0, result.output
    assert "Ops" in result.output
    assert "\x1b" not in result.output and "\r" not in result.output and "\x07" not in result.output, repr(result.output)


def test_a_failed_jobs_error_line_escapes_control_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_job("failed", error={"title": "Conflict", "detail": f"team {EVIL} is full"}))

    monkeypatch.setenv("PLANT_URL", "http://plant.invalid")
    monkeypatch.setenv("PLANT_API_KEY", "k")
    monkeypatch.setattr(cli_jobs, "PlantClient", lambda config: PlantClient(config, transport=httpx.MockTransport(handler)))
    result = CliRunner().invoke(cli, ["jobs", "watch", JOB_ID, "--json"])
    assert result.exit_code == 3
    stderr_line = result.stderr if hasattr(result, "stderr") else result.output
    assert "\x1b" not in stderr_line, repr(stderr_line)


@pytest.mark.parametrize(("kind", "result", "unmet"), [
    ("skill.certify", {"status": "certified", "skill_id": "s"}, None),
    ("skill.certify", {"status": "rejected", "skill_id": "s"}, "skill s was rejected"),
    ("agents.assign_teams", {"placed": 3, "requested": 3, "not_placed": 0}, None),
    ("agents.assign_teams", {"placed": 1, "requested": 3, "not_placed": 2}, "2 of 3 agent(s) not placed"),
    ("audit.run", {"run_id": "r", "non_compliant": 0, "findings": 4, "run_level_findings": []}, None),  # warnings only
    ("audit.run", {"run_id": "r", "non_compliant": 2, "findings": 2, "run_level_findings": []},
     "audit run r found 2 non-compliant entit(y/ies)"),
    ("audit.run", {"run_id": "r", "non_compliant": 0, "findings": 1, "run_level_findings": ["ledger-root-mismatch"]},
     "audit run r found 0 non-compliant entit(y/ies) and run-level findings ledger-root-mismatch"),
    ("diagnostics.sleep", {"slept": 0.0}, None),
])
def test_a_succeeded_job_s_outcome_is_unmet_only_when_what_was_asked_was_not_done(kind, result, unmet) -> None:
    assert unmet_outcome({"id": "j", "kind": kind, "status": "succeeded", "result": result}) == unmet
