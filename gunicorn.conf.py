"""gunicorn configuration for the API: ``gunicorn -c gunicorn.conf.py 'web:create_app()'``.

Threaded workers, because long-polling requests (``?wait=N``) spend their time waiting.
Worker count follows the CPU count unless ``WEB_CONCURRENCY`` says otherwise. gunicorn
reads this file itself, so the environment is read here, at the process edge.

Bind address, first match wins: ``PLANT_BIND``; ``0.0.0.0:$PORT`` when ``PORT`` is set (Cloud
Run sets it to the container port and routes only to that); ``127.0.0.1:$PLANT_PORT``
(``make dev``).
"""

import gc
import importlib.util
import json
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

from gunicorn.glogging import Logger, SafeAtoms

from models.logging_setup import gunicorn_logconfig
from models.settings import load_settings, warn_before_forking


def _bind_address() -> str:
    if os.environ.get("PLANT_BIND"):
        return os.environ["PLANT_BIND"]
    if os.environ.get("PORT"):
        return f"0.0.0.0:{os.environ['PORT']}"
    return f"127.0.0.1:{os.environ.get('PLANT_PORT', '8000')}"


def _problem_thread_worker() -> type:
    """``web/gunicorn_worker.py``'s worker class, loaded from its file alone: importing it as
    ``web.gunicorn_worker`` imports the ``web`` package, the whole app with it, into this master,
    and prometheus_client, imported then, picks in-memory values once and for all, before
    ``on_starting`` sets ``PROMETHEUS_MULTIPROC_DIR``: every worker forked from here counted in its
    own memory, and /metrics served no request metric (helper-155). The module imports gunicorn only.
    The file is found where ``web`` is installed (``find_spec`` of a top-level package runs none of
    it), not beside this file: the image has this file alone in /app and ``web`` in /opt/venv."""
    web = importlib.util.find_spec("web")
    assert web is not None and web.submodule_search_locations, "the web package is not installed"
    worker_file = Path(next(iter(web.submodule_search_locations))) / "gunicorn_worker.py"
    spec = importlib.util.spec_from_file_location("plant_gunicorn_worker", worker_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ProblemThreadWorker


def _count(name: str, default: int) -> int:
    """A positive count from ``name``; blank is unset (compose passes ``WEB_CONCURRENCY=`` from an
    empty ``.env`` line as set and empty, and ``int("")`` stopped gunicorn before it started)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)


bind = _bind_address()
workers = _count("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count()))
# gthread, answering what gunicorn refuses before Flask reads it (a header too large) as problem+json.
worker_class = _problem_thread_worker()
threads = _count("PLANT_WEB_THREADS", 8)
# Each thread holds at most one pooled connection. A pool kept smaller than the thread
# count opens and closes a connection (a new PostgreSQL backend) for every request beyond
# it under load, so the pool follows the threads unless PLANT_DB_POOL_SIZE says otherwise.
# Workers are forked from this process and inherit the variable.
os.environ.setdefault("PLANT_DB_POOL_SIZE", str(threads))
# A long poll holds its thread while it waits: at most half the threads do, so the other half
# (/health's included) stay free for requests that answer at once.
os.environ.setdefault("PLANT_LONG_POLLS_AT_ONCE", str(threads // 2))  # one thread: none waits
timeout = 60  # a long-poll is capped at 30 s, so 60 s only catches a stuck worker
graceful_timeout = 35  # a long-poll started just before SIGTERM (30 s at most) still gets its answer
keepalive = 5
# No max_requests: gthread workers are long-lived on purpose. Recycling them re-imports the
# app every few thousand requests and leaves each dead worker's metric files behind (the
# multiprocess collector keeps counters of dead processes, and reads them all per scrape).
# The worker heartbeat file lives on tmpfs when there is one: on a container's overlay
# filesystem a slow fsync can make the arbiter think a healthy worker is stuck.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn 25.1+ opens a control socket (for `gunicornc`: worker counts, reload, shutdown) at one
# path per user, $XDG_RUNTIME_DIR or ~/.gunicorn: every gunicorn of that user on the host (two
# `make dev` runners, the tests, a bench) shared it, the last one started answered for all, and
# the first one stopping removed it. Plant manages its servers with signals and has no use for it.
control_socket_disable = True
# Logs: the error log and the app's own lines go through models.logging_setup (JSON, or
# console under `make dev`). The app logs one line per request (route template, status,
# duration, request id), so gunicorn's access log is off; `--access-logfile -` turns it on,
# as JSON lines carrying the request id the app echoed in X-Request-ID.
_log_settings = load_settings()
logconfig_dict = gunicorn_logconfig(_log_settings.log_format, _log_settings.log_level)
loglevel = _log_settings.log_level.lower()
accesslog = None
errorlog = "-"


class JsonSafeAtoms(SafeAtoms):
    """gunicorn's access-log values escaped for a JSON string, not only their quotes: the
    path is percent-decoded, so a client's ``%5C`` (a backslash) ended the string early and
    ``%0A`` split the line, and neither line was JSON any more."""

    def __init__(self, atoms):  # noqa: ANN001 - gunicorn's signature
        dict.__init__(self, {key: json.dumps(value)[1:-1] if isinstance(value, str) else value
                             for key, value in atoms.items()})


class AccessLogOnlyWhenAsked(Logger):
    """gunicorn's logger, minus building an access line nobody asked for.

    With any logging config given (``logconfig_dict`` is), gunicorn formats every request's
    access-log fields and hands the line to ``gunicorn.access``, which drops it when no
    access log is configured: about a tenth of a GET's CPU in the API. This builds the line
    only when something reads it: an access log file (``--access-logfile``), or syslog
    (``--log-syslog``, which gets the access lines unless told otherwise). gunicorn picks its
    statsd logger only in place of its default class: with ``--statsd-host``, also pass
    ``--logger-class gunicorn.instrument.statsd.Statsd`` (Plant's metrics are Prometheus')."""

    atoms_wrapper_class = JsonSafeAtoms

    def access(self, resp, req, environ, request_time):  # noqa: ANN001, ANN201 - gunicorn's signature
        cfg = self.cfg
        if cfg.accesslog or (cfg.syslog and not cfg.disable_redirect_access_to_syslog):
            super().access(resp, req, environ, request_time)


logger_class = AccessLogOnlyWhenAsked
access_log_format = (
    '{"remote": "%(h)s", "method": "%(m)s", "path": "%(U)s", "query": "%(q)s", '
    '"status": %(s)s, "bytes": "%(B)s", "duration_ms": %(M)s, "request_id": "%({x-request-id}o)s"}'
)

# Metrics: request counters live in each worker process, so they go through
# prometheus_client's multiprocess mode and /metrics sums every process's files. The
# directory is set before any worker starts (a worker picks the mode when it first imports
# prometheus_client) and emptied at start, because files left by an earlier run would be
# counted again. An operator's PROMETHEUS_MULTIPROC_DIR is used (and emptied) as given.
_METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def on_starting(server):  # noqa: ANN001, ANN201 - gunicorn hook
    warn_before_forking()  # one warning of misspelt PLANT_* variables for the server, not one per worker
    given = os.environ.get(_METRICS_DIR_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
    else:
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        directory = Path(tempfile.mkdtemp(prefix="plant-metrics-", dir=shm))
        server.plant_owned_metrics_dir = directory
    os.environ[_METRICS_DIR_ENV] = str(directory)


def post_worker_init(worker):  # noqa: ANN001, ANN201 - gunicorn hook, in the worker once the app is loaded
    # The app and its imports live as long as the worker: frozen, the cyclic GC no longer
    # walks them on every full collection (as the Celery worker does, worker/app.py).
    gc.freeze()
    worker.log.info("Worker loaded the app (pid: %s)", worker.pid)  # gunicorn says when one boots, not when it is ready


def child_exit(server, worker):  # noqa: ANN001, ANN201 - gunicorn hook, in the master
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ANN001, ANN201 - gunicorn hook
    owned = getattr(server, "plant_owned_metrics_dir", None)
    if owned is not None:
        shutil.rmtree(owned, ignore_errors=True)
