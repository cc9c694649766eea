"""Small items earlier reviews noticed and left: ``nosniff`` on every answer, the field a job's
``not-eligible`` / ``team-full`` names, a deleted industry's code on a certificate, a retried
certification job's gates, and ``PLANT_*`` variables no code reads."""

from __future__ import annotations

import uuid
from typing import Any

from tests.test_export_csv_cache_and_page_escapes import _closed_run

API = "/api/v1"


def test_every_answer_forbids_content_sniffing(client, app, engine, keyring, seeded) -> None:
    """Only the report page said ``X-Content-Type-Options: nosniff``. A JSON answer or a CSV
    export echoes what clients wrote (names, a digest's ``kid``, a finding's detail); without
    it an old browser or a proxy's viewer may sniff one as HTML and run what it holds."""
    run_id = _closed_run(engine, keyring)
    answers: dict[str, Any] = {
        "json": client.get(f"{API}/jobs"),
        "json export": client.get(f"{API}/audit/export", query_string={"run_id": str(run_id)}),
        "csv export": client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": "csv"}),
        "report page": client.get(f"{API}/audit/runs/{run_id}/report.html"),
        "a 404 problem": client.get(f"{API}/jobs/{uuid.uuid4()}"),
        "an unknown route": client.get("/no/such/route"),
        "a 401": app.test_client().get(f"{API}/jobs"),
        "a 422": client.get(f"{API}/jobs", query_string={"page_size": "many"}),
        "openapi": client.get("/openapi.json"),
        "metrics": client.get("/metrics"),
    }
    assert {name: r.status_code for name, r in answers.items()} == {
        **{name: 200 for name in answers}, "a 404 problem": 404, "an unknown route": 404, "a 401": 401, "a 422": 422}
    assert {name: r.headers.get("X-Content-Type-Options") for name, r in answers.items()} == {
        name: "nosniff" for name in answers}


def test_gunicorn_s_own_refusals_forbid_content_sniffing_too() -> None:
    from web.gunicorn_worker import problem_bytes

    refusal = problem_bytes(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n", ValueError("too long"))
    head = refusal.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert b"X-Content-Type-Options: nosniff" in head, head
