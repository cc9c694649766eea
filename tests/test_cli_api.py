"""The ``plant`` commands that talk to a server, against a real one.

The Flask app serves on a real port in a background thread, a real Celery worker runs
the jobs, and the commands run through click's CliRunner with PLANT_URL / PLANT_API_KEY
set as a user would set them. Every wait is the CLI's own ``--wait`` long-poll.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text
from werkzeug.serving import make_server

from cli.client import ClientConfig, PlantClient
from cli.errors import EXIT_JOB_UNSUCCESSFUL, EXIT_NOT_VERIFIED, EXIT_OUTCOME_UNMET
from cli.main import cli
from models import ledger
from tests.conftest import refused_port, wait_for
from web.metrics import REQUEST_REGISTRY

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]
Plant = Callable[..., Result]


@pytest.fixture(scope="module")
def api_url(app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def plant(api_url: str, admin_key: str, monkeypatch: pytest.MonkeyPatch, no_server_log_lines: None) -> Plant:
    """Run ``plant ARGS...`` as the admin against the live server (which shares this process:
    its log lines stay out of what the command prints)."""
    monkeypatch.setenv("PLANT_URL", api_url)
    monkeypatch.setenv("PLANT_API_KEY", admin_key)
    return lambda *args: CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def http(api_url: str, admin_key: str) -> Iterator[PlantClient]:
    with PlantClient(ClientConfig(api_url, admin_key, None)) as client:
        yield client


def one_error_line(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("plant: "), result.stderr
    return lines[0]


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def skill_id(http: PlantClient, key: str) -> str:
    return next(s["id"] for s in http.items("/genesis/skills") if s["skill_key"] == key)


def test_api_keys_create_list_revoke_and_a_revoked_key_stops_working(
    plant: Plant, admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = as_json(plant("api-keys", "create", "ci-bot", "--scope", "read", "--scope", "write", "--json"))
    assert created["scopes"] == ["read", "write"] and created["key"]
    listed = as_json(plant("api-keys", "list", "--json"))["items"]
    assert created["id"] in {k["id"] for k in listed}
    table = plant("api-keys", "list")
    assert table.exit_code == 0 and "ci-bot" in table.stdout and created["key"] not in table.stdout

    monkeypatch.setenv("PLANT_API_KEY", created["key"])
    assert plant("jobs", "list").exit_code == 0
    forbidden = plant("api-keys", "list")
    assert forbidden.exit_code == 1 and "403" in one_error_line(forbidden)

    monkeypatch.setenv("PLANT_API_KEY", admin_key)
    revoked = plant("api-keys", "revoke", created["id"])
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    monkeypatch.setenv("PLANT_API_KEY", created["key"])
    refused = plant("jobs", "list")
    assert refused.exit_code == 1
    assert one_error_line(refused).startswith("plant: 401 Unauthorized: the API key is unknown or revoked")


def test_api_keys_create_can_make_a_key_that_expires(plant: Plant) -> None:
    created = plant("api-keys", "create", "short-lived", "--expires-in-days", "7")
    assert created.exit_code == 0 and ", expires 20" in created.stdout
    [listed] = [k for k in as_json(plant("api-keys", "list", "--json"))["items"] if k["name"] == "short-lived"]
    assert listed["expires_at"] is not None
    assert "EXPIRES" in plant("api-keys", "list").stdout
    assert plant("api-keys", "create", "never", "--expires-in-days", "0").exit_code == 2  # click's usage error


def test_without_plant_api_key_the_dev_admin_key_file_is_used(plant: Plant, admin_key: str, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PLANT_API_KEY")
    monkeypatch.setenv("PLANT_DATA_DIR", str(tmp_path))
    missing = plant("jobs", "list")
    assert missing.exit_code == 1 and "set PLANT_API_KEY" in one_error_line(missing)
    (tmp_path / "admin-api-key").write_text(admin_key + "\n")
    assert plant("api-keys", "list", "--json").exit_code == 0
    # A server's setting, invalid where the client runs, is none of the client's business: it read
    # every setting to find PLANT_DATA_DIR, and stopped at this one ("invalid setting port").
    monkeypatch.setenv("PLANT_PORT", "not-a-port")
    listed = plant("api-keys", "list", "--json")
    assert listed.exit_code == 0, listed.output


def test_an_unknown_job_is_exit_1_with_one_line(plant: Plant) -> None:
    job_id = uuid.uuid4()
    result = plant("jobs", "show", job_id)
    assert result.exit_code == 1 and result.stdout == ""
    assert one_error_line(result) == f"plant: 404 Not found: no job with id {job_id}"


def test_usage_errors_are_exit_2_with_one_line(plant: Plant) -> None:
    result = plant("certify")
    assert result.exit_code == 2 and "Missing argument 'SKILL'" in one_error_line(result)
    assert plant("assign", "--all-unassigned", str(uuid.uuid4())).exit_code == 2


def test_unreachable_server_is_exit_1_with_one_line(plant: Plant, monkeypatch) -> None:
    with refused_port() as port:
        monkeypatch.setenv("PLANT_URL", f"http://127.0.0.1:{port}")
        result = plant("jobs", "list")
    assert result.exit_code == 1 and "cannot reach the Plant API" in one_error_line(result)


def test_jobs_list_show_and_watch(plant: Plant, http: PlantClient) -> None:
    started = [http.post("/diagnostics/sleep", {"seconds": 0.0}) for _ in range(3)]
    sleeper = http.post("/diagnostics/sleep", {"seconds": 0.6, "steps": 3})
    watched = plant("jobs", "watch", sleeper["id"])
    assert watched.exit_code == 0, watched.output
    lines = watched.stdout.splitlines()
    assert lines[-2].startswith("succeeded") and "3/3" in lines[-2] and "100%" in lines[-2]
    assert json.loads(lines[-1])["slept"] >= 0.6  # the result, as compact JSON

    everything = as_json(plant("jobs", "list", "--kind", "diagnostics.sleep", "--limit", "10", "--json"))["items"]
    assert {j["id"] for j in everything} == {j["id"] for j in [*started, sleeper]}
    assert len(as_json(plant("jobs", "list", "--limit", "2", "--json"))["items"]) == 2
    assert [j["id"] for j in http.items("/jobs", page_size=2)] == [j["id"] for j in everything]  # follows tokens
    table = plant("jobs", "list", "--status", "succeeded")
    assert table.exit_code == 0 and table.stdout.splitlines()[0].split() == ["ID", "KIND", "STATUS", "PROGRESS", "ATTEMPTS", "CREATED"]
    shown = plant("jobs", "show", sleeper["id"])
    assert shown.exit_code == 0 and "status    succeeded" in shown.stdout and "progress  3/3" in shown.stdout
    assert f"asked by  {sleeper['requested_by']}" in shown.stdout and sleeper["requested_by"].startswith("api-key:")
    assert as_json(plant("jobs", "show", sleeper["id"], "--json"))["status"] == "succeeded"


def test_certify_by_key_waits_for_the_certificate_and_a_second_time_exits_3(plant: Plant, seeded) -> None:
    first = plant("certify", "aml-screening", "--wait")
    assert first.exit_code == 0, first.output
    assert "certified: SKILL-FIN-001" in first.stdout
    again = plant("certify", "aml-screening", "--wait", "--json")
    assert again.exit_code == EXIT_JOB_UNSUCCESSFUL
    assert json.loads(again.stdout)["error"]["type"] == "/problems/already-certified"
    assert "failed: Skill is already certified" in one_error_line(again)
    unknown = plant("certify", "no-such-skill")
    assert unknown.exit_code == 1 and "no skill has id or skill_key 'no-such-skill'" in one_error_line(unknown)


def test_certify_wait_exits_5_when_the_skill_is_rejected_after_printing_why(plant: Plant, http: PlantClient, seeded) -> None:
    """A rejection is a succeeded job: `plant certify SKILL --wait && deploy` went on with no
    certificate (exit 0). It exits 5 now, after printing the failed gates."""
    template = next(s for s in http.items("/genesis/skills") if s["skill_key"] == "copywriting")
    short = http.post("/genesis/skills", {"name": "Terse Skill", "category": template["category"], "description": "Too short.",
                                          "industry_id": template["industry_id"],
                                          "governance_agent_id": template["governance_agent_id"]})
    rejected = plant("certify", short["id"], "--wait")
    assert rejected.exit_code == EXIT_OUTCOME_UNMET, rejected.output
    assert f"rejected: skill {short['id']} failed" in rejected.stdout
    assert one_error_line(rejected).endswith(f"succeeded, but skill {short['id']} was rejected")
    as_json_too = plant("certify", short["id"], "--wait", "--json")
    assert as_json_too.exit_code == EXIT_OUTCOME_UNMET and json.loads(as_json_too.stdout)["result"]["status"] == "rejected"


def test_certify_by_id_without_wait_prints_the_job(plant: Plant, http: PlantClient, seeded) -> None:
    started = as_json(plant("certify", skill_id(http, "copywriting"), "--json"))
    assert started["kind"] == "skill.certify" and started["status"] in ("queued", "running", "succeeded")
    assert plant("jobs", "watch", started["id"]).exit_code == 0


def test_job_starting_commands_send_an_idempotency_key_of_their_own(plant: Plant, http: PlantClient, seeded,
                                                                    engine) -> None:
    """So that the client's retry of a busy answer (cli/client.py) never starts a second job;
    a key of each run's own, so that running a command again does start one."""
    audit_teams = ("audit", "run", "--type", "team", "--wait", "--json")
    first, second = as_json(plant(*audit_teams)), as_json(plant(*audit_teams))
    certified = as_json(plant("certify", skill_id(http, "copywriting"), "--wait", "--json"))
    given = as_json(plant(*audit_teams, "--idempotency-key", "mine-1"))
    again = as_json(plant(*audit_teams, "--idempotency-key", "mine-1"))
    with engine.connect() as connection:
        keys = dict(connection.execute(text("SELECT job_id, key FROM idempotency_keys")).all())
    own = [keys[uuid.UUID(job["id"])] for job in (first, second, certified)]
    assert first["id"] != second["id"] and len(set(own)) == 3 and all(k.startswith("plant-cli-") for k in own)
    assert keys[uuid.UUID(given["id"])] == "mine-1" and again["id"] == given["id"]


