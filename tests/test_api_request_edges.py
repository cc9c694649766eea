"""Edges of the HTTP API's request semantics: a malformed If-Match, two skills deriving one key at
once, a NUL in a job's parameters, what the OpenAPI document names (stop 37's API review)."""

import pytest
from tests.conftest import wait_for

API = "/api/v1"


@pytest.mark.parametrize("if_match", [
    '""',              # an empty entity-tag: werkzeug parses it to None, which crashed the version match (500)
    '"1" "2"',         # a list missing its comma
    '"999" "1"',       # a stale version, in a list missing its comma
    '"1',              # unterminated
    'xyz"',
    ",",
    "",                # present but blank
], ids=["empty-tag", "no-comma", "stale-no-comma", "unterminated", "garbage", "comma", "blank"])
def test_a_present_if_match_that_names_no_version_is_a_failed_precondition(
        client, committed_steward, if_match) -> None:
    """A PATCH that sent an If-Match the server cannot read must not be applied unconditionally:
    the client asked for a precondition, and a lost update is what it asked to prevent."""
    url = f"{API}/agents/{committed_steward}"
    before = client.get(url).get_json()
    response = client.patch(url, json={"description": "an edit that must not land"}, headers={"If-Match": if_match})
    assert response.status_code == 409, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["type"] == "/problems/precondition-failed"
    assert client.get(url).get_json()["version"] == before["version"]


def test_two_skills_created_at_once_whose_names_derive_one_key_both_land(app, admin_key, committed_steward,
                                                                                   monkeypatch) -> None:
    """README: "C++" and "C#" both derive "c"; the second gets "c-<16 hex>", never a 409 on a
    ``skill_key`` its client never sent. Sent at the same moment, both find "c" free
    (``derived_skill_key`` reads, then the INSERT writes, with nothing held between)."""
    import threading

    from tests.conftest import bearer
    import models.skill_keys as skill_keys

    both_looked = threading.Barrier(2, timeout=10)
    taken = skill_keys.skill_key_taken

    looks = iter(range(2))

    def look_then_wait(session, key):  # both requests' first looks come before either inserts
        answer = taken(session, key)
        if next(looks, None) is not None:
            both_looked.wait()
        return answer

    monkeypatch.setattr(skill_keys, "skill_key_taken", look_then_wait)
    results: dict[str, int] = {}

    def create(name: str) -> None:
        client = app.test_client()
        response = client.post(f"{API}/genesis/skills", environ_base=bearer(admin_key), json={
            "name": name, "category": "technical", "description": f"{name} programming",
            "governance_agent_id": str(committed_steward)})
        results[name] = response.status_code

    threads = [threading.Thread(target=create, args=(name,)) for name in ("C++", "C#")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {"C++": 201, "C#": 201}


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/genesis/skills/{skill}/certify", {"notes": "a\u0000b"}, "notes"),
    ("/audit/run", {"against_digest": {"type": "plant.ledger-digest.v1", "as_of": "2024-01-01T00:00:00Z",
                                       "entity_count": 0, "heads_root": "0" * 64, "kid": "k\u0000",
                                       "signature": "s"}}, "against_digest.kid"),
])
@pytest.mark.parametrize("idempotency_key", [None, "nul-key"])
def test_a_nul_in_a_job_s_params_is_422_naming_the_field(client, committed_steward, path, body, field,
                                                                   idempotency_key) -> None:
    """A NUL in an entity's strings is 422 naming the field (a77889c); in a job's params it was the
    database's nameless "a value was refused by the database"."""
    skill = client.post(f"{API}/genesis/skills", json={"name": "Nul", "category": "technical", "description": "d",
                                                       "governance_agent_id": str(committed_steward)}).get_json()["id"]
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    response = client.post(API + path.format(skill=skill), json=body, headers=headers)
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    assert response.get_json()["errors"] == [{"field": field, "message": "must not contain a NUL character (U+0000)"}]


