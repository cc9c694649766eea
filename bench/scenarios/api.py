"""Scenario 2, the API: ``GET /api/v1/jobs/{id}`` and a job-creating POST under 16 clients.

Both Plant's API and the baseline (:mod:`bench.bare_flask`, one JSON route) run under
the same ``gunicorn.conf.py`` at the same time, and the same load generator
(:mod:`bench.load`, ``wrk`` by default) drives each with 16 keep-alive connections for
the same duration; runs alternate Plant, bare, Plant, ... and medians are compared.
Targets: GET throughput >= 0.5x bare, GET p99 <= 3x bare p99. The POST
(``/api/v1/diagnostics/sleep``, no worker attached, so it measures the API alone) is
reported against the bare app's POST with no target. A third app,
:mod:`bench.floor_flask`, does only the two statements any authenticated read of a job
must make (key lookup, job row) on raw psycopg: its ratio to bare Flask is the most any
implementation of the route could reach on this machine, and is reported beside Plant's.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.harness import BenchResult, BenchStack, median_run
from bench.load import LoadResult, run_load

TITLE = "API"
CONNECTIONS = 16
RUNS = 3
GET_RATIO = 0.5
P99_RATIO = 3.0
SLEEP_BODY = '{"seconds": 0}'


def _create_job(port: int, headers: dict[str, str]) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/diagnostics/sleep", data=SLEEP_BODY.encode(), method="POST",
        headers={**headers, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        return json.load(response)["id"]


@dataclass(frozen=True)
class Measured:
    """One load run and the CPU it cost per request: the API's gunicorn processes, PostgreSQL."""

    load: LoadResult
    app_cpu_ms: float
    postgres_cpu_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {**self.load.as_dict(), "app_cpu_ms": self.app_cpu_ms, "postgres_cpu_ms": self.postgres_cpu_ms}


def _alternating(runs: int, *sides: Any) -> tuple[list[Measured], ...]:
    results: tuple[list[Measured], ...] = tuple([] for _ in sides)
    for _ in range(runs):
        for side, into in zip(sides, results, strict=True):
            into.append(side())
    return results


def _checked(results: list[Measured], what: str) -> None:
    for result in (m.load for m in results):
        if result.errors or result.bad_status:
            raise RuntimeError(f"{what}: {result.errors} socket errors, {result.bad_status} bad statuses")


def _summary(measured: list[Measured]) -> dict[str, float]:
    results = [m.load for m in measured]
    return {
        "rps": round(median_run([r.rps for r in results]), 1),
        "p50_ms": round(median_run([r.p50_ms for r in results]), 3),
        "p99_ms": round(median_run([r.p99_ms for r in results]), 3),
        "client_cpu_share": round(median_run([r.client_cpu_seconds / r.seconds for r in results]), 3),
        "app_cpu_ms": round(median_run([m.app_cpu_ms for m in measured]), 3),
        "postgres_cpu_ms": round(median_run([m.postgres_cpu_ms for m in measured]), 3),
    }


