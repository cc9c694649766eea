"""The HTTP API as a client sees it: results that match what the request asked for and what
/openapi.json documents, on real data (review r161)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from models.entities import EntityType
from models.registry import create_entity
from models.settings import Settings
from web import create_app

API = "/api/v1"


def _client(settings: Settings, admin_key: str, **changes: Any) -> Any:
    client = create_app(settings.model_copy(update=changes)).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
    return client


def test_a_skill_search_returns_k_skills_when_the_planner_takes_the_hnsw_index(
        settings: Settings, admin_key: str, engine: Engine, write_ctx: Any, committed_steward: Any) -> None:
    """``k`` may be up to 100, but an HNSW index scan yields at most ``hnsw.ef_search`` (40)
    rows. The planner takes that index once the skills table is large (about 10,000 skills:
    a k of 41 to 100 then got 40); its connections here are told to prefer indexes, as it
    does at that size, so a test needs 60 skills rather than thousands."""
    with Session(engine) as session, session.begin():
        for n in range(60):
            create_entity(session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
                "name": f"Fraud Signal {n}", "category": "technical", "governance_agent_id": committed_steward,
                "description": f"detects fraud pattern number {n}"})
    exact = _client(settings, admin_key).get(f"{API}/genesis/skills/search", query_string={"q": "fraud", "k": 60})
    assert len(exact.get_json()["items"]) == 60
    indexed = _client(settings, admin_key, database_url=settings.database_url + "?options=-cenable_seqscan%3Doff")
    found = indexed.get(f"{API}/genesis/skills/search", query_string={"q": "fraud", "k": 60}).get_json()["items"]
    assert len(found) == 60
    assert {hit["skill"]["id"] for hit in found} == {hit["skill"]["id"] for hit in exact.get_json()["items"]}


def test_a_skill_whose_stored_vector_is_zero_leaves_the_search_answer_valid_json(client, seeded, engine: Engine) -> None:
    """pgvector's cosine distance to a zero vector is NaN, and the answer wrote it as
    ``"score": NaN``: no JSON number, so a strict client could read no result of the search.
    A vector is only zero when its row was edited through SQL."""
    with engine.begin() as connection:
        connection.execute(text("UPDATE skills SET embedding = array_fill(0, ARRAY[384])::vector "
                                "WHERE skill_key = 'copywriting'"))
    answer = client.get(f"{API}/genesis/skills/search", query_string={"q": "copywriting", "k": 100})
    assert answer.status_code == 200
    items = json.loads(answer.data, parse_constant=_refuse)["items"]
    assert items and all(math.isfinite(item["score"]) for item in items)
    assert "copywriting" not in {item["skill"]["skill_key"] for item in items}


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is no JSON number")


@pytest.mark.parametrize("path", ["/teams", "/genesis/job-roles"])
def test_teams_and_job_roles_filter_by_status_as_the_other_types_do(client, seeded, path: str) -> None:
    """Industries, skills and agents take ``?status=``; teams and job roles have a status too,
    but their lists took no such filter and ignored the parameter, as any unknown one: a
    client asking for the active teams was answered with the retired ones among them."""
    first = client.get(f"{API}{path}").get_json()["items"][0]
    retired = client.patch(f"{API}{path}/{first['id']}", json={"status": "retired"})
    assert retired.status_code == 200, retired.get_json()
    active = client.get(f"{API}{path}", query_string={"status": "active", "page_size": 500}).get_json()["items"]
    assert active and first["id"] not in {item["id"] for item in active}
    assert {item["status"] for item in active} == {"active"}
    only_retired = client.get(f"{API}{path}", query_string={"status": "retired"}).get_json()["items"]
    assert [item["id"] for item in only_retired] == [first["id"]]
    assert client.get(f"{API}{path}", query_string={"status": "bogus"}).status_code == 422


TYPE_FIELDS = {  # what each type's resource carries beside the governance sections every entity has
    "/genesis/industries": {"name", "code", "description"},
    "/genesis/skills": {"name", "skill_key", "description", "category", "industry_id", "certificate"},
    "/genesis/job-roles": {"name", "description", "required_skill_ids", "seniority", "industry_id"},
    "/teams": {"name", "description", "job_role_id", "industry_id", "capacity", "members", "free_seats"},
    "/agents": {"name", "description", "skill_ids", "job_role_id", "industry_id", "team_id"},
}


def _schema(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _answer_schema(document: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    return _schema(document, document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"])


@pytest.mark.parametrize("path", sorted(TYPE_FIELDS))
def test_each_entity_type_s_resource_is_documented_with_its_own_fields(client, seeded, path: str) -> None:
    """Every registry route documented its answers as the shared ``EntityOut``: the
    governance sections alone, with any other member allowed. A client generated from
    /openapi.json had no ``name``, no skill ``certificate``, no team ``members`` or
    ``free_seats``, and nothing checked what the API answered there."""
    document = client.get("/openapi.json").get_json()
    item = f"/api/v1{path}/{{entity_id}}"
    for schema in (_answer_schema(document, f"/api/v1{path}", "post", "201"), _answer_schema(document, item, "get", "200"),
                   _answer_schema(document, item, "patch", "200"),
                   _schema(document, _answer_schema(document, f"/api/v1{path}", "get", "200")["properties"]["items"]["items"])):
        assert TYPE_FIELDS[path] <= set(schema["required"]), (path, schema.get("title"))
        assert TYPE_FIELDS[path] <= set(schema["properties"])
    resource = client.get(f"{API}{path}").get_json()["items"][0]
    assert set(_answer_schema(document, item, "get", "200")["properties"]) == set(resource)
    if path == "/genesis/skills":
        hit = _answer_schema(document, "/api/v1/genesis/skills/search", "get", "200")["properties"]["items"]["items"]
        assert TYPE_FIELDS[path] <= set(_schema(document, _schema(document, hit)["properties"]["skill"])["required"])


def test_a_nul_in_the_findings_code_filter_is_422_naming_it_as_in_the_jobs_kind_filter(client, engine: Engine,
                                                                                        keyring: Any) -> None:
    """The jobs list names ``kind`` when it holds U+0000; the findings list answered the
    database's refusal instead, a 422 naming no field."""
    from tests.test_findings_paging import _running_run

    run_id = _running_run(engine, keyring)
    refused = client.get(f"{API}/audit/runs/{run_id}/findings", query_string={"code": "row\x00"})
    assert refused.status_code == 422
    assert [error["field"] for error in refused.get_json().get("errors", [])] == ["code"]


