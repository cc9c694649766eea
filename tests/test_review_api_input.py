"""The HTTP API's input handling at its edges (the api_input review): a body without a
``Content-Length`` (chunked, as gunicorn hands it on) is bounded and typed as one with it; an API
key's name shows what it is and cannot pass for the configured admin key's."""

import io
import json
import socket
from urllib.parse import urlsplit

import pytest

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
