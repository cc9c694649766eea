"""The benchmark harness: an embedded stack, its processes, and the result type.

:class:`BenchStack` starts embedded PostgreSQL (pgvector) and Redis in a temp directory,
migrates a database, generates a signing key and an admin API key, and starts API
(gunicorn with ``gunicorn.conf.py``) and Celery worker processes on demand. Every
process it starts is a process-group leader and is stopped when the stack closes.
Scenario modules (``bench/scenarios/*.py``) get a started stack and return a list of
:class:`BenchResult`; each result prints as one line::

    scenario: value unit (ratio X vs baseline; target T) PASS|FAIL
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import psutil
import psycopg
from celery import Celery
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from cli.postgres_server import EmbeddedPostgres
from cli.ports import claim_port
from cli.services import EmbeddedRedis, start_on_a_free_port
from models.api_keys import create_api_key, ensure_admin_key
from models.db import make_engine
from models.embeddings import make_embedder
from models.keys import keyring_from_settings
from models.migrate import upgrade_head
from models.registry import WriteContext
from models.settings import Settings, child_environment, libpq_url, load_settings
from models.key_material import ensure_key_file

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DATABASE = "plant_bench"
BARE_CELERY_REDIS_DB = 15  # the bare-Celery baseline's broker database; Plant's start at 0
START_TIMEOUT = 90.0


def format_number(value: float | None, *, missing: str = "nan") -> str:
    """One decimal from 10 up, three significant digits below; ``missing`` for None or NaN."""
    if value is None or math.isnan(value):
        return missing
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


@dataclass
class BenchResult:
    """One measured number, its same-run baseline and whether it meets its target.

    ``ratio`` is ``value / baseline``. ``target`` is a human-readable bound on the ratio
    (``">= 0.8x"``) or None for report-only numbers, which pass unless the scenario
    says otherwise (e.g. it saw errors).
    """

    scenario: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    target: str | None = None
    passed: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.2f}"
        return (
            f"{self.scenario}: {format_number(self.value)} {self.unit} "
            f"(ratio {ratio} vs baseline; target {self.target or 'none'}) {'PASS' if self.passed else 'FAIL'}"
        )

    @classmethod
    def at_least(cls, scenario: str, value: float, unit: str, *, baseline: float, min_ratio: float,
                 details: dict[str, Any] | None = None) -> BenchResult:
        """Higher is better: passes when ``value / baseline >= min_ratio``. A ratio to a baseline
        of zero or below says nothing (-10 / -5 is 2), so such a baseline never passes."""
        ratio = value / baseline if baseline else math.nan
        return cls(scenario, value, unit, baseline, ratio, f">= {min_ratio}x", baseline > 0 and ratio >= min_ratio, details or {})

    @classmethod
    def at_most(cls, scenario: str, value: float, unit: str, *, baseline: float, max_ratio: float,
                details: dict[str, Any] | None = None) -> BenchResult:
        """Lower is better (latency): passes when ``value / baseline <= max_ratio``."""
        ratio = value / baseline if baseline else math.nan
        return cls(scenario, value, unit, baseline, ratio, f"<= {max_ratio}x", ratio <= max_ratio, details or {})

    @classmethod
    def report_only(cls, scenario: str, value: float, unit: str, *, baseline: float | None = None,
                    ok: bool = True, details: dict[str, Any] | None = None) -> BenchResult:
        ratio = value / baseline if baseline else None
        return cls(scenario, value, unit, baseline, ratio, None, ok, details or {})

    @classmethod
    def crashed(cls, scenario: str, error: BaseException, traceback_text: str = "") -> BenchResult:
        return cls(scenario, math.nan, "error", target="scenario completes", passed=False,
                   details={"error": f"{type(error).__name__}: {error}", "traceback": traceback_text})


def median_seconds(action: Callable[[], object], runs: int) -> float:
    """The median wall time of ``runs`` calls of ``action``, in seconds."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return median_run(samples)


