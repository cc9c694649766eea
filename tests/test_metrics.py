"""``GET /metrics``: request metrics by route template, job/queue/audit state read from the
database (one reading shared by scrapes until it is max-age old), the broker's queue
lengths, and multiprocess mode under gunicorn.

Request counters live for the whole test process, so those tests compare two scrapes;
everything counted from the database is compared with the database itself.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from models.audit_tables import AuditFinding, AuditRun
from models.entities import Skill
from models.jobs import Job
from tests.conftest import gunicorn_serving, recorded_statements, wait_for
from web.metrics import PlantStateCollector
from web.services import app_services

API = "/api/v1"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples_of(families: Iterable[Metric]) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value for family in families for sample in family.samples}


def parse(exposition: str) -> Samples:
    return samples_of(text_string_to_metric_families(exposition))


def _state_reading(collector: PlantStateCollector) -> Samples:
    return samples_of(collector.collect())


def scrape(client) -> Samples:
    response = client.application.test_client().get("/metrics")  # no API key: /metrics is public
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return parse(response.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def test_requests_are_counted_and_timed_by_route_template(client) -> None:
    route = "/api/v1/jobs/<job_id>"
    ids = [str(uuid.uuid4()) for _ in range(4)]
    before = scrape(client)
    for job_id in ids[:3]:
        assert client.get(f"{API}/jobs/{job_id}").status_code == 404
    assert client.get(f"{API}/no-such-thing/{ids[3]}").status_code == 404
    assert client.get(f"{API}/jobs", headers={"Authorization": ""}).status_code == 401  # refused before any view
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("plant_http_requests_total", method="GET", route=route, status="404") == 3
    assert delta("plant_http_request_duration_seconds_count", method="GET", route=route) == 3
    assert delta("plant_http_request_duration_seconds_bucket", method="GET", route=route, le="+Inf") == 3
    assert delta("plant_http_request_duration_seconds_bucket", method="GET", route=route, le="60.0") == 3
    assert delta("plant_http_request_duration_seconds_sum", method="GET", route=route) > 0
    assert delta("plant_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert delta("plant_http_requests_total", method="GET", route="/api/v1/jobs", status="401") == 1
    routes = {dict(labels)["route"] for labels in series(after, "plant_http_requests_total")}
    assert "/metrics" not in routes, "scrapes are not counted"
    assert not [r for r in routes if any(i in r for i in ids)], f"a raw path leaked into a label: {routes}"


def test_job_counts_and_queue_backlog_equal_the_database(client, engine) -> None:
    # Rows without messages, so no worker of the suite changes them under the test.
    rows = [
        ("diagnostics.sleep", "default", "queued", 10), ("diagnostics.sleep", "default", "queued", 5),
        ("diagnostics.sleep", "default", "cancelled", 5), ("skill.certify", "default", "failed", 5),
        ("audit.run", "audit", "queued", 90),
    ]
    with engine.begin() as connection:
        for kind, queue, status, age in rows:
            since = func.now() - dt.timedelta(seconds=age)  # created and queued then, never handed back
            connection.execute(insert(Job).values(kind=kind, queue=queue, status=status, params={},
                                                  created_at=since, queued_at=since))
    samples = scrape(client)
    with Session(engine) as session:
        in_db = {(k, s): n for k, s, n in session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))}

    jobs = {(dict(labels)["kind"], dict(labels)["status"]): v for labels, v in series(samples, "plant_jobs").items()}
    assert {key: v for key, v in jobs.items() if v} == in_db
    assert in_db[("diagnostics.sleep", "queued")] == 2 and in_db[("skill.certify", "failed")] == 1
    assert jobs[("agent.assign_team", "succeeded")] == 0  # every known kind and status is there, zeros included
    assert value(samples, "plant_jobs_queued", queue="audit") == 1
    assert value(samples, "plant_jobs_queued", queue="default") == 2
    assert 90 <= value(samples, "plant_jobs_queued_oldest_age_seconds", queue="audit") < 120
    assert 10 <= value(samples, "plant_jobs_queued_oldest_age_seconds", queue="default") < 40
    assert value(samples, "plant_metrics_source_up", source="database") == 1
    assert value(samples, "plant_metrics_source_up", source="broker") == 1
    assert {dict(labels)["queue"] for labels in series(samples, "plant_broker_queue_length")} == {"default", "audit", "maintenance"}


def test_broker_queue_length_is_the_redis_list_length(app, redis_client) -> None:
    queue = f"metrics-test-{uuid.uuid4().hex[:8]}"  # a queue no worker consumes
    redis_client.rpush(queue, b"a", b"b", b"c")
    try:
        reading = _state_reading(PlantStateCollector(app_services(app), broker_queues=[queue]))
    finally:
        redis_client.delete(queue)
    assert series(reading, "plant_broker_queue_length") == {frozenset({("queue", queue)}): 3}


@pytest.mark.usefixtures("worker")
def test_audit_duration_and_findings_of_the_latest_run(client, seeded, engine) -> None:
    with Session(engine) as session, session.begin():
        session.execute(Skill.__table__.update().where(Skill.skill_key == "copywriting").values(description="forged"))
    before = scrape(client)
    assert value(before, "plant_audit_run_duration_seconds_count") == 0
    # A status no run has is 0, not absent: `rate()` and alerts on it need the series.
    assert {dict(labels)["status"]: v for labels, v in series(before, "plant_audit_runs").items()} == dict.fromkeys(
        ("running", "succeeded", "failed", "cancelled"), 0)
    job = client.post(f"{API}/audit/run", json={}).get_json()
    done = wait_for(lambda: (j := client.get(f"{API}/jobs/{job['id']}", query_string={"wait": 5}).get_json())["status"] != "queued"
                    and j["status"] != "running" and j, timeout=120, what="the audit to finish")
    assert done["status"] == "succeeded", done

    samples = parse(client.get("/metrics").get_data(as_text=True))  # with a key: the findings too
    with Session(engine) as session:
        run = session.scalar(select(AuditRun).where(AuditRun.job_id == uuid.UUID(job["id"])))
        findings = {(c, s): n for c, s, n in session.execute(
            select(AuditFinding.code, AuditFinding.severity, func.count()).where(AuditFinding.run_id == run.id)
            .group_by(AuditFinding.code, AuditFinding.severity))}
    duration = (run.finished_at - run.created_at).total_seconds()
    assert value(samples, "plant_audit_run_duration_seconds_count") == 1
    assert value(samples, "plant_audit_run_duration_seconds_sum") == pytest.approx(duration, abs=1e-3)
    assert value(samples, "plant_audit_last_run_duration_seconds") == pytest.approx(duration, abs=1e-3)
    assert value(samples, "plant_audit_last_run_finished_timestamp_seconds") == pytest.approx(run.finished_at.timestamp(), abs=1e-3)
    assert value(samples, "plant_audit_runs", status="succeeded") == 1
    exposed = {(dict(labels)["code"], dict(labels)["severity"]): v for labels, v in series(samples, "plant_audit_findings").items()}
    assert exposed == findings
    assert exposed[("row-content-mismatch", "critical")] == 1
    assert exposed[("rule-warning", "warning")] == 6  # TEAM-01: every seeded team is empty


def test_metrics_show_no_ids_or_names(client, seeded) -> None:
    job = client.post(f"{API}/diagnostics/sleep", json={"seconds": 0, "steps": 1}).get_json()
    client.get(f"{API}/jobs/{job['id']}")
    text = client.get("/metrics").get_data(as_text=True)
    assert "plant_jobs{" in text
    assert "Genesis Steward" not in text
    assert not UUID.search(text), UUID.search(text)


def test_a_scrape_with_the_database_and_redis_down_still_answers(settings) -> None:
    from web import create_app

    unreachable = settings.model_copy(update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none",
                                              "redis_url": "redis://127.0.0.1:1/0"})
    response = create_app(unreachable).test_client().get("/metrics")
    assert response.status_code == 200
    samples = parse(response.get_data(as_text=True))
    assert value(samples, "plant_metrics_source_up", source="database") == 0
    assert value(samples, "plant_metrics_source_up", source="broker") == 0
    assert not series(samples, "plant_jobs") and not series(samples, "plant_broker_queue_length")


@pytest.fixture
def gunicorn_api(settings, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """The API under gunicorn with two worker processes; yields (base URL, metrics dir, log)."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left by an earlier run")  # must be cleared at start
    log_path = tmp_path / "gunicorn.log"
    with gunicorn_serving(settings, log_path, processes=2, threads=4, metrics_dir=metrics_dir) as base:
        yield base, metrics_dir, log_path