JOB_SUBMISSIONS = {"/api/v1/diagnostics/sleep", "/api/v1/genesis/skills/{entity_id}/certify",
                   "/api/v1/agents/{entity_id}/assign-team", "/api/v1/agents/assign-teams", "/api/v1/audit/run"}
ENTITY_ITEMS = {"/api/v1/genesis/industries/{entity_id}", "/api/v1/genesis/skills/{entity_id}",
                "/api/v1/genesis/job-roles/{entity_id}", "/api/v1/teams/{entity_id}", "/api/v1/agents/{entity_id}"}


def _operations(document: dict) -> list[tuple[str, str, dict]]:
    return [(path, method, operation) for path, item in document["paths"].items() for method, operation in item.items()]


def _header_parameters(operation: dict) -> dict[str, dict]:
    return {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "header"}


def test_the_openapi_document_names_the_headers_and_bodies_the_api_acts_on(client) -> None:
    """Review finding 5: /openapi.json named none of the request headers the API acts on, none of
    the response headers it sends, and no schema for the audit and ledger reads."""
    document = client.get("/openapi.json").get_json()
    operations = _operations(document)
    paths = document["paths"]

    # Every job-creating POST (every 202) takes Idempotency-Key and says what its 202 carries.
    accepting = {path for path, method, operation in operations if "202" in operation["responses"]}
    assert accepting == JOB_SUBMISSIONS
    for path in JOB_SUBMISSIONS:
        operation = paths[path]["post"]
        key = _header_parameters(operation)["Idempotency-Key"]
        assert key["required"] is False and key["schema"] == {"type": "string", "minLength": 1, "maxLength": 255}
        assert set(operation["responses"]["202"]["headers"]) == {"Location", "Retry-After", "ETag", "Idempotent-Replayed",
                                                                  "X-Request-ID"}

    # Every PATCH is a registry PATCH, and takes If-Match; the entity's reads and writes carry its ETag.
    patches = {path for path, method, _ in operations if method == "patch"}
    assert patches == ENTITY_ITEMS
    for path in ENTITY_ITEMS:
        if_match = _header_parameters(paths[path]["patch"])["If-Match"]
        assert if_match["required"] is False and if_match["schema"] == {"type": "string"}
        assert "ETag" in paths[path]["get"]["responses"]["200"]["headers"]
        assert "ETag" in paths[path]["patch"]["responses"]["200"]["headers"]
        create = paths[path.removesuffix("/{entity_id}")]["post"]
        assert set(create["responses"]["201"]["headers"]) == {"ETag", "Location", "Idempotent-Replayed", "X-Request-ID"}
        key = _header_parameters(create)["Idempotency-Key"]
        assert key["required"] is False and key["schema"] == {"type": "string", "minLength": 1, "maxLength": 255}

    # Idempotency-Key is named where it is honoured, and only there (elsewhere it is refused).
    honouring = {(path, method) for path, method, operation in operations
                 if "Idempotency-Key" in _header_parameters(operation)}
    assert honouring == {(p, "post") for p in JOB_SUBMISSIONS | {i.removesuffix("/{entity_id}") for i in ENTITY_ITEMS}}

    # Only a job's GET answers 304 (an entity's ETag is for If-Match alone).
    conditional = {(path, method) for path, method, operation in operations
                   if "If-None-Match" in _header_parameters(operation)}
    assert conditional == {("/api/v1/jobs/{job_id}", "get")}
    job = paths["/api/v1/jobs/{job_id}"]["get"]["responses"]
    assert "ETag" in job["200"]["headers"] and "ETag" in job["304"]["headers"]

    for path, method, operation in operations:
        responses = operation["responses"]
        if path.startswith("/api/"):
            assert "WWW-Authenticate" in responses["401"]["headers"], (path, method)
            assert "Retry-After" in responses["503"]["headers"], (path, method)
        for status, response in responses.items():
            if status.startswith("2"):
                assert response.get("content"), f"{method.upper()} {path}: {status} has no schema"


