"""Pydantic v2 request and response models for the job API (they also generate OpenAPI)."""

from __future__ import annotations

import datetime as dt
from http import HTTPStatus
import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_serializer
from pydantic_core import PydanticCustomError

from models.canonical import rfc3339_utc
from models.diagnostics import MAX_SECONDS
from models.errors import PROBLEM_MEMBERS
from models.job_control import LISTED_JSON, LISTED_JSON_BYTES
from models.jobs import JobRecord, JobStatus
from web.openapi_headers import INSUFFICIENT_SCOPE_CHALLENGE, UNAVAILABLE_RETRY_AFTER, WWW_AUTHENTICATE


class Progress(BaseModel):
    done: int
    total: int | None
    message: str | None


def _absent(value: object) -> bool:
    return value is None


class Problem(BaseModel):
    """An RFC 9457 problem document. ``status`` and ``detail`` are left out when unknown:
    RFC 9457 has them a number and a string, never null (a job's stored error has no status)."""

    model_config = ConfigDict(extra="allow")
    type: str = "about:blank"
    title: str
    status: int | None = Field(default=None, exclude_if=_absent)
    detail: str | None = Field(default=None, exclude_if=_absent)

    @classmethod
    def stored(cls, error: object) -> Problem | None:
        """A job's stored ``error`` as a problem document, whatever the row holds. One stored
        before Plant refused extensions named like RFC 9457's members (a certification refused
        for a retired skill stored ``"status": "retired"``), or edited through SQL, made the
        job, and every page listing it, a 500: ``status`` (a job has none) and a standard member
        of the wrong type are left out, and a value that is not an object is served as the
        detail of an unnamed error."""
        if not error:
            return None
        if not isinstance(error, dict):
            return cls(title=UNREADABLE_ERROR, detail=json.dumps(error)[:1000])
        members = {name: value for name, value in error.items() if name != "status"}  # a job has no HTTP status
        for name in PROBLEM_MEMBERS - {"status"}:  # the others RFC 9457 has strings
            if name in members and type(members[name]) is not str:
                del members[name]
        members.setdefault("title", UNREADABLE_ERROR)
        return cls.model_validate(members)


UNREADABLE_ERROR = "Job error"


class FieldError(BaseModel):
    field: str = Field(description="the bad field: a body member (dotted path), a query or path parameter, or a header")
    message: str


MEMBERS_REFUSED = "members_refused"


def members_refused(message: str, *members: str) -> PydanticCustomError:
    """A refusal a request model's own validator raises about several members together (give
    one of two, not both; these may not be null): the 422 names each member in ``errors``
    (:func:`web.problems.validation_problem`), not the body as a whole, as pydantic would."""
    return PydanticCustomError(MEMBERS_REFUSED, message, {"members": members})


class RuleViolation(BaseModel):
    rule: str = Field(description="the rule's id, as GET /rules lists it")
    description: str
    field: str | None = Field(default=None, exclude_if=_absent, description="the entity's field the rule judges; "
                                                                             "absent for the L0 rules about the chain")


class ApiProblem(Problem):
    """An RFC 9457 problem document as the API answers it: always its ``type`` (``about:blank``
    for the errors Flask and gunicorn raise themselves, ``/problems/…`` for Plant's) and its
    HTTP ``status``; a 422 names its bad fields in ``errors`` or its broken rules in
    ``violations``, and some problems carry other members (``field``, ``id``...)."""

    type: str
    status: int
    errors: list[FieldError] | None = Field(default=None, exclude_if=_absent)
    violations: list[RuleViolation] | None = Field(default=None, exclude_if=_absent)


PROBLEM_MEDIA_TYPE = "application/problem+json"


# The headers a problem of this status carries on every route that can answer it (web.auth, web.problems).
PROBLEM_HEADERS: dict[int, dict[str, Any]] = {401: {"WWW-Authenticate": WWW_AUTHENTICATE},
                                              403: {"WWW-Authenticate": INSUFFICIENT_SCOPE_CHALLENGE},
                                              503: {"Retry-After": UNAVAILABLE_RETRY_AFTER}}


def problems(*statuses: int) -> dict[int, dict[str, Any]]:
    """OpenAPI responses for problem+json errors with these statuses."""
    schema = _inlined(ApiProblem.model_json_schema())
    return {
        status: {"description": HTTPStatus(status).phrase, "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
                 **({"headers": PROBLEM_HEADERS[status]} if status in PROBLEM_HEADERS else {})}
        for status in statuses
    }


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``#/$defs/…`` references replaced by what they name: a schema set
    inline in the document resolves ``#/…`` from the document's root, which has no ``$defs``."""
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        return [inline(item) for item in node] if isinstance(node, list) else node

    return inline(schema)


