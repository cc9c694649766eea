"""``plant demo`` (``make demo``): the guided tour, live, on a stack of its own.

It starts ``plant dev`` on a separate data dir and ports (see :mod:`cli.demo_stack`), which
migrates and seeds it, and then walks through the scenario over the HTTP API, printing
each step and its key numbers: 1. certify every skill; 2. auto-assign the agents with one
optimal plan; 3. a clean audit; 4. tamper with one skill row through SQL, as someone with
database access could; 5. audit again and show the finding; 6. export the signed report
and verify it offline with the published keys; 7. restore the row from its signed chain
with ``plant entity restore`` and audit once more: clean, with the repair on record. It
stops the stack and ends by naming the report file (step 6's). With ``--json`` the
narration goes to stderr and a summary to stdout.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import psycopg

from cli.client import PlantClient
from cli.demo_stack import DemoStack, prepare_data_dir
from cli.errors import PlantCliError
from cli.output import compact, json_option, outcome_lines, print_json
from cli.watch import ProgressView, follow, require_success
from models.errors import PlantError
from models.reports import verify_report
from models.settings import child_environment

TAMPERED_SKILL_KEY = "fraud-detection"
TAMPER_SQL = "UPDATE skills SET description = 'tampered' WHERE skill_key = %s RETURNING id, name"
EXPECTED_FINDING = "row-content-mismatch"
# Small audit batches, so the progress bar has something to show on a registry of ~100.
DEMO_STACK_ENV = {"PLANT_AUDIT_BATCH_SIZE": "10", "WEB_CONCURRENCY": "1"}
RESTORE_TIMEOUT_SECONDS = 60


class Narrator:
    """Headings and lines for the audience, with an optional pause between steps."""

    def __init__(self, stream: IO[str], pause: float) -> None:
        self.stream, self.pause, self._started = stream, pause, time.monotonic()

    def step(self, number: int, title: str) -> None:
        if number > 1 and self.pause:
            time.sleep(self.pause)
        self.say("")
        self.say(click.style(f"── {number}. {title} ".ljust(72, "─"), bold=True))

    def say(self, text: str) -> None:
        click.echo(text, file=self.stream)

    def elapsed(self) -> float:
        return time.monotonic() - self._started


@dataclass
class Tour:
    """One run of the scenario against a healthy stack."""

    client: PlantClient
    stack: DemoStack
    narrator: Narrator

    def follow(self, job: dict[str, Any]) -> dict[str, Any]:
        final = require_success(follow(self.client, job, ProgressView(self.narrator.stream)))
        for line in outcome_lines(final):
            self.narrator.say("  " + line)
        return final

    def certify_skills(self) -> dict[str, str]:
        self.narrator.step(1, "Certify skills: gates, then a signed certificate per skill")
        skills = list(self.client.items("/genesis/skills"))
        started = {s["skill_key"]: self.client.start_job(f"/genesis/skills/{s['id']}/certify", {"notes": "demo"})
                   for s in skills}
        certificates = {}
        for key, job in started.items():
            result = require_success(follow(self.client, job))["result"]
            certificates[key] = (result.get("certificate") or {}).get("certificate_id") or result["status"]
        for key, certificate in sorted(certificates.items(), key=lambda item: item[1]):
            self.narrator.say(f"  {certificate:<16} {key}")
        certified = sum(1 for c in certificates.values() if c.startswith("SKILL-"))
        self.narrator.say(f"  {certified} of {len(skills)} skills certified; each certificate signs its chain head")
        return certificates

    def assign_agents(self) -> dict[str, Any]:
        self.narrator.step(2, "Auto-assign agents: one optimal plan over every team's free seats")
        job = self.follow(self.client.start_job("/agents/assign-teams", {"all_unassigned": True}))
        for team in self.client.items("/teams"):
            seats = team.get("members") or []
            self.narrator.say(f"  {team['name']:<24} {len(seats)}/{team['capacity']} seats")
        return job["result"]

    def audit(self, number: int, title: str) -> dict[str, Any]:
        self.narrator.step(number, title)
        return self.audit_quietly()

    def tamper(self) -> dict[str, str]:
        self.narrator.step(4, "Tamper with one row through SQL, behind the API's back")
        self.narrator.say("  " + TAMPER_SQL.replace("%s", f"'{TAMPERED_SKILL_KEY}'"))
        with psycopg.connect(self.stack.database_url(), autocommit=True) as connection:
            row = connection.execute(TAMPER_SQL, (TAMPERED_SKILL_KEY,)).fetchone()
        if row is None:
            raise PlantCliError(f"no skill {TAMPERED_SKILL_KEY!r} to tamper with")
        self.narrator.say(f"  1 row changed: skill {row[1]} ({row[0]}); its signed chain was not (and cannot be)")
        return {"skill_id": str(row[0]), "name": row[1]}

    def show_findings(self, run_id: str, tampered: dict[str, str]) -> list[dict[str, Any]]:
        findings = list(self.client.items(f"/audit/runs/{run_id}/findings", code=EXPECTED_FINDING))
        for finding in findings:
            name = f" {tampered['name']}" if finding["entity_id"] == tampered["skill_id"] else ""
            self.narrator.say(f"  finding {finding['code']} ({finding['severity']}) on {finding['entity_type']}{name} "
                              f"({finding['entity_id']}): {finding['detail']}")
        return findings

    def export_and_verify(self, run_id: str) -> tuple[Path, Path]:
        self.narrator.step(6, "Export the signed report and verify it offline")
        reports = self.stack.data_dir.resolve() / "reports"
        reports.mkdir(exist_ok=True)
        report_file, jwks_file = reports / f"audit-{run_id}.json", reports / "signing-keys.json"
        report_file.write_bytes(self.client.download("/audit/export", run_id=run_id, format="json"))
        jwks = self.client.get("/signing-keys")
        jwks_file.write_text(json.dumps(jwks, indent=2) + "\n")
        verified = verify_report(report_file.read_bytes(), jwks)
        self.narrator.say(f"  {report_file.name}: signature valid, kid {verified.kid} ({verified.alg})")
        forged = report_file.read_bytes().replace(b'"non_compliant":1', b'"non_compliant":0')
        try:
            verify_report(forged, jwks)
        except (PlantError, ValueError, KeyError) as exc:
            self.narrator.say(f"  a copy edited to say non_compliant 0: NOT valid ({exc})")
        else:
            raise PlantCliError("a report edited to hide the finding still verified")
        html_file = report_file.with_suffix(".html")
        html_file.write_bytes(self.client.download(f"/audit/runs/{run_id}/report.html"))
        self.narrator.say(f"  the same report for people: {html_file}")
        return report_file, jwks_file


    def restore(self, tampered: dict[str, str]) -> dict[str, Any]:
        self.narrator.step(7, "Restore the row from its signed chain, then audit: clean, with the repair on record")
        command = [sys.executable, "-m", "cli.main", "entity", "restore", "skill", tampered["skill_id"],
                   "--actor", "operator:demo", "--json"]
        self.narrator.say("  plant entity restore skill " + tampered["skill_id"])
        completed = subprocess.run(command, env=child_environment(self.stack.environment(), DATABASE_URL=self.stack.database_url()),
                                   capture_output=True, text=True, timeout=RESTORE_TIMEOUT_SECONDS)
        if completed.returncode != 0:
            raise PlantCliError(f"plant entity restore failed: {completed.stderr.strip()[-500:]}")
        restored = json.loads(completed.stdout)
        self.narrator.say(f"  {tampered['name']} back at version {restored['version']}; fields set back: "
                          f"{', '.join(restored['changed_fields'])}; signed repair record {restored['repair']['id']}")
        audit = self.audit_quietly()
        repairs = json.loads(self.client.download("/audit/export", run_id=audit["run_id"], format="json"))["report"]["repairs"]
        self.narrator.say(f"  audit: {audit['non_compliant']} non-compliant; its signed report lists {len(repairs)} repair(s)")
        return {"restored": restored, "audit": audit, "repairs": [r["id"] for r in repairs]}

    def audit_quietly(self) -> dict[str, Any]:
        return self.follow(self.client.start_job("/audit/run", {"verify_signatures": "all"}))["result"]


def run_tour(tour: Tour) -> dict[str, Any]:
    """The seven steps; returns what a script needs to know about them."""
    certificates = tour.certify_skills()
    placement = tour.assign_agents()
    clean = tour.audit(3, "Audit the registry: chains, signatures, rows and rules")
    if clean["non_compliant"]:
        raise PlantCliError(f"the first audit was not clean: {compact(clean['by_code'])}")
    tampered = tour.tamper()
    found = tour.audit(5, "Audit again: the edit is found")
    findings = tour.show_findings(found["run_id"], tampered)
    if not any(f["entity_id"] == tampered["skill_id"] for f in findings):
        raise PlantCliError(f"the second audit did not report {EXPECTED_FINDING} on the tampered skill")
    report_file, jwks_file = tour.export_and_verify(found["run_id"])
    repaired = tour.restore(tampered)
    if repaired["audit"]["non_compliant"] or not repaired["repairs"]:
        raise PlantCliError(f"the audit after the restore was not clean with its repair: {compact(repaired['audit'])}")
    return {
        "certificates": certificates, "placed": placement["placed"], "not_placed": placement["not_placed"],
        "clean_audit": clean, "tampered": tampered, "audit": found,
        "findings": [f["code"] for f in findings], "report_file": str(report_file), "jwks_file": str(jwks_file),
        "restored": repaired,
    }


def _stop_on_sigterm(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds the `with` that stops the stack


@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".plant-demo"),
              show_default=True, help="The demo's own data dir, wiped at each start.")
@click.option("--port", type=click.IntRange(1, 65535), default=8100, show_default=True, envvar="PLANT_DEMO_PORT",
              help="API port of the demo stack (env PLANT_DEMO_PORT).")
@click.option("--flower-port", type=click.IntRange(1, 65535), default=5655, show_default=True,
              envvar="PLANT_DEMO_FLOWER_PORT", help="Flower port of the demo stack (env PLANT_DEMO_FLOWER_PORT).")
@click.option("--pause", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds to pause between steps, for an audience.")
@json_option
def demo(data_dir: Path, port: int, flower_port: int, pause: float, as_json: bool) -> None:
    """The guided demo: start a stack of its own, certify, assign, audit, tamper, audit, report, restore."""
    narrator = Narrator(sys.stderr if as_json else sys.stdout, pause)
    # A hangup (the terminal closed) too: the stack runs in a session of its own, which the
    # hangup never reaches, so a demo killed by it left the whole stack running.
    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _stop_on_sigterm)
    prepare_data_dir(data_dir)
    stack = DemoStack(data_dir, port, flower_port, extra_env=DEMO_STACK_ENV)
    narrator.say(f"Starting the demo stack: `plant dev` on {stack.url} with data in {data_dir} (log: {stack.log_path})")
    with stack:
        health = stack.wait_until_healthy()
        narrator.say(f"  healthy after {narrator.elapsed():.0f} s: {compact({k: v['status'] for k, v in health['checks'].items()})}")
        with PlantClient(stack.client_config()) as client:
            summary = run_tour(Tour(client, stack, narrator))
        narrator.say("")
        narrator.say("Stopping the demo stack…")
    narrator.say(f"  stopped; the demo took {narrator.elapsed():.0f} s")
    narrator.say(f"Check it yourself: plant report verify {summary['report_file']} --jwks {summary['jwks_file']}")
    narrator.say(f"Report: {summary['report_file']}")
    if as_json:
        print_json(summary)