def run(stack: BenchStack, quick: bool) -> list[BenchResult]:
    seconds = 3 if quick else 10
    settings = stack.fresh_database("bench_api")
    plant_port, bare_port = stack.free_port(), stack.free_port()
    plant_api = stack.start_api(settings, port=plant_port, name="api-plant")
    bare_api = stack.start_api(settings, port=bare_port, app="bench.bare_flask:create_app()", name="api-bare")
    floor_port = stack.free_port()
    floor_api = stack.start_api(settings, port=floor_port, app="bench.floor_flask:create_app()", name="api-floor")
    observed_port = stack.free_port()
    observed_api = stack.start_api(settings, port=observed_port, app="bench.floor_flask:create_app(observed=True)",
                                   name="api-floor-observed")
    job_id = _create_job(plant_port, stack.headers)
    job_path, floor_path = f"/api/v1/jobs/{job_id}", f"/floor/jobs/{job_id}"
    plant_url, bare_url = f"http://127.0.0.1:{plant_port}", f"http://127.0.0.1:{bare_port}"
    floor_url, observed_url = f"http://127.0.0.1:{floor_port}", f"http://127.0.0.1:{observed_port}"
    post_headers = {**stack.headers, "Content-Type": "application/json"}

    def load(api: subprocess.Popen, url: str, path: str, headers: dict[str, str], duration: float,
             **kwargs: Any) -> Callable[[], Measured]:
        """One load run on ``api``, with the CPU it cost per request."""
        def run() -> Measured:
            meter = stack.cpu_meter(app=api).start()
            result = run_load(url, paths=[path], seconds=duration, connections=CONNECTIONS, headers=headers, **kwargs)
            cpu, served = meter.stop(), max(result.requests, 1)
            return Measured(result, round(cpu["app"] / served * 1000, 3), round(cpu["postgres"] / served * 1000, 3))
        return run

    load(plant_api, plant_url, job_path, stack.headers, 1)()  # warm-up: pool connections, imports
    load(bare_api, bare_url, "/ping", {}, 1)()
    load(floor_api, floor_url, floor_path, stack.headers, 1)()
    load(observed_api, observed_url, floor_path, stack.headers, 1)()
    plant_get, bare_get, floor_get, observed_get = _alternating(
        RUNS, load(plant_api, plant_url, job_path, stack.headers, seconds), load(bare_api, bare_url, "/ping", {}, seconds),
        load(floor_api, floor_url, floor_path, stack.headers, seconds),
        load(observed_api, observed_url, floor_path, stack.headers, seconds),
    )
    plant_post, bare_post = _alternating(
        RUNS,
        load(plant_api, plant_url, "/api/v1/diagnostics/sleep", post_headers, seconds, method="POST",
             body_format=SLEEP_BODY),
        load(bare_api, bare_url, "/ping", {"Content-Type": "application/json"}, seconds, method="POST",
             body_format=SLEEP_BODY),
    )
    for process in (plant_api, bare_api, floor_api, observed_api):
        stack.stop(process)
    _checked(plant_get + bare_get + floor_get + observed_get + plant_post + bare_post, "load run")
    get, bare, floor, observed, post, bare_p = (
        _summary(r) for r in (plant_get, bare_get, floor_get, observed_get, plant_post, bare_post))
    details = {
        "client": plant_get[0].load.client, "connections": CONNECTIONS, "seconds_per_run": seconds, "runs": RUNS,
        "get": get, "bare_get": bare, "floor_get": floor, "observed_floor_get": observed, "post": post, "bare_post": bare_p,
        "raw": {name: [r.as_dict() for r in results] for name, results in
                (("get", plant_get), ("bare_get", bare_get), ("floor_get", floor_get), ("observed_floor_get", observed_get), ("post", plant_post),
                 ("bare_post", bare_post))},
    }
    return [
        BenchResult.at_least("api.get", get["rps"], "req/s", baseline=bare["rps"], min_ratio=GET_RATIO, details=details),
        BenchResult.at_most("api.get_p99", get["p99_ms"], "ms", baseline=bare["p99_ms"], max_ratio=P99_RATIO,
                            details={"p50_ms": get["p50_ms"], "bare_p50_ms": bare["p50_ms"]}),
        BenchResult.report_only("api.get_floor", floor["rps"], "req/s", baseline=bare["rps"],
                                details={"p99_ms": floor["p99_ms"], "plant_share_of_floor": round(get["rps"] / floor["rps"], 3)}),
        BenchResult.report_only("api.get_observed_floor", observed["rps"], "req/s", baseline=bare["rps"],
                                details={"p99_ms": observed["p99_ms"],
                                         "plant_share_of_floor": round(get["rps"] / observed["rps"], 3)}),
        BenchResult.report_only("api.post", post["rps"], "req/s", baseline=bare_p["rps"],
                                details={"p99_ms": post["p99_ms"], "bare_p99_ms": bare_p["p99_ms"]}),
    ]


def markdown(results: list[BenchResult]) -> str:
    details = next((r.details for r in results if r.scenario == "api.get"), None)
    if not details:
        return ""
    rows = ["| endpoint | req/s | p50 ms | p99 ms | API CPU ms/req | PostgreSQL CPU ms/req | client CPU (cores) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for label, key in (("Plant GET /api/v1/jobs/{id}", "get"), ("bare Flask GET /ping", "bare_get"),
                       ("floor: key lookup + job row on raw psycopg (`bench/floor_flask.py`)", "floor_get"),
                       ("observed floor: the floor with Plant's request id, metrics and log line", "observed_floor_get"),
                       ("Plant POST /api/v1/diagnostics/sleep", "post"), ("bare Flask POST /ping", "bare_post")):
        m = details.get(key)
        if m is None:
            continue
        rows.append(f"| {label} | {m['rps']:.1f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m.get('app_cpu_ms', 0):.3f} "
                    f"| {m.get('postgres_cpu_ms', 0):.3f} | {m['client_cpu_share']:.3f} |")
    return (f"Load generator: `{details['client']}`, {details['connections']} connections, "
            f"{details['seconds_per_run']} s per run, {details['runs']} alternating runs per side (medians):\n\n"
            + "\n".join(rows) + "\n")
