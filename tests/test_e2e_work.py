"""End to end with a real worker: certify, assign (single, auto, bulk), audit and cancel.

Drives the HTTP API; every wait polls the job until it reaches a state, with a deadline.
"""

import csv
import io
import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.entities import Agent, EntityType, Skill, Team
from models.errors import JwsError
from models.registry import create_entity
from models.reports import verify_report
from tests.conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]
API = "/api/v1"


def finished(client, response) -> dict:
    assert response.status_code == 202, response.get_json()
    url = response.headers["Location"]
    return wait_for(lambda: (j := client.get(url, query_string={"wait": 5}).get_json())["status"]
                    in ("succeeded", "failed", "cancelled") and j, timeout=60, what=f"job {url}")


def first(client, path, **query) -> dict:
    return client.get(API + path, query_string={"page_size": 100, **query}).get_json()["items"]


def test_certify_through_the_api(client, seeded) -> None:
    skill = next(s for s in first(client, "/genesis/skills") if s["skill_key"] == "aml-screening")
    job = finished(client, client.post(f"{API}/genesis/skills/{skill['id']}/certify", json={"notes": "QA ok"}))
    assert job["status"] == "succeeded", job
    assert job["result"]["status"] == "certified"
    assert job["result"]["certificate"]["certificate_id"] == "SKILL-FIN-001"
    shown = client.get(f"{API}/genesis/skills/{skill['id']}").get_json()
    assert shown["status"] == "certified" and shown["certificate"] == job["result"]["certificate"]
    history = client.get(f"{API}/genesis/skills/{skill['id']}/history").get_json()["items"]
    assert history[-1]["actor"] == f"job:{job['id']}"
    assert client.patch(f"{API}/genesis/skills/{skill['id']}", json={"description": "x"}).status_code == 409
    again = finished(client, client.post(f"{API}/genesis/skills/{skill['id']}/certify", json={}))
    assert again["status"] == "failed" and again["error"]["type"] == "/problems/already-certified"


def test_a_job_records_the_key_that_asked_for_it_and_its_versions_name_the_job(app, client, seeded, engine) -> None:
    """Chain versions a job writes carry actor ``job:<id>``; the job says which key asked
    for it (``requested_by``), with and without ``Idempotency-Key``, in its resource, in
    listings and in its row."""
    from models.jobs import Job

    key = client.post(f"{API}/api-keys", json={"name": "certifier", "scopes": ["write"]}).get_json()
    writer = app.test_client()
    writer.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key['key']}"
    by_key = {s["skill_key"]: s for s in first(client, "/genesis/skills")}
    skills = [by_key["aml-screening"], by_key["regulatory-reporting"]]
    job = finished(writer, writer.post(f"{API}/genesis/skills/{skills[0]['id']}/certify", json={}))
    keyed = finished(writer, writer.post(f"{API}/genesis/skills/{skills[1]['id']}/certify", json={},
                                         headers={"Idempotency-Key": "certify-with-a-key"}))
    asker = f"api-key:{key['id']}"
    for done, skill in ((job, skills[0]), (keyed, skills[1])):
        assert done["status"] == "succeeded" and done["requested_by"] == asker, done
        assert client.get(f"{API}/jobs/{done['id']}").get_json()["requested_by"] == asker  # whoever reads it
        history = client.get(f"{API}/genesis/skills/{skill['id']}/history").get_json()["items"]
        assert history[-1]["actor"] == f"job:{done['id']}"
    listed = {j["id"]: j["requested_by"] for j in first(client, "/jobs", kind="skill.certify")}
    assert listed == {job["id"]: asker, keyed["id"]: asker}
    with Session(engine) as session:
        rows = session.execute(select(Job.id, Job.requested_by).where(Job.kind == "skill.certify")).all()
    assert {(str(i), by) for i, by in rows} == {(job["id"], asker), (keyed["id"], asker)}


def test_bulk_assignment_of_unknown_agents_is_404_naming_them(client, seeded) -> None:
    known, unknown = str(seeded.steward_id), str(uuid.uuid4())  # the steward is an agent
    response = client.post(f"{API}/agents/assign-teams", json={"agent_ids": [known, unknown, unknown]})
    assert response.status_code == 404 and response.mimetype == "application/problem+json"
    assert response.get_json()["ids"] == [unknown]


def test_certify_unknown_skill_is_404(client, seeded) -> None:
    assert client.post(f"{API}/genesis/skills/{uuid.uuid4()}/certify", json={}).status_code == 404


def test_assign_single_auto_and_bulk(client, seeded) -> None:
    agents = first(client, "/agents")
    teams = {t["name"]: t for t in first(client, "/teams")}
    seo = next(a for a in agents if "SEO Specialist" in a["name"])
    explicit = finished(client, client.post(f"{API}/agents/{seo['id']}/assign-team", json={"team_id": teams["Growth Squad"]["id"]}))
    assert explicit["status"] == "succeeded" and explicit["result"]["team_id"] == teams["Growth Squad"]["id"]

    coder = next(a for a in agents if "Clinical Coder" in a["name"])
    auto = finished(client, client.post(f"{API}/agents/{coder['id']}/assign-team", json={}))
    assert auto["result"]["team_id"] == teams["Clinical Coding Unit"]["id"]
    assert auto["result"]["candidates"][0]["team_id"] == teams["Clinical Coding Unit"]["id"]
    assert any("job role" in r for e in auto["result"]["excluded"] for r in e["reasons"])

    wrong = finished(client, client.post(f"{API}/agents/{coder['id']}/assign-team", json={"team_id": teams["Risk Desk"]["id"]}))
    assert wrong["status"] == "failed" and wrong["error"]["type"] == "/problems/not-eligible"

    bulk = finished(client, client.post(f"{API}/agents/assign-teams", json={"all_unassigned": True}))
    assert bulk["status"] == "succeeded"
    result = bulk["result"]
    assert result["placed"] + result["not_placed"] == result["requested"]
    assert result["placed"] > 0 and all(u["reason"] for u in result["unplaced"])
    assert all(team["free_seats"] >= 0 for team in first(client, "/teams"))
    assert client.post(f"{API}/agents/assign-teams", json={}).status_code == 422


