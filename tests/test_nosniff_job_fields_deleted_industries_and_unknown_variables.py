"""Small items earlier reviews noticed and left: ``nosniff`` on every answer, the field a job's
``not-eligible`` / ``team-full`` names, a deleted industry's code on a certificate, a retried
certification job's gates, and ``PLANT_*`` variables no code reads."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, gunicorn_serving, wait_for
from tests.test_export_csv_cache_and_page_escapes import _closed_run
from tests.test_registry_api import _agent, gov, world  # noqa: F401  (fixtures)

API = "/api/v1"


def test_every_answer_forbids_content_sniffing(client, app, engine, keyring, seeded) -> None:
    """Only the report page said ``X-Content-Type-Options: nosniff``. A JSON answer or a CSV
    export echoes what clients wrote (names, a digest's ``kid``, a finding's detail); without
    it an old browser or a proxy's viewer may sniff one as HTML and run what it holds."""
    run_id = _closed_run(engine, keyring)
    answers: dict[str, Any] = {
        "json": client.get(f"{API}/jobs"),
        "json export": client.get(f"{API}/audit/export", query_string={"run_id": str(run_id)}),
        "csv export": client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": "csv"}),
        "report page": client.get(f"{API}/audit/runs/{run_id}/report.html"),
        "a 404 problem": client.get(f"{API}/jobs/{uuid.uuid4()}"),
        "an unknown route": client.get("/no/such/route"),
        "a 401": app.test_client().get(f"{API}/jobs"),
        "a 422": client.get(f"{API}/jobs", query_string={"page_size": "many"}),
        "openapi": client.get("/openapi.json"),
        "metrics": client.get("/metrics"),
    }
    assert {name: r.status_code for name, r in answers.items()} == {
        **{name: 200 for name in answers}, "a 404 problem": 404, "an unknown route": 404, "a 401": 401, "a 422": 422}
    assert {name: r.headers.get("X-Content-Type-Options") for name, r in answers.items()} == {
        name: "nosniff" for name in answers}


