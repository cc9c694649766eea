"""Job resources: show (with ETag and long-poll), list (cursor-paginated), cancel.

Show and list read in autocommit (``statement_at_a_time``): each is one statement after
the key lookup, so a long-poll's every read sees the latest commits. A long poll that
waited looks its key up again before it answers: a key revoked meanwhile gets 401. A
process holds at most ``PLANT_LONG_POLLS_AT_ONCE`` long polls; one more answers at once."""

from __future__ import annotations

import time
import uuid

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from web.auth import BEARER, current_actor, key_revoked_while_waiting

from models.audit_close import close_runs_apart
from models.job_control import list_jobs, request_cancel
from models.job_lifecycle import get_job
from models.jobs import JobRecord, JobStatus
from web.jobs_http import job_response
from web.openapi_headers import ETAG, IF_NONE_MATCH, documents_headers
from web.schemas import API_PROBLEMS, JobGetQuery, JobList, JobListItem, JobListQuery, JobOut, JobPath, problems
from web.services import close_db_session, db_session, db_statements, long_poll_slot, services, statement_at_a_time

POLL_INTERVAL_SECONDS = 0.1

jobs_api = APIBlueprint("jobs", __name__, url_prefix="/api/v1", abp_security=BEARER, abp_responses=API_PROBLEMS, abp_tags=[Tag(name="jobs")])


@jobs_api.get("/jobs/<job_id>", responses={200: JobOut, 304: None, **problems(404), **problems(422)})
@documents_headers(request=[IF_NONE_MATCH], responses={200: {"ETag": ETAG}, 304: {"ETag": ETAG}})
@statement_at_a_time
def show_job(path: JobPath, query: JobGetQuery) -> Response:
    """Show a job. With ``wait=N`` the call returns once the job is terminal, or after N s."""
    job, waited = _wait_until_terminal(path.job_id, query.wait)
    # The key was checked before the wait: one revoked since must not get what was read after it.
    if waited and (refused := key_revoked_while_waiting()) is not None:
        return refused
    return job_response(job)


def _wait_until_terminal(job_id: uuid.UUID, seconds: float) -> tuple[JobRecord, bool]:
    """The job once terminal or after ``seconds``, and whether it was waited for. With every
    long-poll slot of the process taken, the job as it is now (``web.services.long_poll_slot``)."""
    deadline = time.monotonic() + seconds
    job = get_job(db_statements(), job_id)
    if JobStatus(job.status).is_terminal or seconds <= 0:
        return job, False
    waited = False
    with long_poll_slot() as may_wait:
        while may_wait and not JobStatus(job.status).is_terminal and time.monotonic() < deadline:
            close_db_session()  # the connection goes back to the pool while this request sleeps
            time.sleep(min(POLL_INTERVAL_SECONDS, max(deadline - time.monotonic(), 0)))
            job, waited = get_job(db_statements(), job_id), True
    return job, waited


@jobs_api.get("/jobs", responses={200: JobList, **problems(422)})
@statement_at_a_time
def list_all_jobs(query: JobListQuery) -> dict:
    """List jobs newest first; follow ``next_page_token`` until it is null. A job's ``params``,
    ``result`` or ``error`` longer than 16 KiB as JSON is null in its item, named in ``abbreviated``."""
    page = list_jobs(
        db_session(),
        status=query.status.value if query.status else None,
        kind=query.kind,
        page_size=query.page_size,
        page_token=query.page_token,
    )
    return JobList(items=[JobListItem.listed(j) for j in page.items], next_page_token=page.next_page_token).model_dump(
        mode="json"
    )


@jobs_api.post("/jobs/<job_id>/cancel", responses={200: JobOut, **problems(404), **problems(409)})
@documents_headers(responses={200: {"ETag": ETAG}})
def cancel_job(path: JobPath) -> Response:
    """Cancel a queued job now, or ask a running job to stop at its next checkpoint."""
    session = db_session()
    job = request_cancel(session, job_id=path.job_id, by=current_actor())
    session.commit()
    if job.status == JobStatus.CANCELLED.value:  # an audit's run ends with it, once the cancel is in
        close_runs_apart(services().sessions, keyring=services().keyring, job_id=job.id)
    return job_response(job)
