"""``make demo`` end to end: its own stack, the seven steps, a signed report, nothing left running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from cli.ports import claim_port
from models.reports import verify_report
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e
DEMO_TIMEOUT_SECONDS = 240
EXPECTED = "row-content-mismatch"


def _started_in(directory: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if any(str(directory) in part for part in process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_the_demo_finds_the_tampered_row_and_ends_with_a_verified_report(server_tmp: Path) -> None:
    data_dir = server_tmp / "demo"
    completed = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--data-dir", str(data_dir),
         "--port", str(claim_port()), "--flower-port", str(claim_port()), "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=DEMO_TIMEOUT_SECONDS,
    )
    assert completed.returncode == 0, completed.stderr[-4000:] + (data_dir / "stack.log").read_text()[-4000:]
    summary = json.loads(completed.stdout)

    assert len(summary["certificates"]) == 19 and all(c.startswith("SKILL-") for c in summary["certificates"].values())
    assert summary["placed"] > 0
    assert summary["clean_audit"]["non_compliant"] == 0
    assert summary["audit"]["non_compliant"] == 1 and summary["findings"] == [EXPECTED]
    report_file = Path(summary["report_file"])
    jwks = json.loads(Path(summary["jwks_file"]).read_text())
    report = json.loads(report_file.read_bytes())["report"]
    assert verify_report(report_file.read_bytes(), jwks).kid == jwks["keys"][0]["kid"]
    assert report["findings"][0]["entity_id"] == summary["tampered"]["skill_id"]

    narration = completed.stderr.splitlines()
    assert [line.split()[1] for line in narration if line.startswith("── ")] == ["1.", "2.", "3.", "4.", "5.", "6.", "7."]
    restored = summary["restored"]
    assert restored["restored"]["changed_fields"] == ["description"] and restored["restored"]["finding"] == EXPECTED
    assert restored["audit"]["non_compliant"] == 0 and restored["repairs"] == [restored["restored"]["repair"]["id"]]
    assert narration[-1] == f"Report: {report_file}" and report_file.is_relative_to(data_dir)
    assert _started_in(data_dir) == []  # the stack and its servers are gone