# Every /api route can answer these: no key, wrong scope, body too large, bad input,
# database unreachable.
API_PROBLEMS = problems(401, 403, 413, 422, 503)


class JobOut(BaseModel):
    """The job resource, exactly these fields."""

    id: uuid.UUID
    kind: str
    status: JobStatus
    # Plant starts every job with an object of parameters, and every task of Plant's returns an
    # object or nothing; a row edited through SQL may hold any JSON value, served as it is
    # stored (typed as an object, the job and every page listing it were a 500).
    params: Any = Field(description="the job's parameters: a JSON object (another JSON value only in a row "
                                    "written outside Plant)")
    progress: Progress
    attempts: int
    result: Any = Field(description="what the job's task returned: a JSON object, or null until it succeeds "
                                    "(another JSON value only in a row written outside Plant)")
    error: Problem | None
    requested_by: str | None = Field(
        description="who asked for the job: `api-key:<id>` of the key that submitted it, `beat:<schedule>` for a "
                    "scheduled one, null for jobs older than this field. The chain versions the job writes carry "
                    "actor `job:<id>`.")
    cancelled_by: str | None = Field(
        default=None, description="who asked to cancel the job: `api-key:<id>` of the key that sent the first cancel "
                                  "request; null when no one did, and for cancels older than this field")
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @field_serializer("created_at", "started_at", "finished_at")
    def _utc(self, value: dt.datetime | None) -> str | None:
        return rfc3339_utc(value)

    @classmethod
    def of(cls, job: JobRecord) -> JobOut:
        return cls(
            id=job.id,
            kind=job.kind,
            status=JobStatus(job.status),
            params=job.params,
            progress=Progress(done=job.progress_done, total=job.progress_total, message=job.progress_message),
            attempts=job.attempts,
            result=job.result,
            error=Problem.stored(job.error),
            requested_by=job.requested_by,
            cancelled_by=job.cancelled_by,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class QueryModel(BaseModel):
    """Base of every query-string model: a parameter it does not name is refused (422 naming
    it), as a body's unknown member is: a misspelt filter (``?state=`` for ``?status=``)
    ignored answered every row as if each matched. Its JSON schema is built once per class.

    flask-openapi3 asks a query model for its JSON schema on every request (to tell list
    parameters apart), and pydantic builds one from scratch each time: about a fifth of
    the CPU of ``GET /api/v1/jobs/{id}``. The schema depends only on the class and the
    arguments, so it is kept, and each caller gets its own copy to read or change. The copy
    is parsed from the schema's JSON text: a fifth of the cost of ``copy.deepcopy``.
    """

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        key = (cls, args, tuple(sorted(kwargs.items())))
        text = _QUERY_SCHEMAS.get(key)
        if text is None:
            text = _QUERY_SCHEMAS[key] = json.dumps(super().model_json_schema(*args, **kwargs))
        return json.loads(text)


_QUERY_SCHEMAS: dict[tuple[Any, ...], str] = {}


class JobListItem(JobOut):
    """A job as a page of ``GET /api/v1/jobs`` lists it: a member too long to list is null here."""

    abbreviated: dict[Literal["params", "result", "error"], int] = Field(
        description=f"the members of this job (`params`, `result`, `error`) whose JSON text is longer than "
                    f"{LISTED_JSON_BYTES:,} bytes, each with its length in bytes: each is null in this item, "
                    "and `GET /api/v1/jobs/{id}` shows it in full. Empty for most jobs.")

    @classmethod
    def listed(cls, row: Any) -> JobListItem:
        """A row of :func:`models.job_control.list_jobs`."""
        lengths = {name: getattr(row, f"{name}_bytes") for name in LISTED_JSON}
        abbreviated = {name: size for name, size in lengths.items() if size is not None and size > LISTED_JSON_BYTES}
        return cls(**dict(JobOut.of(row)), abbreviated=abbreviated)


class JobList(BaseModel):
    items: list[JobListItem]
    next_page_token: str | None


class JobPath(BaseModel):
    job_id: uuid.UUID


class JobGetQuery(QueryModel):
    wait: float = Field(
        default=0, ge=0, le=30, description="long-poll: return when the job is terminal or after this many seconds"
    )


class JobListQuery(QueryModel):
    status: JobStatus | None = None
    kind: str | None = Field(default=None, max_length=64)
    page_size: int = Field(default=50, ge=1, le=500)
    page_token: str | None = Field(default=None, max_length=512)


class SleepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: StrictFloat = Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False, description=(
        "at most a second below the job soft time limit (PLANT_JOB_SOFT_TIME_LIMIT, 3600 s by default): "
        "a longer sleep could only end job-timed-out"))
    steps: StrictInt = Field(default=1, ge=1, le=100_000)


class CheckOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["up", "down", "skipped"]


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    checks: dict[str, CheckOut]
