"""``Accept`` honoured: a request under ``/api/`` that accepts none of the media types its
operation answers with is 406, before the operation runs.

Plant answered JSON whatever ``Accept`` said, so a client asking only for ``text/csv`` or
``application/xml`` read a 200 whose body it said it could not take, and a client that
parsed by ``Content-Type`` failed on it instead of on a clear refusal (RFC 9110 §15.5.7).
What an operation answers with is what /openapi.json says of its successful responses,
read once at start-up (``application/json``; ``text/html`` for a report page; JSON or CSV
for the export, whose ``format`` then picks one: :func:`not_acceptable_unless`).

Refused before the operation runs, so a refused POST has created nothing: a 406 after the
job was made would hide its id from the client. The refusal is problem+json whatever
``Accept`` says (RFC 9110 allows an error in a type the client did not ask for), with
``acceptable`` listing what the operation sends. ``Accept`` is read as RFC 9110 §12.5.1
says: the most specific range matching a type gives its quality, and ``q=0`` refuses it.
Media type parameters (``application/json; charset=utf-8``) are not compared: Plant's JSON
is UTF-8, the only charset JSON has (RFC 8259). An entry that is no media range at all
(``Accept: json``) is ignored, and an ``Accept`` of nothing else is as no ``Accept``: no
preference to refuse by. A quality is read as a number from 0 to 1, its leading ``0`` optional:
Java's ``HttpURLConnection`` sends ``text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2`` unasked,
whose ``*/*`` werkzeug's strict reading drops, which refused every JSON answer to it. An ``Accept``
holding a quality that is no such number (``q=high``) is as no ``Accept`` too: a preference that
cannot be read refuses nothing.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import Any

from flask import Response, request
from flask_openapi3 import OpenAPI
from werkzeug.http import parse_list_header, parse_options_header

from web.auth import PROTECTED_PREFIX
from web.openapi_headers import route_operations
from web.problems import problem_response
from web.schemas import problems

NOT_ACCEPTABLE = problems(406)[406]
# A quality as clients write it: RFC 9110's qvalue ("0.2") and the ".2" some send (Java's).
_QUALITY = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """``Accept``'s media ranges as ``(type, subtype, quality)``, lower case, parameters dropped;
    an entry that is no ``type/subtype`` is left out, and a quality that cannot be read leaves
    none (the whole field disregarded)."""
    ranges = []
    for entry in parse_list_header(accept):
        value, options = parse_options_header(entry)
        quality = options.get("q", "1").strip(" \t")
        if _QUALITY.fullmatch(quality) is None or not 0 <= float(quality) <= 1:
            return []
        main, _, sub = value.strip().lower().partition("/")
        if main and sub:
            ranges.append((main, sub, float(quality)))
    return ranges


def accepts(accept: str | None, media_type: str) -> bool:
    """Whether a request with this ``Accept`` takes ``media_type`` (RFC 9110 §12.5.1: the most
    specific matching range decides; none matching, or its ``q=0``, refuses)."""
    return _takes(_ranges(accept) if accept else [], media_type)


def _takes(ranges: list[tuple[str, str, float]], media_type: str) -> bool:
    """:func:`accepts` on ``Accept`` already read into ranges (none: no preference)."""
    if not ranges:
        return True
    main, _, sub = media_type.partition("/")
    decided: tuple[int, float] | None = None  # (how specific, quality) of the range that decides
    for range_main, range_sub, quality in ranges:
        if (range_main, range_sub) == (main, sub):
            specific = 2
        elif (range_main, range_sub) == (main, "*"):
            specific = 1
        elif (range_main, range_sub) == ("*", "*"):
            specific = 0
        else:
            continue
        if decided is None or (specific, quality) > decided:
            decided = (specific, quality)
    return decided is not None and decided[1] > 0


def not_acceptable_unless(media_types: Iterable[str]) -> Response | None:
    """The 406 for this request when its ``Accept`` takes none of ``media_types``, else None."""
    offered = list(media_types)
    accept = request.headers.get("Accept")
    ranges = _ranges(accept) if accept else []
    if any(_takes(ranges, media_type) for media_type in offered):
        return None
    return problem_response(
        406, "Not Acceptable",
        f"this operation answers with {' or '.join(offered)}, and the request's Accept header ({accept}) takes "
        "none of them: accept one (or send no Accept)", acceptable=offered)


def answered_types(app: OpenAPI) -> dict[tuple[str, str], tuple[str, ...]]:
    """``(endpoint, method)`` of every ``/api/`` route, with the media types its successful
    answers have in the app's built document (a HEAD as its GET); routes answering with no
    body are left out."""
    found: dict[tuple[str, str], tuple[str, ...]] = {}
    for rule, endpoint, method, operation in route_operations(app):
        if rule.startswith(PROTECTED_PREFIX) and (types := _success_types(operation)):
            found[(endpoint, method)] = types
    return found


def _success_types(operation: dict[str, Any]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(media_type for status, response in operation.get("responses", {}).items()
                               if str(status).startswith("2") for media_type in response.get("content") or {}))


def refusing_unacceptable_answers(app: OpenAPI) -> Callable[[], Response | None]:
    """A ``before_request`` hook: :func:`not_acceptable_unless` with what the request's operation
    answers with (:func:`answered_types`, read once here). A request without ``Accept``, as
    most are, costs a dictionary lookup."""
    answers = answered_types(app)

    def refuse() -> Response | None:
        if "Accept" not in request.headers:
            return None
        offered = answers.get((request.endpoint, request.method))
        return None if offered is None else not_acceptable_unless(offered)

    return refuse


def document_not_acceptable(app: OpenAPI) -> None:
    """Name the 406 in /openapi.json on each operation :func:`refusing_unacceptable_answers` checks."""
    for path, operations in app.api_doc["paths"].items():
        if not path.startswith(PROTECTED_PREFIX):
            continue
        for operation in operations.values():
            if isinstance(operation, dict) and _success_types(operation):
                operation["responses"].setdefault("406", copy.deepcopy(NOT_ACCEPTABLE))