def test_digest_export_waits_out_a_busy_ledger_as_the_server_asks(plant: Plant, seeded, engine, tmp_path,
                                                                    monkeypatch) -> None:
    """A version write in flight for longer than the digest's wait is 503 ``ledger-busy`` with
    Retry-After; the CLI says so, waits, and gets the digest once the write has ended."""
    monkeypatch.setattr(ledger, "DIGEST_WAIT_SECONDS", 0.2)
    def busy_answers() -> float:
        labels = {"method": "GET", "route": "/api/v1/ledger/digest", "status": "503"}
        return REQUEST_REGISTRY.get_sample_value("plant_http_requests_total", labels) or 0.0

    before = busy_answers()
    digest_file, outcome = tmp_path / "digest.json", {}
    export = threading.Thread(target=lambda: outcome.update(result=plant("digest", "export", "-o", digest_file, "--json")))
    with engine.connect() as writer:
        writer.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": ledger.VERSIONS_LOCK})
        export.start()
        wait_for(lambda: busy_answers() > before, what="a ledger-busy answer")
        writer.rollback()
    export.join(timeout=60)
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "plant: 503 Ledger busy: version writes stayed in flight for 0.2 s; retry the digest shortly; "
        "retrying in 5 s (try 2 of 4)"]
    assert busy_answers() == before + 1
    assert json.loads(digest_file.read_text())["entity_count"] == json.loads(result.stdout)["entity_count"] >= 90


