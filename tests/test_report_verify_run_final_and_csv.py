"""An outside auditor's checks, from the files alone: ``plant report verify`` pinned to a run
(``--run``), and a CSV export checked against the signed report of its run (``--csv``)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from cli.main import cli
from models.reports import csv_text, export_report
from tests.report_builders import findings_csv, signed_report

pytestmark = pytest.mark.usefixtures("no_server_log_lines")  # tests/conftest.py: CLI output without server log lines

RUN_A, RUN_B = "0b6f6b2e-0000-4000-8000-00000000000a", "0b6f6b2e-0000-4000-8000-00000000000b"


def _files(tmp_path: Path, ring: Any, report: bytes, csv: str | bytes | None = None) -> tuple[Path, Path, Path]:
    report_file, jwks, csv_file = tmp_path / "report.json", tmp_path / "jwks.json", tmp_path / "findings.csv"
    report_file.write_bytes(report)
    jwks.write_text(json.dumps(ring.jwks()))
    if csv is not None:
        csv_file.write_bytes(csv.encode() if isinstance(csv, str) else csv)
    return report_file, jwks, csv_file


def _verify(report_file: Path, jwks: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["report", "verify", str(report_file), "--jwks", str(jwks), *args])


def _report(run: dict[str, Any], findings: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "plant.audit-report.v1", "run": run, "findings": findings, "repairs": []}


def _finding(finding_id: int, code: str = "row-content-mismatch") -> dict[str, Any]:
    return {"finding_id": finding_id, "entity_type": "skill", "entity_id": str(uuid.UUID(int=finding_id)), "version": 1,
            "code": code, "severity": "critical", "rule_id": None, "detail": f"detail, of {finding_id}"}


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_report_verify_run_refuses_a_valid_report_of_another_run(tmp_path, keyring, as_json) -> None:
    """A validly signed report of an older, clean run handed over for the run asked about verified,
    exit 0: the run id was only printed. ``--run`` makes it exit 4."""
    report = signed_report(_report({"id": RUN_A, "finished_at": None, "summary": None}, []), keyring)
    report_file, jwks, _ = _files(tmp_path, keyring, report)
    flags = ["--json"] if as_json else []
    assert _verify(report_file, jwks, "--run", RUN_A, *flags).exit_code == 0
    other = _verify(report_file, jwks, "--run", RUN_B, *flags)
    assert other.exit_code == 4
    assert other.stderr.startswith("plant: the report is signed, but it is the report of run " + RUN_A)
    if as_json:
        assert json.loads(other.stdout)["valid"] is False and RUN_B in json.loads(other.stdout)["error"]
    else:
        assert other.stdout == ""


def _audited_run(db_session, keyring) -> Any:
    """A run, closed by Plant, that found the two rows edited through SQL."""
    from models.audit_chunks import audit_chunk_step, pending_chunks
    from models.audit_close import summarize_run
    from models.audit_runs import start_run
    from models.job_lifecycle import create_job
    from tests.conftest import EMBEDDER

    job = create_job(db_session, kind="audit.run", params={"verify_signatures": "all"}, queue="audit")
    run = start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=3)
    for chunk_id in pending_chunks(db_session, run.id):
        while not audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=5).done:
            pass
    summarize_run(db_session, keyring=keyring, run_id=run.id)
    return run


def _rows_reordered(csv: str) -> str:
    header, *rows = csv.splitlines(keepends=True)
    return header + "".join(reversed(rows))


def _row_removed(csv: str) -> str:
    header, *rows = csv.splitlines(keepends=True)
    return header + "".join(rows[1:])


def _counted_flipped(csv: str) -> str:
    return csv.replace(",yes\n", ",no\n", 1)


def _crlf(csv: str) -> str:
    return csv.replace("\n", "\r\n")


def _bom(csv: str) -> str:
    return "\ufeff" + csv


@pytest.mark.parametrize("tamper", [_rows_reordered, _row_removed, _counted_flipped, _crlf, _bom],
                         ids=["reordered", "removed", "counted-flipped", "crlf", "bom"])
def test_a_csv_export_verifies_against_its_run_s_signed_report_and_a_changed_one_does_not(
        tmp_path, db_session, skill, steward, keyring, tamper) -> None:
    """The CSV export carries no signature, and no command could check one: rows removed or
    reordered went unnoticed. ``--csv`` checks it holds exactly the signed report's findings."""
    db_session.execute(text("UPDATE skills SET description = 'tampered by insider' WHERE id = :id"), {"id": skill.id})
    db_session.execute(text("UPDATE agents SET name = 'Tampered Steward' WHERE id = :id"), {"id": steward})
    db_session.expire_all()
    run = _audited_run(db_session, keyring)
    csv = findings_csv(db_session, run_id=run.id, keyring=keyring)
    assert csv.count("\n") >= 3  # the header and at least two findings: a reorder changes something
    report_file, jwks, csv_file = _files(tmp_path, keyring, export_report(db_session, run_id=run.id, keyring=keyring), csv)
    ok = _verify(report_file, jwks, "--csv", str(csv_file), "--run", str(run.id))
    assert ok.exit_code == 0, ok.output
    assert f"holds exactly the report's {csv.count(chr(10)) - 1} finding(s), in order" in ok.stdout
    assert json.loads(_verify(report_file, jwks, "--csv", str(csv_file), "--json").stdout)["csv"] == str(csv_file)

    csv_file.write_text(tamper(csv), newline="")
    bad = _verify(report_file, jwks, "--csv", str(csv_file))
    assert bad.exit_code == 4 and bad.stdout == ""
    assert bad.stderr.startswith(f"plant: {csv_file} is NOT the CSV export of this report: ")
    assert bad.stderr.count("\n") == 1
    assert json.loads(_verify(report_file, jwks, "--csv", str(csv_file), "--json").stdout)["valid"] is False


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "running"])
def test_the_csv_s_counted_column_is_checked_against_what_the_report_left_out(tmp_path, keyring, finished) -> None:
    """``counted`` is ``no`` for a finding the report says was left out of the run's counts: a
    CSV that counts it (a forged finding passed off as Plant's) is not the report's."""
    left_out = {"count": 1, "ids": [[2, 2]]}
    run = ({"id": RUN_A, "finished_at": "2026-01-01T00:00:00.000000Z", "summary": {"findings_left_out": left_out}}
           if finished else {"id": RUN_A, "finished_at": None, "summary": None, "findings_left_out": left_out})
    findings = [_finding(1), _finding(2), _finding(3)]
    kept = "yes" if finished else ""
    csv = csv_text([(findings[0], kept), (findings[1], "no"), (findings[2], kept)], header=True)
    report_file, jwks, csv_file = _files(tmp_path, keyring, signed_report(_report(run, findings), keyring), csv)
    assert _verify(report_file, jwks, "--csv", str(csv_file)).exit_code == 0
    csv_file.write_text(csv.replace(",no\n", f",{kept or 'yes'}\n"))
    bad = _verify(report_file, jwks, "--csv", str(csv_file))
    assert bad.exit_code == 4 and "row 2 (finding 2 in the report) is not the report's" in bad.stderr


