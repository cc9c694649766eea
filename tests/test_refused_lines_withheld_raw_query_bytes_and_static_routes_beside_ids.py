"""The HTTP edge: a request line gunicorn refuses that is one or two
words (a header's value arriving first) is withheld whole from its warning and the answer, and a
raw byte 0x80-0xFF in a query string is read as the byte it is, not as its UTF-8 encoding."""

import json

import pytest

from tests.conftest import raw_http_exchange, wait_for

API = "/api/v1"




@pytest.mark.parametrize("first_line", [
    "Bearer plant_SECRETabcdef0123",  # an Authorization header's value, arriving as the first line
    "plant_SECRETabcdef0123456789",  # a bare key
], ids=["two-words", "one-word"])
def test_a_first_line_of_one_or_two_words_is_withheld_from_gunicorn_s_warning_and_answer(
        gunicorn_logged, first_line) -> None:
    base, log_path = gunicorn_logged
    status, answer = raw_http_exchange(base, first_line.encode() + b"\r\nHost: x\r\n\r\n")
    assert status == 400 and b"application/problem+json" in answer
    body = answer.partition(b"\r\n\r\n")[2]
    assert b"SECRET" not in answer
    assert f"({len(first_line)} characters withheld)" in json.loads(body)["detail"]
    withheld = f"({len(first_line)} characters withheld)"
    wait_for(lambda: any("Invalid request" in line and withheld in line for line in log_path.read_text().splitlines()),
             what="gunicorn's warning")
    assert "SECRET" not in log_path.read_text()


@pytest.mark.parametrize(("line", "shown"), [
    ("Bearer plant_SECRET", "(19 characters withheld)"),
    ("plant_SECRET", "(12 characters withheld)"),
    ("X-Api-Key: plant_SECRET x", "(25 characters withheld)"),  # three words, no path
    ("GET plant_SECRET HTTP/1.1", "(25 characters withheld)"),  # a target that is not a path
    ("GET /x?a=SECRET\x01 HTTP/1.1", "GET /x?(9 characters withheld) HTTP/1.1"),
    ("GET /x\x01 HTTP/1.1", "GET /x\x01 HTTP/1.1"),  # a plain line, refused for its control character
    ("bare LF as line terminator", "bare LF as line terminator"),  # gunicorn's own words
])
def test_a_refused_request_line_is_shown_only_in_a_plain_request_line_s_shape(line, shown) -> None:
    from gunicorn.http.errors import InvalidRequestLine

    from web.gunicorn_worker import withhold_client_text

    exc = InvalidRequestLine(line)
    withhold_client_text(exc)
    assert exc.req == shown


@pytest.mark.parametrize("query", ["kind=\xff", "kind=caf\xe9", "status=queued&kind=\xc3"])
def test_a_query_holding_a_raw_byte_that_is_not_utf8_is_422(client, query) -> None:
    """WSGI hands the query on as Latin-1, one character a byte: ``\\xff`` is the byte 0xFF, which
    was encoded as UTF-8 (``c3 bf``) before it was checked, and so always passed."""
    response = client.get(f"{API}/jobs", environ_overrides={"QUERY_STRING": query})
    assert response.status_code == 422, response.get_data()[:300]
    assert response.get_json()["errors"] == [{"field": "query", "message": "not UTF-8 once percent-decoded"}]


def test_a_query_holding_raw_utf8_bytes_is_read(client) -> None:
    response = client.get(f"{API}/jobs", environ_overrides={"QUERY_STRING": "kind=caf\xc3\xa9"})
    assert response.status_code == 200, response.get_data()[:300]


@pytest.mark.parametrize("path", ["/metrics", "/openapi.json"])
def test_a_public_route_with_a_raw_byte_in_its_query_is_not_a_500(app, path) -> None:
    """werkzeug will not read such a query (``request.args`` raises): a scrape offers no key by it."""
    response = app.test_client().get(path, environ_overrides={"QUERY_STRING": "x=\xff"})
    assert response.status_code == 200, response.get_data()[:300]


# --- a static route beside a parameterised one -----------------------------------------------

def test_the_static_routes_beside_parameterised_ones_are_the_names_their_ids_refuse(app) -> None:
    from web.sibling_routes import static_siblings

    rules = [rule.rule for rule in app.url_map.iter_rules()]
    refused = {rule: names for rule in rules if (names := static_siblings(rule, rules))}
    assert refused == {f"{API}/agents/<entity_id>": {"entity_id": {"assign-teams"}},
                       f"{API}/genesis/skills/<entity_id>": {"entity_id": {"search"}}}


@pytest.mark.parametrize(("path", "allowed"), [
    (f"{API}/agents/assign-teams", {"POST", "OPTIONS"}),
    (f"{API}/genesis/skills/search", {"GET", "HEAD", "OPTIONS"}),
])
def test_options_on_a_static_route_beside_a_parameterised_one_names_only_its_methods(client, path, allowed) -> None:
    response = client.options(path)
    assert response.status_code == 204 and set(response.headers["Allow"].split(", ")) == allowed


@pytest.mark.parametrize("path", [f"{API}/agents/not-an-id", f"{API}/genesis/skills/assign-teams",
                                  f"{API}/agents/search", f"{API}/jobs/search"])
def test_a_malformed_id_beside_a_static_route_is_still_422_naming_it(client, path) -> None:
    response = client.get(path)
    assert response.status_code == 422, response.get_data()[:300]
    assert response.get_json()["errors"][0]["field"] in ("entity_id", "job_id")
