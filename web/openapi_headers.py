"""The HTTP headers Plant reads and sends, as ``/openapi.json`` names them.

flask-openapi3 documents a request header only through a ``header`` model, which it also
validates on every request: CPU on the hot paths (``GET /api/v1/jobs/{id}``, job
submissions; docs/benchmarks.md). Plant reads its headers by hand (``Idempotency-Key`` in
``web.idempotency_http``, ``If-Match`` in ``web.api.registry.expected_versions``, ``If-None-Match``
through werkzeug), so they are documented here instead: a view is marked with the headers it
reads and, per status, those its responses carry (:func:`documents_headers`, below the route
decorator, which copies the mark), and :func:`document_headers` writes every mark into the
generated document once, when the app is created. Nothing here runs per request.
"""

from __future__ import annotations

import json

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, TypeVar

from flask_openapi3 import OpenAPI

V = TypeVar("V", bound=Callable[..., Any])
MARK = "plant_openapi_headers"

STRING = {"type": "string"}


def _parameter(name: str, description: str, schema: Mapping[str, Any] = STRING) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": dict(schema), "description": description}


def header(description: str, schema: Mapping[str, Any] = STRING) -> dict[str, Any]:
    """A response header's entry in the document."""
    return {"description": description, "schema": dict(schema)}


def _idempotency_key(act: str, same: str, returns: str, duplicates: str, keys: str = "") -> dict[str, Any]:
    """``Idempotency-Key`` as an operation that honours it reads it (web.idempotency_http)."""
    return _parameter(
        "Idempotency-Key",
        f"Makes the {act} safe to retry. The same key with the same {same} returns {returns}, with a different "
        f"{same} it is 422 `idempotency-key-reused`; concurrent duplicates {duplicates} (one that finds the key "
        f"expired and claimed again meanwhile is 409 `conflict`: retry it). Keys are per API key{keys} and "
        "remembered for PLANT_IDEMPOTENCY_TTL_SECONDS (a day by default). 1 to 255 printable characters, else 422.",
        {"type": "string", "minLength": 1, "maxLength": 255})


IDEMPOTENCY_KEY = _idempotency_key("submission", "payload", "the job it started (202, `Idempotent-Replayed: true`)",
                                   "start one job")
ENTITY_IDEMPOTENCY_KEY = _idempotency_key(
    "create", "body", "the entity it created, as it is now (201, `Idempotent-Replayed: true`)", "create one entity",
    ", shared with job submissions,")
IF_MATCH = _parameter(
    "If-Match",
    "Apply the change only if the entity is at a version this names, else 409 `precondition-failed` "
    "(safe to retry after re-reading). Strong entity-tags as the ETag writes them: `\"<version>\"`, or a "
    "team's full tag `\"<version>.<members>\"` while its members are unchanged (its `\"<version>\"` alone "
    "compares the governed version only); a comma-separated list matches when any tag in it does, and `*` "
    "matches any version. Weak tags never match, and a header that names no version (blank, `\"\"`, a "
    "list missing its commas, an unterminated tag) is 409 too, never a change applied unconditionally.")
IF_NONE_MATCH = _parameter(
    "If-None-Match",
    "304 Not Modified (no body) when it is `*` or a tag in it matches the job's current ETag, compared "
    "weakly (`W/\"…\"` matches too). With `wait`, the poll first waits as usual, then compares.")

ETAG = header("the representation's strong entity-tag")
ENTITY_ETAG = header("`\"<version>\"`; a team's is `\"<version>.<members>\"` (16 hex digits of the SHA-256 of "
                     "its member ids): send it back in If-Match")
JOB_LOCATION = header("the job's URL, `/api/v1/jobs/{id}`: poll it (`?wait=N` long-polls)")
ENTITY_LOCATION = header("the created entity's URL")
JOB_RETRY_AFTER = header("seconds to wait before polling the job (PLANT_RETRY_AFTER_SECONDS)", {"type": "integer"})


def _replayed(named: str, made: str) -> dict[str, Any]:
    """``Idempotent-Replayed`` on the answer of an operation that honours ``Idempotency-Key``."""
    thing = named.split()[-1]
    return header(f"`true` when an Idempotency-Key named {named} already {made}: this is that {thing}, and nothing "
                  f"new was {made}; absent otherwise", {"type": "string", "enum": ["true"]})


IDEMPOTENT_REPLAYED = _replayed("a job", "started")
ENTITY_REPLAYED = _replayed("an entity", "created")
WWW_AUTHENTICATE = header("`Bearer realm=\"plant\"`, with RFC 6750's `error=\"invalid_request\"` (no key could be "
                          "read: two headers, no key after Bearer, a key in the query string), `error=\"invalid_token\"` "
                          "(unknown, revoked or expired), or no error for another scheme or none (RFC 6750 §3.1): send an API key as `Authorization: Bearer <key>`")
INSUFFICIENT_SCOPE_CHALLENGE = header("`Bearer realm=\"plant\", error=\"insufficient_scope\", scope=\"<scope>\"`, the "
                                      "scope this request needs and the key lacks (RFC 6750 §3.1)")
