"""Review: ``Idempotency-Key`` on registry creates, and its refusal where it is not honoured.

A registry create (industries, skills, job roles, teams, agents) ignored the header: a
client retrying a create after a lost answer, with the key it would send for a job, made a
second entity. Creates now honour it as job submissions do; every other operation that
changes something refuses it (422 naming the header) rather than ignoring it. Against the
real database, committed and cleaned.
"""

import json
import threading
import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models.api_keys import ApiKey
from models.entities import ENTITY_MODELS, EntityType

API = "/api/v1"
PATHS = {EntityType.INDUSTRY: "/genesis/industries", EntityType.SKILL: "/genesis/skills",
         EntityType.JOB_ROLE: "/genesis/job-roles", EntityType.TEAM: "/teams", EntityType.AGENT: "/agents"}


@pytest.fixture
def gov(committed_steward) -> dict:
    return {"governance_agent_id": str(committed_steward)}


@pytest.fixture
def bodies(client, gov) -> dict:
    """A create's body for each type, naming an industry, a skill and a role made without keys."""
    def made(path: str, body: dict) -> str:
        response = client.post(API + path, json={**gov, **body})
        assert response.status_code == 201, response.get_json()
        return response.get_json()["id"]

    industry = made("/genesis/industries", {"name": "Base Industry", "code": "BAS", "description": "d"})
    skill = made("/genesis/skills", {"name": "Base Skill", "category": "technical", "description": "d",
                                     "industry_id": industry})
    role = made("/genesis/job-roles", {"name": "Base Role", "seniority": "mid", "industry_id": industry,
                                       "required_skill_ids": [skill]})
    placed = {"industry_id": industry, **gov}
    return {
        EntityType.INDUSTRY: {**gov, "name": "Idem Industry", "code": "IDM", "description": "d"},
        EntityType.SKILL: {**placed, "name": "Idem Skill", "category": "technical", "description": "d"},
        EntityType.JOB_ROLE: {**placed, "name": "Idem Role", "seniority": "mid", "required_skill_ids": [skill]},
        EntityType.TEAM: {**placed, "name": "Idem Team", "capacity": 2, "job_role_id": role},
        EntityType.AGENT: {**placed, "name": "Idem Agent", "job_role_id": role, "skill_ids": [skill]},
    }


def _create(client, entity_type, body, key):
    return client.post(API + PATHS[entity_type], json=body, headers={"Idempotency-Key": key})


def _count(engine, entity_type, name) -> int:
    model = ENTITY_MODELS[entity_type]
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(model).where(model.name == name))


@pytest.mark.parametrize("entity_type", list(PATHS), ids=lambda t: t.value)
def test_a_create_retried_with_its_key_returns_the_entity_it_made(client, engine, bodies, entity_type) -> None:
    """Was: the retry made a second entity (or a 409 duplicate name, for a type whose names are unique)."""
    path, body = PATHS[entity_type], bodies[entity_type]
    first = _create(client, entity_type, body, "create-once")
    # The same body, its members in another order and spaced otherwise: the same request.
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
    second = client.post(API + path, data=reordered, content_type="application/json",
                         headers={"Idempotency-Key": "create-once"})
    assert first.status_code == second.status_code == 201, (first.get_json(), second.get_json())
    assert second.get_json() == first.get_json()
    assert second.headers["Location"] == first.headers["Location"] == f"{API}{path}/{first.get_json()['id']}"
    assert second.headers["ETag"] == first.headers["ETag"]
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert _count(engine, entity_type, body["name"]) == 1


def test_the_same_key_with_another_body_is_422_and_makes_nothing(client, engine, bodies) -> None:
    body = bodies[EntityType.SKILL]
    assert _create(client, EntityType.SKILL, body, "k-body").status_code == 201
    response = _create(client, EntityType.SKILL, {**body, "name": "Another Skill"}, "k-body")
    assert response.status_code == 422 and response.get_json()["type"] == "/problems/idempotency-key-reused"
    assert [e["field"] for e in response.get_json()["errors"]] == ["Idempotency-Key"]
    assert _count(engine, EntityType.SKILL, "Another Skill") == 0


