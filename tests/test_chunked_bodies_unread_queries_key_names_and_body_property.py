"""The HTTP API's input handling at its edges (the api_input review): a body without a
``Content-Length`` (chunked, as gunicorn hands it on) is bounded and typed as one with it; an API
key's name shows what it is and cannot pass for the configured admin key's."""

import io
import json
import socket
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.conftest import gunicorn_serving

API = "/api/v1"
LIMIT = 1_048_576  # PLANT_MAX_REQUEST_BYTES' default, the tests' setting


def _chunked(client, method: str, url: str, body: bytes, content_type: str = "application/json"):
    """A request whose body has no Content-Length, as gunicorn hands on a chunked one."""
    return client.open(url, method=method, input_stream=io.BytesIO(body), content_type=content_type,
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})


def test_a_chunked_body_over_the_limit_is_413_and_changes_nothing(client, committed_steward) -> None:
    """werkzeug read a body without Content-Length up to the limit and silently stopped: this
    one, valid JSON padded past the limit with whitespace, was cut to its JSON and applied (a
    200 for a body README promises a 413); any other was a 422 "not valid JSON"."""
    url = f"{API}/agents/{committed_steward}"
    before = client.get(url).get_json()
    response = _chunked(client, "PATCH", url, b'{"description": "applied from a body past the limit"}' + b" " * LIMIT)
    assert response.status_code == 413, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["max_request_bytes"] == LIMIT
    after = client.get(url).get_json()
    assert (after["version"], after["description"]) == (before["version"], before["description"])


def test_a_chunked_body_within_the_limit_is_read_whole(client, committed_steward) -> None:
    url = f"{API}/agents/{committed_steward}"
    body = b'{"description": "sent chunked"}' + b" " * (LIMIT - 40)
    response = _chunked(client, "PATCH", url, body)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert client.get(url).get_json()["description"] == "sent chunked"


def test_a_chunked_body_that_is_not_json_is_refused_naming_its_content_type(client, committed_steward) -> None:
    """The Content-Type refusal looked for a Content-Length only: a chunked text/plain object
    got "the body must be a JSON object, not an object"."""
    response = _chunked(client, "PATCH", f"{API}/agents/{committed_steward}", b'{"description": "x"}', "text/plain")
    assert response.status_code == 422
    assert response.get_json()["errors"] == [{"field": "Content-Type", "message": "send the body as application/json"}]


@pytest.fixture(scope="module")
def gunicorn_base(settings, tmp_path_factory):
    directory = tmp_path_factory.mktemp("review-api-input")
    with gunicorn_serving(settings, directory / "gunicorn.log", processes=1, threads=2, metrics_dir=None) as base:
        yield base


def _send_chunked(base: str, path: str, key: str, body: bytes) -> tuple[int, bytes]:
    address = urlsplit(base)
    head = (f"PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[i:i + 65536] for i in range(0, len(body), 65536)))
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head)
        try:
            sock.sendall(chunks + b"0\r\n\r\n")
        except OSError:  # the server may answer and close before reading all of a body it refuses
            pass
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split(b" ")[1]), rest.partition(b"\r\n\r\n")[2]


def test_under_gunicorn_a_chunked_body_over_the_limit_is_413(gunicorn_base, admin_key, committed_steward, client) -> None:
    url = f"{API}/agents/{committed_steward}"
    before = client.get(url).get_json()
    status, body = _send_chunked(gunicorn_base, url, admin_key,
                                 b'{"description": "applied from a body past the limit"}' + b" " * LIMIT)
    assert status == 413, body[:300]
    assert json.loads(body)["max_request_bytes"] == LIMIT
    assert client.get(url).get_json()["version"] == before["version"]
    status, body = _send_chunked(gunicorn_base, url, admin_key, b'{"description": "sent chunked"}')
    assert status == 200, body[:300]


