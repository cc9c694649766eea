"""Where a pipeline job's time goes: each phase timed alone, with Plant's real functions.

Each phase runs ``n`` times sequentially in this process, against the scenario's
database, through the same engine settings the API and the worker use, and the
median is reported in milliseconds. HTTP phases go through real gunicorn processes:
Plant's ``POST /api/v1/diagnostics/sleep`` and the bare Flask app's ``POST /ping``
(the floor that gunicorn + Flask + one JSON body cost on this machine). Publishing
goes to a scratch Redis database that no worker consumes (purged afterwards).
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from http.client import HTTPConnection

import redis

from bench.harness import BenchStack, median_seconds
from models.api_keys import authenticate
from models.db import make_engine, make_session_factory, single_statement
from models.job_lifecycle import claim_job, create_job, finish_job, report_progress
from models.jobs import JobStatus
from models.settings import Settings
from tasks.celery_app import create_celery
from tasks.dispatch import publish_job

SCRATCH_REDIS_DB = 14
KIND = "diagnostics.sleep"
PARAMS = {"seconds": 0.0, "steps": 1}

# (phase, process, how many times one sleep(0) job does it)
PHASES = [
    ("HTTP POST /diagnostics/sleep, whole request", "api", 1),
    ("  bare Flask POST (gunicorn + Flask floor)", "api", 1),
    ("  auth: checkout + API-key lookup (autocommit)", "api", 1),
    ("  create_job (autocommit), connection back to the pool", "api", 1),
    ("  publish_job (Redis)", "api", 1),
    ("claim_job (autocommit)", "worker", 1),
    # The sleep job reports 0/1 and 1/1 within microseconds of its claim: both ride along
    # with finish_job (PLANT_PROGRESS_MIN_INTERVAL_SECONDS), so neither is a statement.
    ("report_progress (autocommit; a sleep(0) job writes none)", "worker", 0),
    ("finish_job (autocommit)", "worker", 1),
]
API_PHASES = 5  # the first five are the API's


def _median_ms(action: Callable[[], object], n: int) -> float:
    return round(median_seconds(action, n) * 1000, 3)


def _lap(into: list[float], since: float) -> float:
    now = time.perf_counter()
    into.append(now - since)
    return now


def _http_post_ms(port: int, path: str, headers: dict[str, str], n: int) -> float:
    connection = HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {**headers, "Content-Type": "application/json"}

    def post() -> None:
        connection.request("POST", path, body=b'{"seconds": 0}', headers=headers)
        response = connection.getresponse()
        response.read()
        assert response.status in (200, 202), response.status

    try:
        post()  # open the keep-alive connection outside the measurement
        return _median_ms(post, n)
    finally:
        connection.close()


def measure_phases(stack: BenchStack, settings: Settings, *, api_port: int, bare_port: int, n: int) -> dict[str, float]:
    """Median milliseconds per call of each phase in :data:`PHASES`."""
    api_autocommit = make_engine(settings).execution_options(isolation_level="AUTOCOMMIT")
    worker_sessions = make_session_factory(make_engine(settings, pool_size=2))
    scratch = settings.model_copy(update={"redis_url": stack.redis_url(SCRATCH_REDIS_DB)})
    celery = create_celery(scratch)
    results: dict[str, float] = {}
    names = [name for name, _, _ in PHASES]
    results[names[0]] = _http_post_ms(api_port, "/api/v1/diagnostics/sleep", stack.headers, n)
    results[names[1]] = _http_post_ms(bare_port, "/ping", {}, n)

    # The API request's database work, as accept_job does it for a POST without
    # Idempotency-Key: the key lookup (pool checkout) and the INSERT (stamped as published)
    # in autocommit, the connection back to the pool, then the message is published. Each
    # part is timed on its own.
    samples: dict[str, list[float]] = {name: [] for name in names[2:API_PHASES]}
    jobs: list[uuid.UUID] = []
    for _ in range(n):
        clock = time.perf_counter()
        with api_autocommit.connect() as connection:
            caller = authenticate(connection, stack.admin_key)
            clock = _lap(samples[names[2]], clock)
            jobs.append(create_job(connection, kind=KIND, params=PARAMS, to_publish=True,
                                   requested_by=f"api-key:{caller.id}").id)
        clock = _lap(samples[names[3]], clock)
        publish_job(celery, job_id=jobs[-1], kind=KIND)
        _lap(samples[names[4]], clock)
    results.update({name: round(statistics.median(values) * 1000, 3) for name, values in samples.items()})

    claims = []
    to_claim = iter(jobs)

    def claim() -> None:
        with single_statement(worker_sessions) as s:
            claims.append(claim_job(s, job_id=next(to_claim), worker="bench", lease_seconds=300))

    results[names[API_PHASES]] = _median_ms(claim, n)
    progressing = iter(claims * 2)

    def progress() -> None:
        with single_statement(worker_sessions) as s:
            report_progress(s, claim=next(progressing), done=1, total=1, message="bench", lease_seconds=300)

    results[names[API_PHASES + 1]] = _median_ms(progress, n)
    finishing = iter(claims)

    def finish() -> None:
        with single_statement(worker_sessions) as s:
            finish_job(s, claim=next(finishing), status=JobStatus.SUCCEEDED, result={"slept": 0.0})

    results[names[API_PHASES + 2]] = _median_ms(finish, n)
    celery.close()
    with redis.Redis.from_url(scratch.redis_url) as scratch_redis:
        scratch_redis.flushdb()
    api_autocommit.engine.dispose()
    worker_sessions.kw["bind"].dispose()
    return results


def phases_markdown(phases: dict[str, float]) -> str:
    rows = ["| phase | process | calls per job | median ms per call |", "|---|---|---:|---:|"]
    for name, process, calls in PHASES:
        if name in phases:
            label = name.strip()
            label = f"&nbsp;&nbsp;{label}" if name.startswith("  ") else label
            rows.append(f"| {label} | {process} | {calls} | {phases[name]:.3f} |")
    names = [name for name, _, _ in PHASES]
    if all(name in phases for name in names):
        remainder = phases[names[0]] - sum(phases[name] for name in names[1:API_PHASES])
        statements = sum(phases[name] * calls for name, _, calls in PHASES[API_PHASES:])
        label = ("remainder: everything not timed above (gunicorn thread hand-offs, request validation, "
                 "serialization, logging, metrics)")
        rows.insert(2 + API_PHASES, f"| &nbsp;&nbsp;{label} | api | 1 | {remainder:.3f} |")
        rows.append(f"| worker statements per job (claim + finish) | worker | 1 | {statements:.3f} |")
    return "\n".join(rows)