def test_gunicorn_workers_share_request_metrics_and_log_json(gunicorn_api) -> None:
    base, metrics_dir, log_path = gunicorn_api
    route = "/api/v1/jobs/<job_id>"
    before = parse(requests.get(f"{base}/metrics", timeout=10).text)
    sent = 40
    with requests.Session() as http:
        for _ in range(sent):
            # A fresh connection each time, so both workers take requests.
            assert http.get(f"{base}{API}/jobs/{uuid.uuid4()}", headers={"Connection": "close"}, timeout=10).status_code == 401
    # Several scrapes, whichever worker answers each: the count is the sum over both.
    for _ in range(4):
        after = parse(requests.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=10).text)
        counted = (value(after, "plant_http_requests_total", method="GET", route=route, status="401")
                   - value(before, "plant_http_requests_total", method="GET", route=route, status="401"))
        assert counted == sent
        assert value(after, "plant_metrics_source_up", source="database") == 1
    assert not (metrics_dir / "counter_1.db").exists()
    assert list(metrics_dir.glob("counter_*.db")), "the workers write their counters to the shared directory"

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    requests_logged = [r for r in lines if r.get("route") == route]
    assert len(requests_logged) == sent and all(r["status"] == 401 and r["request_id"] for r in requests_logged)
    assert any(r["logger"].startswith("gunicorn.error") for r in lines), "gunicorn's own log is JSON too"


