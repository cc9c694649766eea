"""HTTP helpers shared by every endpoint that starts or shows a job.

``accept_job`` is the one path for starting work: honour ``Idempotency-Key``, insert
the row (with the key, stamped as published, naming the API key that asked for it in
``requested_by``) and commit, then publish, then answer 202
with ``Location`` and ``Retry-After``. A view marked :func:`submits_a_job` runs a request
without ``Idempotency-Key`` in autocommit (web.services): its key lookup, its checks
(each a read consistent alone) and the INSERT each end on their own, with no BEGIN and no
COMMIT (two round trips fewer); nothing is left to commit after the INSERT. Either way
the request gives its connection back before it publishes.

If publishing fails the job is still accepted: its stamp is cleared (on a connection of
its own, which must not wait for one the request still holds: a pool of one would wait
out its timeout), which puts it in the outbox (``enqueued_at`` NULL) until beat's
recovery task publishes it. Should the process die between the commit and the publish, or
the database fail as the stamp is cleared, the stamped row is picked up as a lost message
(``PLANT_REQUEUE_AFTER_SECONDS``).
``job_response`` adds an ETag and, on GET and HEAD, honours ``If-None-Match``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from flask import Response, request
from sqlalchemy.orm import Session

from models.canonical import canonical_bytes
from models.entity_input import nul_path, nul_refused
from models.idempotency import bind_key, claim_key
from models.job_lifecycle import create_job, get_job
from models.jobs import JobRecord
from tasks.dispatch import publish_or_leave_in_outbox, route_for
from web.auth import current_actor
from web.idempotency_http import IDEMPOTENCY_HEADER, idempotency_key, key_owner, mark_replayed
from web.openapi_headers import IDEMPOTENCY_KEY, JOB_ACCEPTED, documents_headers
from web.schemas import JobOut
from web.services import V, autocommit_when, close_db_session, db_statements, services

JOBS_PATH = "/api/v1/jobs"


def job_body(job: JobRecord) -> bytes:
    return JobOut.of(job).model_dump_json().encode()


def job_response(job: JobRecord, status: int = 200) -> Response:
    body = job_body(job)
    etag = hashlib.sha256(body).hexdigest()[:32]
    if status == 200 and _client_has_current(etag):
        response = Response(status=304)
    else:
        response = Response(body, status=status, mimetype="application/json")
    response.set_etag(etag)
    response.headers["Cache-Control"] = "no-cache"
    return response


def _client_has_current(etag: str) -> bool:
    """Whether ``If-None-Match`` says the client already holds this representation.

    Only a GET or HEAD may answer 304 (RFC 9110 §13.1.2): a POST such as a cancel has
    already acted, so its result is always sent. The comparison is weak, as RFC 9110
    requires for ``If-None-Match``, so ``W/"<etag>"`` matches too.
    """
    return request.method in ("GET", "HEAD") and request.if_none_match.contains_weak(etag)


def _accepted(job: JobRecord, *, replayed: bool = False) -> Response:
    response = job_response(job, status=202)
    response.headers["Location"] = f"{JOBS_PATH}/{job.id}"
    response.headers["Retry-After"] = str(services().settings.retry_after_seconds)
    return mark_replayed(response) if replayed else response


def _without_idempotency_key() -> bool:
    return IDEMPOTENCY_HEADER not in request.headers


def submits_a_job(view: V) -> V:
    """Mark a view that ends in :func:`accept_job` and writes nothing else: without an
    ``Idempotency-Key`` (whose claim and the INSERT must commit together) it runs in
    autocommit. Put it below the route decorator. It also documents ``Idempotency-Key`` and
    the 202's headers in /openapi.json (web.openapi_headers)."""
    documented = documents_headers(request=[IDEMPOTENCY_KEY], responses={202: JOB_ACCEPTED})(view)
    return autocommit_when(_without_idempotency_key)(documented)


def accept_job(kind: str, params: dict[str, Any], *, refuse: Callable[[], None] | None = None) -> Response:
    """Start a job of ``kind`` with ``params``, stored as given (see the module doc). ``refuse``
    raises when the job is not to be created (a deleted entity, say); it is not asked of a request
    replaying an ``Idempotency-Key``, which answers the job the key holds, as it did the first time."""
    if (field := nul_path(params)) is not None:  # jsonb cannot hold it: the database's refusal names nothing
        raise nul_refused(field)
    svc = services()
    key = idempotency_key()
    # The request's Session; in a view marked submits_a_job, without a key, its autocommit connection.
    statements = db_statements()
    if key is not None:
        assert isinstance(statements, Session)  # a key's claim commits with the INSERT
        owner = key_owner()
        fingerprint = hashlib.sha256(canonical_bytes({"kind": kind, "params": params})).digest()
        existing = claim_key(statements, owner=owner, key=key, fingerprint=fingerprint,
                             ttl_seconds=svc.settings.idempotency_ttl_seconds)
        if existing is not None:
            statements.commit()
            return _accepted(get_job(statements, existing), replayed=True)
    if refuse is not None:
        refuse()
    job = create_job(statements, kind=kind, params=params, queue=route_for(kind).queue, to_publish=True,
                     requested_by=current_actor())
    if key is not None:
        bind_key(statements, owner=owner, key=key, job_id=job.id)
    if isinstance(statements, Session):
        statements.commit()
    close_db_session()  # the request's database work is done: its connection goes back to the pool
    publish_or_leave_in_outbox(svc.celery, svc.sessions, job_id=job.id, kind=kind)
    return _accepted(job)
