"""gunicorn's ``gthread`` worker, answering the requests gunicorn itself refuses as problem+json.

A request gunicorn cannot parse never reaches Flask: a header field over
``limit_request_field_size`` (431), a request line over ``limit_request_line`` (414), a bad
request line, header or chunk (400). gunicorn answers those with an HTML page of its own, and
README promises problem+json for every error. This worker lets gunicorn decide the status and
log the request as it does, and sends the same status as ``application/problem+json``.

Such a request never reaches the app's request hooks either, so this worker gives it what they
give every other: a request id, in the response's ``X-Request-ID`` and on every log line written
while refusing it (gunicorn's own warning included), and one ``web.requests`` line with its status.
What gunicorn quotes of a malformed header is withheld unless it is a plain header name: a header
line without its colon (``Authorization Bearer plant_…``) is quoted whole, an API key with it, and
went to the log as it was. So is the query string (and fragment) of a request line it refuses: the
warning quoted the whole line, ``GET /x?access_token=… HTTP/1.1`` with a control character in it say,
and a query holds what clients should not send there but do; and a method or version that is not
a plain word (a first line that was a header's value, the tail of a query holding a space). A
refused line that is not, its query aside, a plain request line (a method, a path, an HTTP version)
is withheld whole: a first line of one or two words (``Bearer plant_…``, a bare key) is a header's
value as likely as anything.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import uuid
from typing import Any

from gunicorn import util
from gunicorn.http.errors import (
    InvalidHeader,
    InvalidHeaderName,
    InvalidHTTPVersion,
    InvalidRequestLine,
    InvalidRequestMethod,
)
from gunicorn.workers.gthread import ThreadWorker

from models.logging_setup import bind_log_context, reset_log_context

PROBLEM_MIMETYPE = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-ID"  # as web.metrics: this module is loaded apart from the app
request_log = logging.getLogger("web.requests")
# What gunicorn quotes of a client's bad field that may be shown: a header name or gunicorn's own
# words, a method or an HTTP version that is a plain word. Anything else is replaced by its length:
# it may be a header's value (an API key), or the rest of a query holding a space.
SHOWN_HEADER = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,39}", re.ASCII)
GUNICORN_WORDS = frozenset({"bare LF as line terminator"})
SHOWN_FIELDS: dict[type[Exception], tuple[str, re.Pattern[str]]] = {
    InvalidHeader: ("hdr", SHOWN_HEADER),
    InvalidHeaderName: ("hdr", SHOWN_HEADER),
    InvalidHTTPVersion: ("version", re.compile(r"[A-Za-z0-9/.]{1,20}", re.ASCII)),
    InvalidRequestMethod: ("method", re.compile(r"[A-Za-z_-]{1,20}", re.ASCII)),
}
# A refused request line that may be shown, its query or fragment withheld: a plain method, a path,
# an HTTP version (the query may hold a space or a control character: the line is refused for it).
# Any other line is withheld whole: one or two words may be a header's value (``Bearer plant_…``).
PLAIN_REQUEST_LINE = re.compile(
    r"(?P<head>[A-Za-z]{1,20} /[^?# ]*)(?P<query>[?#].*?)?(?P<tail> HTTP/[0-9]\.[0-9])", re.ASCII | re.DOTALL)


def _withheld(text: str) -> str:
    return f"({len(text)} characters withheld)"


def withhold_client_text(exc: BaseException) -> None:
    """Replace what ``exc`` quotes of the client's request by its length (:data:`SHOWN_FIELDS`),
    and a request line it quotes as :func:`shown_request_line` does."""
    for cls, (attribute, shown) in SHOWN_FIELDS.items():
        text = getattr(exc, attribute, None) if isinstance(exc, cls) else None
        if isinstance(text, str) and not (shown.fullmatch(text) or text in GUNICORN_WORDS):
            setattr(exc, attribute, _withheld(text))
    if isinstance(exc, InvalidRequestLine) and isinstance(exc.req, str):
        exc.req = shown_request_line(exc.req)


def shown_request_line(line: str) -> str:
    """``line`` with its query and fragment withheld if it is a :data:`PLAIN_REQUEST_LINE` (or
    gunicorn's own words), else withheld whole."""
    if line in GUNICORN_WORDS:
        return line
    plain = PLAIN_REQUEST_LINE.fullmatch(line)
    if plain is None:
        return _withheld(line)
    query = plain["query"] or ""
    return plain["head"] + (query[:1] + _withheld(query[1:]) if query else "") + plain["tail"]


class _Capture:
    """Stands in for the client socket while gunicorn writes its error page, and keeps it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.written = b""

    def gettimeout(self) -> float:
        return 0.0  # util.write_nonblock then writes at once, with no setblocking

    def sendall(self, data: bytes) -> None:
        self.written += data

    def __getattr__(self, name: str) -> Any:  # the access log reads the peer and local addresses
        return getattr(self._sock, name)


def page_status(page: bytes) -> tuple[int, str]:
    status_line = page.split(b"\r\n", 1)[0].decode("latin-1")
    _, code, reason = (status_line.split(" ", 2) + [""])[:3]
    return int(code), reason


def problem_bytes(page: bytes, exc: BaseException, request_id: str) -> bytes:
    """gunicorn's error response ``page`` rewritten as problem+json, its status kept."""
    status, reason = page_status(page)
    problem: dict[str, Any] = {"type": "about:blank", "title": reason, "status": status}
    if status < 500 and str(exc):
        problem["detail"] = f"the server refused the request before the application read it: {str(exc)[:200]}"
    body = json.dumps(problem).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: {PROBLEM_MIMETYPE}\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            f"{REQUEST_ID_HEADER}: {request_id}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class ProblemThreadWorker(ThreadWorker):
    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        request_id = uuid.uuid4().hex  # the client's X-Request-ID is in what gunicorn could not read
        token = bind_log_context(request_id=request_id)
        try:
            withhold_client_text(exc)
            capture = _Capture(client)
            super().handle_error(req, capture, addr, exc)
            if not capture.written:
                return
            _log_refusal(req, addr, exc, page_status(capture.written)[0])
            try:
                util.write_nonblock(client, problem_bytes(capture.written, exc, request_id))
            except Exception:  # noqa: BLE001  (as gunicorn: the client may be gone)
                self.log.debug("Failed to send error message.")
        finally:
            reset_log_context(token)


def _log_refusal(req: Any, addr: Any, exc: BaseException, status: int) -> None:
    """The request line the app writes for every request it answers, for one it never saw."""
    method, path = getattr(req, "method", None) or "-", (getattr(req, "path", None) or "-")[:200]
    request_log.info(
        "%s %s %s refused before the application read it: %s", method, path, status, type(exc).__name__,
        extra={"method": method, "path": path, "status": status, "refused_by": "gunicorn",
               "error": type(exc).__name__, "remote": (addr or ("",))[0]},
    )
