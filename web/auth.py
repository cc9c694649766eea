"""Bearer API-key authentication and scope checks for everything under ``/api/``.

``/health``, ``/openapi.json`` and the docs stay public; so does ``/metrics``, whose audit
findings only a scrape with a ``read`` key gets (:func:`metrics_reader`). Reads need ``read``, writes
(POST, PATCH, PUT, DELETE) need ``write``, and key management needs ``admin``. A missing
or unknown key is 401 with ``WWW-Authenticate: Bearer``; a key without the scope is 403 with
``WWW-Authenticate: Bearer error="insufficient_scope", scope="<scope>"``.
A key past its expiry is 401 saying when it expired. A key is read from one
``Authorization: Bearer <key>`` header only (:func:`presented_key`): a key offered in the query
string, two Authorization headers, another scheme or a value with spaces or commas in the key
is 401 saying which. A key's first
request after ``LAST_USED_GRANULARITY`` records its ``last_used_at`` once answered.
The authenticated key is ``g.api_key``; chain writes are attributed to it. A request
that waits (a long poll) looks its key up again before it answers
(:func:`key_revoked_while_waiting`). Every answer under ``/api/`` is ``Cache-Control: no-store``
unless its view says otherwise (:func:`not_stored_by_default`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

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


# RFC 6750 §3.1's error codes, in WWW-Authenticate: a request Plant cannot read a key from,
# and a key it read but does not take (unknown, revoked, expired).
INVALID_REQUEST, INVALID_TOKEN = "invalid_request", "invalid_token"
INSUFFICIENT_SCOPE = "insufficient_scope"


def _challenge(error: str | None = None, scope: str | None = None) -> str:
    return ('Bearer realm="plant"' + (f', error="{error}"' if error else "")
            + (f', scope="{scope}"' if scope else ""))


def _unauthorized(detail: str, error: str | None = None) -> Response:
    response = problem_response(401, "Unauthorized", detail, type_="/problems/unauthorized")
    response.headers["WWW-Authenticate"] = _challenge(error)
    return response


def _forbidden(scope: str) -> Response:
    """RFC 6750 §3.1: a key that lacks the scope is 403 with ``error="insufficient_scope"`` and
    the scope the request needs, so a client can tell it from a key that is not taken at all."""
    response = problem_response(403, "Forbidden", f"this key lacks the '{scope}' scope", type_="/problems/forbidden")
    response.headers["WWW-Authenticate"] = _challenge(INSUFFICIENT_SCOPE, scope)
    return response


# Where clients put keys when not in the header (RFC 6750 §2.3's access_token among them).
KEY_QUERY_PARAMETERS = frozenset({"access_token", "api_key", "apikey", "key", "token"})
SEND_A_KEY = "send an API key as 'Authorization: Bearer <key>'"
_NOT_ONE_KEY = re.compile(r"[\s,]")  # whitespace or a comma: two values, or no key a client could send


@dataclass(frozen=True)
class KeyNotRead:
    """Why no key could be read from a request: the 401's detail and its RFC 6750 error code."""

    detail: str
    error: str | None = INVALID_REQUEST


def presented_key(authorization: str | None, query_names: Iterable[str]) -> str | KeyNotRead:
    """The key of ``Authorization: Bearer <key>``, or why there is none to take. The scheme is
    matched without regard to case and may be followed by several spaces (RFC 9110 §11);
    a value with whitespace or a comma after the key is two values (two Authorization
    headers, which servers join with a comma) or a key no client could send (RFC 6750's
    token68), never hashed and looked up as a key. A key in the query string is refused even
    beside a good header: a URL is logged by proxies and kept in histories, so the client
    must stop sending it there (and its key should be revoked)."""
    if offered := sorted(name for name in query_names if name.lower() in KEY_QUERY_PARAMETERS):  # ?API_KEY= too
        return KeyNotRead(f"an API key is taken only from the Authorization header, never from the query string "
                          f"(a URL is logged and kept in histories; revoke a key sent in one): remove "
                          f"{', '.join(offered)} and {SEND_A_KEY}")
    if authorization is None or not authorization.strip():
        return KeyNotRead(SEND_A_KEY, error=None)
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        # RFC 6750 §3.1: a request made with another authentication method (Basic, a bare key)
        # gets no error code; a malformed Bearer one ("Bearer<tab>key") is invalid_request.
        malformed_bearer = scheme.lower().startswith("bearer")
        return KeyNotRead(f"the Authorization header's scheme is not Bearer: {SEND_A_KEY}",
                          error=INVALID_REQUEST if malformed_bearer else None)
    key = credentials.strip(" ")
    if not key:
        return KeyNotRead(f"the Authorization header names Bearer but no key: {SEND_A_KEY}")
    if _NOT_ONE_KEY.search(key):
        return KeyNotRead("the Authorization header must hold one key, 'Bearer <key>', and this key has a space, tab "
                          "or comma in it (two Authorization headers arrive joined by a comma)")
    return key


def query_names() -> Iterable[str]:
    """The request's query parameter names; none when the query's bytes are not UTF-8, which
    werkzeug will not read (web.request_encoding answers such a query with 422, after auth)."""
    try:
        return request.args.keys()
    except UnicodeDecodeError:
        return ()


def _request_key() -> str | KeyNotRead:
    return presented_key(request.headers.get("Authorization"), query_names())


def check_api_key() -> Response | None:
    """``before_request`` hook: None lets the request through, a Response ends it."""
    if not request.path.startswith(PROTECTED_PREFIX):
        return None
    key = _authorized_key(required_scope(request.method, request.path))
    if isinstance(key, Response):
        return key
    g.api_key = key
    return None


def _authorized_key(scope: str) -> Caller | Response:
    """The request's key when it is known, unexpired and grants ``scope``, else the 401 or 403."""
    presented = _request_key()
    if isinstance(presented, KeyNotRead):
        return _unauthorized(presented.detail, presented.error)
    # The view goes on where the lookup ran (web.services.db_statements): the request's
    # Session, or for views marked statement_at_a_time (or autocommit_when, when it holds)
    # its autocommit connection; one pool checkout at a time (a long-poll gives it back
    # between reads, a job submission before it publishes). Under READ COMMITTED
    # or autocommit every statement sees the latest commits, so the lookup leaves nothing
    # stale behind.
    key = _lookup(presented)
    if isinstance(key, ExpiredKey):
        return _unauthorized(f"the API key expired at {rfc3339_utc(key.expires_at)}", INVALID_TOKEN)
    if key is None:
        return _unauthorized("the API key is unknown or revoked", INVALID_TOKEN)
    if not key.grants(scope):
        return _forbidden(scope)
    if key.use_unrecorded:
        _record_use_once_answered(key)
    return key


def metrics_reader() -> Caller | Response | None:
    """Who scrapes ``/metrics``: None for a scrape that offers no key (it gets the public
    metrics), the key when it grants ``read`` (it gets the audit findings too), else the 401
    or 403 an API request would get: a scraper whose key was revoked must see its target fail,
    not lose the findings quietly."""
    offered = any(name.lower() in KEY_QUERY_PARAMETERS for name in query_names())
    if request.headers.get("Authorization") is None and not offered:
        return None
    return _authorized_key("read")


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
    presented = _request_key()
    if isinstance(presented, KeyNotRead) or not isinstance(_lookup(presented), Caller):
        return _unauthorized("the API key was revoked or expired while the request waited", INVALID_TOKEN)
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
