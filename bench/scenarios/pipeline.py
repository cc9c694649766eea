"""Scenario 1, the job pipeline: Plant's completed jobs/s versus bare Celery's tasks/s.

Plant: ``n`` ``diagnostics.sleep(0)`` jobs are POSTed to a real gunicorn API by
:data:`CLIENT_THREADS` keep-alive client threads while a real worker (prefork,
concurrency 2) runs them; the clock runs from the first POST to the last job's
``finished_at``, and completion is watched with one cheap COUNT query every 50 ms.
Baseline: ``n`` no-op tasks of :mod:`bench.bare_celery`, published by the same number
of threads, consumed by a worker with the same pool and concurrency. Beside them, the
job-table floor (:mod:`bench.floor_pipeline`): the same jobs through the least an API and
worker that record them in PostgreSQL must do. Runs alternate (Plant, bare, floor, Plant,
...) so machine noise hits all three; the medians are compared.
Target: Plant >= 0.8x bare. CPU seconds per job and process, and the phase timings of
:mod:`bench.pipeline_phases`, say where the time goes.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from http.client import HTTPConnection
from typing import Any

import redis
from sqlalchemy import text

from bench.bare_celery import DONE_AT_KEY, DONE_KEY, TASK_NAME, create_bare_celery
from bench.floor_pipeline import PATH as FLOOR_PATH
from bench.harness import BARE_CELERY_REDIS_DB, BenchResult, BenchStack, median_run
from bench.pipeline_phases import measure_phases, phases_markdown
from models.settings import Settings

TITLE = "Job pipeline"
CLIENT_THREADS = 8
RUNS = 3
TARGET_RATIO = 0.8
POLL_SECONDS = 0.05
COUNTS = text(
    "SELECT count(*) FILTER (WHERE status = 'succeeded'), "
    "count(*) FILTER (WHERE status IN ('failed', 'cancelled')), "
    "extract(epoch FROM max(finished_at)) FROM jobs"
)


def _in_threads(n: int, send: Callable[[Any, int], None], make_client: Callable[[], Any]) -> None:
    """Call ``send(client, i)`` for i in range(n) from CLIENT_THREADS threads."""
    numbers = itertools.count()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def loop() -> None:
        client = make_client()
        try:
            while True:
                with lock:
                    i = next(numbers)
                if i >= n or errors:
                    return
                send(client, i)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)
        finally:
            close = getattr(client, "close", None)
            if close:
                close()

    threads = [threading.Thread(target=loop) for _ in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class HttpJobsSide:
    """Jobs POSTed to ``path`` on ``port``, done when the ``jobs`` table says they succeeded."""

    def __init__(self, stack: BenchStack, settings: Settings, port: int, path: str = "/api/v1/diagnostics/sleep") -> None:
        self.stack, self.settings, self.port, self.path = stack, settings, port, path
        self.headers = {**stack.headers, "Content-Type": "application/json"}

    def _counts(self) -> tuple[int, int, float | None]:
        with self.stack.engine(self.settings).connect() as connection:
            succeeded, failed, last = connection.execute(COUNTS).one()
        return succeeded, failed, float(last) if last is not None else None

    def _post(self, connection: HTTPConnection, _: int) -> None:
        connection.request("POST", self.path, body=b'{"seconds": 0}', headers=self.headers)
        response = connection.getresponse()
        response.read()
        if response.status != 202:
            raise RuntimeError(f"POST answered {response.status}")

    def run(self, n: int) -> dict[str, float]:
        before, failed_before, _ = self._counts()
        started = time.time()
        _in_threads(n, self._post, lambda: HTTPConnection("127.0.0.1", self.port, timeout=30))
        submitted = time.time()
        deadline = time.monotonic() + 60 + n / 5
        while True:
            succeeded, failed, last = self._counts()
            if failed > failed_before:
                raise RuntimeError(f"{failed - failed_before} jobs failed or were cancelled")
            if succeeded - before >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {succeeded - before} of {n} jobs succeeded in time")
            time.sleep(POLL_SECONDS)
        elapsed = last - started
        return {"seconds": round(elapsed, 3), "per_second": n / elapsed, "submit_seconds": round(submitted - started, 3)}


class BareSide:
    def __init__(self, broker_url: str) -> None:
        self.app = create_bare_celery(broker_url)
        self.redis = redis.Redis.from_url(broker_url)

    def run(self, n: int) -> dict[str, float]:
        self.redis.delete(DONE_KEY, DONE_AT_KEY)
        started = time.time()
        _in_threads(n, lambda app, i: app.send_task(TASK_NAME, args=[i]), lambda: self.app)
        submitted = time.time()
        deadline = time.monotonic() + 60 + n / 50
        while int(self.redis.get(DONE_KEY) or 0) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.redis.get(DONE_KEY)} of {n} bare tasks ran in time")
            time.sleep(POLL_SECONDS)
        elapsed = float(self.redis.get(DONE_AT_KEY)) - started
        return {"seconds": round(elapsed, 3), "per_second": n / elapsed, "submit_seconds": round(submitted - started, 3)}

    def close(self) -> None:
        self.app.close()
        self.redis.close()


def _metered(stack: BenchStack, n: int, side: HttpJobsSide | BareSide, **processes: Any) -> dict[str, Any]:
    meter = stack.cpu_meter(**processes).start()
    outcome: dict[str, Any] = side.run(n)
    cpu = meter.stop()
    outcome["cpu_ms_per_job"] = {name: round(seconds * 1000 / n, 3) for name, seconds in cpu.items()}
    return outcome


def _median_cpu(runs: list[dict[str, Any]]) -> dict[str, float]:
    names = runs[0]["cpu_ms_per_job"]
    return {name: round(median_run([r["cpu_ms_per_job"][name] for r in runs]), 3) for name in names}


def run(stack: BenchStack, quick: bool) -> list[BenchResult]:
    n = 500 if quick else 2000
    plant_settings = stack.fresh_database("bench_pipeline")
    bare_url = stack.redis_url(BARE_CELERY_REDIS_DB)
    bare_settings = stack.settings.model_copy(update={"redis_url": bare_url})
    port, bare_api_port = stack.free_port(), stack.free_port()
    api = stack.start_api(plant_settings, port=port, name="pipeline-api")
    worker = stack.start_worker(plant_settings, queues="default", name="pipeline-worker")
    bare_worker = stack.start_worker(bare_settings, app="bench.bare_celery", queues="celery", name="bare-worker")
    floor_settings = stack.fresh_database("bench_pipeline_floor")
    floor_port = stack.free_port()
    floor_api = stack.start_api(floor_settings, port=floor_port, app="bench.floor_pipeline:create_app()",
                                name="pipeline-floor-api")
    floor_worker = stack.start_worker(floor_settings, app="bench.floor_pipeline", queues="celery",
                                      name="pipeline-floor-worker")
    plant, bare = HttpJobsSide(stack, plant_settings, port), BareSide(bare_url)
    floor = HttpJobsSide(stack, floor_settings, floor_port, path=FLOOR_PATH)
    try:
        plant.run(50)  # warm-up: connections, imports, caches
        bare.run(200)
        floor.run(200)
        plant_runs, bare_runs, floor_runs = [], [], []
        for _ in range(RUNS):
            plant_runs.append(_metered(stack, n, plant, api=api, worker=worker))
            bare_runs.append(_metered(stack, n, bare, worker=bare_worker))
            floor_runs.append(_metered(stack, n, floor, api=floor_api, worker=floor_worker))
    finally:
        bare.close()
    for process in (bare_worker, floor_worker, floor_api):
        stack.stop(process)
    delivery = _bare_with_plant_delivery(stack, bare_settings, n)
    bare_api = stack.start_api(stack.settings, port=bare_api_port, app="bench.bare_flask:create_app()",
                               name="pipeline-bare-flask")
    phases = measure_phases(stack, plant_settings, api_port=port, bare_port=bare_api_port, n=100 if quick else 300)
    for process in (bare_api, worker, api):
        stack.stop(process)
    plant_rate = median_run([r["per_second"] for r in plant_runs])
    bare_rate = median_run([r["per_second"] for r in bare_runs])
    floor_rate = median_run([r["per_second"] for r in floor_runs])
    details = {
        "jobs": n, "runs": RUNS, "client_threads": CLIENT_THREADS, "worker": "prefork, concurrency 2",
        "plant_runs": plant_runs, "bare_runs": bare_runs,
        "plant_cpu_ms_per_job": _median_cpu(plant_runs), "bare_cpu_ms_per_task": _median_cpu(bare_runs),
        "floor_runs": floor_runs, "floor_per_second": floor_rate, "floor_cpu_ms_per_job": _median_cpu(floor_runs),
        "phases_ms": phases,
    }
    details["bare_plant_delivery_runs"] = delivery
    details["bare_plant_delivery_per_second"] = median_run([r["per_second"] for r in delivery])
    details["bare_plant_delivery_cpu_ms_per_task"] = _median_cpu(delivery)
    return [
        BenchResult.at_least("pipeline", plant_rate, "jobs/s", baseline=bare_rate, min_ratio=TARGET_RATIO,
                             details=details),
        # The least any pipeline with a job table does (bench/floor_pipeline.py): below
        # the target's ratio, the target is out of reach for any such design here.
        BenchResult.report_only("pipeline.job_table_floor", floor_rate, "jobs/s", baseline=bare_rate,
                                details={"runs": floor_runs}),
    ]


def _bare_with_plant_delivery(stack: BenchStack, settings: Settings, n: int) -> list[dict[str, Any]]:
    """Bare Celery with Plant's late acks, prefetch 1 and events: Celery's share of the gap."""
    worker = stack.start_worker(settings, app="bench.bare_celery", queues="celery", name="bare-delivery-worker",
                                env={"BENCH_BARE_PLANT_DELIVERY": "1"})
    side = BareSide(settings.redis_url)
    try:
        side.run(200)
        return [_metered(stack, n, side, worker=worker) for _ in range(RUNS)]
    finally:
        side.close()
        stack.stop(worker)


def markdown(results: list[BenchResult]) -> str:
    """The where-does-the-time-go tables for docs/benchmarks.md."""
    details = results[0].details if results and "phases_ms" in results[0].details else None
    if details is None:
        return ""
    plant, bare = details["plant_cpu_ms_per_job"], details["bare_cpu_ms_per_task"]
    delivery = details.get("bare_plant_delivery_cpu_ms_per_task", {})
    floor = details.get("floor_cpu_ms_per_job", {})
    columns = (plant, bare, delivery, floor)
    rows = ["| process | Plant, CPU ms per job | bare Celery, CPU ms per task | bare Celery with Plant's delivery settings "
            "| job-table floor, CPU ms per job |",
            "|---|---:|---:|---:|---:|"]
    for name in ("api", "worker", "postgres", "redis", "client"):
        rows.append(f"| {name} | " + " | ".join(f"{column.get(name, 0):.2f}" for column in columns) + " |")
    rows.append("| **total** | " + " | ".join(f"**{sum(column.values()):.2f}**" for column in columns) + " |")
    rates = (f"Throughput (medians): Plant {results[0].value:.1f} jobs/s, bare Celery {results[0].baseline:.1f} "
             f"tasks/s, bare Celery with Plant's delivery settings (late acks, prefetch 1, task events) "
             f"{details['bare_plant_delivery_per_second']:.1f} tasks/s, the job-table floor "
             f"(`bench/floor_pipeline.py`: key lookup, INSERT and publish in the API; claim and finish UPDATEs in a "
             f"bare Celery task with Celery's default delivery) {details.get('floor_per_second', 0):.1f} jobs/s.")
    return (
        rates + "\n\nCPU per job, by process (median of the runs; on two shared cores CPU is the budget):\n\n"
        + "\n".join(rows)
        + "\n\nPhases of one job, each timed alone and sequentially with Plant's own functions "
        "(`bench/pipeline_phases.py`, wall-clock medians, so they include waiting on the server):\n\n"
        + phases_markdown(details["phases_ms"]) + "\n"
    )
