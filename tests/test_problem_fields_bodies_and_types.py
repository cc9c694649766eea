"""Every refusal of the HTTP API is the RFC 9457 problem README's "Errors" section promises:
``application/problem+json``, a ``type`` (``/problems/…`` for Plant's own, ``about:blank`` for
werkzeug's), a ``title``, a ``status`` member equal to the HTTP status, a ``detail``, a 422's bad
fields in ``errors`` (or its broken rules in ``violations``), and a body that validates against
what /openapi.json declares for that operation and status (review: problems)."""

import datetime as dt
import uuid
from typing import Any

import jsonschema
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

API = "/api/v1"
PROBLEM = "application/problem+json"
METHODS = ("get", "post", "patch", "put", "delete")


@pytest.fixture(scope="module")
def document(app) -> dict[str, Any]:
    return app.test_client().get("/openapi.json").get_json()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, operations[method]) for path, operations in sorted(document["paths"].items())
            for method in METHODS if method in operations]


def _url(path: str) -> str:
    """The operation's path with every parameter an id no row has."""
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = path[:start] + str(uuid.uuid4()) + path[end + 1:]
    return path


def _validates(document: dict[str, Any], schema: dict[str, Any], body: Any) -> None:
    jsonschema.validate(body, {**schema, "components": document.get("components", {})})


def _api_problem_schema(document: dict[str, Any]) -> dict[str, Any]:
    return document["paths"]["/api/v1/jobs"]["get"]["responses"]["422"]["content"][PROBLEM]["schema"]


