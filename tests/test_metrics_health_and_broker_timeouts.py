"""Review of observability and health (r162): ``/metrics`` under gunicorn as the deployments
start it, ``/health`` with a Redis that answers PING but refuses every write, and a job
submission to a Redis that takes the connection and never answers."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
import requests
from sqlalchemy.orm import Session

from cli.services import EmbeddedRedis
from models.jobs import Job
from tests.conftest import embedded_server, gunicorn_serving, wait_for
from tests.test_metrics import parse, value
from web import create_app
from web.services import app_services

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


@contextmanager
def redis_refusing_writes(refusal: str) -> Iterator[str]:
    """A Redis of its own that answers PING but refuses every write: a replica (what a failover
    leaves the old primary as), or one at its ``maxmemory`` under ``noeviction``."""
    with contextmanager(embedded_server)(EmbeddedRedis, "redis-refusing") as url:
        admin = redis.Redis.from_url(url)
        try:
            if refusal == "replica":
                admin.replicaof("127.0.0.1", "1")  # a primary that is not there: it stays a read-only replica
            else:
                admin.config_set("maxmemory-policy", "noeviction")
                admin.config_set("maxmemory", "1")
            with pytest.raises(redis.ResponseError):
                admin.lpush("celery", "a message")  # what publishing a job does
            assert admin.ping()
            yield url
        finally:
            admin.close()


@pytest.mark.parametrize("refusal", ["replica", "out-of-memory"])
def test_health_does_not_call_a_redis_that_refuses_every_write_up(settings, refusal) -> None:
    """The Redis check was a PING, which such a Redis answers: /health said redis ``up`` (200,
    ``degraded``, blaming the workers, whose replies it refuses too) while no job could be published
    and no worker could take one. A read-only database is ``down`` for the same reason."""
    with redis_refusing_writes(refusal) as url:
        app = create_app(settings.model_copy(update={"redis_url": url}))
        try:
            response = app.test_client().get("/health")
        finally:
            app_services(app).engine.dispose()
    body = response.get_json()
    assert body["checks"]["redis"]["status"] == "down", body
    assert "refuses writes" in body["checks"]["redis"]["error"]
    assert response.status_code == 503 and body["checks"]["workers"]["status"] == "skipped"


def test_a_job_submission_to_a_redis_that_never_answers_is_accepted_on_time(settings, engine, admin_key) -> None:
    """README: "If Redis is down the API still answers 202" and beat publishes the job later. A Redis
    that takes the connection and never answers (frozen, or a network that drops its packets) held
    the request for good: kombu's Redis transport reads with no socket timeout, so the publish after
    the commit never returned, and each such submission kept one of the API's threads (``/health``'s
    included) until the server came back or TCP gave up."""
    with socket.socket() as listener:  # the kernel accepts; nothing ever answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        app = create_app(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{listener.getsockname()[1]}/0"}))
        answered: list[tuple[int, dict]] = []

        def submit() -> None:
            response = app.test_client().post(f"{API}/diagnostics/sleep", json={"seconds": 0},
                                              headers={"Authorization": f"Bearer {admin_key}"})
            answered.append((response.status_code, response.get_json()))

        started = time.monotonic()
        submission = threading.Thread(target=submit, daemon=True)
        submission.start()
        submission.join(timeout=30)
        elapsed = time.monotonic() - started
        try:
            assert answered, "the submission was still waiting on Redis after 30 s"
        finally:
            app_services(app).engine.dispose()
    [(status, body)] = answered
    assert status == 202 and body["status"] == "queued", body
    assert elapsed < 20
    with Session(engine) as session:  # left in the outbox, which beat publishes from
        assert session.get(Job, uuid.UUID(body["id"])).enqueued_at is None


def test_clients_polling_health_do_not_hold_every_thread_of_the_api(settings, tmp_path) -> None:
    """``/health`` is public and its workers check holds the request for the whole health timeout
    (1 s by default, 0.5 s here) whether or not every worker has replied, as inspect cannot know how
    many will. Four clients polling it keep both threads of a 2-thread API busy, and every other
    request, a load balancer's own probe included, waits behind them. ``/metrics``, public too,
    shares one reading among its scrapes for this reason (``PLANT_METRICS_STATE_MAX_AGE_SECONDS``)."""
    with gunicorn_serving(settings, tmp_path / "gunicorn.log", processes=1, threads=2, metrics_dir=None) as base:
        stop = threading.Event()
        answered: list[int] = []

        def poll_health() -> None:
            with requests.Session() as http:
                while not stop.is_set():
                    answered.append(http.get(f"{base}/health", timeout=30).status_code)

        pollers = [threading.Thread(target=poll_health, daemon=True) for _ in range(4)]
        for poller in pollers:
            poller.start()
        try:
            wait_for(lambda: len(answered) >= len(pollers), timeout=30, what="the pollers to be polling")
            waits = []
            for _ in range(5):
                started = time.monotonic()
                assert requests.get(f"{base}/openapi.json", timeout=30).status_code == 200
                waits.append(time.monotonic() - started)
        finally:
            stop.set()
            for poller in pollers:
                poller.join(timeout=30)
    assert max(waits) < 0.3, f"a cheap request waited {max(waits):.2f} s behind /health's pollers: {waits}"


def test_the_request_line_of_a_submission_names_the_job_it_created(client, capsys) -> None:
    """docs/observability.md: "To follow a job from the request that created it to the worker that ran
    it: the request line's request_id and the 202's Location give the job id". The request line had
    neither the Location nor the job id, so an operator given a request id (a client's complaint)
    found the request and no way to the job: only the client had the Location."""
    import json

    capsys.readouterr()
    response = client.post(f"{API}/diagnostics/sleep", json={"seconds": 0, "steps": 1},
                           headers={"X-Request-ID": "complaint-42"})
    assert response.status_code == 202
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [line] = [r for r in lines if r.get("logger") == "web.requests" and r.get("request_id") == "complaint-42"]
    assert line.get("location") == response.headers["Location"]
    assert response.get_json()["id"] in line["location"]