def test_the_same_body_to_another_entity_type_is_another_request(client, gov) -> None:
    """The fingerprint names the entity type: a key used for a skill is no industry's."""
    body = {**gov, "name": "Shared", "description": "d"}
    assert _create(client, EntityType.SKILL, {**body, "category": "technical"}, "k-type").status_code == 201
    response = _create(client, EntityType.INDUSTRY, {**body, "code": "SHR"}, "k-type")
    assert response.status_code == 422 and response.get_json()["type"] == "/problems/idempotency-key-reused"


def test_a_key_that_started_a_job_is_refused_for_a_create(client, bodies) -> None:
    """Keys are one namespace per API key: the key of a job is not a create's to reuse."""
    assert client.post(f"{API}/diagnostics/sleep", json={"seconds": 0, "steps": 1},
                       headers={"Idempotency-Key": "k-job"}).status_code == 202
    response = _create(client, EntityType.INDUSTRY, bodies[EntityType.INDUSTRY], "k-job")
    assert response.status_code == 422 and response.get_json()["type"] == "/problems/idempotency-key-reused"
    sleep = client.post(f"{API}/diagnostics/sleep", json={"seconds": 0, "steps": 1}, headers={"Idempotency-Key": "k-job"})
    assert sleep.status_code == 202 and sleep.headers["Idempotent-Replayed"] == "true"


def test_keys_are_per_api_key(app, client, engine, bodies) -> None:
    """Another API key's same key is its own: not a replay of the first's entity (a 409 on the
    name, which the first's create took)."""
    other = client.post(f"{API}/api-keys", json={"name": "other", "scopes": ["write"]}).get_json()["key"]
    other_client = app.test_client()
    other_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {other}"
    body = bodies[EntityType.INDUSTRY]
    assert _create(client, EntityType.INDUSTRY, body, "k-shared").status_code == 201
    response = _create(other_client, EntityType.INDUSTRY, body, "k-shared")
    assert response.status_code == 409 and "Idempotent-Replayed" not in response.headers
    assert _count(engine, EntityType.INDUSTRY, body["name"]) == 1


def test_a_refused_create_does_not_use_up_its_key(client, engine, bodies) -> None:
    """The key's row commits with the entity or not at all: a create refused (a duplicate
    name) is refused again when retried, never replayed, and the key is still free."""
    body = bodies[EntityType.INDUSTRY]
    assert client.post(f"{API}/genesis/industries", json=body).status_code == 201
    for _ in range(2):
        response = _create(client, EntityType.INDUSTRY, body, "k-refused")
        assert response.status_code == 409 and "Idempotent-Replayed" not in response.headers
    renamed = _create(client, EntityType.INDUSTRY, {**body, "name": "Renamed", "code": "RNM"}, "k-refused")
    assert renamed.status_code == 201 and "Idempotent-Replayed" not in renamed.headers


def test_a_replay_shows_the_entity_as_it_is_now(client, bodies) -> None:
    body = bodies[EntityType.SKILL]
    created = _create(client, EntityType.SKILL, body, "k-now").get_json()
    patched = client.patch(f"{API}/genesis/skills/{created['id']}", json={"description": "changed since"})
    assert patched.status_code == 200
    replay = _create(client, EntityType.SKILL, body, "k-now")
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == patched.get_json() and replay.headers["ETag"] == '"2"'