def test_gunicorn_s_own_refusals_forbid_content_sniffing_too() -> None:
    from web.gunicorn_worker import problem_bytes

    refusal = problem_bytes(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n", ValueError("too long"), "r1")
    head = refusal.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert b"X-Content-Type-Options: nosniff" in head, head


def _job_error(client, response) -> dict[str, Any]:
    from tests.test_e2e_work import finished

    job = finished(client, response)
    assert job["status"] == "failed", job
    return job["error"]


@pytest.mark.e2e
@pytest.mark.usefixtures("worker")
def test_a_team_assignment_job_s_refusal_names_its_field_as_the_api_s_does(client, world, gov) -> None:  # noqa: F811
    """The API's 422 ``not-eligible`` and 409 ``team-full`` name ``field: team_id``; the same
    refusals stored in an ``agent.assign_team`` job's ``error`` by a worker named none."""
    team_id = world["team"]["id"]
    unskilled = _agent(client, world, gov, "Unskilled", skill_ids=[world["skills"][0]["id"]], team_id=None)
    refused = client.patch(f"{API}/agents/{unskilled['id']}", json={"team_id": team_id})
    assert refused.status_code == 422, refused.get_json()
    stored = _job_error(client, client.post(f"{API}/agents/{unskilled['id']}/assign-team", json={"team_id": team_id}))
    answered = refused.get_json()
    assert stored["type"] == answered["type"] == "/problems/not-eligible"
    assert (stored.get("field"), stored["team_id"], stored["reasons"]) == (
        answered["field"], answered["team_id"], answered["reasons"]) == ("team_id", team_id, ["agent lacks 1 required skill(s)"])
    assert "status" not in stored

    _agent(client, world, gov, "Dispatch Two")
    _agent(client, world, gov, "Dispatch Three")  # the team's 3 seats are taken
    outsider = _agent(client, world, gov, "Outsider", team_id=None)
    refused = client.patch(f"{API}/agents/{outsider['id']}", json={"team_id": team_id})
    assert refused.status_code == 409, refused.get_json()
    stored = _job_error(client, client.post(f"{API}/agents/{outsider['id']}/assign-team", json={"team_id": team_id}))
    answered = refused.get_json()
    assert stored["type"] == answered["type"] == "/problems/team-full"
    assert (stored.get("field"), stored["team_id"]) == (answered["field"], answered["team_id"]) == ("team_id", team_id)


def test_a_skill_of_a_deleted_industry_is_not_certified_under_its_code(db_session, write_ctx, steward, monkeypatch) -> None:
    """A skill named its industry before the industry was deleted (by a release before the
    reference guards, which refuse that deletion now); certified after it, its new certificate was signed ``SKILL-<the deleted
    industry's code>-001``: a fresh, signed act vouching for the skill under an industry no
    listing shows, as a deleted skill's certificate or a deleted governor newly named would."""
    from models.certificates import IssuedCertificate
    from models.certification import certify_skill
    from models.entities import EntityType, Skill
    from models.errors import NotCertifiable
    from models.registry import update_entity
    from tests.test_certification import _industry, _skill
    from tests.test_deleted_references_and_word_gate import DELETED

    industry = _industry(db_session, write_ctx, steward, "DEL")
    skill = _skill(db_session, write_ctx, steward, "Orphaned Skill", industry=industry)
    from tests.test_seat_rules import as_an_older_release

    with as_an_older_release(monkeypatch):
        update_entity(db_session, entity_type=EntityType.INDUSTRY, entity_id=industry.id, changes=DELETED, ctx=write_ctx)
    with pytest.raises(NotCertifiable) as refused:
        certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx)
    problem = refused.value.problem()
    assert (problem["field"], problem["industry_id"], problem["industry_deleted"]) == ("industry_id", str(industry.id), True)
    assert "is deleted" in problem["detail"]
    db_session.expire_all()
    stored = db_session.get(Skill, skill.id)
    assert (stored.status, stored.certificate, stored.version) == ("draft", None, 1)
    assert db_session.query(IssuedCertificate).filter_by(skill_id=skill.id).count() == 0
    # Moved out of the deleted industry (a change of its own, signed), it is certified, as GEN.
    update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, changes={"industry_id": None}, ctx=write_ctx)
    assert certify_skill(db_session, skill_id=skill.id, notes=None, ctx=write_ctx).certificate["certificate_id"] == "SKILL-GEN-001"


def _certifier(write_ctx):
    import dataclasses

    return dataclasses.replace(write_ctx, actor=f"job:{uuid.uuid4()}")


def test_a_retried_certification_job_names_the_gates_its_rejection_failed_after_the_skill_moved_on(
        db_session, write_ctx, steward) -> None:
    """A retry of the job whose rejection is no longer the skill's head (changed since) said
    ``rejected`` with ``failed_gates: []``: a rejection that failed nothing. The gates are derived
    from the rejected version's signed content, as they are from the head when it is that version."""
    from models.certification import certify_skill
    from models.entities import EntityType
    from models.registry import update_entity
    from tests.test_certification import GOOD, _certified, _skill

    short = _skill(db_session, write_ctx, steward, "Short Retried", description="Too short")
    original = _certified(db_session, write_ctx, steward, "Fraud Screening", description=GOOD)
    copy = _skill(db_session, write_ctx, steward, "Fraud Screening Copy", description=GOOD)
    jobs = {short.id: _certifier(write_ctx), copy.id: _certifier(write_ctx)}
    first = {skill_id: certify_skill(db_session, skill_id=skill_id, notes=None, ctx=ctx) for skill_id, ctx in jobs.items()}
    assert [g["gate"] for g in first[short.id].failed_gates] == ["description-length"]
    assert [g["gate"] for g in first[copy.id].failed_gates] == ["near-duplicate"]
    for skill_id, text in ((short.id, "Still short now"), (copy.id, GOOD + " and more")):
        update_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill_id, changes={"description": text}, ctx=write_ctx)
    for skill_id, ctx in jobs.items():
        again = certify_skill(db_session, skill_id=skill_id, notes=None, ctx=ctx)
        assert (again.status, again.version, again.certificate) == ("rejected", 2, None)
        assert again.failed_gates == first[skill_id].failed_gates, again
        assert again.blocking_duplicate == first[skill_id].blocking_duplicate
    assert first[copy.id].blocking_duplicate["id"] == str(original.id)


