"""The HTTP edge under a demanding client: OPTIONS and 405, body codings and
charsets, key names that pass for the bootstrap admin key, and what gunicorn logs of a request
line it refuses."""

import gzip
import json

import pytest

from tests.conftest import raw_http_exchange, wait_for

API = "/api/v1"
SLEEP = f"{API}/diagnostics/sleep"
BODY = {"seconds": 0.01, "steps": 1}


# --- OPTIONS and 405 -----------------------------------------------------------------------

def _api_rules(app) -> list:
    return [rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")]


def test_options_on_every_api_route_is_204_with_allow_and_no_body(client, app) -> None:
    for rule in _api_rules(app):
        path = rule.rule.replace("<", "").replace(">", "")  # any value: OPTIONS reads none
        response = client.options(path)
        assert response.status_code == 204, (rule.rule, response.status_code)
        assert response.get_data() == b"" and "Content-Type" not in response.headers, rule.rule
        # A superset: /agents/entity_id is each of the rules for /agents/<entity_id>, GET and PATCH.
        assert set(rule.methods) <= set(response.headers["Allow"].split(", ")), rule.rule
        assert not any(name.lower().startswith("access-control-") for name in response.headers.keys())  # CORS is closed


def test_options_without_a_key_is_401_problem_json(app) -> None:
    response = app.test_client().options(f"{API}/jobs")
    assert response.status_code == 401 and response.mimetype == "application/problem+json"


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH"])
def test_a_method_a_route_lacks_is_405_problem_json_with_allow(client, method) -> None:
    response = client.open(f"{API}/jobs", method=method)
    assert response.status_code == 405 and response.mimetype == "application/problem+json"
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    assert response.get_json()["status"] == 405


def test_head_is_its_get_without_a_body(client) -> None:
    get, head = client.get(f"{API}/jobs"), client.head(f"{API}/jobs")
    assert head.status_code == get.status_code == 200 and head.get_data() == b""
    assert head.mimetype == get.mimetype == "application/json"



@pytest.mark.parametrize(("path", "method", "allowed"), [
    (f"{API}/agents/assign-teams", "GET", {"POST", "OPTIONS"}),
    (f"{API}/genesis/skills/search", "PATCH", {"GET", "HEAD", "OPTIONS"}),
])
def test_a_method_a_static_route_lacks_is_405_naming_only_its_methods(client, path, method, allowed) -> None:
    response = client.open(path, method=method, json={})
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == allowed

# --- body codings and charsets -------------------------------------------------------------

def _post(client, data: bytes, content_type: str = "application/json", **headers: str):
    return client.post(SLEEP, data=data, headers={"Content-Type": content_type, **headers})


def _is_415(response, *, coding: bool = False) -> None:
    assert response.status_code == 415, (response.status_code, response.get_data()[:300])
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == 415 and "UTF-8" in response.get_json()["detail"]
    assert (response.headers.get("Accept-Encoding") == "identity") is coding


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "GZIP", "gzip, identity"])
def test_a_body_with_a_content_encoding_is_415_not_read_as_plain(quiet_client, coding) -> None:
    _is_415(_post(quiet_client, gzip.compress(json.dumps(BODY).encode()), **{"Content-Encoding": coding}), coding=True)


def test_content_encoding_identity_is_a_plain_body(quiet_client) -> None:
    assert _post(quiet_client, json.dumps(BODY).encode(), **{"Content-Encoding": "identity"}).status_code == 202


@pytest.mark.parametrize("charset", ["utf-16", "UTF-16LE", "latin-1", "iso-8859-1", "utf-32"])
def test_json_declared_in_a_charset_other_than_utf8_is_415(quiet_client, charset) -> None:
    codec = charset if charset.lower() not in ("latin-1", "iso-8859-1") else "latin-1"
    _is_415(_post(quiet_client, json.dumps(BODY).encode(codec), f"application/json; charset={charset}"))


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", "utf8", '"utf-8"'])
def test_json_declared_as_utf8_is_read(quiet_client, charset) -> None:
    assert _post(quiet_client, json.dumps(BODY).encode(), f"application/json; charset={charset}").status_code == 202


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_json_in_utf16_or_utf32_declared_as_nothing_is_415_not_decoded(quiet_client, encoding) -> None:
    """Python's json.loads detects UTF-16 and UTF-32 in bytes and read them: JSON is UTF-8."""
    _is_415(_post(quiet_client, json.dumps(BODY).encode(encoding)))