def median_run(values: list[float]) -> float:
    """The median of a scenario's runs (callers make at least three)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


class CpuMeter:
    """CPU seconds (user + system) used by named processes between start and stop.

    On a 2-core machine the pipeline is CPU-bound, so CPU per job and per process is
    where the time goes. ``trees`` count a process and all its descendants (found again
    at stop, so forked workers count, and with the children each one has reaped, so a
    PostgreSQL backend whose connection closed in between counts too); ``singles`` count
    one process only (the benchmark client itself, whose children are the servers under
    test).
    """

    def __init__(self, trees: dict[str, int], singles: dict[str, int] | None = None) -> None:
        self.trees = trees
        self.singles = singles or {}
        self._start: dict[str, float] = {}

    @staticmethod
    def _cpu(pid: int, *, tree: bool) -> float:
        total = 0.0
        with suppress(psutil.Error):
            root = psutil.Process(pid)
            for process in [root, *(root.children(recursive=True) if tree else [])]:
                with suppress(psutil.Error):
                    times = process.cpu_times()
                    total += times.user + times.system
                    if tree:
                        total += times.children_user + times.children_system
        return total

    def _sample(self) -> dict[str, float]:
        sample = {name: self._cpu(pid, tree=True) for name, pid in self.trees.items()}
        sample.update({name: self._cpu(pid, tree=False) for name, pid in self.singles.items()})
        return sample

    def start(self) -> CpuMeter:
        self._start = self._sample()
        return self

    def stop(self) -> dict[str, float]:
        return {name: round(seconds - self._start[name], 4) for name, seconds in self._sample().items()}


class BenchStack:
    """The embedded stack every scenario runs on; use as a context manager.

    Attributes: ``settings`` (the main database, Redis db 0, data dir with the signing
    key), ``admin_key`` (valid in every database made by :meth:`fresh_database`),
    ``log_dir`` (one log file per started process).
    """

    def __init__(self, root: Path | None = None, *, keep: bool = False) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="plant-bench-")).resolve()
        self.keep = keep
        self.log_dir = self.root / "logs"
        self.data_dir = self.root / "data"
        # Not started: start() puts each on a free port (and close() stops whichever ran).
        self.postgres = EmbeddedPostgres(self.root / "postgres", 0)
        self.redis = EmbeddedRedis(self.root / "redis", 0)
        self.admin_key = ""
        self.settings: Settings | None = None  # set by start()
        self._processes: list[subprocess.Popen] = []
        self._names = itertools.count(1)
        self._redis_dbs = itertools.count(1)
        self._engines: dict[str, Engine] = {}

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> BenchStack:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ensure_key_file(self.data_dir / "keys" / "active.pem")
        start_on_a_free_port(lambda port: EmbeddedPostgres(self.root / "postgres", port),
                             before_start=lambda server: setattr(self, "postgres", server))
        start_on_a_free_port(lambda port: EmbeddedRedis(self.root / "redis", port),
                             before_start=lambda server: setattr(self, "redis", server))
        self.postgres.create_database(BENCH_DATABASE)
        database_url = self.postgres.url_for(BENCH_DATABASE)
        upgrade_head(database_url)
        self.settings = load_settings(database_url=database_url, redis_url=self.redis_url(0), data_dir=self.data_dir)
        with self.session(self.settings) as session:
            self.admin_key = create_api_key(session, name="bench-admin", scopes=["admin"]).plaintext

    def close(self) -> None:
        for process in reversed(self._processes):
            self.stop(process)
        self._processes.clear()
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
        self.redis.stop()
        self.postgres.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- databases ---------------------------------------------------------------

    def redis_url(self, db: int) -> str:
        return f"redis://{self.redis.host}:{self.redis.port}/{db}"

    def fresh_database(self, name: str, *, redis_db: int | None = None) -> Settings:
        """A new migrated database on the same server (dropped first if it exists), with
        the admin key, and a Redis database of its own so its workers see only its jobs."""
        assert self.settings is not None, "start() the stack first"
        self.postgres.drop_database(name)
        self.postgres.create_database(name)
        url = self.postgres.url_for(name)
        upgrade_head(url)
        db = next(self._redis_dbs) if redis_db is None else redis_db
        if db >= BARE_CELERY_REDIS_DB:
            raise RuntimeError("out of Redis databases for fresh_database")
        settings = self.settings.model_copy(update={"database_url": url, "redis_url": self.redis_url(db)})
        with self.session(settings) as session:
            ensure_admin_key(session, plaintext=self.admin_key, name="bench-admin")
        return settings

    def engine(self, settings: Settings) -> Engine:
        """One cached engine per database, for in-process setup and measurement."""
        if settings.database_url not in self._engines:
            self._engines[settings.database_url] = make_engine(settings)
        return self._engines[settings.database_url]

    @contextmanager
    def session(self, settings: Settings) -> Iterator[Session]:
        """A committed unit of work on ``settings``' database."""
        with Session(self.engine(settings), expire_on_commit=False) as session, session.begin():
            yield session

    def settle(self, settings: Settings) -> None:
        """``VACUUM (ANALYZE)`` the database after a bulk load, then write everything it left
        dirty to disk, before anything is measured.

        That is where autovacuum leaves the tables anyway, but on its own schedule: its pass
        over a freshly loaded 1,000,000-version table starts within a minute of the load (35 s
        in stop 32's run) and takes about 20 s of a core, which landed inside the full audit's
        measurement on a 2-core machine. Planner statistics come with it (unanalyzed,
        PostgreSQL scanned all of ``entity_versions`` for each batch's read).

        The load leaves about 2 GB of dirty pages in the kernel's cache (fsync is off), which
        its flusher writes back over the next half minute or so: a raw COPY of the 1,000,000
        versions took 2.2–2.5 s meanwhile, against 1.6–1.7 s after a ``sync`` (stop 34). So
        PostgreSQL's buffers are checkpointed and the kernel's written now, off the clock.
        """
        # A connection of its own, with no statement timeout: the engine's carry Plant's 30 s.
        with psycopg.connect(libpq_url(settings.database_url), autocommit=True,
                             options="-c statement_timeout=0") as connection:
            connection.execute("VACUUM (ANALYZE)")
            connection.execute("CHECKPOINT")
        os.sync()

    @cached_property
    def write_context(self) -> WriteContext:
        """Registry writes made by the harness itself (seeding), attributed to ``bench``."""
        assert self.settings is not None
        return WriteContext(actor="bench", keyring=keyring_from_settings(self.settings),
                            embedder=make_embedder(self.settings.embedder))

    def cpu_meter(self, **processes: subprocess.Popen) -> CpuMeter:
        """A meter over the given processes' trees, PostgreSQL, Redis and this process."""
        trees = {name: process.pid for name, process in processes.items()}
        trees.update(postgres=self.postgres.pid, redis=self.redis.pid)
        return CpuMeter(trees, {"client": os.getpid()})

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    # -- processes ---------------------------------------------------------------

    def child_env(self, settings: Settings, env: dict[str, str] | None = None) -> dict[str, str]:
        return child_environment(os.environ, DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url,
                                 PLANT_DATA_DIR=str(settings.data_dir), PYTHONUNBUFFERED="1", **(env or {}))

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        process.bench_log = self.log_dir / f"{name}.log"  # type: ignore[attr-defined]
        self._processes.append(process)
        return process

    def start_worker(self, settings: Settings, *, queues: str = "default,audit,maintenance", concurrency: int = 2,
                     env: dict[str, str] | None = None, app: str = "worker.app", pool: str = "prefork",
                     name: str | None = None, loglevel: str = "INFO") -> subprocess.Popen:
        """``celery -A app worker`` on ``settings``' broker; returns once it answers a ping.

        INFO is Plant's production log level (one line per task received and succeeded),
        and the baseline workers log at the same level.
        """
        name = name or f"worker{next(self._names)}"
        node = f"{name}-{os.getpid()}"
        argv = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queues, "-c", str(concurrency),
                "-P", pool, "-n", f"{node}@%h", "--without-mingle", "--without-gossip", f"--loglevel={loglevel}"]
        # Plant's worker configures its own logging (setup_logging), so --loglevel reaches
        # only the bare baseline; PLANT_LOG_LEVEL gives Plant's worker the same level.
        process = self._spawn(name, argv, self.child_env(settings, {"PLANT_LOG_LEVEL": loglevel, **(env or {})}))
        probe = Celery(broker=settings.redis_url)
        destination = [f"{node}@{socket.gethostname()}"]
        try:
            self._wait(process, lambda: probe.control.ping(timeout=0.5, destination=destination), f"worker {name}")
        finally:
            probe.close()
        return process

    def start_api(self, settings: Settings, *, port: int, app: str = "web:create_app()",
                  env: dict[str, str] | None = None, name: str | None = None) -> subprocess.Popen:
        """gunicorn with ``gunicorn.conf.py`` serving ``app`` on 127.0.0.1:port; returns once
        ``/health`` answers 200."""
        name = name or f"api{next(self._names)}"
        argv = [sys.executable, "-m", "gunicorn", "-c", str(REPO_ROOT / "gunicorn.conf.py"), app]
        process = self._spawn(name, argv, self.child_env(settings, {"PLANT_BIND": f"127.0.0.1:{port}", **(env or {})}))
        self._wait(process, lambda: _http_ok(f"http://127.0.0.1:{port}/health"), f"API {name} on port {port}")
        return process

    def _wait(self, process: subprocess.Popen, ready: Callable[[], Any], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode}:\n{_tail(process)}")
            with suppress(Exception):
                if ready():
                    return
            time.sleep(0.1)
        self.stop(process)
        raise RuntimeError(f"{what} not ready within {START_TIMEOUT:.0f} s:\n{_tail(process)}")

    def stop(self, process: subprocess.Popen, timeout: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout``."""
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever the leader left behind
        process.wait()
        with suppress(ValueError):
            self._processes.remove(process)

    @staticmethod
    def free_port() -> int:
        """A port for a server a scenario starts (no retry): out of the kernel's hands until it binds."""
        return claim_port()


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        return response.status == 200


def _tail(process: subprocess.Popen, lines: int = 30) -> str:
    path: Path | None = getattr(process, "bench_log", None)
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_job_to_end(
    stack: BenchStack, settings: Settings, kind: str, params: dict[str, Any], *, timeout: float = 900.0
) -> tuple[float, dict]:
    """Submit a job the way the API does (row committed, then published) and wait for it.

    Returns the seconds from the job row's ``created_at`` to its ``finished_at`` (the
    database's clock, so the client's polling does not count) and the job's result.
    """
    from models.job_lifecycle import create_job
    from tasks.celery_app import create_celery
    from tasks.dispatch import publish_job, route_for

    with stack.session(settings) as session:
        job = create_job(session, kind=kind, params=params, queue=route_for(kind).queue)
    with create_celery(settings) as app:
        publish_job(app, job_id=job.id, kind=kind)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with stack.session(settings) as session:
            status, seconds, result = session.execute(text(
                "SELECT status, extract(epoch FROM finished_at - created_at), result FROM jobs WHERE id = :id"),
                {"id": job.id}).one()
        if status == "succeeded":
            return float(seconds), result
        if status in ("failed", "cancelled"):
            raise RuntimeError(f"{kind} job ended {status}")
        time.sleep(0.2)  # the clock is the database's: a slower poll takes less CPU from the job, and costs it nothing
    raise RuntimeError(f"{kind} job not finished within {timeout:.0f} s")


def measured_in_a_child(module: str, env: dict[str, str], *args: str,
                        keys: tuple[str, ...] = ("rss_before_mb", "peak_mb", "seconds")) -> dict[str, float]:
    """Run ``python -m <module> --measure <args>`` in a fresh process (its peak RSS is its own)
    and return the JSON object its last line prints; a run that fails is printed and counts as
    NaN for each of ``keys``, so the medians show it rather than the bench stopping."""
    out = subprocess.run([sys.executable, "-m", module, "--measure", *args], env=env, check=False,
                         capture_output=True, text=True)
    if out.returncode:
        print(f"{module} --measure {' '.join(args)} failed:\n{out.stderr[-3000:]}", flush=True)
        return dict.fromkeys(keys, math.nan)
    return json.loads(out.stdout.strip().splitlines()[-1])
