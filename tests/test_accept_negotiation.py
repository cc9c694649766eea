"""``Accept`` under ``/api/``: a request that takes none of what its operation answers with is
406 problem+json before the operation runs (web/content_negotiation.py); any other is answered as before."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.jobs import Job
from tests.test_export_csv_cache_and_page_escapes import _closed_run
from web.content_negotiation import accepts, answered_types

API = "/api/v1"
SLEEP = f"{API}/diagnostics/sleep"


@pytest.mark.parametrize(("accept", "taken"), [
    ("application/json", True),
    ("APPLICATION/JSON", True),
    ("application/json; charset=utf-8", True),  # parameters are not compared
    ("application/*", True),
    ("*/*", True),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # a browser's
    ("", True),  # no preference
    ("json", True),  # no media range at all: ignored, so no preference
    ("text/csv", False),
    ("application/xml", False),
    ("application/problem+json", False),
    ("*/*;q=0", False),
    ("application/json;q=0, */*", False),  # the most specific range decides
    ("application/*;q=0, application/json;q=0.1", True),
    ("json, text/csv", False),
])
def test_accept_is_read_as_rfc_9110_says(accept: str, taken: bool) -> None:
    assert accepts(accept, "application/json") is taken


def test_every_api_operation_answering_with_a_body_documents_the_406(app) -> None:
    answers = answered_types(app)
    assert answers[("audit.export", "GET")] == ("application/json", "text/csv")
    assert answers[("jobs.show_job", "GET")] == ("application/json",)
    for path, operations in app.api_doc["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/api/") and isinstance(operation, dict):
                assert "406" in operation["responses"], (method, path)
    assert "406" not in app.api_doc["paths"]["/health"]["get"]["responses"]  # not under /api/: unchecked


def test_a_read_accepting_no_json_is_406_naming_what_it_answers_with(client) -> None:
    response = client.get(f"{API}/jobs", headers={"Accept": "application/xml"})
    assert response.status_code == 406 and response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["status"] == 406 and problem["acceptable"] == ["application/json"], problem
    assert "application/xml" in problem["detail"], problem
    assert client.get(f"{API}/jobs", headers={"Accept": "application/json"}).status_code == 200
    assert client.get(f"{API}/jobs").status_code == 200


def test_a_submission_refused_for_its_accept_creates_no_job(client, engine) -> None:
    def jobs() -> int:
        with Session(engine) as session:
            return session.scalar(select(func.count()).select_from(Job))

    before = jobs()
    refused = client.post(SLEEP, json={"seconds": 0}, headers={"Accept": "text/plain"})
    assert refused.status_code == 406, refused.get_json()
    assert jobs() == before  # refused before the job was made: no job the client cannot learn the id of
    assert client.post(SLEEP, json={"seconds": 0}, headers={"Accept": "application/json"}).status_code == 202


def test_a_request_without_a_key_is_401_whatever_it_accepts(app) -> None:
    response = app.test_client().get(f"{API}/jobs", headers={"Accept": "application/xml"})
    assert response.status_code == 401


def test_the_export_s_format_must_be_one_accept_takes(client, engine, keyring, seeded: Any) -> None:
    run_id = str(_closed_run(engine, keyring))
    export = f"{API}/audit/export"
    csv_only = {"Accept": "text/csv"}
    assert client.get(export, query_string={"run_id": run_id, "format": "csv"}, headers=csv_only).mimetype == "text/csv"
    refused = client.get(export, query_string={"run_id": run_id}, headers=csv_only)  # format defaults to json
    assert refused.status_code == 406 and refused.get_json()["acceptable"] == ["application/json"]
    assert client.get(export, query_string={"run_id": run_id, "format": "json"},
                      headers={"Accept": "application/json"}).status_code == 200
    assert client.get(export, query_string={"run_id": run_id, "format": "csv"},
                      headers={"Accept": "application/xml"}).status_code == 406  # neither: refused before the view


def test_the_report_page_answers_a_browser_and_refuses_a_json_only_client(client, engine, keyring, seeded: Any) -> None:
    run_id = str(_closed_run(engine, keyring))
    page = f"{API}/audit/runs/{run_id}/report.html"
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
    assert client.get(page, headers={"Accept": browser}).status_code == 200
    refused = client.get(page, headers={"Accept": "application/json"})
    assert refused.status_code == 406 and refused.get_json()["acceptable"] == ["text/html"]
