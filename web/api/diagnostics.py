"""Diagnostics endpoints: start a ``diagnostics.sleep`` job to check a deployment."""

from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from models.errors import InvalidInput
from web.auth import BEARER
from web.jobs_http import accept_job, submits_a_job
from web.schemas import API_PROBLEMS, JobOut, SleepIn, problems
from web.services import services

diagnostics_api = APIBlueprint("diagnostics", __name__, url_prefix="/api/v1", abp_security=BEARER, abp_responses=API_PROBLEMS, abp_tags=[Tag(name="diagnostics")])


@diagnostics_api.post("/diagnostics/sleep", responses={202: JobOut, **problems(409, 422)})
@submits_a_job
def start_sleep(body: SleepIn) -> Response:
    """Start a job that sleeps ``seconds`` in ``steps`` slices, reporting progress.

    ``seconds`` must end at least a second before the job's soft time limit: a sleep that
    long could only end ``job-timed-out``."""
    longest = services().settings.job_soft_time_limit - 1
    if body.seconds > longest:
        message = f"at most {longest} seconds: the job's soft time limit (PLANT_JOB_SOFT_TIME_LIMIT) would end it first"
        raise InvalidInput(f"seconds: {message}", errors=[{"field": "seconds", "message": message}])
    return accept_job("diagnostics.sleep", body.model_dump())
