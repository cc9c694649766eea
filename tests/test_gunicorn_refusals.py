"""What gunicorn refuses before Flask reads it is problem+json too, as README promises of
every error: a header field over its size limit, a request line over its limit, a request
line that is no HTTP. gunicorn answered those with an HTML page of its own."""

import json

import pytest

from tests.conftest import gunicorn_serving, raw_http_exchange


def _exchange(base: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    _, answer = raw_http_exchange(base, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
    return int(status_line.split(" ")[1]), headers, body


@pytest.fixture(scope="module")
def gunicorn_base(settings, tmp_path_factory):
    directory = tmp_path_factory.mktemp("gunicorn-refusals")
    (directory / "prometheus").mkdir()
    with gunicorn_serving(settings, directory / "gunicorn.log", processes=1, threads=2,
                          metrics_dir=directory / "prometheus") as base:
        yield base


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"k" * 9000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
], ids=["header-too-large", "request-line-too-long", "no-http"])
def test_a_request_gunicorn_refuses_is_answered_as_problem_json(gunicorn_base, request_bytes, status) -> None:
    answered, headers, body = _exchange(gunicorn_base, request_bytes)
    assert answered == status
    assert headers["content-type"] == "application/problem+json", (headers, body[:200])
    assert int(headers["content-length"]) == len(body)
    problem = json.loads(body)
    assert problem["status"] == status and problem["type"] == "about:blank" and problem["title"]
    assert "k" * 100 not in problem.get("detail", "")  # the refused header's value is not echoed back
