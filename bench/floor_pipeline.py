"""The floor of a job pipeline with a job table: what any job submitted over HTTP must cost.

The pipeline target compares Plant with bare Celery, which keeps no record of a task. Plant
must also record each job in PostgreSQL, where clients poll it. This module does only the
parts of that which no implementation can leave out, with nothing else around them:

* API (``gunicorn -c gunicorn.conf.py 'bench.floor_pipeline:create_app()'``).
  ``POST /floor/jobs`` runs three steps on a per-thread psycopg connection in autocommit:
  - look up the bearer key;
  - INSERT the job row into Plant's own ``jobs`` table, with its indexes and checks;
  - publish one bare Celery message.
  There is no pool, ORM, validation, idempotency, metrics or log line.
* Worker (``celery -A bench.floor_pipeline``). It claims the row (UPDATE to running), then
  records success (UPDATE to succeeded): two autocommit statements on a per-process
  connection. Delivery uses Celery's defaults, as bare Celery does: early acks, the default
  prefetch, no events, no result backend.

The pipeline scenario runs this beside Plant and bare Celery, alternating all three.
The floor's own ratio to bare Celery is the best any job-table pipeline reaches here.
"""

from __future__ import annotations

import hashlib
import json
import threading
from functools import cache
from typing import Any

import psycopg
from celery import Celery, shared_task
from flask import Flask, Response, jsonify, request
from psycopg.types.json import Jsonb

from bench.bare_celery import create_bare_celery
from bench.floor_flask import KEY_SQL
from models.settings import libpq_url, load_settings

TASK_NAME = "bench.floor_job"
PATH = "/floor/jobs"
INSERT_SQL = ("INSERT INTO jobs (kind, params, queue, status, enqueued_at) "
              "VALUES ('diagnostics.sleep', %s, 'default', 'queued', now()) RETURNING id")
CLAIM_SQL = ("UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = now(), "
             "lease_expires_at = now() + interval '5 minutes', updated_at = now() WHERE id = %s AND status = 'queued'")
FINISH_SQL = ("UPDATE jobs SET status = 'succeeded', result = '{}', finished_at = now(), lease_expires_at = NULL, "
              "updated_at = now() WHERE id = %s AND status = 'running'")


def create_app() -> Flask:
    url = libpq_url(load_settings().database_url)
    local = threading.local()
    app = Flask(__name__)
    celery = build_celery()

    def connection() -> psycopg.Connection:
        if not hasattr(local, "connection"):
            local.connection = psycopg.connect(url, autocommit=True)
        return local.connection

    @app.post(PATH)
    def submit() -> tuple[Response, int]:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        db = connection()
        if db.execute(KEY_SQL, (hashlib.sha256(token.encode()).digest(),)).fetchone() is None:
            return jsonify({"title": "Unauthorized"}), 401
        params = request.get_json(silent=True)
        if not isinstance(params, dict):
            return jsonify({"title": "Bad Request"}), 400
        (job_id,) = db.execute(INSERT_SQL, (Jsonb(params),)).fetchone()
        celery.send_task(TASK_NAME, args=[str(job_id)])
        return Response(json.dumps({"id": str(job_id), "status": "queued"}), mimetype="application/json"), 202

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    return app


@cache
def _worker_connection() -> psycopg.Connection:
    return psycopg.connect(libpq_url(load_settings().database_url), autocommit=True)


@shared_task(name=TASK_NAME)
def floor_job(job_id: str) -> None:
    db = _worker_connection()
    db.execute(CLAIM_SQL, (job_id,))
    db.execute(FINISH_SQL, (job_id,))


@cache
def build_celery() -> Celery:
    return create_bare_celery(load_settings().redis_url)


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return build_celery()
    raise AttributeError(name)