def assert_problem(document: dict[str, Any], response, status: int, type_: str | None = None,
                   operation: tuple[str, str] | None = None) -> dict[str, Any]:
    """``response`` is the documented problem for ``status`` (of ``operation``, when it has one)."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM, response.headers
    problem = response.get_json()
    assert problem["status"] == status
    assert isinstance(problem["title"], str) and problem["title"]
    assert isinstance(problem["detail"], str) and problem["detail"]
    assert problem["type"] == "about:blank" or problem["type"].startswith("/problems/")
    if type_ is not None:
        assert problem["type"] == type_
    schema = _api_problem_schema(document)
    if operation is not None:
        path, method = operation
        declared = document["paths"][path][method]["responses"]
        assert str(status) in declared, f"{method.upper()} {path} answers {status}, which it does not document"
        schema = declared[str(status)]["content"][PROBLEM]["schema"]
        for header in declared[str(status)].get("headers", {}):
            if header not in ("X-Request-ID", "Retry-After"):  # Retry-After: absent for seal-list-invalid
                assert header in response.headers, header
    _validates(document, schema, problem)
    if status == 422:
        assert problem.get("errors") or problem.get("violations"), problem
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return problem


def _fields(problem: dict[str, Any]) -> list[str]:
    return [entry["field"] for entry in problem["errors"]]


def _key(client, *scopes: str) -> dict[str, Any]:
    created = client.post(f"{API}/api-keys", json={"name": f"review {'+'.join(scopes)}", "scopes": list(scopes)})
    assert created.status_code == 201
    return created.get_json()


# --- the inconsistencies named in the brief -------------------------------------------------


def test_a_not_eligible_seat_is_a_422_listing_its_field_in_errors(client, seeded, document) -> None:
    """``not-eligible`` (a team the agent does not qualify for) carried ``field`` and
    ``reasons`` but no ``errors``, while every other 422 lists its bad fields there."""
    agents = client.get(f"{API}/agents", query_string={"page_size": 500}).get_json()["items"]
    teams = client.get(f"{API}/teams", query_string={"page_size": 500}).get_json()["items"]
    agent = agents[0]
    team = next(t for t in teams if t["job_role_id"] != agent["job_role_id"])
    response = client.patch(f"{API}/agents/{agent['id']}", json={"team_id": team["id"]})
    problem = assert_problem(document, response, 422, "/problems/not-eligible", ("/api/v1/agents/{entity_id}", "patch"))
    assert problem["field"] == "team_id" and problem["reasons"]  # kept: clients may read them
    assert _fields(problem) == ["team_id"]
    assert problem["errors"][0]["message"] == problem["detail"]


@pytest.mark.parametrize("body", [{}, {"agent_ids": []}, {"all_unassigned": False},
                                  {"agent_ids": ["00000000-0000-4000-8000-000000000001"], "all_unassigned": True}])
def test_the_bulk_assignment_selector_422_names_the_members_not_the_body(client, document, body) -> None:
    response = client.post(f"{API}/agents/assign-teams", json=body)
    problem = assert_problem(document, response, 422, "/problems/invalid-input",
                             ("/api/v1/agents/assign-teams", "post"))
    assert _fields(problem) == ["agent_ids", "all_unassigned"]
    assert "agent_ids or all_unassigned" in problem["errors"][0]["message"]


def test_a_patch_nulling_fields_that_cannot_be_null_names_each_of_them(client, committed_steward, document) -> None:
    response = client.patch(f"{API}/agents/{committed_steward}", json={"name": None, "status": None})
    problem = assert_problem(document, response, 422, "/problems/invalid-input", ("/api/v1/agents/{entity_id}", "patch"))
    assert _fields(problem) == ["name", "status"]


@pytest.mark.parametrize(("body", "fields"), [
    ({"since": "latest-digest", "scope": {"entity_type": "agent"}}, ["since", "scope"]),
    ({"since": "latest-digest", "against_digest": {
        "type": "plant.ledger-digest.v1", "as_of": "2026-01-01T00:00:00Z", "entity_count": 0,
        "heads_root": "0" * 64, "kid": "k", "signature": "s"}}, ["since", "against_digest"]),
])
def test_an_incremental_audit_combined_with_a_scope_or_digest_names_both_members(client, document, body, fields) -> None:
    problem = assert_problem(document, client.post(f"{API}/audit/run", json=body), 422, "/problems/invalid-input",
                             ("/api/v1/audit/run", "post"))
    assert _fields(problem) == fields


@pytest.mark.parametrize(("path", "query", "headers", "field"), [
    (f"{API}/jobs", {"page_token": "not-a-token"}, {}, "page_token"),
    (f"{API}/audit/runs", {"page_token": "not-a-token"}, {}, "page_token"),
])
def test_a_domain_refusal_naming_its_field_lists_it_in_errors(client, document, path, query, headers, field) -> None:
    problem = assert_problem(document, client.get(path, query_string=query, headers=headers), 422,
                             "/problems/invalid-input", (path, "get"))
    assert problem["field"] == field and _fields(problem) == [field]


def test_an_unprintable_idempotency_key_is_a_422_listing_the_header_in_errors(client, document) -> None:
    response = client.post(f"{API}/diagnostics/sleep", json={"seconds": 0}, headers={"Idempotency-Key": "\x01"})
    problem = assert_problem(document, response, 422, "/problems/invalid-input", ("/api/v1/diagnostics/sleep", "post"))
    assert _fields(problem) == ["Idempotency-Key"]


def test_an_idempotency_key_reused_with_another_body_lists_the_header_in_errors(client, document) -> None:
    headers = {"Idempotency-Key": f"review-{uuid.uuid4()}"}
    assert client.post(f"{API}/diagnostics/sleep", json={"seconds": 0}, headers=headers).status_code == 202
    response = client.post(f"{API}/diagnostics/sleep", json={"seconds": 1}, headers=headers)
    problem = assert_problem(document, response, 422, "/problems/idempotency-key-reused",
                             ("/api/v1/diagnostics/sleep", "post"))
    assert _fields(problem) == ["Idempotency-Key"]


def test_attributes_deeper_than_canonical_json_allows_list_the_field_in_errors(client, committed_steward, document) -> None:
    nested: Any = []
    for _ in range(100):
        nested = [nested]
    response = client.patch(f"{API}/agents/{committed_steward}", json={"attributes": {"a": nested}})
    problem = assert_problem(document, response, 422, "/problems/not-canonicalizable",
                             ("/api/v1/agents/{entity_id}", "patch"))
    assert _fields(problem) == [problem["field"]]


@pytest.mark.parametrize(("data", "message"), [
    ("", "the body is empty: send a JSON object"), ("{", "the body is not valid JSON"),
    ('{"seconds": 1, "seconds": 2}', "the body is not valid JSON"), ("[]", "the body must be a JSON object, not an array"),
    ("null", "the body must be a JSON object, not null"), ("1.5", "the body must be a JSON object, not a number"),
])
@pytest.mark.parametrize("path", [f"{API}/diagnostics/sleep", f"{API}/agents/assign-teams"])
def test_a_body_that_is_no_json_object_is_said_so_not_named_by_its_python_class(client, document, path, data,
                                                                                  message) -> None:
    """It was 'Input should be a valid dictionary or instance of SleepIn': a class of Plant's
    code, and nothing saying the JSON did not parse."""
    response = client.post(path, data=data, content_type="application/json")
    problem = assert_problem(document, response, 422, "/problems/invalid-input", (path, "post"))
    assert problem["errors"] == [{"field": "body", "message": message}]


# --- werkzeug's own errors ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "status"), [
    ("get", "/no-such-page", 404), ("get", f"{API}/no-such-resource", 404), ("get", f"{API}//api-keys", 404),
    ("delete", "/health", 405), ("put", f"{API}/jobs", 405), ("delete", f"{API}/agents", 405),
])
def test_werkzeugs_404_and_405_are_documented_problems(client, document, method, path, status) -> None:
    response = getattr(client, method)(path)
    assert_problem(document, response, status, "about:blank")
    if status == 405:
        assert response.headers["Allow"]


# --- every operation in /openapi.json -------------------------------------------------------


def test_every_api_operation_without_a_key_is_a_documented_401(app, admin_key, document) -> None:
    anonymous = app.test_client()
    for path, method, _ in _operations(document):
        if path.startswith("/api/"):
            response = anonymous.open(_url(path), method=method.upper(), json={})
            assert_problem(document, response, 401, "/problems/unauthorized", (path, method))


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", "bearer plant_unknown",
                                           "Token plant_x"])
def test_a_malformed_or_unknown_authorization_is_a_documented_401(app, admin_key, document, authorization) -> None:
    response = app.test_client().get(f"{API}/jobs", headers={"Authorization": authorization})
    assert_problem(document, response, 401, "/problems/unauthorized", ("/api/v1/jobs", "get"))


def test_a_revoked_or_expired_key_is_a_documented_401(app, client, engine, document) -> None:
    revoked, expired = _key(client, "read"), _key(client, "read")
    assert client.delete(f"{API}/api-keys/{revoked['id']}").status_code == 200
    with engine.begin() as connection:
        connection.execute(text("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = :id"),
                           {"id": expired["id"]})
    for created, says in ((revoked, "revoked"), (expired, "expired")):
        response = app.test_client().get(f"{API}/jobs", headers={"Authorization": f"Bearer {created['key']}"})
        problem = assert_problem(document, response, 401, "/problems/unauthorized", ("/api/v1/jobs", "get"))
        assert says in problem["detail"]


def test_every_api_operation_a_key_lacks_the_scope_for_is_a_documented_403(app, client, document) -> None:
    read_only, writer = _key(client, "read")["key"], _key(client, "read", "write")["key"]
    refused = 0
    for path, method, _ in _operations(document):
        if not path.startswith("/api/"):
            continue
        key = writer if path.startswith(f"{API}/api-keys") else read_only
        if method == "get" and key == read_only:
            continue
        response = app.test_client().open(_url(path), method=method.upper(), json={},
                                          headers={"Authorization": f"Bearer {key}"})
        problem = assert_problem(document, response, 403, "/problems/forbidden", (path, method))
        assert "scope" in problem["detail"]
        refused += 1
    assert refused >= 10


def test_every_operation_reading_a_body_answers_a_documented_413_and_content_type_422(app, client, document) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    reading = [(path, method) for path, method, operation in _operations(document) if "requestBody" in operation]
    assert len(reading) >= 10
    for path, method in reading:
        too_large = client.open(_url(path), method=method.upper(), data="x" * (limit + 1),
                                content_type="application/json")
        assert assert_problem(document, too_large, 413, "about:blank", (path, method))["max_request_bytes"] == limit
        as_text = client.open(_url(path), method=method.upper(), data="{}", content_type="text/plain")
        assert _fields(assert_problem(document, as_text, 422, "/problems/invalid-input", (path, method))) == ["Content-Type"]
        malformed = client.open(_url(path), method=method.upper(), data="{", content_type="application/json")
        assert_problem(document, malformed, 422, "/problems/invalid-input", (path, method))


def test_every_operation_naming_an_id_no_row_has_is_a_documented_404(client, committed_steward, document) -> None:
    """An operation with an id in its path documents 404 and answers it for an unknown id (a
    body that would otherwise be accepted, so the id is what is refused)."""
    bodies = {"post": {}, "patch": {"description": "x"}}
    checked = 0
    for path, method, operation in _operations(document):
        if not path.startswith("/api/") or "{" not in path:
            continue
        assert "404" in operation["responses"], f"{method.upper()} {path} documents no 404"
        response = client.open(_url(path), method=method.upper(), json=bodies.get(method))
        assert_problem(document, response, 404, None, (path, method))
        checked += 1
    assert checked >= 20


def test_every_job_submission_documents_the_409_of_an_idempotency_key_that_changed_hands(document) -> None:
    """``models/idempotency.py::claim_key`` is 409 ``conflict`` when the key's row is gone (purged,
    expired) and claimed by another request between its INSERT and its SELECT, twice: a status the
    job-submitting operations did not document, so a client generated from /openapi.json had no
    branch for it."""
    submitting = [(path, method) for path, method, operation in _operations(document)
                  if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))]
    assert len(submitting) == 10  # the five job submissions and the five registry creates
    for path, method in submitting:
        declared = document["paths"][path][method]["responses"]
        assert "409" in declared, f"{method.upper()} {path}"
        assert PROBLEM in declared["409"]["content"]


def test_a_stale_if_match_is_a_documented_409(client, committed_steward, document) -> None:
    response = client.patch(f"{API}/agents/{committed_steward}", json={"description": "x"},
                            headers={"If-Match": '"999"'})
    assert_problem(document, response, 409, "/problems/precondition-failed", ("/api/v1/agents/{entity_id}", "patch"))


def test_cancelling_a_finished_job_is_a_documented_409(client, engine, document) -> None:
    from models.job_lifecycle import create_job
    from models.jobs import Job

    with Session(engine) as session, session.begin():
        job = create_job(session, kind="diagnostics.sleep", params={"seconds": 0.0, "steps": 1})
        session.get(Job, job.id).status = "succeeded"
        session.get(Job, job.id).finished_at = dt.datetime.now(dt.UTC)
    response = client.post(f"{API}/jobs/{job.id}/cancel")
    assert_problem(document, response, 409, "/problems/job-not-cancellable", ("/api/v1/jobs/{job_id}/cancel", "post"))


def test_a_database_that_is_down_is_a_documented_503_with_retry_after(settings, document) -> None:
    from tests.conftest import refused_port
    from web import create_app

    with refused_port() as port:
        app = create_app(settings.model_copy(update={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{port}/x"}))
        response = app.test_client().get(f"{API}/jobs", headers={"Authorization": "Bearer any-key"})
    assert_problem(document, response, 503, "/problems/database-unavailable", ("/api/v1/jobs", "get"))
    assert int(response.headers["Retry-After"]) > 0


def test_the_cli_shows_a_field_whose_message_is_the_detail_once() -> None:
    """A domain 422 lists its field in ``errors`` with the detail as its message: the CLI's one
    line names the field rather than repeat the detail."""
    from cli.client import problem_line

    problem = {"title": "Invalid input", "detail": "page_token is not a token this API issued",
               "errors": [{"field": "page_token", "message": "page_token is not a token this API issued"}]}
    assert problem_line(problem) == "Invalid input: page_token is not a token this API issued (page_token)"
    validation = {"title": "Invalid input", "detail": "the request has invalid fields",
                  "errors": [{"field": "seconds", "message": "Input should be a valid number"}]}
    assert problem_line(validation) == "Invalid input: the request has invalid fields (seconds: Input should be a valid number)"


def _plant_error_codes() -> set[str]:
    """The ``code`` of every PlantError class in ``models`` (some are defined beside their domain)."""
    import importlib
    import pkgutil

    import models
    from models.errors import PlantError

    for module in pkgutil.iter_modules(models.__path__):
        importlib.import_module(f"models.{module.name}")
    classes, seen = [PlantError], set()
    while classes:
        cls = classes.pop()
        seen.add(cls.code)
        classes.extend(cls.__subclasses__())
    return seen - {PlantError.code}


def test_readme_names_every_problem_type_a_client_may_match_on() -> None:
    """README's Errors section said only that Plant's types are under ``/problems/``: of the
    types a client matches on, ``not-found``, ``conflict``, ``constitution-violation``,
    ``immutable-entity`` and others were named nowhere."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    errors = readme[readme.index("\n## Errors\n"):readme.index("\n## Tests\n")]
    web_types = {match for path in (root / "web").rglob("*.py")
                 for match in re.findall(r'"/problems/([a-z-]+)"', path.read_text())}
    assert {"unauthorized", "forbidden", "database-unavailable", "database-timeout", "database-busy"} <= web_types
    missing = sorted(code for code in _plant_error_codes() | web_types if f"`{code}`" not in errors)
    assert not missing, missing
