"""Bearer API-key authentication and scope checks for everything under ``/api/``.

``/health``, ``/openapi.json`` and the docs stay public. Reads need ``read``, writes
(POST, PATCH, PUT, DELETE) need ``write``, and key management needs ``admin``. A missing
or unknown key is 401 with ``WWW-Authenticate: Bearer``; a key without the scope is 403.
A key past its expiry is 401 saying when it expired; a key's first
request after ``LAST_USED_GRANULARITY`` records its ``last_used_at`` once answered.
The authenticated key is ``g.api_key``; chain writes are attributed to it. A request
that waits (a long poll) looks its key up again before it answers
(:func:`key_revoked_while_waiting`). Every answer under ``/api/`` is ``Cache-Control: no-store``
unless its view says otherwise (:func:`not_stored_by_default`).
"""

from __future__ import annotations

import logging

from flask import Flask, Response, after_this_request, g, request

from models.api_keys import Caller, ExpiredKey, authenticate, key_actor, record_key_use
from models.canonical import rfc3339_utc
from models.db import retry_if_disconnected
from web.problems import problem_response
from web.services import close_db_session, db_statements, services

log = logging.getLogger(__name__)

PROTECTED_PREFIX = "/api/"
SECURITY_SCHEMES = {"bearer": {"type": "http", "scheme": "bearer", "description": "an API key from /api/v1/api-keys"}}
BEARER = [{"bearer": []}]
ADMIN_PREFIX = "/api/v1/api-keys"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def required_scope(method: str, path: str) -> str:
    if path.startswith(ADMIN_PREFIX):
        return "admin"
    return "read" if method in READ_METHODS else "write"


def _unauthorized(detail: str) -> Response:
    response = problem_response(401, "Unauthorized", detail, type_="/problems/unauthorized")
    response.headers["WWW-Authenticate"] = 'Bearer realm="plant"'
    return response


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def check_api_key() -> Response | None:
    """``before_request`` hook: None lets the request through, a Response ends it."""
    if not request.path.startswith(PROTECTED_PREFIX):
        return None
    presented = _presented_key()
    if presented is None:
        return _unauthorized("send an API key as 'Authorization: Bearer <key>'")
    # The view goes on where the lookup ran (web.services.db_statements): the request's
    # Session, or for views marked statement_at_a_time (or autocommit_when, when it holds)
    # its autocommit connection; one pool checkout at a time (a long-poll gives it back
    # between reads, a job submission before it publishes). Under READ COMMITTED
    # or autocommit every statement sees the latest commits, so the lookup leaves nothing
    # stale behind.
    key = _lookup(presented)
    if isinstance(key, ExpiredKey):
        return _unauthorized(f"the API key expired at {rfc3339_utc(key.expires_at)}")
    if key is None:
        return _unauthorized("the API key is unknown or revoked")
    scope = required_scope(request.method, request.path)
    if not key.grants(scope):
        return problem_response(403, "Forbidden", f"this key lacks the '{scope}' scope", type_="/problems/forbidden")
    g.api_key = key
    if key.use_unrecorded:
        _record_use_once_answered(key)
    return None


def _record_use_once_answered(key: Caller) -> None:
    """Write the key's ``last_used_at`` once the response is sent, in autocommit on a pooled
    connection (the request's is back in the pool by then): the request's own transaction,
    which a read rolls back, would lose it, and the request waits for none of it. A failure is
    logged and changes nothing the client sees."""
    engine = services().autocommit_engine

    def record() -> None:
        try:
            with engine.connect() as connection:
                record_key_use(connection, key.id)
        except Exception:  # noqa: BLE001 - after the response: nothing to answer with
            log.warning("could not record the use of API key %s", key.id, exc_info=True)

    after_this_request(lambda response: (response.call_on_close(record), response)[1])


def _lookup(presented: str) -> Caller | ExpiredKey | None:
    """The key lookup, the request's first statement: on a pooled connection that died
    a moment ago it is retried once, fresh (``models.db.ping_idle_connections``)."""
    return retry_if_disconnected(lambda: authenticate(db_statements(), presented), before_retry=close_db_session)


def key_revoked_while_waiting() -> Response | None:
    """For a request that waited before answering (a job's long poll, up to 30 s): look its
    key up again, so a key revoked meanwhile gets 401, not what was written after its
    revocation. One more indexed lookup, only for a request that waited."""
    presented = _presented_key()
    if presented is None or not isinstance(_lookup(presented), Caller):
        return _unauthorized("the API key was revoked or expired while the request waited")
    return None


def current_actor() -> str:
    key: Caller | None = g.get("api_key")
    return key_actor(key.id) if key is not None else "api"


def not_stored_by_default(response: Response) -> Response:
    """``after_request``: every answer under ``/api/`` is for one key's eyes (a signed report,
    findings, history, a digest), so none may be kept by a cache that does not key on
    ``Authorization`` (a reverse proxy told to cache, a browser's disk), to be served later
    without a key or to another. A view that says otherwise (a job's ``no-cache`` with its
    ETag) keeps its own."""
    if request.path.startswith(PROTECTED_PREFIX) and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"
    return response


def init_auth(app: Flask) -> None:
    app.before_request(check_api_key)
    app.after_request(not_stored_by_default)