def test_a_csv_of_another_run_is_not_the_report_s(tmp_path, keyring) -> None:
    run = {"id": RUN_A, "finished_at": "2026-01-01T00:00:00.000000Z", "summary": {}}
    other = csv_text([(_finding(7), "yes")], header=True)
    report_file, jwks, csv_file = _files(
        tmp_path, keyring, signed_report(_report(run, [_finding(1), _finding(2)]), keyring), other)
    bad = _verify(report_file, jwks, "--csv", str(csv_file))
    assert bad.exit_code == 4 and "row 1 (finding 1 in the report) is not the report's" in bad.stderr


def test_a_csv_given_as_the_report_is_refused_with_a_pointer_to_the_json_export(tmp_path, keyring) -> None:
    csv = csv_text([(_finding(1), "yes")], header=True)
    report_file, jwks, _ = _files(tmp_path, keyring, csv.encode())
    bad = _verify(report_file, jwks)
    assert bad.exit_code == 4 and "this is a CSV export, which is not signed" in bad.stderr


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_report_verify_final_refuses_a_running_run_s_snapshot(tmp_path, keyring, as_json) -> None:
    """A running run's report verified exit 0 (NOT FINAL was only printed): a gate on the exit
    code took a snapshot with no findings so far for a clean audit. ``--final`` exits 4."""
    flags = ["--json"] if as_json else []
    running = signed_report(_report({"id": RUN_A, "finished_at": None, "summary": None}, []), keyring)
    report_file, jwks, _ = _files(tmp_path, keyring, running)
    assert _verify(report_file, jwks, *flags).exit_code == 0
    refused = _verify(report_file, jwks, "--final", *flags)
    assert refused.exit_code == 4 and refused.stderr.startswith("plant: the report is signed, but NOT FINAL")
    assert (json.loads(refused.stdout)["valid"] is False) if as_json else refused.stdout == ""
    finished = signed_report(_report({"id": RUN_A, "finished_at": "2026-01-01T00:00:00.000000Z", "summary": {}}, []), keyring)
    report_file.write_bytes(finished)
    assert _verify(report_file, jwks, "--final", "--run", RUN_A, *flags).exit_code == 0
