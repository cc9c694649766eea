"""``Idempotency-Key`` at the HTTP edge: which operations honour it, and a refusal elsewhere.

Job submissions (web.jobs_http) and registry creates (web.api.registry) honour the key:
the same key and body from the same API key get the original back, marked
``Idempotent-Replayed: true``. Every other operation that changes something refuses a
request carrying the header, 422 naming it: ignoring it would let a client that retries
with it believe the retry safe, and make a second API key (the plaintext of the first was
shown once and cannot be replayed), or apply a PATCH again over a change made meanwhile.
An operation honours the key exactly when /openapi.json names the header on it, so the
document and the refusal cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, g, request
from flask_openapi3 import OpenAPI

from models.errors import InvalidInput
from models.idempotency import validate_key
from web.openapi_headers import operations_where
from web.problems import invalid_input_response

IDEMPOTENCY_HEADER = "Idempotency-Key"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # nothing to repeat: a key sent with one changes nothing


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key``, checked (1 to 255 printable characters, no comma), or
    None. Two ``Idempotency-Key`` headers arrive joined by a comma (gunicorn and werkzeug join a
    repeated field), and were taken as one key, ``one,two``, that neither retry would match:
    which did the client mean? A key with a comma is refused as Authorization's is (web.auth)."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and "," in key:
        raise InvalidInput(f"{IDEMPOTENCY_HEADER} must be one key, without a comma (two {IDEMPOTENCY_HEADER} "
                           "headers arrive joined by one): send it once", field=IDEMPOTENCY_HEADER)
    return validate_key(key) if key is not None else None


def key_owner() -> str:
    """Whose key it is: keys are per API key."""
    return str(g.api_key.id) if g.get("api_key") is not None else "anonymous"


def mark_replayed(response: Response) -> Response:
    response.headers["Idempotent-Replayed"] = "true"
    return response


def refusing_unhonoured_idempotency_keys(app: OpenAPI) -> Callable[[], Response | None]:
    """A ``before_request`` hook: ``Idempotency-Key`` sent to an operation that changes
    something and does not honour it is 422 naming the header. The operations honouring it
    are those /openapi.json names it on, read once here."""
    honoured = operations_where(app, lambda operation: any(
        p.get("name") == IDEMPOTENCY_HEADER and p.get("in") == "header" for p in operation.get("parameters", [])))

    def refuse() -> Response | None:
        if (IDEMPOTENCY_HEADER not in request.headers or request.method in SAFE_METHODS or request.endpoint is None
                or (request.endpoint, request.method) in honoured):
            return None
        return invalid_input_response(
            f"{request.method} {request.path} does not honour {IDEMPOTENCY_HEADER}: a retry would not be "
            "recognised as one. Only job submissions and registry creates honour it; send this request without it",
            [{"field": IDEMPOTENCY_HEADER, "message": "not honoured by this operation; send the request without it"}])

    return refuse
