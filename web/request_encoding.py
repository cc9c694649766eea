"""How a request is encoded, checked before it is read: a UTF-8 target, identity-coded UTF-8 JSON.

A body sent with ``Content-Encoding: gzip`` (or any coding) was read as if it were plain (a
422 "not valid JSON" for valid, compressed JSON), and a JSON body in another charset was
read by Python's detection: ``application/json; charset=utf-16`` (or UTF-16 bytes declared as
nothing) was taken as the JSON it decodes to, while ``charset=latin-1`` was read as UTF-8
regardless. RFC 8259 §8.1 exchanges JSON as UTF-8 only, so each of those is 415 (RFC 9110
§15.5.16) naming what to send instead, with ``Accept-Encoding: identity`` when a content
coding was the reason (RFC 9110 §12.5.3). Decoding a coding is not offered: a compressed body
could expand past ``PLANT_MAX_REQUEST_BYTES``, which only counts the bytes on the wire.

A path or query string whose percent-decoded bytes are not UTF-8 (``?kind=%FF``) was read with
each bad byte replaced by U+FFFD, a filter for a value the client never sent: 422 naming it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from urllib.parse import unquote_to_bytes

from flask import Response, request
from flask_openapi3 import OpenAPI

from web.openapi_headers import header, operations_where
from web.auth import PROTECTED_PREFIX
from web.problems import invalid_input_response, problem_response
from web.schemas import problems

UTF8_CHARSETS = frozenset({"utf-8", "utf8"})
SEND_UTF8_JSON = "send the body as uncompressed UTF-8 JSON (Content-Type: application/json)"


# The 415 as /openapi.json documents it: problem+json, with Accept-Encoding when a content
# coding was refused (X-Request-ID, on every answer, is added with the document's other headers).
UNSUPPORTED_BODY = {**problems(415)[415], "headers": {"Accept-Encoding": header(
    "`identity`, when the body was refused for its `Content-Encoding`: send it uncompressed")}}


def _unsupported(detail: str, *, coding: bool = False) -> Response:
    response = problem_response(415, "Unsupported Media Type", f"{detail}: {SEND_UTF8_JSON}")
    if coding:
        response.headers["Accept-Encoding"] = "identity"
    return response


def body_encoding_problem() -> Response | None:
    """The 415 for a body this request sends in a coding or charset Plant does not read, or None."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding and coding != "identity":
        return _unsupported(f"a request body with Content-Encoding {coding!r} is not accepted", coding=True)
    if not request.is_json:
        return None  # web.refusing_bodies_not_json answers for the media type
    charset = request.mimetype_params.get("charset")
    if charset is not None and charset.strip().lower() not in UTF8_CHARSETS:
        return _unsupported(f"JSON is read as UTF-8 only (RFC 8259), not charset={charset}")
    data = request.get_data(cache=True)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _unsupported(f"the body is not UTF-8 (byte {exc.start} is not), as JSON must be (RFC 8259)")
    if b"\x00" in data:  # never in JSON text, and what UTF-16 or UTF-32 without a byte order mark holds
        return _unsupported("the body holds a NUL byte, so it is not UTF-8 JSON (UTF-16 or UTF-32?)")
    return None


def document_unsupported_bodies(app: OpenAPI) -> None:
    """Name the 415 in /openapi.json on each operation that reads a body, the ones
    :func:`refusing_bodies_not_utf8` checks, and on no other (a GET ignores a body)."""
    for operations in app.api_doc["paths"].values():
        for operation in operations.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation["responses"].setdefault("415", copy.deepcopy(UNSUPPORTED_BODY))


def refusing_bodies_not_utf8(app: OpenAPI) -> Callable[[], Response | None]:
    """A ``before_request`` hook: :func:`body_encoding_problem` for every operation that reads a
    body (those /openapi.json gives a ``requestBody``, read once here). An operation that reads
    none ignores its body, as a GET does."""
    reads_a_body = operations_where(app, lambda operation: "requestBody" in operation)

    def refuse() -> Response | None:
        if (request.endpoint, request.method) not in reads_a_body:
            return None
        return body_encoding_problem()

    return refuse


def refuse_targets_not_utf8() -> Response | None:
    """``before_request``: a path or query under ``/api/`` that is not UTF-8 once percent-decoded
    is 422 naming which (WSGI hands both on as Latin-1 strings, one character a byte, the path
    percent-decoded and the query not; werkzeug decodes both with ``errors="replace"``)."""
    if not request.path.startswith(PROTECTED_PREFIX):
        return None
    path, query = request.environ.get("PATH_INFO", ""), request.environ.get("QUERY_STRING", "")
    if path.isascii() and query.isascii() and "%" not in query:  # nearly every request: nothing to decode
        return None
    parts = {"path": path.encode("latin-1"), "query": unquote_to_bytes(query.encode("latin-1"))}
    bad = [name for name, raw in parts.items() if not _is_utf8(raw)]
    if not bad:
        return None
    return invalid_input_response(
        f"the request's {' and '.join(bad)} must be UTF-8 once percent-decoded",
        [{"field": name, "message": "not UTF-8 once percent-decoded"} for name in bad])


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
