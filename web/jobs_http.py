"""HTTP helpers shared by every endpoint that starts or shows a job.

``accept_job`` is the one path for starting work: insert the row, commit, then publish,
then answer 202 with ``Location`` and ``Retry-After``. ``job_response`` adds an ETag
and honours ``If-None-Match``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Response, json, request

from models.job_lifecycle import create_job
from models.jobs import Job
from tasks.dispatch import publish_job, route_for
from web.schemas import JobOut
from web.services import db_session, services

JOBS_PATH = "/api/v1/jobs"


def job_body(job: Job) -> bytes:
    return json.dumps(JobOut.of(job).model_dump(mode="json")).encode()


def job_response(job: Job, status: int = 200) -> Response:
    body = job_body(job)
    etag = hashlib.sha256(body).hexdigest()[:32]
    if status == 200 and etag in request.if_none_match:
        response = Response(status=304)
    else:
        response = Response(body, status=status, mimetype="application/json")
    response.set_etag(etag)
    response.headers["Cache-Control"] = "no-cache"
    return response


def accept_job(kind: str, params: dict[str, Any]) -> Response:
    session = db_session()
    job = create_job(session, kind=kind, params=params, queue=route_for(kind).queue)
    session.commit()
    publish_job(services().celery, job_id=job.id, kind=kind)
    response = job_response(job, status=202)
    response.headers["Location"] = f"{JOBS_PATH}/{job.id}"
    response.headers["Retry-After"] = str(services().settings.retry_after_seconds)
    return response