def test_a_created_api_key_answers_201_with_the_location_of_its_resource(client) -> None:
    """RFC 9110 §15.3.2: a 201 without ``Location`` says the target URI is what was created,
    here the list of every key. The key's own URL is the one its revocation takes, and
    /openapi.json names the header as it does for every other 201."""
    created = client.post(f"{API}/api-keys", json={"name": "located", "scopes": ["read"]})
    assert created.status_code == 201
    assert created.headers.get("Location") == f"{API}/api-keys/{created.get_json()['id']}"
    assert client.delete(created.headers["Location"]).status_code == 200
    document = client.get("/openapi.json").get_json()
    assert "Location" in document["paths"]["/api/v1/api-keys"]["post"]["responses"]["201"]["headers"]


@pytest.mark.parametrize("path, query", [
    ("/jobs", {"state": "failed"}),  # the filter is `status`
    ("/agents", {"skill_id": "00000000-0000-0000-0000-000000000001"}),  # agents filter by no skill
    ("/genesis/skills", {"industry": "00000000-0000-0000-0000-000000000001"}),  # it is `industry_id`
    ("/audit/runs", {"status": "failed"}),  # runs take no filter
])
def test_a_query_parameter_a_list_does_not_take_is_422_naming_it_not_a_filter_silently_dropped(
        client, path: str, query: dict[str, str]) -> None:
    """A misspelt or unsupported filter was ignored like any unknown parameter: the client
    got every row, as if they all matched. Bodies refuse an unknown member (422); so do the
    query strings now, naming it."""
    refused = client.get(f"{API}{path}", query_string=query)
    assert refused.status_code == 422, refused.get_data(as_text=True)[:300]
    assert [error["field"] for error in refused.get_json()["errors"]] == list(query)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_json_body_sent_as_another_media_type_is_422_naming_the_content_type(client, content_type) -> None:
    """The object below is a valid sleep request; sent as text/plain (curl's ``-d`` sends it
    as a form) it was refused as ``body: Input should be a valid dictionary or instance of
    SleepIn``, which names what the client did send, not what it did wrong."""
    headers = {"Content-Type": content_type} if content_type else {}
    refused = client.post(f"{API}/diagnostics/sleep", data='{"seconds": 0}', headers=headers)
    assert refused.status_code == 422
    assert refused.mimetype == "application/problem+json"
    assert [error["field"] for error in refused.get_json()["errors"]] == ["Content-Type"]
    assert "application/json" in refused.get_json()["errors"][0]["message"]


def test_a_form_body_on_an_operation_that_reads_none_is_still_ignored(client) -> None:
    """Only operations that read a body refuse one that is not JSON: a cancel sent with
    curl's ``-d ''`` form, or any stray form, still cancels."""
    started = client.post(f"{API}/diagnostics/sleep", json={"seconds": 5})
    cancelled = client.post(started.headers["Location"] + "/cancel", data="x=1",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    # Queued, it is cancelled at once; taken meanwhile by the suite's shared worker, it is asked to stop.
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] in ("cancelled", "running")
    assert cancelled.get_json()["cancelled_by"] is not None


def test_the_documented_problem_names_the_members_every_api_error_carries(client) -> None:
    """Every error the API answers has a ``type`` and its ``status`` (web/problems.py), and a
    422 lists its fields in ``errors`` or its broken rules in ``violations`` (README, Errors);
    the documented problem had ``type`` optional, ``status`` nullable and neither list, so a
    client generated from /openapi.json could read no bad field or rule."""
    document = client.get("/openapi.json").get_json()
    answer = document["paths"]["/api/v1/genesis/skills"]["post"]["responses"]["422"]
    problem = _schema(document, answer["content"]["application/problem+json"]["schema"])
    assert {"type", "title", "status"} <= set(problem["required"])
    assert problem["properties"]["status"].get("type") == "integer"
    error = _schema(document, _array(problem["properties"]["errors"])["items"])
    assert set(error["required"]) == {"field", "message"}
    violation = _schema(document, _array(problem["properties"]["violations"])["items"])
    assert {"rule", "description"} <= set(violation["required"]) and "field" in violation["properties"]


def _array(schema: dict[str, Any]) -> dict[str, Any]:
    return next(branch for branch in schema.get("anyOf", [schema]) if branch.get("type") == "array")
