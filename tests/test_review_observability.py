"""Review of observability and health (r162): ``/metrics`` under gunicorn as the deployments
start it."""

from __future__ import annotations

import uuid

import requests

from tests.conftest import gunicorn_serving
from tests.test_metrics import parse, value

API = "/api/v1"


def test_gunicorn_without_a_preset_metrics_dir_still_sums_its_workers_request_metrics(settings, tmp_path) -> None:
    """Docker, compose, Cloud Run and ``make dev`` set no PROMETHEUS_MULTIPROC_DIR: gunicorn.conf.py
    makes one in ``on_starting``. But the master imported prometheus_client before that hook (loading
    the worker class, ``web.gunicorn_worker``, imports the ``web`` package and web.metrics with it), and
    the library picks in-memory or multiprocess values once, at import: every forked worker counted in
    its own memory, the shared directory stayed empty, and /metrics served no ``plant_http_*`` at all.
    The suite's other gunicorn tests always passed a directory, which hid it."""
    route = f"{API}/jobs/<job_id>"
    with gunicorn_serving(settings, tmp_path / "gunicorn.log", processes=2, threads=2, metrics_dir=None) as base:
        sent = 12
        for _ in range(sent):  # a fresh connection each time, so both workers take requests
            response = requests.get(f"{base}{API}/jobs/{uuid.uuid4()}", headers={"Connection": "close"}, timeout=10)
            assert response.status_code == 401
        for _ in range(3):  # whichever worker answers the scrape
            scraped = parse(requests.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=10).text)
            assert value(scraped, "plant_http_requests_total", method="GET", route=route, status="401") == sent
            assert value(scraped, "plant_http_request_duration_seconds_count", method="GET", route=route) == sent