@pytest.mark.parametrize("name", [
    "Bootstrap-Admin", "bootstrap-admin ", " bootstrap-admin", "bootstrap-admin\u200b", "\u200bbootstrap-admin",
    "ｂｏｏｔｓｔｒａｐ-ａｄｍｉｎ",  # fullwidth: NFKC folds it
    "   ", "\u200b", "ci\x1b[31m", "ci\u202eoknimda", "ci\nkey", "ci\u2028key",
], ids=["case", "trailing-space", "leading-space", "zero-width-after", "zero-width-before", "fullwidth",
        "blank", "zero-width-alone", "escape", "bidi-override", "newline", "line-separator"])
def test_a_key_name_that_hides_what_it_is_or_passes_for_the_bootstrap_admin_is_422(client, name) -> None:
    """Only "bootstrap-admin" itself was reserved, and any name was taken: a key named
    "Bootstrap-Admin" or "bootstrap-admin\u200b" is listed as the configured admin key yet
    survives the rotation that revokes that one; a blank name or one with a bidi override
    cannot be told apart in a listing."""
    before = len(client.get(f"{API}/api-keys").get_json()["items"])
    response = client.post(f"{API}/api-keys", data=json.dumps({"name": name, "scopes": ["admin"]}),
                           content_type="application/json")
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert [e["field"] for e in response.get_json()["errors"]] == ["name"]
    assert len(client.get(f"{API}/api-keys").get_json()["items"]) == before


def test_a_key_name_is_stored_nfc_and_ordinary_names_are_taken(client) -> None:
    created = client.post(f"{API}/api-keys", json={"name": "Cafe\u0301 ci", "scopes": ["read"]})
    assert created.status_code == 201 and created.get_json()["name"] == "Caf\u00e9 ci"
    for name in ("bootstrap-admin 2", "ci: deploy (read-only)", "Zürich 東京"):
        assert client.post(f"{API}/api-keys", json={"name": name, "scopes": ["read"]}).status_code == 201, name


# --- Property: every operation that reads a body, fed mutated bodies (hypothesis) -----------------

# Values no schema takes, or takes only at its edge: lone surrogates, NUL, controls, bidi,
# NFD, BOM, over-long text, numbers past int64 and float range, NaN and infinities (written
# as Python's json writes them), wrong types and nesting.
AWKWARD_TEXT = ["", " ", "\x00", "a\x00b", "a\ud800b", "\udfff", "\x1b[2J", "\u202e", "Cafe\u0301", "\ufeff",
                "\u200b", "x" * 20_001, "😀", "\uffff", "../..", "%00", "null", "1e400"]
AWKWARD_NUMBERS = [0, -1, 1, 2 ** 31, 2 ** 53 + 1, 2 ** 63, -(2 ** 63) - 1, 10 ** 30, 0.5, -0.0, 1e308, 5e-324,
                   float("nan"), float("inf"), float("-inf"), True, False, None]
AWKWARD = st.recursive(
    st.sampled_from(AWKWARD_TEXT) | st.sampled_from(AWKWARD_NUMBERS) | st.text(max_size=12)
    | st.integers(min_value=-(10 ** 25), max_value=10 ** 25) | st.uuids().map(str),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(AWKWARD_TEXT) | st.text(max_size=8),
                                                                 inner, max_size=3),
    max_leaves=8)
MEMBERS = ["name", "description", "code", "skill_key", "category", "status", "seniority", "capacity", "tags",
           "attributes", "external_key", "governance_notes", "governance_agent_id", "parent_id", "industry_id",
           "job_role_id", "team_id", "skill_ids", "required_skill_ids", "notes", "seconds", "steps", "scopes",
           "expires_in_days", "agent_ids", "all_unassigned", "scope", "verify_signatures", "since",
           "against_digest", "unknown"]
# Every table a write through the API changes: a refused request must change none of them.
WRITTEN_TABLES = ("entity_versions", "industries", "skills", "job_roles", "teams", "agents", "jobs", "api_keys",
                  "idempotency_keys")