def test_the_document_names_the_415_on_each_operation_that_reads_a_body_and_on_no_other(app) -> None:
    operations = [(path, method, operation) for path, by_method in app.api_doc["paths"].items()
                  for method, operation in by_method.items() if isinstance(operation, dict)]
    reading = {(path, method) for path, method, operation in operations if "requestBody" in operation}
    assert ("/api/v1/diagnostics/sleep", "post") in reading and len(reading) >= 10
    assert {(path, method) for path, method, operation in operations if "415" in operation["responses"]} == reading
    documented = app.api_doc["paths"]["/api/v1/diagnostics/sleep"]["post"]["responses"]["415"]
    assert "application/problem+json" in documented["content"]
    assert {"Accept-Encoding", "X-Request-ID"} <= set(documented["headers"])


def test_json_whose_bytes_are_not_utf8_is_415(quiet_client) -> None:
    _is_415(_post(quiet_client, b'{"seconds": 0.01, "steps": 1, "x": "\xe9"}'))


def test_the_json_provider_reads_bytes_as_utf8_not_as_detected(app) -> None:
    """Behind the 415: bytes the provider is handed are UTF-8, whatever json.loads would detect."""
    with pytest.raises(ValueError):
        app.json.loads('{"a": 1}'.encode("utf-16-le"))
    assert app.json.loads('\ufeff{"a": "é"}'.encode()) == {"a": "é"}  # RFC 8259 lets a reader skip a BOM



def test_an_integer_too_long_to_read_is_422_saying_so_not_malformed_json(client) -> None:
    """A 5,000-digit integer is valid JSON that Python's reader refuses (its digit limit)."""
    response = client.post(SLEEP, data=b'{"seconds": 1, "steps": ' + b"1" * 5000 + b"}", content_type="application/json")
    assert response.status_code == 422
    assert "digits" in response.get_json()["errors"][0]["message"]

# --- reserved key names --------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "bootstrap\u2010admin",  # HYPHEN
    "bootstrap\u2011admin",  # NON-BREAKING HYPHEN
    "bootstrap\u2212admin",  # MINUS SIGN (Sm, not Pd)
    "bootstrap\u2014admin",  # EM DASH
    "bootstrap\u2e3aadmin",  # TWO-EM DASH
    "bootstrap\ufe63admin",  # SMALL HYPHEN-MINUS
    "bootstrap\u30a0admin",  # KATAKANA-HIRAGANA DOUBLE HYPHEN
    "\uff42\uff4f\uff4f\uff54\uff53\uff54\uff52\uff41\uff50\uff0d\uff41\uff44\uff4d\uff49\uff4e",  # fullwidth
    "BOOTSTRAP\u2010ADMIN",
    "bootstrap_admin",
    "bootstrap admin",
])
def test_a_key_name_that_reads_as_bootstrap_admin_is_refused(client, name) -> None:
    response = client.post(f"{API}/api-keys", json={"name": name, "scopes": ["read"]})
    assert response.status_code == 422, (name, response.status_code)
    assert "reserved" in json.dumps(response.get_json()["errors"])


@pytest.mark.parametrize("name", ["bootstrap-admin-2", "admin", "ci-bootstrap"])
def test_names_beside_bootstrap_admin_are_taken(name) -> None:
    from models.api_keys import key_name_problem

    assert key_name_problem(name) is None


def test_a_key_name_with_cyrillic_lookalike_letters_is_refused() -> None:
    """Letters of another script drawn as Latin ones (Cyrillic о, U+043E) were not folded."""
    from models.api_keys import key_name_problem

    assert key_name_problem("b\u043e\u043etstrap-admin") is not None


# --- gunicorn's warning for a request line it refuses --------------------------------------



_seen: set[str] = set()  # the warnings earlier cases waited for