@contextmanager
def own_app(settings) -> Iterator[Any]:
    """An app of its own (its own engine and /metrics reading), disposed of afterwards."""
    from web import create_app

    app = create_app(settings)
    try:
        yield app
    finally:
        app_services(app).engine.dispose()


def test_a_reading_serves_every_scrape_until_it_is_max_age_old(settings, engine) -> None:
    with own_app(settings.model_copy(update={"metrics_state_max_age_seconds": 300})) as app:
        first = scrape(app.test_client())
        with engine.begin() as connection:
            connection.execute(insert(Job).values(kind="diagnostics.sleep", queue="default", status="queued", params={}))
        with recorded_statements(app_services(app).engine) as sent:
            second = scrape(app.test_client())
    assert sent == [], "a scrape within the max age reads nothing"
    assert series(second, "plant_jobs") == series(first, "plant_jobs")
    assert value(second, "plant_metrics_source_up", source="database") == 1

    # A process whose reading may be 0 s old sees the new row at once.
    with own_app(settings) as fresh:
        queued = value(scrape(fresh.test_client()), "plant_jobs", kind="diagnostics.sleep", status="queued")
    assert queued == value(first, "plant_jobs", kind="diagnostics.sleep", status="queued") + 1


def test_a_reading_is_renewed_once_it_is_older_than_max_age(app, engine) -> None:
    collector = PlantStateCollector(app_services(app), max_age_seconds=0.2)
    before = value(_state_reading(collector), "plant_jobs_queued", queue="default")
    with engine.begin() as connection:
        connection.execute(insert(Job).values(kind="diagnostics.sleep", queue="default", status="queued", params={}))
    wait_for(lambda: value(_state_reading(collector), "plant_jobs_queued", queue="default") == before + 1,
             timeout=10, what="the reading to be renewed")


def test_concurrent_scrapes_share_one_reading(app) -> None:
    svc = app_services(app)
    with recorded_statements(svc.engine) as one_reading:
        _state_reading(PlantStateCollector(svc))
    collector = PlantStateCollector(svc, max_age_seconds=300)
    start = threading.Barrier(8)

    def scrape_at_once(_: int) -> Samples:
        start.wait()
        return _state_reading(collector)

    with recorded_statements(svc.engine) as sent, ThreadPoolExecutor(8) as pool:
        readings = list(pool.map(scrape_at_once, range(8)))
    assert len(sent) == len(one_reading) > 0
    assert all(r == readings[0] for r in readings)