def test_an_expired_key_is_free_again(client, engine, bodies) -> None:
    """An expired key's row is replaced: the key takes another body, and makes another entity
    (its id is derived from the new row, not the old)."""
    body = bodies[EntityType.TEAM]
    first = _create(client, EntityType.TEAM, body, "k-exp").get_json()["id"]
    with Session(engine) as session, session.begin():
        session.execute(text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"))
    second = _create(client, EntityType.TEAM, {**body, "name": "Idem Team Two"}, "k-exp")
    assert second.status_code == 201 and "Idempotent-Replayed" not in second.headers
    assert second.get_json()["id"] != first


def test_concurrent_duplicate_creates_make_exactly_one_entity(app, admin_key, engine, bodies) -> None:
    """Twenty creates with one key at once: one entity, and every answer is it."""
    body = bodies[EntityType.SKILL]
    barrier, answers = threading.Barrier(20), []

    def create() -> None:
        c = app.test_client()
        c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
        barrier.wait()
        response = _create(c, EntityType.SKILL, body, "burst")
        answers.append((response.status_code, response.get_json().get("id"), response.headers.get("Idempotent-Replayed")))

    threads = [threading.Thread(target=create) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 20 and {status for status, *_ in answers} == {201}, answers
    assert len({entity_id for _, entity_id, _ in answers}) == 1
    assert sorted(str(replayed) for *_, replayed in answers) == ["None"] + ["true"] * 19
    assert _count(engine, EntityType.SKILL, body["name"]) == 1


# Every operation that changes something and does not honour the key refuses it.

def _refused(response) -> None:
    assert response.status_code == 422, response.get_json()
    problem = response.get_json()
    assert response.mimetype == "application/problem+json" and problem["type"] == "/problems/invalid-input"
    assert [e["field"] for e in problem["errors"]] == ["Idempotency-Key"] and "Idempotency-Key" in problem["detail"]


def test_an_api_key_create_refuses_the_header_and_makes_no_key(client, engine) -> None:
    """Its plaintext is shown once, so no retry could be answered with it: was a second key."""
    _refused(client.post(f"{API}/api-keys", json={"name": "retried", "scopes": ["read"]},
                         headers={"Idempotency-Key": "k-api"}))
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.name == "retried")) == 0


def test_a_patch_refuses_the_header_and_changes_nothing(client, gov) -> None:
    agent = f"{API}/agents/{gov['governance_agent_id']}"
    before = client.get(agent).get_json()
    _refused(client.patch(agent, json={"description": "not applied"}, headers={"Idempotency-Key": "k-patch"}))
    assert client.get(agent).get_json() == before


def test_a_cancel_refuses_the_header_and_cancels_nothing(client) -> None:
    job = client.post(f"{API}/diagnostics/sleep", json={"seconds": 0, "steps": 1}).get_json()
    _refused(client.post(f"{API}/jobs/{job['id']}/cancel", headers={"Idempotency-Key": "k-cancel"}))
    assert client.get(f"{API}/jobs/{job['id']}").get_json()["cancelled_by"] is None


def test_a_revoke_refuses_the_header_and_revokes_nothing(client) -> None:
    created = client.post(f"{API}/api-keys", json={"name": "kept", "scopes": ["read"]}).get_json()
    _refused(client.delete(f"{API}/api-keys/{created['id']}", headers={"Idempotency-Key": "k-revoke"}))
    kept = [k for k in client.get(f"{API}/api-keys").get_json()["items"] if k["id"] == created["id"]]
    assert kept[0]["revoked_at"] is None


def test_the_openapi_document_says_where_the_header_is_refused(client) -> None:
    description = client.get("/openapi.json").get_json()["info"]["description"]
    assert "Idempotency-Key" in description and "refuses it" in description


def test_the_refusal_comes_after_authentication_and_reads_ignore_the_header(app, client, gov) -> None:
    agent = f"{API}/agents/{gov['governance_agent_id']}"
    assert app.test_client().patch(agent, json={"description": "x"}, headers={"Idempotency-Key": "k"}).status_code == 401
    assert client.get(agent, headers={"Idempotency-Key": "k"}).status_code == 200
    assert client.post(f"{API}/no-such-route", headers={"Idempotency-Key": "k"}).status_code == 404
    assert client.get(f"{API}/jobs/{uuid.uuid4()}", headers={"Idempotency-Key": "k"}).status_code == 404