def test_audit_run_findings_export_and_tampering(client, seeded, keyring, engine) -> None:
    digest = client.get(f"{API}/ledger/digest", query_string={"leaves": "true"}).get_json()
    assert digest["entity_count"] >= 90 and len(digest["leaves"]) == digest["entity_count"]
    with Session(engine) as session, session.begin():
        skill_id = session.scalar(select(Skill.id).where(Skill.skill_key == "copywriting"))
        session.execute(Skill.__table__.update().where(Skill.id == skill_id).values(description="forged"))

    job = finished(client, client.post(f"{API}/audit/run", json={"verify_signatures": "all", "against_digest": digest}))
    assert job["status"] == "succeeded", job
    summary = job["result"]
    assert summary["total_entities"] == digest["entity_count"]
    assert summary["non_compliant"] == 1 and summary["by_code"]["row-content-mismatch"] == 1
    assert summary["by_rule"]["TEAM-01"] == 6  # every seeded team is still empty: a warning only
    assert job["progress"]["done"] == job["progress"]["total"] == summary["total_entities"]

    run = client.get(f"{API}/audit/runs").get_json()["items"][0]
    assert run["job_id"] == job["id"] and run["chunks_total"] >= 2 and run["chunks_done"] == run["chunks_total"]
    page = client.get(f"{API}/audit/runs/{run['id']}/findings", query_string={"page_size": 4}).get_json()
    rest = client.get(f"{API}/audit/runs/{run['id']}/findings", query_string={"page_token": page["next_page_token"]}).get_json()
    assert len(page["items"]) + len(rest["items"]) == summary["findings"]

    exported = client.get(f"{API}/audit/export", query_string={"run_id": run["id"], "format": "json"})
    jwks = client.get(f"{API}/signing-keys").get_json()
    assert verify_report(exported.data, jwks).kid == keyring.active.kid
    tampered = exported.data.replace(b'"non_compliant":1', b'"non_compliant":0')
    assert tampered != exported.data
    with pytest.raises(JwsError):
        verify_report(tampered, jwks)
    rows = list(csv.DictReader(io.StringIO(client.get(f"{API}/audit/export", query_string={"run_id": run["id"], "format": "csv"}).get_data(as_text=True))))
    assert len(rows) == summary["findings"]

    check = client.get(f"{API}/audit/tampering/{skill_id}").get_json()
    assert check["tampered"] and "row-content-mismatch" in {f["code"] for f in check["findings"]}


def test_a_running_audit_can_be_cancelled(client, seeded, engine, write_ctx) -> None:
    with Session(engine) as session, session.begin():
        for n in range(400):
            create_entity(session, entity_type=EntityType.INDUSTRY, ctx=write_ctx,
                          data={"name": f"Bulk industry {n}", "code": f"B{n:04d}", "governance_agent_id": seeded.steward_id})
    response = client.post(f"{API}/audit/run", json={})
    url = response.headers["Location"]
    wait_for(lambda: (j := client.get(url).get_json())["status"] == "running" and j["progress"]["done"] > 0, what="audit running")
    assert client.post(url + "/cancel").status_code == 200
    job = wait_for(lambda: (j := client.get(url).get_json())["status"] != "running" and j, what="audit to stop")
    assert job["status"] == "cancelled"
    assert job["progress"]["done"] < job["progress"]["total"]
    # The chunk that sees the cancel ends the job, then closes the run, in a transaction of its
    # own when a sibling's batch holds the run (waiting on it there would deadlock): a poll
    # may see the job cancelled a moment before its run.
    run = wait_for(lambda: (r := client.get(f"{API}/audit/runs").get_json()["items"][0])["status"] != "running" and r,
                   timeout=30, what="the run to close")
    assert run["status"] == "cancelled"


def test_capacity_holds_after_bulk(client, seeded, engine) -> None:
    finished(client, client.post(f"{API}/agents/assign-teams", json={"all_unassigned": True}))
    with Session(engine) as session:
        over = session.execute(
            select(Team.name).join(Agent, Agent.team_id == Team.id).group_by(Team.id, Team.name, Team.capacity)
            .having(func.count() > Team.capacity)
        ).all()
        assert over == []


def test_two_beats_firing_the_same_tick_start_one_audit(client, seeded, settings) -> None:
    from tasks.celery_app import create_celery

    celery = create_celery(settings)
    for _ in range(2):  # what two beat processes send for the same tick
        celery.send_task("plant.schedule.fire", args=["test-audit", "audit.run", {}, 3600.0], queue="default")
    wait_for(lambda: client.get(f"{API}/jobs", query_string={"kind": "audit.run"}).get_json()["items"], what="the audit job")
    marker = client.post(f"{API}/diagnostics/sleep", json={"seconds": 0})
    finished(client, marker)  # both fire messages were consumed before this one
    audits = client.get(f"{API}/jobs", query_string={"kind": "audit.run"}).get_json()["items"]
    assert len(audits) == 1
    finished(client, _Location(audits[0]["id"]))  # let it end before the tables are cleaned


class _Location:
    """A stand-in 202 response for ``finished`` when only the job id is known."""

    status_code = 202

    def __init__(self, job_id: str) -> None:
        self.headers = {"Location": f"{API}/jobs/{job_id}"}

    def get_json(self) -> dict:
        return {}
