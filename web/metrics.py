"""Request instrumentation for the API and ``GET /metrics`` in the Prometheus format.

Every request gets a request id (the client's ``X-Request-ID`` when it is a sane token,
otherwise a fresh one), echoed in the response and bound to the log context so each log
line written while serving it carries ``request_id``. When the response is ready the
request is counted, timed and logged as one line, labelled by the Flask route template
(``/api/v1/jobs/<job_id>``), never the raw path, so ids cannot blow up the label set.
``/metrics`` itself is neither counted nor logged.

``/metrics`` is public, like ``/health``: Prometheus scrapes it without a key, and it
shows only counts, durations and ages by bounded labels (no ids, names or parameters).
One family is left out of a scrape without a key: ``plant_audit_findings``, the latest
audit's findings by code. Public, it told whoever altered a record, as soon as the next
audit ended, whether that audit caught it and as what; a scrape with a ``read`` key
(``Authorization: Bearer``) gets it, and one with a bad key gets the API's 401 or 403.
Job, queue and audit numbers are read by :class:`PlantStateCollector` (a few aggregate
queries and a Redis ``LLEN`` per queue). Because anyone may scrape, one API process reads
them at most once per ``PLANT_METRICS_STATE_MAX_AGE_SECONDS`` (5 s) and serves that
reading to every scrape until it is older, so no scrape rate can load the database more.
The collector is registered only in the registry built for one scrape, so no process
reports it twice.
Under gunicorn several processes serve requests: ``gunicorn.conf.py`` sets
``PROMETHEUS_MULTIPROC_DIR`` and each scrape then sums every process's request metrics
with ``MultiProcessCollector``; elsewhere (tests, ``flask run``) this process's own
registry is served. See ``docs/observability.md``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text

from models.logging_setup import bind_log_context, configure_logging, reset_log_context
from models.metrics import AuditStats, JobCount, QueueBacklog, audit_stats, job_counts, queue_backlog
from models.jobs import JobStatus
from models.settings import Settings
from tasks.celery_app import AUDIT_QUEUE, DEFAULT_QUEUE, QUEUES as BROKER_QUEUES
from tasks.dispatch import JOB_ROUTES
from web.auth import metrics_reader
from web.services import Services, SharedReading, app_services, services

log = logging.getLogger(__name__)
request_log = logging.getLogger("web.requests")  # one line per request

METRICS_PATH = "/metrics"
REQUEST_ID_HEADER = "X-Request-ID"
# Letters, digits and a few separators: safe in a header, a log line and a JSON string.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}", re.ASCII)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"  # 404s and unknown methods: one label, whatever the path
QUEUES = (DEFAULT_QUEUE, AUDIT_QUEUE)  # the queues jobs go to (the broker's hold beat's recovery too)
# A job's GET takes about half a millisecond in the app (docs/benchmarks.md), so the buckets start
# at 100 µs, each at most 2.5 times the one below it up to 10 s: a quantile is read from a bucket
# that brackets it, not interpolated across 0-5 ms. Long-polls last up to 30 s, so they reach past it.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)
SCRAPE_STATEMENT_TIMEOUT_MS = 5000
# The whole database reading's deadline. The statement timeout is the server's: a frozen server
# (or a network that drops packets) never runs it, and the scrape, with every scrape queued
# behind the reading's lock, would wait until TCP gave up (stop 37).
SCRAPE_DATABASE_DEADLINE_SECONDS = SCRAPE_STATEMENT_TIMEOUT_MS / 1000
STATE_COLLECTOR_KEY = "plant_metrics_state"  # the app's PlantStateCollector, in app.extensions

# Kept out of prometheus_client's global registry: a scrape chooses what it serves.
REQUEST_REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter(
    "plant_http_requests", "HTTP requests served, by method, route template and status",
    ["method", "route", "status"], registry=REQUEST_REGISTRY,
)
HTTP_LATENCY = Histogram(
    "plant_http_request_duration_seconds", "Time to produce a response, by method and route template",
    ["method", "route"], buckets=LATENCY_BUCKETS, registry=REQUEST_REGISTRY,
)


def incoming_request_id(value: str | None) -> str:
    """The client's id when it is a sane token, else a new random one."""
    if value and SANE_REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def route_label() -> str:
    return request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE


def _start_request() -> None:
    started = time.perf_counter()
    context = g._get_current_object()  # noqa: SLF001 - werkzeug's public way past the proxy
    context.request_started = started
    context.request_id = request_id = incoming_request_id(request.headers.get(REQUEST_ID_HEADER))
    context.log_context_token = bind_log_context(request_id=request_id)


# The children of the request metrics by label values, each found once: prometheus_client's
# ``labels()`` checks and joins its arguments and takes a lock on every call, for the same
# few children (bounded labels) every request.
_REQUEST_COUNTERS: dict[tuple[str, str, str], Any] = {}
_REQUEST_LATENCIES: dict[tuple[str, str], Any] = {}


