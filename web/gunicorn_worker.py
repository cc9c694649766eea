"""gunicorn's ``gthread`` worker, answering the requests gunicorn itself refuses as problem+json.

A request gunicorn cannot parse never reaches Flask: a header field over
``limit_request_field_size`` (431), a request line over ``limit_request_line`` (414), a bad
request line, header or chunk (400). gunicorn answers those with an HTML page of its own, and
README promises problem+json for every error. This worker lets gunicorn decide the status and
log the request as it does, and sends the same status as ``application/problem+json``.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

PROBLEM_MIMETYPE = "application/problem+json"


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


def problem_bytes(page: bytes, exc: BaseException) -> bytes:
    """gunicorn's error response ``page`` rewritten as problem+json, its status kept."""
    status_line = page.split(b"\r\n", 1)[0].decode("latin-1")
    _, code, reason = (status_line.split(" ", 2) + [""])[:3]
    status = int(code)
    problem: dict[str, Any] = {"type": "about:blank", "title": reason, "status": status}
    if status < 500 and str(exc):
        problem["detail"] = f"the server refused the request before the application read it: {str(exc)[:200]}"
    body = json.dumps(problem).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: {PROBLEM_MIMETYPE}\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class ProblemThreadWorker(ThreadWorker):
    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        capture = _Capture(client)
        super().handle_error(req, capture, addr, exc)
        if not capture.written:
            return
        try:
            util.write_nonblock(client, problem_bytes(capture.written, exc))
        except Exception:  # noqa: BLE001  (as gunicorn: the client may be gone)
            self.log.debug("Failed to send error message.")
