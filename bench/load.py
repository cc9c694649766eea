"""HTTP load generation for the API benchmarks: ``wrk`` with a generated Lua script.

``wrk`` (Debian package ``wrk``) is a C event-loop client: at the few thousand requests
per second this machine serves it needs a few percent of one core, so it is not the
bottleneck, and every comparison uses the same client, connection count, thread count
and duration on both sides. Its CPU time is measured (``wait4`` rusage) and reported
next to the numbers. The Lua script sets the ``Authorization`` header, can cycle over a
list of paths (each wrk thread takes its own residue class, so no two threads hit the
same path at once) and can format a body per request from a counter.

Without ``wrk`` on PATH a multi-process Python client (``http.client``, keep-alive,
2 processes x 8 threads) stands in; it costs far more CPU, so results say which ran.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from http.client import HTTPConnection
from pathlib import Path

WRK_MARKER = "WRKJSON "


@dataclass(frozen=True)
class LoadResult:
    client: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors and timeouts
    bad_status: int  # responses outside 2xx/3xx
    client_cpu_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def wrk_script(*, method: str, headers: dict[str, str], paths: list[str], body_format: str | None) -> str:
    """Lua for wrk: cycle ``paths``; ``body_format`` gets (counter, thread id) via string.format."""
    header_lines = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
    path_list = ", ".join(_lua_string(p) for p in paths)
    body = f"string.format({_lua_string(body_format)}, counter, tid)" if body_format else "nil"
    return f"""
wrk.method = {_lua_string(method)}
{header_lines}
local paths = {{{path_list}}}
local threads = {{}}
local next_tid = 0
counter = 0
tid = 0
nthreads = 1

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

function init(args)
  nthreads = tonumber(args[1]) or 1
end

function request()
  counter = counter + 1
  local i = ((counter * nthreads + tid) % #paths) + 1
  return wrk.format(nil, paths[i], nil, {body})
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{WRK_MARKER}{{"requests": %d, "duration_us": %d, "errors": %d, "bad_status": %d, '
    .. '"p50": %d, "p90": %d, "p99": %d, "max": %d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def run_wrk(base_url: str, *, paths: list[str], seconds: float, connections: int = 16, threads: int = 2,
            method: str = "GET", headers: dict[str, str] | None = None, body_format: str | None = None) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(method=method, headers=headers or {}, paths=paths, body_format=body_format))
    try:
        argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s",
                "-s", script.name, base_url, "--", str(threads)]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        output = process.stdout.read()
        _, status, rusage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        Path(script.name).unlink(missing_ok=True)
    match = re.search(re.escape(WRK_MARKER) + r"(\{.*\})", output)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
    data = json.loads(match.group(1))
    elapsed = data["duration_us"] / 1e6
    return LoadResult(
        client="wrk", requests=data["requests"], seconds=round(elapsed, 3), rps=data["requests"] / elapsed,
        p50_ms=data["p50"] / 1000, p90_ms=data["p90"] / 1000, p99_ms=data["p99"] / 1000, max_ms=data["max"] / 1000,
        errors=data["errors"], bad_status=data["bad_status"],
        client_cpu_seconds=round(rusage.ru_utime + rusage.ru_stime, 3),
    )


# -- the fallback: a multi-process Python client ------------------------------------


def _body(body_format: str | None, counter: int, tid: int) -> bytes | None:
    """The request body, as wrk's ``string.format`` makes it: a format without ``%d`` is sent as is."""
    if body_format is None:
        return None
    return (body_format % (counter, tid) if "%" in body_format else body_format).encode()


def _python_worker(args: tuple) -> tuple[list[float], int, int]:
    host, port, paths, seconds, method, headers, body_format, threads, offset = args
    latencies: list[float] = []
    counts = {"errors": 0, "bad": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop(tid: int) -> None:
        connection = HTTPConnection(host, port, timeout=10)
        counter = 0
        while time.monotonic() < deadline:
            counter += 1
            path = paths[(counter * threads * 2 + offset + tid) % len(paths)]
            body = _body(body_format, counter, offset + tid)
            started = time.perf_counter()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except OSError:
                connection.close()
                connection = HTTPConnection(host, port, timeout=10)
                with lock:
                    counts["errors"] += 1
                continue
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                counts["bad"] += status >= 400

    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies, counts["errors"], counts["bad"]


def run_python(base_url: str, *, paths: list[str], seconds: float, connections: int = 16, threads: int = 2,
               method: str = "GET", headers: dict[str, str] | None = None,
               body_format: str | None = None) -> LoadResult:
    host, port = base_url.removeprefix("http://").rstrip("/").split(":")
    per_process = connections // threads
    jobs = [(host, int(port), paths, seconds, method, headers or {}, body_format, per_process, p * per_process)
            for p in range(threads)]
    before = os.times()
    started = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(threads) as pool:
        parts = pool.map(_python_worker, jobs)
    elapsed = time.monotonic() - started
    after = os.times()
    latencies = sorted(lat for part in parts for lat in part[0])

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return LoadResult(
        client="python", requests=len(latencies), seconds=round(elapsed, 3), rps=len(latencies) / elapsed,
        p50_ms=pct(0.5), p90_ms=pct(0.9), p99_ms=pct(0.99), max_ms=latencies[-1] * 1000 if latencies else float("nan"),
        errors=sum(p[1] for p in parts), bad_status=sum(p[2] for p in parts),
        client_cpu_seconds=round((after.children_user - before.children_user) + (after.children_system - before.children_system), 3),
    )


def run_load(base_url: str, **kwargs: object) -> LoadResult:
    """wrk when installed, else the Python client; same arguments."""
    return (run_wrk if have_wrk() else run_python)(base_url, **kwargs)  # type: ignore[arg-type]