def _count_request(method: str, route: str, status: str, seconds: float) -> None:
    counter = _REQUEST_COUNTERS.get((method, route, status))
    if counter is None:
        counter = _REQUEST_COUNTERS[(method, route, status)] = HTTP_REQUESTS.labels(method, route, status)
    latency = _REQUEST_LATENCIES.get((method, route))
    if latency is None:
        latency = _REQUEST_LATENCIES[(method, route)] = HTTP_LATENCY.labels(method, route)
    counter.inc()
    latency.observe(seconds)


def _finish_request(response: Response) -> Response:
    # The request and g once each, past their proxies: this runs on every request.
    context, served = g._get_current_object(), request._get_current_object()  # noqa: SLF001
    response.headers[REQUEST_ID_HEADER] = context.get("request_id") or incoming_request_id(None)
    route = served.url_rule.rule if served.url_rule is not None else UNMATCHED_ROUTE
    if route == METRICS_PATH:
        return response
    seconds = time.perf_counter() - context.get("request_started", time.perf_counter())
    method, path, status = served.method, served.path, response.status_code
    _count_request(method if method in KNOWN_METHODS else "other", route, str(status), seconds)
    api_key = context.get("api_key")
    # A 202's Location names the job it created: the link from this request id to the worker's
    # lines, which carry the job id. Only the client saw it otherwise.
    location = response.headers.get("Location")
    request_log.info(
        "%s %s %s %.1fms", method, path, status, seconds * 1000,
        extra={"method": method, "route": route, "path": path, "status": status,
               "duration_ms": round(seconds * 1000, 1), "remote": served.remote_addr,
               **({"api_key_id": str(api_key.id)} if api_key is not None else {}),
               **({"location": location} if location else {})},
    )
    return response


def _end_request(_: BaseException | None = None) -> None:
    token = g.pop("log_context_token", None)
    if token is not None:
        reset_log_context(token)


def _family(name: str, doc: str, labels: list[str], values: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, value)
    return family


def job_families(counts: list[JobCount], kinds: Iterable[str]) -> list[Metric]:
    """Every known kind with every status (zeros included), plus any other kind in the table."""
    by_key = {(c.kind, c.status): c.count for c in counts}
    all_kinds = sorted(set(kinds) | {c.kind for c in counts})
    values = [([kind, s.value], by_key.get((kind, s.value), 0)) for kind in all_kinds for s in JobStatus]
    return [_family("plant_jobs", "Jobs in the jobs table, by kind and status", ["kind", "status"], values)]


def backlog_families(backlog: list[QueueBacklog], queues: Iterable[str]) -> list[Metric]:
    by_queue = {b.queue: b for b in backlog}
    names = sorted(set(queues) | set(by_queue))
    empty = QueueBacklog("", 0, 0.0)
    return [
        _family("plant_jobs_queued", "Jobs waiting in status queued, by queue", ["queue"],
                [([q], by_queue.get(q, empty).queued) for q in names]),
        _family("plant_jobs_queued_oldest_age_seconds", "Age of the oldest queued job (0 when none), by queue",
                ["queue"], [([q], by_queue.get(q, empty).oldest_age_seconds) for q in names]),
    ]


# What ``audit_runs.status`` holds: ``running`` until its close, then its job's end.
AUDIT_RUN_STATUSES = ("running", JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)


def audit_families(stats: AuditStats) -> list[Metric]:
    durations = SummaryMetricFamily(
        "plant_audit_run_duration_seconds", "Duration of every succeeded audit run (created to finished)",
        count_value=stats.finished_runs, sum_value=stats.finished_duration_sum_seconds,
    )
    families: list[Metric] = [
        _family("plant_audit_runs", "Audit runs, by status (every status a run takes, zeros included)", ["status"],
                [([status], stats.runs_by_status.get(status, 0))
                 for status in sorted(set(AUDIT_RUN_STATUSES) | set(stats.runs_by_status))]),
        durations,
        _family("plant_audit_findings", "Findings of the latest succeeded audit run, by code and severity",
                ["code", "severity"], [([f.code, f.severity], f.count) for f in stats.last_run_findings]),
    ]
    if stats.last_duration_seconds is not None and stats.last_finished_at_epoch is not None:
        families += [
            GaugeMetricFamily("plant_audit_last_run_duration_seconds", "Duration of the latest succeeded audit run",
                              value=stats.last_duration_seconds),
            GaugeMetricFamily("plant_audit_last_run_finished_timestamp_seconds",
                              "When the latest succeeded audit run finished (Unix time)",
                              value=stats.last_finished_at_epoch),
        ]
    return families