def test_assign_to_a_named_team_and_automatically(plant: Plant, http: PlantClient, seeded) -> None:
    agents = list(http.items("/agents"))
    teams = {t["name"]: t["id"] for t in http.items("/teams")}
    seo = next(a for a in agents if "SEO Specialist" in a["name"])
    explicit = as_json(plant("assign", seo["id"], "--team", "growth squad", "--wait", "--json"))
    assert explicit["status"] == "succeeded" and explicit["result"]["team_id"] == teams["Growth Squad"]

    coder = next(a for a in agents if "Clinical Coder" in a["name"])
    auto = plant("assign", coder["id"], "--wait")
    assert auto.exit_code == 0, auto.output
    assert f"to team {teams['Clinical Coding Unit']}" in auto.stdout and "candidate Clinical Coding Unit" in auto.stdout

    wrong = plant("assign", coder["id"], "--team", teams["Risk Desk"], "--wait")
    assert wrong.exit_code == EXIT_JOB_UNSUCCESSFUL and "not eligible" in one_error_line(wrong).lower()
    nowhere = plant("assign", coder["id"], "--team", "No Such Team")
    assert nowhere.exit_code == 1 and "no team has id or name 'No Such Team'" in one_error_line(nowhere)


def test_audit_report_and_digest_round_trip(plant: Plant, seeded, tmp_path, engine) -> None:
    digest_file, jwks_file = tmp_path / "digest.json", tmp_path / "jwks.json"
    exported = as_json(plant("digest", "export", "--leaves", "-o", digest_file, "--json"))
    assert exported["entity_count"] >= 90 and exported["leaves"]
    jwks_file.write_text(plant("signing-keys", "list", "--json").stdout)
    assert as_json(plant("digest", "verify", digest_file, "--jwks", jwks_file, "--json"))["valid"] is True
    online = plant("digest", "verify", digest_file)
    assert online.exit_code == 0 and "keys fetched from http://127.0.0.1:" in online.stdout
    forged = json.loads(digest_file.read_text())
    forged["entity_count"] -= 1
    (tmp_path / "forged-digest.json").write_text(json.dumps(forged))
    refused = plant("digest", "verify", tmp_path / "forged-digest.json", "--jwks", jwks_file)
    assert refused.exit_code == EXIT_NOT_VERIFIED and "NOT valid" in one_error_line(refused)

    audited = as_json(plant("audit", "run", "--wait", "--all-signatures", "--against", digest_file, "--json"))
    summary = audited["result"]
    assert audited["status"] == "succeeded" and summary["total_entities"] == exported["entity_count"]
    assert summary["non_compliant"] == 0 and summary["signatures"] == "all"
    padded = json.loads(digest_file.read_text())  # with more leaves than the API takes: handed back root-only
    padded["leaves"] += [{"entity_id": str(uuid.uuid4()), "head": "00" * 32, "version": 1}
                         for _ in range(5_001 - len(padded["leaves"]))]
    (tmp_path / "large-digest.json").write_text(json.dumps(padded))
    large = plant("audit", "run", "--wait", "--against", tmp_path / "large-digest.json", "--json")
    assert large.exit_code == 0 and as_json(large)["result"]["non_compliant"] == 0, large.output
    assert "5,001 leaves, more than the API takes (5,000): handing back its root only" in large.stderr
    skills_only = plant("audit", "run", "--type", "skill", "--wait")
    assert skills_only.exit_code == 0 and "19 entities, 19 compliant" in skills_only.stdout

    report_file = tmp_path / "report.json"
    written = as_json(plant("report", "export", summary["run_id"], "--format", "json", "-o", report_file, "--json"))
    assert written["bytes"] == report_file.stat().st_size
    offline = as_json(plant("report", "verify", report_file, "--jwks", jwks_file, "--json"))
    assert offline["valid"] and offline["run_id"] == summary["run_id"] and offline["keys"].startswith("offline")
    online = plant("report", "verify", report_file)
    assert online.exit_code == 0 and "keys fetched from" in online.stdout
    report_file.write_bytes(report_file.read_bytes().replace(b'"compliant":', b'"compliant":1'))
    tampered = plant("report", "verify", report_file, "--jwks", jwks_file)
    assert tampered.exit_code == EXIT_NOT_VERIFIED and "report signature is NOT valid" in one_error_line(tampered)
    csv_file = tmp_path / "findings.csv"
    assert plant("report", "export", "latest", "--format", "csv", "-o", csv_file).exit_code == 0
    assert csv_file.read_text().startswith("finding_id,entity_type,entity_id")
    html_file = tmp_path / "report.html"
    assert plant("report", "export", summary["run_id"], "--format", "html", "-o", html_file).exit_code == 0
    assert "<html" in html_file.read_text().lower()


