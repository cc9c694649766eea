"""Hostile but well-formed HTTP requests get the documented 4xx (or 200/304), never a 500.

Each case is a request a client can send on purpose or by mistake: a forged page token,
a JSON body or entity attributes nested deeper than the parser or the canonical form
allow, an ``If-Match`` tag of non-ASCII digits, and conditional headers (``If-None-Match``)
on the job resource, which only GET and HEAD may answer with 304.
"""

import base64
import json
import uuid

import pytest
from tests.conftest import EMBEDDER

API = "/api/v1"
SLEEP = f"{API}/diagnostics/sleep"


def _page_token(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _nested_arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def _start_job(engine) -> dict:
    """A queued job with no message: no test worker can pick it up and change it meanwhile."""
    from sqlalchemy.orm import Session

    from models.job_lifecycle import create_job

    with Session(engine) as session, session.begin():
        return {"id": str(create_job(session, kind="diagnostics.sleep", params={"seconds": 5.0, "steps": 1}).id)}


@pytest.mark.parametrize("path", [f"{API}/jobs", f"{API}/agents", f"{API}/audit/runs"])
@pytest.mark.parametrize("decoded", [
    ["2024-01-01T00:00:00+00:00", 123],
    [20240101, "00000000-0000-0000-0000-000000000000"],
    ["2024-01-01T00:00:00+00:00", None],
    ["2024-01-01T00:00:00+00:00", "00000000-0000-0000-0000-000000000000", "extra"],
])
def test_a_page_token_holding_other_than_two_strings_is_422_naming_the_field(client, path, decoded) -> None:
    response = client.get(path, query_string={"page_token": _page_token(decoded)})
    assert response.status_code == 422, response.get_data(as_text=True)
    problem = response.get_json()
    assert problem["type"] == "/problems/invalid-input" and problem["field"] == "page_token"


@pytest.mark.parametrize("depth", [100_000, 400_000])  # beyond any recursion limit, under 1 MiB
def test_a_json_body_nested_too_deeply_to_parse_is_malformed_json(client, depth) -> None:
    malformed = client.post(SLEEP, data="{bad", content_type="application/json")
    deep = client.post(SLEEP, data='{"seconds": 1.0, "x": ' + _nested_arrays(depth) + "}",
                       content_type="application/json")
    assert deep.status_code == malformed.status_code == 422
    assert deep.mimetype == "application/problem+json"
    assert deep.get_json() == malformed.get_json()


@pytest.mark.parametrize("depth", [100, 600])
def test_entity_attributes_nested_beyond_the_canonical_limit_are_422(client, committed_steward, depth) -> None:
    url = f"{API}/agents/{committed_steward}"
    attributes = {"a": json.loads(_nested_arrays(depth))}
    response = client.patch(url, data=json.dumps({"attributes": attributes}), content_type="application/json")
    assert response.status_code == 422, response.get_data(as_text=True)
    problem = response.get_json()
    assert problem["type"] == "/problems/not-canonicalizable"
    assert problem["field"].startswith("$.attributes.a[0]")
    assert client.get(url).get_json()["attributes"] == {}


def test_attributes_nested_within_the_limit_are_stored(client, committed_steward) -> None:
    url = f"{API}/agents/{committed_steward}"
    attributes = {"a": json.loads(_nested_arrays(30))}
    response = client.patch(url, json={"attributes": attributes})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["attributes"] == attributes


def test_attribute_strings_are_stored_nfc_as_the_chain_signs_them(client, committed_steward) -> None:
    """Keys and values at any depth: the row and the resource hold what the signed version holds."""
    url = f"{API}/agents/{committed_steward}"
    response = client.patch(url, json={"attributes": {"cafe\u0301": ["e\u0301", {"A\u030a": "\u212b"}]}})
    assert response.status_code == 200, response.get_json()
    expected = {"caf\u00e9": ["\u00e9", {"\u00c5": "\u00c5"}]}
    assert response.get_json()["attributes"] == client.get(url).get_json()["attributes"] == expected
    head = client.get(f"{url}/history").get_json()["items"][-1]
    assert json.loads(head["content"])["attributes"] == expected


ARABIC_INDIC_DIGITS = str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")


@pytest.mark.parametrize("spell", [
    lambda version: "\u00b2",  # a digit to str.isdigit, not to int()
    lambda version: version + "\u00b9",
    lambda version: version.translate(ARABIC_INDIC_DIGITS),  # int() reads it as the current version
    lambda version: "0" + version,  # not the ETag: strong comparison is character for character
], ids=["superscript-two", "version-then-superscript-one", "arabic-indic-version", "leading-zero"])
def test_an_if_match_spelled_other_than_the_etag_is_a_failed_precondition(client, committed_steward, spell) -> None:
    url = f"{API}/agents/{committed_steward}"
    version = client.get(url).headers["ETag"].strip('"')
    tag = f'"{spell(version)}"'
    response = client.patch(url, json={"description": "an edit that must not land"}, headers={"If-Match": tag})
    assert response.status_code == 409, response.get_data(as_text=True)
    assert response.get_json()["type"] == "/problems/precondition-failed"
    assert client.get(url).get_json()["description"] != "an edit that must not land"


def test_if_none_match_star_on_cancel_still_cancels_and_answers_with_the_job(client, engine) -> None:
    job = _start_job(engine)
    response = client.post(f"{API}/jobs/{job['id']}/cancel", headers={"If-None-Match": "*"})
    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled" and response.headers["ETag"]


def test_a_cancel_repeated_with_the_current_etag_is_never_304(client, engine) -> None:
    job = _start_job(engine)
    first = client.post(f"{API}/jobs/{job['id']}/cancel")
    again = client.post(f"{API}/jobs/{job['id']}/cancel", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 200 and again.get_json()["status"] == "cancelled"


def test_if_none_match_compares_weakly_on_get_and_head(client, engine) -> None:
    job = _start_job(engine)
    url = f"{API}/jobs/{job['id']}"
    etag = client.get(url).headers["ETag"]
    for headers in ({"If-None-Match": f"W/{etag}"}, {"If-None-Match": f'"other", W/{etag}'}):
        assert client.get(url, headers=headers).status_code == 304
        assert client.head(url, headers=headers).status_code == 304
    assert client.get(url, headers={"If-None-Match": 'W/"other"'}).status_code == 200


@pytest.mark.parametrize("after", ["f:\u0663", "f: 5", "f:1_0", "f:-1", "f:+1", "f:" + "9" * 30, "f:", "x:5"])
def test_a_findings_page_token_not_issued_by_the_api_is_422(client, engine, keyring, after) -> None:
    from sqlalchemy.orm import Session

    from models.audit_runs import start_run
    from models.job_lifecycle import create_job

    with Session(engine) as session, session.begin():
        job = create_job(session, kind="audit.run", params={"verify_signatures": "heads"}, queue="audit")
        run_id = start_run(session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=100).id
    token = base64.urlsafe_b64encode(after.encode()).decode().rstrip("=")
    response = client.get(f"{API}/audit/runs/{run_id}/findings", query_string={"page_token": token})
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["field"] == "page_token"
    issued = base64.urlsafe_b64encode(b"f:0").decode().rstrip("=")
    assert client.get(f"{API}/audit/runs/{run_id}/findings", query_string={"page_token": issued}).status_code == 200


def test_a_json_body_repeating_a_member_is_malformed_json(client) -> None:
    # Which "seconds" did the client mean? Parsers disagree (first or last wins): refuse it.
    response = client.post(SLEEP, data='{"seconds": 0, "seconds": 30}', content_type="application/json")
    assert response.status_code == 422 and response.mimetype == "application/problem+json"


@pytest.mark.parametrize("body", ['"{\\"seconds\\": 0, \\"seconds\\": 0.5}"', '"{\\"seconds\\": 0}"'])
def test_a_json_body_that_is_a_string_is_422_not_read_as_the_json_inside_it(client, body) -> None:
    # flask-openapi3 would parse the string's text as the body, past the strict parser.
    response = client.post(SLEEP, data=body, content_type="application/json")
    problem = response.get_json()
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    assert (problem["type"], problem["title"], problem["errors"][0]["field"]) == ("/problems/invalid-input", "Invalid input", "body")


def test_a_string_body_on_a_get_is_ignored_as_any_get_body_is(client) -> None:
    response = client.get(f"{API}/jobs", data='"{}"', content_type="application/json")
    assert response.status_code == 200


def test_an_incremental_audit_with_a_scope_or_a_digest_is_422_not_a_run_that_ignores_them(client) -> None:
    digest = client.get(f"{API}/ledger/digest").get_json()
    for extra in ({"against_digest": digest}, {"scope": {"entity_type": "skill"}}):
        response = client.post(f"{API}/audit/run", json={"since": "latest-digest", **extra})
        assert response.status_code == 422, extra
        assert "cannot be combined" in response.get_json()["errors"][0]["message"]
    assert client.post(f"{API}/audit/run", json={"since": "latest-digest", "scope": {}}).status_code == 202


@pytest.mark.parametrize("scope", [{"entity_ids": []}, {"entity_type": "industry", "entity_ids": []}])
def test_an_audit_scope_listing_no_entity_is_422_not_an_audit_of_every_entity(client, scope) -> None:
    response = client.post(f"{API}/audit/run", json={"scope": scope})
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    assert response.get_json()["errors"][0]["field"] == "scope.entity_ids"


def test_an_if_match_too_long_to_be_a_version_is_a_failed_precondition(client, committed_steward) -> None:
    response = client.patch(f"{API}/agents/{committed_steward}", json={"description": "must not land"},
                            headers={"If-Match": '"' + "9" * 5000 + '"'})
    assert response.status_code == 409 and response.get_json()["type"] == "/problems/precondition-failed"


def test_a_connection_pool_that_stays_exhausted_is_503_with_retry_after() -> None:
    from flask import Flask
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from web.problems import register_error_handlers

    app = Flask(__name__)
    register_error_handlers(app)

    @app.get("/busy")
    def busy():
        raise PoolTimeout("QueuePool limit of size 1 overflow 1 reached, connection timed out, timeout 30.00")

    answer = app.test_client().get("/busy")
    assert answer.status_code == 503 and answer.mimetype == "application/problem+json"
    assert answer.get_json()["type"] == "/problems/database-busy" and int(answer.headers["Retry-After"]) > 0


@pytest.mark.parametrize("member", ["entity_count", "version"])
def test_an_against_digest_with_an_integer_canonical_json_cannot_hold_is_422(client, member: str) -> None:
    """A run's signed plan holds its parameters as canonical JSON, whose integers stop at 2**53 - 1."""
    digest = client.get(f"{API}/ledger/digest", query_string={"leaves": "true"}).get_json()
    if member == "version":
        digest["leaves"] = [{"entity_id": "7fffffff-0000-4000-8000-000000000001", "head": "0" * 64, "version": 2**53}]
    else:
        digest["entity_count"] = 2**53
    response = client.post(f"{API}/audit/run", json={"against_digest": digest})
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    digest[member if member == "entity_count" else "leaves"] = 2**53 - 1 if member == "entity_count" else [
        {**digest["leaves"][0], "version": 2**53 - 1}]
    assert client.post(f"{API}/audit/run", json={"against_digest": digest}).status_code == 202


def _max_items(document: dict, schema: str, member: str) -> int:
    """The maxItems /openapi.json gives a list member (optional members are anyOf [list, null])."""
    prop = document["components"]["schemas"][schema]["properties"][member]
    return next(option["maxItems"] for option in prop.get("anyOf", [prop]) if option.get("type") == "array")


def _ids(count: int) -> list[str]:
    return [str(uuid.UUID(int=(1 << 127) + i)) for i in range(count)]  # every one 36 characters


def _largest_audit_run(ids: int, leaves: int) -> dict:
    """POST /audit/run's body with every list ``ids`` / ``leaves`` long and every member at its widest."""
    leaf = {"head": "f" * 64, "version": 2**53 - 1}
    return {
        "scope": {"entity_type": "job_role", "entity_ids": _ids(ids)},
        "verify_signatures": "heads",
        "against_digest": {"type": "plant.ledger-digest.v1", "as_of": "9" * 64, "entity_count": 2**53 - 1,
                           "heads_root": "f" * 64, "kid": "k" * 128, "signature": "s" * 1024,
                           "leaves": [{"entity_id": i, **leaf} for i in _ids(leaves)]},
    }


def _size_at(body_of, maxima: tuple[int, ...]) -> int:
    """The size of ``body_of(*maxima)`` as Python's json.dumps writes it (a space after each
    separator: more than a compact body), worked out from bodies of one and two items per list,
    so that a maximum far too large costs no memory to find out."""
    def size(*counts: int) -> int:
        return len(json.dumps(body_of(*counts)).encode())

    ones = [1] * len(maxima)
    return size(*ones) + sum((size(*ones[:n], 2, *ones[n + 1:]) - size(*ones)) * (most - 1) for n, most in enumerate(maxima))


def test_the_largest_requests_the_schemas_allow_fit_the_default_body_limit(client, app) -> None:
    """Each list's maxItems in /openapi.json, all at once and every item at its widest, still
    fits PLANT_MAX_REQUEST_BYTES' default: a request the schema allows is never 413."""
    from models.settings import Settings

    limit = Settings.model_fields["max_request_bytes"].default
    assert app.config["MAX_CONTENT_LENGTH"] == limit
    document = client.get("/openapi.json").get_json()
    audit = (_max_items(document, "AuditScope", "entity_ids"), _max_items(document, "LedgerDigestIn", "leaves"))
    agents = _max_items(document, "AssignTeamsIn", "agent_ids")
    assert _size_at(_largest_audit_run, audit) <= limit, audit
    assert _size_at(lambda n: {"agent_ids": _ids(n)}, (agents,)) <= limit, agents

    body = json.dumps(_largest_audit_run(*audit))
    assert client.post(f"{API}/audit/run", data=body, content_type="application/json").status_code == 202
    response = client.post(f"{API}/agents/assign-teams", data=json.dumps({"agent_ids": _ids(agents)}), content_type="application/json")
    assert response.status_code == 404 and response.get_json()["type"] == "/problems/not-found"  # none exists, but it was read
