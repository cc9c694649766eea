"""RFC 9457 problem+json responses and the one mapping from errors to HTTP.

Domain exceptions, request validation errors, unknown routes, an unreachable database
and anything unexpected all leave the API as ``application/problem+json``. No handler
ever shows a stack trace to a client.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from flask import Flask, Response, current_app, json, request
from pydantic import ValidationError
from psycopg.errors import QueryCanceled, ReadOnlySqlTransaction
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from models.canonical import strict_json_loads
from models.errors import PROBLEM_TYPE_PREFIX, Conflict, InvalidInput, KeySealFileInvalid, KeySealUnreadable, LedgerBusy, NotFound, PlantError, SealListInvalid, SigningKeySealed
from web.schemas import MEMBERS_REFUSED

log = logging.getLogger(__name__)

PROBLEM_MIMETYPE = "application/problem+json"
DATABASE_RETRY_AFTER_SECONDS = 5

STATUS_BY_ERROR: list[tuple[type[PlantError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (InvalidInput, 422),
    (LedgerBusy, 503),
    (SealListInvalid, 503),
    (SigningKeySealed, 503),
    # The server's own seal file is at fault, not the request (a SigningKeyError, whose other
    # uses refuse key material a client or operator handed in, 400); and no wait puts it right,
    # so no 503 and Retry-After for clients and load balancers to wait out.
    (KeySealFileInvalid, 500),
]


def problem_response(
    status: int, title: str, detail: str = "", *, type_: str = "about:blank", **extensions: Any
) -> Response:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, **extensions}
    if detail:
        body["detail"] = detail
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)


def invalid_input_response(detail: str, errors: list[dict[str, str]] | None = None) -> Response:
    """422 ``invalid-input``, the one type (and title) of every input Plant refuses."""
    extensions = {"errors": errors} if errors is not None else {}
    return problem_response(422, InvalidInput.title, detail, type_=PROBLEM_TYPE_PREFIX + InvalidInput.code, **extensions)


def status_for(error: PlantError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 400


def _retry_later(response: Response, seconds: int = DATABASE_RETRY_AFTER_SECONDS) -> Response:
    """A 503 that tells the client when to try again."""
    response.headers["Retry-After"] = str(seconds)
    return response


def _plant_error(error: PlantError) -> Response:
    status = status_for(error)
    if status == 500:  # the server's own files are at fault: an operator must put them right
        log.error("%s: %s", error.code, error.detail)
    problem = error.problem(status)
    if status == 422 and isinstance(problem.get("field"), str) and "errors" not in problem and "violations" not in problem:
        # A domain refusal names its field in ``field``; a 422 lists its bad fields in ``errors`` (README, Errors).
        problem["errors"] = [{"field": problem["field"], "message": error.detail}]
    response = Response(json.dumps(problem), status=status, mimetype=PROBLEM_MIMETYPE)
    return response if error.retry_after_seconds is None else _retry_later(response, error.retry_after_seconds)


def _seal_unreadable(error: KeySealUnreadable) -> Response:
    """A retired key's seal file being written, or its mount failing for a moment: whether the
    key is sealed cannot be told yet, and asking again shortly may tell (no ``PlantError``, so
    that a job retries it: ``models.errors.KeySealUnreadable``)."""
    log.warning("%s", error.detail)
    return _retry_later(Response(json.dumps(error.problem(503)), status=503, mimetype=PROBLEM_MIMETYPE),
                        error.retry_after_seconds)


def _http_error(error: HTTPException) -> Response:
    response = problem_response(error.code or 500, error.name, error.description or "")
    if error.code == 405 and error.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
    return response


def _too_large(error: RequestEntityTooLarge) -> Response:
    """413 naming the limit and the setting that sets it, so a client knows what fits."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    return problem_response(413, error.name, f"the request body is larger than the {limit} bytes this server "
                            "accepts (PLANT_MAX_REQUEST_BYTES)", max_request_bytes=limit)


def _database_unavailable(error: DBAPIError) -> Response:
    if isinstance(error.orig, QueryCanceled):  # the server is up; the request took too long
        log.warning("statement timed out: %s", error.orig)
        return _retry_later(problem_response(
            503, "Service Unavailable", "the database did not finish this request within its statement timeout; "
            "retry shortly", type_="/problems/database-timeout"))
    log.warning("database unavailable: %s", error.orig)
    return _retry_later(problem_response(
        503,
        "Service Unavailable",
        "the database is unreachable; retry shortly",
        type_="/problems/database-unavailable",
    ))


def _database_read_only(error: DBAPIError) -> Response:
    """A standby (a failover not finished) or a database set read-only refuses every write:
    an outage of the writes, not a bug of the request (/health says so too)."""
    log.warning("database refused a write: %s", error.orig)
    return _retry_later(problem_response(
        503, "Service Unavailable", "the database is read-only and refused this write; retry shortly",
        type_="/problems/database-unavailable"))


def _pool_exhausted(error: PoolTimeout) -> Response:
    """Every pooled connection stayed busy for the pool's timeout: the server is overloaded."""
    log.warning("no database connection free: %s", error)
    return _retry_later(problem_response(503, "Service Unavailable", "no database connection came free in time; retry shortly",
                                         type_="/problems/database-busy"))


def _data_error(error: DataError) -> Response:
    """A value the database refused (out of range, malformed): the client's input."""
    log.info("database refused a value: %s", error.orig)
    return invalid_input_response("a value was refused by the database")


def _unexpected(error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return _http_error(error)
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return _database_unavailable(error)
    if isinstance(error, DBAPIError) and isinstance(error.orig, ReadOnlySqlTransaction):
        return _database_read_only(error)
    log.exception("unhandled error", exc_info=error)
    return problem_response(500, "Internal Server Error", "an unexpected error occurred")


def validation_problem(error: ValidationError) -> Response:
    """flask-openapi3's validation callback: one entry per bad field, status 422. A refusal of
    several members together (``web.schemas.members_refused``) has an entry for each of them."""
    errors = []
    for item in error.errors(include_url=False):
        path = ".".join(str(part) for part in item["loc"])
        members = item.get("ctx", {}).get("members") if item["type"] == MEMBERS_REFUSED else None
        fields = [f"{path}.{member}" if path else member for member in members] if members else [path or "body"]
        message = _body_not_an_object() if not path and item["type"] == "model_type" else item["msg"]
        errors.extend({"field": field, "message": message} for field in fields)
    return invalid_input_response("the request has invalid fields", errors)


JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
              float: "a number", type(None): "null"}


def _body_not_an_object() -> str:
    """What is wrong with a body that is no JSON object, said as JSON: pydantic says only that
    it is not 'a valid dictionary or instance of' the model's Python class."""
    data = request.get_data(cache=True)
    if not data:
        return "the body is empty: send a JSON object"
    try:
        value = strict_json_loads(data)
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # valid JSON; Python's reader refuses it (CVE-2020-10735)
            return (f"the body holds an integer of more than {sys.get_int_max_str_digits()} digits, "
                    "which is read as no number (no field takes one that large)")
        return "the body is not valid JSON"
    return f"the body must be a JSON object, not {JSON_TYPES.get(type(value), 'that')}"


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(PlantError, _plant_error)
    app.register_error_handler(KeySealUnreadable, _seal_unreadable)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    app.register_error_handler(OperationalError, _database_unavailable)
    app.register_error_handler(PoolTimeout, _pool_exhausted)
    app.register_error_handler(DataError, _data_error)
    app.register_error_handler(Exception, _unexpected)