def test_an_export_cut_short_leaves_the_earlier_copy_whole(plant: Plant, seeded, tmp_path, monkeypatch) -> None:
    """A digest kept outside Plant, exported again to the same file when the disk fills up
    halfway: the earlier copy must survive, not be truncated into a file that then fails
    to verify and looks tampered with."""
    import builtins
    import os
    import errno
    import io

    digest_file = tmp_path / "digest.json"
    assert plant("digest", "export", "--leaves", "-o", digest_file).exit_code == 0
    kept = digest_file.read_bytes()

    class DiskFull(io.BufferedWriter):
        def write(self, data) -> int:
            super().write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open, real_io_open = builtins.open, io.open

    def in_tmp(file) -> bool:
        name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else str(file)
        return name.startswith(str(tmp_path))

    def opener(real):
        def open_(file, mode="r", *args, **kwargs):
            if mode == "wb" and in_tmp(file):
                return DiskFull(io.FileIO(file, "w"))
            return real(file, mode, *args, **kwargs)
        return open_

    monkeypatch.setattr(builtins, "open", opener(real_open))
    monkeypatch.setattr(io, "open", opener(real_io_open))
    cut_short = plant("digest", "export", "--leaves", "-o", digest_file)
    monkeypatch.undo()
    assert cut_short.exit_code == 1 and cut_short.stderr.startswith("plant: No space left on device")
    assert digest_file.read_bytes() == kept
    assert [p.name for p in tmp_path.iterdir()] == ["digest.json"]  # no temporary file left behind


def test_an_export_over_an_existing_file_keeps_its_mode_and_a_symlink_s_target(plant: Plant, seeded, tmp_path) -> None:
    import stat

    kept = tmp_path / "kept" / "digest.json"
    kept.parent.mkdir()
    kept.write_text("{}")
    kept.chmod(0o600)
    link = tmp_path / "digest-link.json"
    link.symlink_to(kept)
    assert plant("digest", "export", "-o", link).exit_code == 0
    assert link.is_symlink() and json.loads(kept.read_text())["entity_count"] > 0
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600


def test_a_page_token_handed_out_twice_ends_the_listing_with_an_error() -> None:
    """A page of nothing with the same token made `plant jobs list` loop for ever (helper-77)."""
    import httpx

    from cli.client import ApiError, ClientConfig, PlantClient

    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.params.get("page_token"))
        assert len(calls) <= 5, "still paging"
        return httpx.Response(200, json={"items": [], "next_page_token": "same"})

    client = PlantClient(ClientConfig("http://plant.invalid", "k", None), transport=httpx.MockTransport(handler))
    with pytest.raises(ApiError, match="same page token twice"):
        list(client.items("/jobs", limit=20))
    assert calls == [None, "same"]