@pytest.mark.parametrize("request_line", [
    b"GET /health?access_token=SECRET-QUERY-1\x01x HTTP/1.1",
    b"GET /health?token=SECRET-QUERY-2\x7f HTTP/1.1",
    b"GET /health#SECRET-QUERY-3\x01 HTTP/1.1",
], ids=["control-in-query", "del-in-query", "fragment"])
def test_a_refused_request_line_is_logged_without_its_query(gunicorn_logged, request_line) -> None:
    base, log_path = gunicorn_logged
    secret = request_line.split(b"SECRET-")[1][:7].decode()
    status, answer = raw_http_exchange(base, request_line + b"\r\nHost: x\r\n\r\n")
    assert status == 400 and b"application/problem+json" in answer
    assert f"SECRET-{secret}".encode() not in answer  # nor echoed in the detail
    warning = wait_for(lambda: next((line for line in log_path.read_text().splitlines()
                                     if "Invalid request" in line and "withheld" in line and "/health" in line
                                     and line not in _seen), None), what="gunicorn's warning")
    _seen.add(warning)
    assert f"SECRET-{secret}" not in log_path.read_text()




@pytest.mark.parametrize(("error", "secret"), [
    ("InvalidRequestMethod", "plant_SECRETKEY0123456789abcdef"),  # a first line that was a header's value
    ("InvalidHTTPVersion", "token=SECRET HTTP/1.1"),  # the rest of "GET /x?a token=SECRET HTTP/1.1"
    ("InvalidRequestLine", "GET /x?access_token=SECRET\x01 HTTP/1.1"),
])
def test_what_gunicorn_quotes_of_a_method_version_or_line_withholds_secrets(error, secret) -> None:
    from gunicorn.http import errors

    from web.gunicorn_worker import withhold_client_text

    exc = getattr(errors, error)(secret)
    withhold_client_text(exc)
    assert "SECRET" not in str(exc) and "withheld" in str(exc)


@pytest.mark.parametrize(("error", "text"), [("InvalidRequestMethod", "get"), ("InvalidHTTPVersion", "HTTP/9.9"),
                                             ("InvalidRequestLine", "GET /health HTTP/1.1")])
def test_a_plain_method_version_or_line_is_still_quoted(error, text) -> None:
    from gunicorn.http import errors

    from web.gunicorn_worker import withhold_client_text

    exc = getattr(errors, error)(text)
    withhold_client_text(exc)
    assert text in str(exc)

# --- duplicate headers -----------------------------------------------------------------------

def test_two_idempotency_keys_are_422_not_taken_as_one_joined_key(quiet_client) -> None:
    """Two headers arrive joined by a comma (werkzeug's test client joins them as gunicorn does)."""
    response = quiet_client.post(SLEEP, json=BODY, headers=[("Idempotency-Key", "one"), ("Idempotency-Key", "two")])
    assert response.status_code == 422, response.get_data()[:300]
    assert response.get_json()["errors"][0]["field"] == "Idempotency-Key"


# --- a target that is not UTF-8 ------------------------------------------------------------

@pytest.mark.parametrize("query", ["kind=%FF", "kind=%ED%A0%80", "kind=caf%E9", "status=queued&kind=%C3"])
def test_a_query_not_utf8_once_decoded_is_422_not_read_with_replacement_characters(client, query) -> None:
    response = client.get(f"{API}/jobs?{query}")
    assert response.status_code == 422, response.get_data()[:300]
    assert response.get_json()["errors"] == [{"field": "query", "message": "not UTF-8 once percent-decoded"}]


def test_a_query_in_utf8_is_read(client) -> None:
    assert client.get(f"{API}/jobs?kind=caf%C3%A9").status_code == 200
    assert client.get(f"{API}/jobs?kind=a+b%2Bc").status_code == 200


def test_a_path_not_utf8_once_decoded_is_422_under_gunicorn(gunicorn_logged, admin_key) -> None:
    """werkzeug's test client decodes a path before it builds the request, so a server is asked."""
    base, _ = gunicorn_logged
    status, answer = raw_http_exchange(base, f"GET {API}/genesis/skills/search%FF HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                     f"Authorization: Bearer {admin_key}\r\n\r\n".encode())
    assert status == 422 and b'"field": "path"' in answer, answer[:600]
