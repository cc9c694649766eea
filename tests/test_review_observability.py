"""Review of observability: what the public ``/metrics`` shows without a key, what gunicorn's
own refusals log, and what ``/health`` says of its dependencies."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from models.api_keys import create_api_key
from tests.conftest import bearer

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

