"""The floor of an authenticated, database-backed read: what any ``GET /jobs/{id}`` must do.

``gunicorn -c gunicorn.conf.py 'bench.floor_flask:create_app()'``. ``GET /floor/jobs/<id>``
does only what no implementation of Plant's route can leave out: look the bearer key's
hash up in ``api_keys`` and read the job row, two statements on a per-thread psycopg
connection in autocommit (no pool, no pre-ping, no ORM, no validation, no metrics, no
log line), and answer the row as JSON. The API scenario runs it beside the bare Flask
route, so the run shows how close to bare Flask any such read can get on this machine.

``create_app(observed=True)`` is the same floor with what Plant promises of every request
on top, through Plant's own hooks (``web.metrics.observe_requests``): a request id echoed
in ``X-Request-ID`` and bound to the log context, the request counted and timed in the
Prometheus metrics, and one JSON log line. No implementation of the route that keeps
those promises can beat it.
"""

from __future__ import annotations

import hashlib
import threading
from types import SimpleNamespace

import psycopg
from flask import Flask, Response, g, jsonify, request

from models.settings import libpq_url, load_settings
from web.metrics import observe_requests

KEY_SQL = "SELECT id, scopes FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL"
CONNECTIONS_KEY = "floor_connections"
JOB_SQL = "SELECT row_to_json(j)::text FROM jobs j WHERE id = %s"


def create_app(observed: bool = False) -> Flask:
    settings = load_settings()
    url = libpq_url(settings.database_url)
    local = threading.local()
    app = Flask(__name__)
    opened: list[psycopg.Connection] = app.extensions.setdefault(CONNECTIONS_KEY, [])
    if observed:
        observe_requests(app, settings)

    def connection() -> psycopg.Connection:
        if not hasattr(local, "connection"):
            local.connection = psycopg.connect(url, autocommit=True)
            opened.append(local.connection)
        return local.connection

    @app.get("/floor/jobs/<job_id>")
    def show_job(job_id: str) -> Response | tuple[Response, int]:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        db = connection()
        key = db.execute(KEY_SQL, (hashlib.sha256(token.encode()).digest(),)).fetchone()
        if key is None:
            return jsonify({"title": "Unauthorized"}), 401
        g.api_key = SimpleNamespace(id=key[0])  # named in the request's log line, when observed
        row = db.execute(JOB_SQL, (job_id,)).fetchone()
        if row is None:
            return jsonify({"title": "Not Found"}), 404
        return Response(row[0], mimetype="application/json")

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    return app


def close_connections(app: Flask) -> None:
    """Close every connection the app's threads opened (tests; gunicorn just exits)."""
    for connection in app.extensions.get(CONNECTIONS_KEY, []):
        connection.close()