def test_a_retried_certification_job_does_not_report_a_rejection_that_failed_nothing(db_session, write_ctx, steward) -> None:
    """The gates judged again on the rejected content may all pass now (its blocking duplicate
    retired since): the retry said ``rejected`` with no failed gate; it says the rejection stands
    and that the gate that failed then cannot be told today."""
    from models.certification import certify_skill
    from tests.test_certification import GOOD, _certified, _retire, _skill

    original = _certified(db_session, write_ctx, steward, "Claims Triage", description=GOOD)
    copy = _skill(db_session, write_ctx, steward, "Claims Triage Copy", description=GOOD)
    ctx = _certifier(write_ctx)
    assert [g["gate"] for g in certify_skill(db_session, skill_id=copy.id, notes=None, ctx=ctx).failed_gates] == ["near-duplicate"]
    _retire(db_session, write_ctx, original.id)
    again = certify_skill(db_session, skill_id=copy.id, notes=None, ctx=ctx)
    assert (again.status, again.version) == ("rejected", 2)
    assert [g["gate"] for g in again.failed_gates] == ["recorded-rejection"], again
    assert "version 2" in again.failed_gates[0]["detail"]


# PLANT_ names in the repository that are Python names, not environment variables.
NOT_VARIABLES = {"PLANT_SCHEMA_CTE", "PLANT_SCHEMA_SQL", "PLANT_KEY_LENGTH", "PLANT_HEADERS", "PLANT_SERVICES"}
PLANT_NAME = re.compile(r"\bPLANT_[A-Z0-9_]+")


def _repository_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [REPO_ROOT / name for name in listed if (REPO_ROOT / name).is_file()]


def test_every_plant_variable_the_repository_spells_is_one_plant_knows() -> None:
    """The allowlist a warning about unknown PLANT_* variables needs: every PLANT_ name spelt
    in the code, the deployment files and the docs is a Settings field's, one of
    ``OTHER_PLANT_VARIABLES`` (read elsewhere) or a Python name; no name is built at run time
    but by Settings' own prefix; and the list names nothing the repository no longer reads."""
    from models.settings import OTHER_PLANT_VARIABLES, settings_variables

    spelt: dict[str, set[str]] = {}
    built = []
    for path in _repository_files():
        if path == Path(__file__).resolve():  # its misspellings are on purpose
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for name in PLANT_NAME.findall(text):
            spelt.setdefault(name, set()).add(str(path.relative_to(REPO_ROOT)))
        if not path.is_relative_to(REPO_ROOT / "tests"):  # tests spell Settings' names from its fields
            built += [f"{path.relative_to(REPO_ROOT)}: {m}" for m in re.findall(r"""["']PLANT_["'{]""", text)]
    known = settings_variables() | set(OTHER_PLANT_VARIABLES) | NOT_VARIABLES
    assert {name: sorted(where) for name, where in spelt.items() if name not in known} == {}
    assert {entry.split(":")[0] for entry in built} == {"models/settings.py"}, built  # env_prefix, settings_variables
    # Listed as read elsewhere: each is spelt in a file other than the list itself (and the docs).
    elsewhere = {name for name, where in spelt.items() if where - {"models/settings.py", "README.md"}}
    assert set(OTHER_PLANT_VARIABLES) - elsewhere == set()
    assert {"PLANT_PORT", "PLANT_DATABASE_URL", "PLANT_REDIS_URL"} <= settings_variables()
    # Settings populates by name too, so the prefixed field name is read beside the library's own
    # PROMETHEUS_MULTIPROC_DIR: it was called unknown ("misspelt?") while it set the directory.
    assert "PLANT_PROMETHEUS_MULTIPROC_DIR" in settings_variables()


