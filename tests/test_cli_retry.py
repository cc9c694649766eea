"""The CLI client's retries (``cli/client.py``): which answers it repeats, how long it waits.

The server here is an ``httpx.MockTransport`` that answers from a script, so every case
(a 503 that clears, one that never does, a POST with and without Idempotency-Key, each
Retry-After form) is exact, and the waits are recorded instead of slept. The retry of a
real ``ledger-busy`` answer from the real API is in ``tests/test_cli_api.py``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json

import httpx
import pytest

from cli.client import (
    DEFAULT_RETRY_WAIT_SECONDS,
    MAX_ATTEMPTS,
    MAX_RETRY_WAIT_SECONDS,
    ApiError,
    ClientConfig,
    PlantClient,
    retry_after_seconds,
)

BUSY = {"type": "/problems/ledger-busy", "title": "Service Unavailable", "status": 503, "detail": "retry shortly"}


def busy(retry_after: str | None = "5") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(503, json=BUSY, headers={**headers, "Content-Type": "application/problem+json"})


class Script:
    """Answers each request with the next response; records what was asked and slept."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.responses.pop(0)

    def client(self) -> PlantClient:
        return PlantClient(ClientConfig("http://plant.test", "key", None),
                           transport=httpx.MockTransport(self), sleep=self.sleeps.append)


def test_a_get_answered_503_is_retried_after_the_servers_retry_after(capsys) -> None:
    script = Script(busy("5"), busy("2"), httpx.Response(200, json={"ok": True}))
    assert script.client().get("/ledger/digest") == {"ok": True}
    assert len(script.requests) == 3 and script.sleeps == [5.0, 2.0]
    # Only the CLI's own lines: another test may have left a log handler writing to stderr.
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("plant: ")]
    assert notes == [f"plant: 503 Service Unavailable: retry shortly; retrying in 5 s (try 2 of {MAX_ATTEMPTS})",
                     f"plant: 503 Service Unavailable: retry shortly; retrying in 2 s (try 3 of {MAX_ATTEMPTS})"]


def test_a_429_is_retried_too() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(200, json={"items": []}))
    assert script.client().get("/jobs") == {"items": []} and script.sleeps == [1.0]


def test_a_503_that_never_clears_ends_as_the_last_problem_after_max_attempts() -> None:
    script = Script(*(busy() for _ in range(MAX_ATTEMPTS)))
    with pytest.raises(ApiError) as raised:
        script.client().get("/ledger/digest")
    assert len(script.requests) == MAX_ATTEMPTS and len(script.sleeps) == MAX_ATTEMPTS - 1
    assert raised.value.status == 503 and raised.value.problem["type"] == "/problems/ledger-busy"


def test_a_post_without_idempotency_key_is_never_repeated() -> None:
    script = Script(busy())
    with pytest.raises(ApiError) as raised:
        script.client().post("/api-keys", {"name": "x", "scopes": ["read"]})
    assert raised.value.status == 503 and len(script.requests) == 1 and script.sleeps == []


def test_a_post_with_idempotency_key_is_repeated_with_the_same_key_and_body() -> None:
    script = Script(busy("1"), httpx.Response(202, json={"id": "j"}))
    assert script.client().post("/audit/run", {"scope": {}}, idempotency_key="k-1") == {"id": "j"}
    assert [r.headers["Idempotency-Key"] for r in script.requests] == ["k-1", "k-1"]
    assert [json.loads(r.content) for r in script.requests] == [{"scope": {}}, {"scope": {}}]


def accepted(job_id: str) -> httpx.Response:
    return httpx.Response(202, json={"id": job_id, "kind": "audit.run", "status": "queued", "progress": {"done": 0}})


def test_start_job_sends_a_new_key_per_job_and_the_same_key_on_each_retry() -> None:
    script = Script(busy("1"), accepted("a"), accepted("b"), accepted("c"))
    client = script.client()
    assert client.start_job("/audit/run", {})["id"] == "a" and client.start_job("/audit/run", {})["id"] == "b"
    assert client.start_job("/audit/run", {}, idempotency_key="given")["id"] == "c"
    keys = [r.headers["Idempotency-Key"] for r in script.requests]
    assert keys[0] == keys[1] and keys[0].startswith("plant-cli-") and keys[2].startswith("plant-cli-")
    assert keys[2] != keys[0] and keys[3] == "given" and script.sleeps == [1.0]


def test_other_errors_are_not_retried() -> None:
    for status in (500, 502, 409, 422):
        script = Script(httpx.Response(status, json={"title": "no", "status": status}))
        with pytest.raises(ApiError):
            script.client().get("/jobs")
        assert len(script.requests) == 1 and script.sleeps == []


def test_delete_is_not_retried() -> None:
    script = Script(busy())
    with pytest.raises(ApiError):
        script.client().delete("/api-keys/x")
    assert len(script.requests) == 1


@pytest.mark.parametrize(("header", "expected"), [
    ("7", 7.0),
    ("0", 0.0),
    ("3600", MAX_RETRY_WAIT_SECONDS),        # a server asking for an hour gets the cap
    (None, DEFAULT_RETRY_WAIT_SECONDS),
    ("", DEFAULT_RETRY_WAIT_SECONDS),
    ("soon", DEFAULT_RETRY_WAIT_SECONDS),
    ("-5", DEFAULT_RETRY_WAIT_SECONDS),      # not delay-seconds (1*DIGIT), not a date
    ("1.5", DEFAULT_RETRY_WAIT_SECONDS),
    ("1e3", DEFAULT_RETRY_WAIT_SECONDS),
])
def test_retry_after_seconds(header: str | None, expected: float) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    assert retry_after_seconds(httpx.Response(503, headers=headers)) == expected


def test_retry_after_as_an_http_date() -> None:
    now = dt.datetime(2026, 12, 4, 12, 0, 0, tzinfo=dt.UTC)
    later = email.utils.format_datetime(now + dt.timedelta(seconds=12), usegmt=True)
    earlier = email.utils.format_datetime(now - dt.timedelta(seconds=12), usegmt=True)
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": later}), now=now) == 12.0
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": earlier}), now=now) == 0.0
    # RFC 9110 asks recipients to accept the obsolete forms too; asctime carries no zone (GMT).
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "Fri Dec  4 12:00:09 2026"}), now=now) == 9.0
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "Friday, 04-Dec-26 12:00:20 GMT"}),
                               now=now) == 20.0
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "Fri, 04 Dec 2026 12:00:15 -0000"}),
                               now=now) == 15.0


def test_no_answer_at_all_is_not_retried_and_says_so_once(capsys) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        refused.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    refused: list[httpx.Request] = []
    sleeps: list[float] = []
    client = PlantClient(ClientConfig("http://plant.test", "key", None), transport=httpx.MockTransport(refuse),
                         sleep=sleeps.append)
    with pytest.raises(ApiError, match="cannot reach the Plant API at http://plant.test"):
        client.get("/jobs")
    assert len(refused) == 1 and sleeps == []
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("plant: ")]
