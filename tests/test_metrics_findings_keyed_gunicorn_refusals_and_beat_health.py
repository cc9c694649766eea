"""Observability (stop 42's review): what the public ``/metrics`` shows without a key, what gunicorn's
own refusals log, and what ``/health`` says of its dependencies."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.orm import Session

from models.api_keys import create_api_key
from tests.conftest import bearer, gunicorn_serving, refused_port, sweep_recovery, wait_for
from tests.test_gunicorn_refusals import _exchange
from web.metrics import SANE_REQUEST_ID

FINDINGS = "plant_audit_findings"


def _key(engine, scopes: list[str]) -> str:
    with Session(engine) as session, session.begin():
        return create_api_key(session, name=f"metrics-{'-'.join(scopes)}", scopes=scopes).plaintext


def test_public_metrics_leave_out_the_audit_findings_by_code(app, clean_db) -> None:
    # Whoever altered a record must not watch the next audit's findings by code to learn
    # whether (and as what) it was caught.
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert FINDINGS not in text
    assert "plant_audit_last_run_finished_timestamp_seconds" in text or "plant_audit_runs" in text


@pytest.mark.parametrize("scope", ["read", "admin"])
def test_a_scrape_with_a_read_key_gets_the_audit_findings(app, engine, clean_db, scope) -> None:
    response = app.test_client().get("/metrics", environ_base=bearer(_key(engine, [scope])))
    assert response.status_code == 200
    assert f"# TYPE {FINDINGS} gauge" in response.get_data(as_text=True)


@pytest.mark.parametrize(("environ", "query", "status"), [
    (bearer("plant_not-a-key"), "", 401),
    ({"HTTP_AUTHORIZATION": "Basic cGxhbnQ6eA=="}, "", 401),
    ({}, "?access_token=plant_x", 401),
], ids=["unknown-key", "other-scheme", "key-in-query"])
def test_a_scrape_with_a_bad_key_is_refused_as_the_api_refuses_it(app, clean_db, environ, query, status) -> None:
    # A scraper whose key stopped working sees its target fail, not the findings vanish quietly.
    response = app.test_client().get(f"/metrics{query}", environ_base=environ)
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.headers["Cache-Control"] == "no-store"
    assert FINDINGS not in response.get_data(as_text=True)


# --- gunicorn's own refusals: a request id, a log line, no key in either ---

@pytest.fixture(scope="module")
def refusing_gunicorn(settings, tmp_path_factory):
    directory = tmp_path_factory.mktemp("review-refusals")
    log_path = directory / "gunicorn.log"
    with gunicorn_serving(settings, log_path, processes=1, threads=2, metrics_dir=None) as base:
        yield base, log_path


def _log_lines(log_path) -> list[dict]:
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


def _lines_of(log_path, request_id: str) -> list[dict]:
    return [line for line in _log_lines(log_path) if line.get("request_id") == request_id]


A_KEY = "plant_" + "Zq3" * 14 + "x"  # the shape of a real key: 43 characters after the prefix


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /api/v1/skills HTTP/1.1\r\nHost: x\r\nAuthorization Bearer " + A_KEY.encode() + b"\r\n\r\n", 400),
    (b"GET /api/v1/skills HTTP/1.1\r\nHost: x\r\nX-Note: " + b"k" * 9000 + b"\r\n\r\n", 431),
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
], ids=["header-line-without-colon", "header-too-large", "no-http"])
def test_a_request_gunicorn_refuses_has_a_request_id_and_a_json_log_line(refusing_gunicorn, request_bytes, status) -> None:
    base, log_path = refusing_gunicorn
    answered, headers, body = _exchange(base, request_bytes)
    assert answered == status
    request_id = headers.get("x-request-id")
    assert request_id and SANE_REQUEST_ID.fullmatch(request_id), headers
    lines = wait_for(lambda: (found := _lines_of(log_path, request_id))
                     and any(line["logger"] == "web.requests" for line in found) and found,
                     timeout=10, what="the refusal's log lines")
    refusal = next(line for line in lines if line["logger"] == "web.requests")
    assert refusal["status"] == status and refusal["refused_by"] == "gunicorn"
    # gunicorn's own warning carries the id too, so the two can be joined.
    assert any(line["logger"] == "gunicorn.error" for line in lines), lines
    assert A_KEY not in log_path.read_text() and A_KEY.encode() not in body


def test_a_refused_header_s_name_is_still_shown(refusing_gunicorn) -> None:
    base, log_path = refusing_gunicorn
    answered, headers, body = _exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n")
    assert answered == 400
    assert "Bad Name" not in json.loads(body).get("detail", "")  # a space: not a name, withheld
    answered, headers, body = _exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad\x01: v\r\n\r\n")
    assert answered == 400 and headers.get("x-request-id")


# --- /health and beat ---

def test_health_is_degraded_until_a_recovery_sweep_runs_and_up_after(client, worker, settings, redis_client) -> None:
    # With beat down nothing publishes the outbox, republishes lost jobs or fires scheduled audits,
    # while the database, Redis and the workers all answer: /health said ok.
    from tasks.maintenance import SWEEP_MARK_KEY

    redis_client.delete(SWEEP_MARK_KEY)
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "degraded", body
    assert body["checks"]["beat"]["status"] == "down" and "beat" in body["checks"]["beat"]["error"], body
    sweep_recovery(settings)
    body = wait_for(lambda: (b := client.get("/health").get_json())["status"] == "ok" and b, timeout=30, interval=0.2,
                    what="health ok once the worker ran the sweep")
    assert body["checks"]["beat"]["status"] == "up"
    assert 0 <= body["checks"]["beat"]["last_sweep_seconds_ago"] < 30


def test_the_beat_check_is_skipped_with_redis_down(settings) -> None:
    from web import create_app

    with refused_port() as port:
        app = create_app(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"}))
        body = app.test_client().get("/health").get_json()
    assert body["checks"]["beat"]["status"] == "skipped", body