ROW_COUNTS = sa.text("SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in WRITTEN_TABLES))


def _valid_bodies(client, steward: str) -> dict[tuple[str, str], tuple[str, dict]]:
    """(method, documented path) -> (URL, a body the operation takes)."""
    post = lambda path, body: client.post(f"{API}{path}", json=body).get_json()["id"]  # noqa: E731
    governed = {"governance_agent_id": steward, "description": "d"}
    skill = post("/genesis/skills", {"name": "Fuzzed skill", "category": "technical", **governed})
    role = post("/genesis/job-roles", {"name": "Fuzzed role", "seniority": "junior", "required_skill_ids": [skill],
                                       **governed})
    team = post("/teams", {"name": "Fuzzed team", "job_role_id": role, "capacity": 2, **governed})
    industry = post("/genesis/industries", {"name": "Fuzzed industry", "code": "FUZ", **governed})
    ids = {"/genesis/industries": industry, "/genesis/skills": skill, "/genesis/job-roles": role, "/teams": team,
           "/agents": steward}
    creates = {
        "/genesis/industries": {"name": "I", "code": "FUZZ", **governed},
        "/genesis/skills": {"name": "S", "category": "technical", **governed},
        "/genesis/job-roles": {"name": "R", "seniority": "junior", "required_skill_ids": [skill], **governed},
        "/teams": {"name": "T", "job_role_id": role, "capacity": 1, **governed},
        "/agents": {"name": "A", "skill_ids": [skill], "job_role_id": role, "industry_id": industry, **governed},
    }
    bodies = {("post", path): (f"{API}{path}", body) for path, body in creates.items()}
    bodies |= {("patch", f"{path}/{{entity_id}}"): (f"{API}{path}/{ids[path]}", {"description": "patched"})
               for path in creates}
    bodies |= {
        ("post", "/api-keys"): (f"{API}/api-keys", {"name": "fuzzed", "scopes": ["read"]}),
        ("post", "/diagnostics/sleep"): (f"{API}/diagnostics/sleep", {"seconds": 0, "steps": 1}),
        ("post", "/genesis/skills/{entity_id}/certify"): (f"{API}/genesis/skills/{skill}/certify", {"notes": "n"}),
        ("post", "/agents/{entity_id}/assign-team"): (f"{API}/agents/{steward}/assign-team", {"team_id": team}),
        ("post", "/agents/assign-teams"): (f"{API}/agents/assign-teams", {"agent_ids": [steward]}),
        ("post", "/audit/run"): (f"{API}/audit/run", {"scope": {"entity_type": "agent"}}),
    }
    return bodies


def test_every_body_reading_operation_answers_mutated_bodies_as_documented(quiet_client, committed_steward, engine) -> None:
    client = quiet_client  # a job an example starts is no worker's: a certification would add a version between counts
    """Each example takes a body an operation accepts, sets one member to an awkward value (or
    drops it, or replaces the whole body), and sends it as JSON text (NaN and Infinity as
    Python writes them). Whatever the answer, it is one /openapi.json documents for the
    operation, never a 5xx; a refusal is problem+json whose ``status`` is the HTTP status;
    and a refused request changed no row count of any table the API writes, nor the entity a
    refused PATCH names. Jobs an example
    starts are ended through SQL at once (the suite's worker must not run them)."""
    document = client.get("/openapi.json").get_json()
    bodies = _valid_bodies(client, str(committed_steward))
    reading = {(m, p.removeprefix(API)) for p, ops in document["paths"].items() for m, op in ops.items()
               if "requestBody" in op}
    assert reading == set(bodies), "an operation reading a body has no valid body here (or one too many)"
    operations = sorted(bodies)
    for method, path in operations:  # each base body is taken: a mutation is what a refusal refuses
        url, body = bodies[(method, path)]
        assert client.open(url, method=method.upper(), json=body).status_code < 300, (method, path)
    failures: list[str] = []

    @given(st.data())
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def probe(data: st.DataObject) -> None:
        method, path = data.draw(st.sampled_from(operations))
        url, body = bodies[(method, path)]
        body = dict(body)
        how = data.draw(st.sampled_from(["set", "set", "set", "drop", "replace"]))
        if how == "replace":
            body = data.draw(AWKWARD)
        elif how == "drop" and body:
            body.pop(data.draw(st.sampled_from(sorted(body))))
        else:
            body[data.draw(st.sampled_from(MEMBERS))] = data.draw(AWKWARD)
        text = json.dumps(body)  # ensure_ascii: a lone surrogate goes as its \\u escape, NaN as NaN
        with engine.connect() as connection:
            before = connection.execute(ROW_COUNTS).one()
        shown = client.get(url).get_data() if method == "patch" else None
        response = client.open(url, method=method.upper(), data=text.encode(), content_type="application/json")
        status = response.status_code
        with engine.begin() as connection:
            after = connection.execute(ROW_COUNTS).one()
            connection.execute(sa.text("UPDATE jobs SET status = 'cancelled', finished_at = now() "
                                       "WHERE status IN ('queued', 'running')"))
        documented = document["paths"][API + path][method]["responses"]
        wrong = []
        if str(status) not in documented:
            wrong.append(f"undocumented status {status}")
        if status >= 400:
            if response.mimetype != "application/problem+json" or response.get_json().get("status") != status:
                wrong.append(f"not a problem with its status: {response.mimetype}")
            if after != before:
                wrong.append(f"refused, yet rows changed: {dict(zip(WRITTEN_TABLES, zip(before, after, strict=True), strict=True))}")
            if shown is not None and client.get(url).get_data() != shown:
                wrong.append("refused, yet the entity changed")
        if wrong:
            failures.append(f"{method.upper()} {path} {text[:200]!r}: {'; '.join(wrong)}: "
                            f"{response.get_data(as_text=True)[:300]}")

    probe()
    assert not failures, "\n".join(failures[:10])


def test_a_query_parameter_sent_to_an_operation_that_takes_none_is_422_and_starts_nothing(client, engine) -> None:
    """``POST /audit/run?verify_signatures=all`` with a body of ``{}`` started an audit of the
    heads alone (202): an operation without a query model read no query and dropped it all."""
    with engine.connect() as connection:
        jobs_before = connection.execute(sa.text("SELECT count(*) FROM jobs")).scalar()
    response = client.post(f"{API}/audit/run?verify_signatures=all", json={})
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["errors"] == [{"field": "verify_signatures",
                                              "message": "not a parameter of this operation"}]
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM jobs")).scalar() == jobs_before


def test_every_api_operation_taking_no_query_refuses_one(client, committed_steward) -> None:
    """Each operation /openapi.json gives no query parameter answers one with 422 naming it
    (an operation with query parameters refuses one it does not name through its model)."""
    document = client.get("/openapi.json").get_json()
    ids = {"job_id": "00000000-0000-0000-0000-000000000000", "run_id": "00000000-0000-0000-0000-000000000000",
           "key_id": "00000000-0000-0000-0000-000000000000", "entity_id": str(committed_steward)}
    answered = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not path.startswith(API) or any(p["in"] == "query" for p in operation.get("parameters", [])):
                continue
            url = path.format(**ids) + "?dry_run=true"
            for verb in (method, "head") if method == "get" else (method,):
                response = client.open(url, method=verb.upper(), json={} if "requestBody" in operation else None)
                answered[f"{verb.upper()} {path}"] = response.status_code
                if verb != "head":
                    assert response.get_json()["errors"] == [
                        {"field": "dry_run", "message": "not a parameter of this operation"}], (verb, path)
    assert len(answered) > 30 and set(answered.values()) == {422}, answered


def test_every_documented_error_answer_is_problem_json(client) -> None:
    """/openapi.json gave GET /health a 422 of flask-openapi3's own: a JSON array of
    ``ValidationErrorModel``, which no route answers (Plant's refusals are problem+json, and
    /health reads no input to refuse). Every error the document names is a problem (but
    /health's 503, which is its report)."""
    document = client.get("/openapi.json").get_json()
    wrong = [f"{method.upper()} {path} {status}: {sorted(answer.get('content', {}))}"
             for path, operations in document["paths"].items() for method, operation in operations.items()
             for status, answer in operation["responses"].items()
             if int(status) >= 400 and set(answer.get("content", {})) != {"application/problem+json"}
             and (path, status) != ("/health", "503")]  # unavailable: the health report itself
    assert not wrong, wrong
    assert "ValidationErrorModel" not in document["components"]["schemas"]
    assert client.get("/health?verbose=1").status_code in (200, 503)  # it reads no query: none to refuse
