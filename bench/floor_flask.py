"""The floor of an authenticated, database-backed read: what any ``GET /jobs/{id}`` must do.

``gunicorn -c gunicorn.conf.py 'bench.floor_flask:create_app()'``. ``GET /floor/jobs/<id>``
does only what no implementation of Plant's route can leave out: look the bearer key's
hash up in ``api_keys`` and read the job row, two statements on a per-thread psycopg
connection in autocommit (no pool, no pre-ping, no ORM, no validation, no metrics, no
log line), and answer the row as JSON. The API scenario runs it beside the bare Flask
route, so the run shows how close to bare Flask any such read can get on this machine.
"""

from __future__ import annotations

import hashlib
import threading

import psycopg
from flask import Flask, Response, jsonify, request

from models.settings import libpq_url, load_settings

KEY_SQL = "SELECT scopes FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL"
JOB_SQL = "SELECT row_to_json(j)::text FROM jobs j WHERE id = %s"


def create_app() -> Flask:
    url = libpq_url(load_settings().database_url)
    local = threading.local()
    app = Flask(__name__)

    def connection() -> psycopg.Connection:
        if not hasattr(local, "connection"):
            local.connection = psycopg.connect(url, autocommit=True)
        return local.connection

    @app.get("/floor/jobs/<job_id>")
    def show_job(job_id: str) -> Response | tuple[Response, int]:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        db = connection()
        if db.execute(KEY_SQL, (hashlib.sha256(token.encode()).digest(),)).fetchone() is None:
            return jsonify({"title": "Unauthorized"}), 401
        row = db.execute(JOB_SQL, (job_id,)).fetchone()
        if row is None:
            return jsonify({"title": "Not Found"}), 404
        return Response(row[0], mimetype="application/json")

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    return app