class PlantStateCollector:
    """Metrics from PostgreSQL and the broker; a source that fails reports up=0.

    A reading is reused by every scrape until it is ``max_age_seconds`` old (0: read on
    each scrape). One scrape reads at a time: others arriving meanwhile wait for it and
    serve what it read, so a burst of scrapes costs one reading. A failed source is
    remembered as long, which spares a struggling database the retries.
    """

    def __init__(self, svc: Services, *, queues: Iterable[str] = QUEUES, broker_queues: Iterable[str] = BROKER_QUEUES,
                 kinds: Iterable[str] = tuple(JOB_ROUTES), max_age_seconds: float = 0.0) -> None:
        self._svc = svc
        self._queues = tuple(queues)
        self._broker_queues = tuple(broker_queues)
        self._kinds = tuple(kinds)
        self._reading = SharedReading(max_age_seconds, wait=True)
        # One thread reads the database, so a reading stuck on a frozen server holds that
        # thread (and its pooled connection) alone. A reading that outlives its scrape's
        # deadline is not started again: the next scrape waits on it, or serves it if it has
        # ended meanwhile (a database slow to answer still gets its counts out, a scrape late).
        self._database_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-db")
        self._database_in_flight: Future[list[Metric]] | None = None

    def describe(self) -> list[Metric]:
        return []  # nothing to check up front, and no query at registration

    def collect(self) -> Iterator[Metric]:
        yield from self._reading.get(self._read)

    def _read(self) -> list[Metric]:
        sources: tuple[tuple[str, Callable[[], list[Metric]]], ...] = (
            ("database", self._database), ("broker", self._broker),
        )
        up = GaugeMetricFamily("plant_metrics_source_up", "1 when the source answered its latest reading",
                               labels=["source"])
        families: list[Metric] = []
        for source, read in sources:
            try:
                families += read()
                answered = 1
            except Exception as exc:  # noqa: BLE001 - a scrape reports a dead dependency, it does not fail
                log.warning("metrics: the %s did not answer: %s: %s", source, type(exc).__name__, str(exc)[:300])
                answered = 0
            up.add_metric([source], answered)
        return [*families, up]

    def _database(self) -> list[Metric]:
        """The database's reading, within ``SCRAPE_DATABASE_DEADLINE_SECONDS``: the one a
        scrape before this one left running, if there is one (ended since: served now), else a
        new one. Runs under the collector's lock, as every reading does."""
        reading = self._database_in_flight or self._database_reader.submit(self._read_database)
        self._database_in_flight = reading
        try:
            result = reading.result(timeout=SCRAPE_DATABASE_DEADLINE_SECONDS)
        except FutureTimeout:
            raise TimeoutError(f"no answer within {SCRAPE_DATABASE_DEADLINE_SECONDS:g}s") from None
        except BaseException:
            self._database_in_flight = None
            raise
        self._database_in_flight = None
        return result

    def _read_database(self) -> list[Metric]:
        with self._svc.sessions() as session, session.begin():
            session.execute(text(f"SET LOCAL statement_timeout = {SCRAPE_STATEMENT_TIMEOUT_MS}"))
            jobs, backlog, audits = job_counts(session), queue_backlog(session), audit_stats(session)
        return [*job_families(jobs, self._kinds), *backlog_families(backlog, self._queues), *audit_families(audits)]

    def _broker(self) -> list[Metric]:
        pipeline = self._svc.redis.pipeline(transaction=False)
        queues = self._broker_queues
        for queue in queues:
            pipeline.llen(queue)  # Celery's Redis transport keeps each queue as a list of that name
        lengths = pipeline.execute()
        return [_family("plant_broker_queue_length", "Messages waiting in the broker, by queue", ["queue"],
                        [([q], n) for q, n in zip(queues, lengths, strict=True)])]


FINDINGS_FAMILY = "plant_audit_findings"  # served only to a scrape with a read key


class PublicState:
    """The state collector's reading minus the audit findings: what a scrape without a key gets."""

    def __init__(self, state: PlantStateCollector) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return (family for family in self._state.collect() if family.name != FINDINGS_FAMILY)


def scrape_registry(svc: Services, state: PlantStateCollector, *, findings: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry()
    if svc.settings.prometheus_multiproc_dir is not None:
        MultiProcessCollector(registry, path=str(svc.settings.prometheus_multiproc_dir))
    else:
        registry.register(REQUEST_REGISTRY)  # type: ignore[arg-type] - a registry is a collector
    registry.register(state if findings else PublicState(state))  # type: ignore[arg-type]
    return registry


def metrics() -> Response:
    """Prometheus exposition (OpenMetrics when the scraper asks for it); the audit findings
    only for a scrape with a ``read`` key."""
    reader = metrics_reader()
    if isinstance(reader, Response):
        reader.headers["Cache-Control"] = "no-store"
        return reader
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    registry = scrape_registry(services(), current_app.extensions[STATE_COLLECTOR_KEY], findings=reader is not None)
    response = Response(encoder(registry), content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


def observe_requests(app: Flask, settings: Settings) -> None:
    """Logging, and each request's id, metrics and log line (``bench/floor_flask.py`` uses it alone)."""
    configure_logging(settings.log_format, settings.log_level)
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.teardown_request(_end_request)


def init_observability(app: Flask, settings: Settings) -> None:
    """JSON (or console) logs, request ids, request metrics and ``/metrics``.

    Call before other ``before_request`` hooks: one that answers early (a 401) skips the
    hooks after it, and such a response must still get an id and be counted.
    """
    observe_requests(app, settings)
    app.extensions[STATE_COLLECTOR_KEY] = PlantStateCollector(
        app_services(app), max_age_seconds=settings.metrics_state_max_age_seconds,
    )
    app.add_url_rule(METRICS_PATH, "metrics", metrics, methods=["GET"])