def test_the_api_names_each_unknown_plant_variable_once_at_start_and_not_its_value(settings, monkeypatch, caplog) -> None:
    """``extra="ignore"``: a misspelt PLANT_* variable was ignored without a word."""
    from web import create_app

    monkeypatch.setenv("PLANT_JOB_SOFT_TIME_LIMT", "sekrit-value")
    monkeypatch.setenv("plant_no_such_thing", "1")
    monkeypatch.setenv("PLANT_URL", "http://127.0.0.1:1")  # the CLI's: known
    monkeypatch.setenv("PLANT_JOB_SOFT_TIME_LIMIT", "30")  # a field's
    caplog.set_level(logging.WARNING, logger="models.settings")
    create_app(settings)
    warned = [r.getMessage() for r in caplog.records if r.name == "models.settings"]
    assert len(warned) == 1, warned
    assert warned[0].endswith(": PLANT_JOB_SOFT_TIME_LIMT, plant_no_such_thing"), warned
    assert "sekrit" not in warned[0]


@pytest.mark.e2e
def test_a_worker_names_each_unknown_plant_variable_once_at_start(settings, tmp_path) -> None:
    from tasks.celery_app import create_celery
    from tests.conftest import child_env, stop_process_group, wait_for

    log_path = tmp_path / "worker.log"
    name = f"noticed-{uuid.uuid4().hex[:8]}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", name, "-c", "1", "-n", f"{name}@%h",
             "--without-mingle", "--without-gossip"],
            cwd=REPO_ROOT, env=child_env(settings, PLANT_AUDIT_BATCH_SIZ="3", PLANT_LOG_FORMAT="json"),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    probe = create_celery(settings)
    try:
        wait_for(lambda: process.poll() is not None or probe.control.ping(destination=[f"{name}@{socket.gethostname()}"],
                                                                          timeout=0.5), timeout=60, what="the worker")
        assert process.poll() is None, log_path.read_text()[-3000:]
    finally:
        stop_process_group(process)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    warned = [line for line in lines if line.get("logger") == "models.settings"]
    assert [(line["level"], line["unknown_variables"]) for line in warned] == [("WARNING", ["PLANT_AUDIT_BATCH_SIZ"])], warned


@pytest.mark.e2e
def test_gunicorn_names_each_unknown_plant_variable_once_not_once_per_worker(settings, tmp_path) -> None:
    """The master warns before it forks (gunicorn.conf.py ``on_starting``); each worker's
    ``create_app`` warned again, so a server of N workers logged N identical warnings."""
    log_path = tmp_path / "gunicorn.log"

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]

    def every_worker_loaded_the_app() -> bool:
        return len({line["process"] for line in lines() if line["message"].startswith("Worker loaded the app")}) == 2

    with gunicorn_serving(settings, log_path, processes=2, threads=1, metrics_dir=None, PLANT_NO_SUCH_VARIABLE="1"):
        wait_for(every_worker_loaded_the_app, timeout=30, what="both workers to load the app")
    master = {line["process"] for line in lines() if line["message"].startswith("Starting gunicorn")}
    warned = [line for line in lines() if line["logger"] == "models.settings"]
    assert [(line["process"] in master, line["unknown_variables"]) for line in warned] == [
        (True, ["PLANT_NO_SUCH_VARIABLE"])], warned
    assert [line for line in lines() if line["logger"].startswith("alembic")] == []  # its plugins' set-up, per worker
