"""gunicorn configuration for the API: ``gunicorn -c gunicorn.conf.py 'web:create_app()'``.

Threaded workers, because long-polling requests (``?wait=N``) spend their time waiting.
Worker count follows the CPU count unless ``WEB_CONCURRENCY`` says otherwise. gunicorn
reads this file itself, so the environment is read here, at the process edge.

Bind address, first match wins: ``PLANT_BIND``; ``0.0.0.0:$PORT`` when ``PORT`` is set (Cloud
Run sets it to the container port and routes only to that); ``127.0.0.1:$PLANT_PORT``
(``make dev``).
"""

import multiprocessing
import os


def _bind_address() -> str:
    if os.environ.get("PLANT_BIND"):
        return os.environ["PLANT_BIND"]
    if os.environ.get("PORT"):
        return f"0.0.0.0:{os.environ['PORT']}"
    return f"127.0.0.1:{os.environ.get('PLANT_PORT', '8000')}"


bind = _bind_address()
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count())))
worker_class = "gthread"
threads = int(os.environ.get("PLANT_WEB_THREADS", "8"))
timeout = 60  # a long-poll is capped at 30 s, so 60 s only catches a stuck worker
graceful_timeout = 20
keepalive = 5
max_requests = 10_000
max_requests_jitter = 1000
# The worker heartbeat file lives on tmpfs when there is one: on a container's overlay
# filesystem a slow fsync can make the arbiter think a healthy worker is stuck.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = "-"
errorlog = "-"
access_log_format = (
    '{"remote": "%(h)s", "method": "%(m)s", "path": "%(U)s", "query": "%(q)s", '
    '"status": %(s)s, "bytes": "%(B)s", "duration_ms": %(M)s, "request_id": "%({x-request-id}i)s"}'
)