PLANT_HEADERS = ("ETag", "Location", "Retry-After", "Idempotent-Replayed", "WWW-Authenticate", "X-Request-ID")


def test_every_header_the_api_sends_is_documented_on_the_response_that_carries_it(app, client,
                                                                                   committed_steward) -> None:
    """The other way round: what the API sends, the document names, status by status."""
    document = client.get("/openapi.json").get_json()
    agent = f"{API}/agents/{committed_steward}"
    # Long enough that the suite's shared worker, should it take the job, is still at it when it is
    # cancelled below; once cancelled, nothing changes the job between the two GETs.
    sleep = {"seconds": 20, "steps": 20}
    industry = {"name": "Documented", "code": "DOC", "description": "d", "governance_agent_id": str(committed_steward)}
    keyed, key = {**industry, "name": "Documented twice", "code": "DOC2"}, {"Idempotency-Key": "documented-industry"}
    started = client.post(f"{API}/diagnostics/sleep", json=sleep, headers={"Idempotency-Key": "documented"})
    job = f"{API}/jobs/{started.get_json()['id']}"
    replayed = client.post(f"{API}/diagnostics/sleep", json=sleep, headers={"Idempotency-Key": "documented"})
    cancelled = client.post(f"{job}/cancel")
    wait_for(lambda: client.get(job).get_json()["status"] == "cancelled", what="the job cancelled")
    read = client.get(job)
    sent = [
        ("/api/v1/diagnostics/sleep", "post", started),
        ("/api/v1/diagnostics/sleep", "post", replayed),
        ("/api/v1/jobs/{job_id}/cancel", "post", cancelled),
        ("/api/v1/jobs/{job_id}", "get", read),
        ("/api/v1/jobs/{job_id}", "get", client.get(job, headers={"If-None-Match": read.headers["ETag"]})),
        ("/api/v1/genesis/industries", "post", client.post(f"{API}/genesis/industries", json=industry)),
        ("/api/v1/genesis/industries", "post", client.post(f"{API}/genesis/industries", json=keyed, headers=key)),
        ("/api/v1/genesis/industries", "post", client.post(f"{API}/genesis/industries", json=keyed, headers=key)),
        ("/api/v1/agents/{entity_id}", "get", client.get(agent)),
        ("/api/v1/agents/{entity_id}", "patch", client.patch(agent, json={"description": "documented"},
                                                              headers={"If-Match": client.get(agent).headers["ETag"]})),
        ("/api/v1/agents/{entity_id}", "get", app.test_client().get(agent)),
    ]
    assert [response.status_code for *_, response in sent] == [202, 202, 200, 200, 304, 201, 201, 201, 200, 200, 401]
    assert sent[1][2].headers["Idempotent-Replayed"] == "true" and sent[7][2].headers["Idempotent-Replayed"] == "true"
    for path, method, response in sent:
        documented = document["paths"][path][method]["responses"][str(response.status_code)].get("headers", {})
        emitted = {name for name in PLANT_HEADERS if name in response.headers}
        assert emitted and emitted <= set(documented), (method, path, response.status_code, emitted)


def test_the_openapi_document_names_the_request_id_header_the_api_reads_and_echoes(client) -> None:
    """Stop 37's review of its late fixes: docs/guarantees.md: "The OpenAPI document names every header the API
    acts on". The API reads ``X-Request-ID`` on every request (a sane one becomes the request's
    log ``request_id``) and sends it on every response (web/metrics.py), but /openapi.json
    names it nowhere: a client reading /docs cannot learn it may correlate its requests."""
    document = client.get("/openapi.json").get_json()
    response = client.get("/api/v1/jobs", headers={"X-Request-ID": "review-late-1"})
    assert response.headers["X-Request-ID"] == "review-late-1"
    operation = document["paths"]["/api/v1/jobs"]["get"]
    assert "X-Request-ID" in {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
    assert "X-Request-ID" in operation["responses"]["200"].get("headers", {})