UNAVAILABLE_RETRY_AFTER = header(
    "seconds after which the condition is expected to have passed: the database unreachable, timed out or "
    "out of free connections (5), a ledger digest finding no quiet moment (5), or every digest slot taken "
    "(2); absent when waiting will not help (`seal-list-invalid`)", {"type": "integer"})

REQUEST_ID = _parameter(
    "X-Request-ID",
    "Your id for the request, to find it in Plant's logs: a token of letters, digits and `._:+/=-` (1 to 128 "
    "characters, starting with a letter or digit); anything else is replaced by a new random id.",
    {"type": "string", "maxLength": 128})
ECHOED_REQUEST_ID = header("the request's id: the one sent in X-Request-ID when it was a sane token, else a new "
                           "random one; every log line written while serving it carries it as `request_id`")

JOB_ACCEPTED = {"Location": JOB_LOCATION, "Retry-After": JOB_RETRY_AFTER, "ETag": ETAG,
                "Idempotent-Replayed": IDEMPOTENT_REPLAYED}


def documents_headers(*, request: Sequence[Mapping[str, Any]] = (),
                      responses: Mapping[int, Mapping[str, Mapping[str, Any]]] | None = None) -> Callable[[V], V]:
    """Mark a view with the request headers it reads and, by status, the headers its responses
    carry, for :func:`document_headers`. Put it below the route decorator; marks add up."""
    def mark(view: V) -> V:
        previous = getattr(view, MARK, ((), {}))
        merged = {status: dict(headers) for status, headers in previous[1].items()}
        for status, headers in (responses or {}).items():
            merged.setdefault(status, {}).update(headers)
        setattr(view, MARK, ((*previous[0], *request), merged))
        return view
    return mark


def document_headers(app: OpenAPI) -> dict[str, Any]:
    """Build the app's OpenAPI document (flask-openapi3 keeps it and serves it as built) and
    write each marked view's headers into its operations. A mark naming a status the route
    does not document is an error here, at start-up, rather than a header documented nowhere."""
    document = app.api_doc
    for rule in app.url_map.iter_rules():
        marked = getattr(app.view_functions[rule.endpoint], MARK, None)
        if marked is None:
            continue
        parameters, responses = marked
        path = openapi_path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = document["paths"][path][method.lower()]
            operation["parameters"] = [*operation.get("parameters", []), *map(dict, parameters)]
            for status, headers in responses.items():
                operation["responses"][str(status)].setdefault("headers", {}).update(headers)
    for operations in document["paths"].values():  # every route reads and echoes it (web.metrics)
        for operation in (operations[m] for m in ("get", "put", "post", "delete", "patch") if m in operations):
            operation["parameters"] = [*operation.get("parameters", []), dict(REQUEST_ID)]
            for response in operation["responses"].values():
                response.setdefault("headers", {})["X-Request-ID"] = dict(ECHOED_REQUEST_ID)
    drop_unproduced_validation_answers(document)
    return document


def drop_unproduced_validation_answers(document: dict[str, Any]) -> None:
    """Take out the 422 flask-openapi3 writes into every operation that names none: a JSON
    array of its ``ValidationErrorModel``, which Plant never answers (its 422s are problem+json,
    web.problems.validation_problem), from an operation reading no path, query or body a
    refusal could be about (``/health``). The model's schema goes with it once unused."""
    default = {"type": "array", "items": {"$ref": "#/components/schemas/ValidationErrorModel"}}
    for operations in document["paths"].values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            reads = "requestBody" in operation or any(p.get("in") in ("path", "query")
                                                      for p in operation.get("parameters", []))
            if not reads and answer.get("content", {}).get("application/json", {}).get("schema") == default:
                del operation["responses"]["422"]
    if "ValidationErrorModel" not in json.dumps(document["paths"]):
        document.get("components", {}).get("schemas", {}).pop("ValidationErrorModel", None)


def route_operations(app: OpenAPI) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """``(rule, endpoint, method, operation)`` of every route method the app's built document
    names: one walk of the routes for every hook that looks a request up by its operation.
    A HEAD is given its GET's operation; a method the document does not name (OPTIONS) is left out."""
    for rule in app.url_map.iter_rules():
        operations = app.api_doc["paths"].get(openapi_path(rule.rule), {})
        for method in rule.methods or ():
            operation = operations.get("get" if method == "HEAD" else method.lower())
            if operation is not None:
                yield rule.rule, rule.endpoint, method, operation


def operations_where(app: OpenAPI, wanted: Callable[[dict[str, Any]], bool]) -> frozenset[tuple[str, str]]:
    """``(endpoint, method)`` of every route whose operation in the app's built document is
    ``wanted`` (:func:`route_operations`): what a ``before_request`` hook looks a request up in,
    read once at start-up."""
    return frozenset((endpoint, method) for _, endpoint, method, operation in route_operations(app)
                     if wanted(operation))


def openapi_path(rule: str) -> str:
    """``/jobs/<job_id>`` as the document writes it, ``/jobs/{job_id}`` (no converters are used)."""
    return rule.replace("<", "{").replace(">", "}")
