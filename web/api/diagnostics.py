"""Diagnostics endpoints: start a ``diagnostics.sleep`` job to check a deployment."""

from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from web.auth import BEARER

from web.jobs_http import accept_job
from web.schemas import API_PROBLEMS, JobOut, SleepIn, problems

diagnostics_api = APIBlueprint("diagnostics", __name__, url_prefix="/api/v1", abp_security=BEARER, abp_responses=API_PROBLEMS, abp_tags=[Tag(name="diagnostics")])


@diagnostics_api.post("/diagnostics/sleep", responses={202: JobOut, **problems(422)})
def start_sleep(body: SleepIn) -> Response:
    """Start a job that sleeps ``seconds`` in ``steps`` slices, reporting progress."""
    return accept_job("diagnostics.sleep", body.model_dump())
