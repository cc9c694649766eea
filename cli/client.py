"""The HTTP client the ``plant`` commands use to talk to a running Plant API.

Where the server is and which key to send come from :func:`client_config_from_environment`,
the CLI's one reader of the environment: ``PLANT_URL`` (default ``http://127.0.0.1:8000``)
and ``PLANT_API_KEY``, else the admin key ``make dev`` leaves in
``$PLANT_DATA_DIR/admin-api-key``, so ``plant ...`` works next to ``make dev`` with no setup.
Every failure, an RFC 9457 problem from the API or a connection that never happened,
becomes an :class:`ApiError`: one readable line, exit code 1.

Any ``503`` or ``429`` answer (the API's are ``ledger-busy``, ``digests-busy``, ``database-busy``
and ``database-unavailable``, each with ``Retry-After``) is retried, waiting as long as the
server's ``Retry-After`` asks (``DEFAULT_RETRY_WAIT_SECONDS`` without one; at most
``MAX_RETRY_WAIT_SECONDS`` each time, ``MAX_ATTEMPTS`` tries in all), but only where a retry
cannot do the work twice: a ``GET``, or a ``POST`` that carries an ``Idempotency-Key`` (every
:meth:`PlantClient.start_job` does). A request that gets no answer at all is not retried; a job
start that got none names its key, to repeat the command with.

A redirect is not followed, and an answer that is not the JSON object the command reads (another
service at ``PLANT_URL``) is an ApiError too, never a traceback. Neither the API key nor a password
in ``PLANT_URL`` is ever part of a message.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt

from cli.bootstrap import ADMIN_KEY_FILE
from cli.errors import PlantCliError
from models.canonical import visible_text
from models.settings import DataDirSettings

DEFAULT_URL = "http://127.0.0.1:8000"
API = "/api/v1"
TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 5.0
MAX_PAGE_SIZE = 500
RETRY_STATUSES = frozenset({429, 503})
MAX_ATTEMPTS = 4
MAX_RETRY_WAIT_SECONDS = 30.0
DEFAULT_RETRY_WAIT_SECONDS = 1.0  # a retryable answer without a usable Retry-After
JOB_MEMBERS = ("id", "kind", "status", "progress")  # what every job resource has, and the commands read
# Members whose type the commands rely on, where an answer has them: a job's progress is read as an object.
MEMBER_TYPES: dict[str, type] = {"id": str, "kind": str, "status": str, "progress": dict}
# Failures before the request reached a server: a job start that met one started nothing.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.LocalProtocolError,
              httpx.UnsupportedProtocol)


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    api_key: str | None
    key_file: Path | None  # where the key came from when PLANT_API_KEY was not set


def client_config_from_environment() -> ClientConfig:
    """``PLANT_URL`` and ``PLANT_API_KEY``, else the dev runner's admin key file."""
    base_url = _usable_url((os.environ.get("PLANT_URL") or DEFAULT_URL).strip().rstrip("/"))
    api_key = os.environ.get("PLANT_API_KEY", "").strip() or None  # a key file's CRLF, kept by $(cat ...)
    if api_key is not None:
        return ClientConfig(base_url, _sendable_key(api_key, "PLANT_API_KEY"), None)
    key_file = DataDirSettings().data_dir / ADMIN_KEY_FILE
    api_key = (key_file.read_text().strip() or None) if key_file.is_file() else None
    return ClientConfig(base_url, api_key and _sendable_key(api_key, str(key_file)), key_file)


def _usable_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; else a refusal that does not quote it (it
    may hold a password). A bad port was httpx's InvalidURL, raised as a traceback."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise PlantCliError(f"PLANT_URL is not a URL the client can use: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise PlantCliError("PLANT_URL must be http://HOST[:PORT] or https://HOST[:PORT] (e.g. http://127.0.0.1:8000)")
    return url


def _sendable_key(key: str, source: str) -> str:
    """``key`` if an ``Authorization`` header can carry it; else a refusal that never quotes it.
    Sent as it is, a key holding a control code (a CR left inside it) was refused by the HTTP
    library with an error quoting the header, the key included, on stderr and in CI logs."""
    if key.isascii() and key.isprintable():
        return key
    raise PlantCliError(f"the API key in {source} holds a control code or a non-ASCII character, which a request "
                        "header cannot carry (the key is not shown)")


class ApiError(PlantCliError):
    """The API answered with an error, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


def problem_line(problem: dict[str, Any]) -> str:
    """``Title: detail (field: message; ...)`` from an RFC 9457 problem object."""
    title = problem.get("title") or "Error"
    detail = problem.get("detail")
    line = f"{title}: {detail}" if detail and detail != title else str(title)
    # An entry whose message is the detail (a domain refusal naming its one field) adds only its field.
    extras = [f"{e.get('field')}: {e.get('message')}" if e.get("message") != detail else str(e.get("field"))
              for e in problem.get("errors") or [] if isinstance(e, dict)]
    extras += [str(v.get("rule") or v) if isinstance(v, dict) else str(v) for v in problem.get("violations") or []]
    return f"{line} ({'; '.join(extras)})" if extras else line


class PlantClient:
    """Thin JSON-over-HTTP calls against ``/api/v1``; close it (or use ``with``) when done."""

    def __init__(self, config: ClientConfig, *, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.Client(
            base_url=config.base_url, headers=headers, transport=transport,
            timeout=httpx.Timeout(TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
        )

    def pause(self, seconds: float) -> None:
        """Sleep between polls (``sleep`` as given: tests pass one that returns at once)."""
        self._sleep(seconds)

    def __enter__(self) -> PlantClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def url(self, path: str) -> str:
        """Where ``path`` is, for a message: without a password ``PLANT_URL`` may hold."""
        return shown_url(f"{self.config.base_url}{API}{path}")

    def request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        """Send a request to ``/api/v1{path}``; an error status or no connection raises ApiError.

        A 503 or 429 is retried as the server's ``Retry-After`` asks when repeating the request
        is safe (see the module docstring); the last answer is the one that counts."""
        def send() -> httpx.Response:
            return self._send(method, path, timeout=timeout, **kwargs)

        retry_safe = method == "GET" or "Idempotency-Key" in (kwargs.get("headers") or {})
        if retry_safe:
            response = Retrying(
                retry=retry_if_result(lambda r: r.status_code in RETRY_STATUSES),
                wait=_server_asked_wait, stop=stop_after_attempt(MAX_ATTEMPTS), sleep=self._sleep,
                before_sleep=_say_retrying, retry_error_callback=lambda state: state.outcome.result(),
            )(send)
        else:
            response = send()
        if response.is_error:
            raise self._error(response)
        if response.is_redirect:  # not followed: a redirected POST could land as a GET, the key on another host
            raise ApiError(f"{shown_url(str(response.request.url))} redirects to "
                           f"{shown_url(response.headers.get('Location', '?'))}: point PLANT_URL at the API itself",
                           status=response.status_code)
        return response

    def _send(self, method: str, path: str, *, timeout: float | None, **kwargs: Any) -> httpx.Response:
        where = shown_url(self.config.base_url)
        try:
            return self._http.request(method, API + path, timeout=timeout or httpx.USE_CLIENT_DEFAULT, **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiError(f"{where} did not answer in time ({type(exc).__name__})") from exc
        except httpx.LocalProtocolError as exc:  # its message quotes the offending header: the key, maybe
            raise ApiError(f"the request to {where} could not be sent: a header or URL holds a character HTTP "
                           "does not allow") from exc
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the Plant API at {where}: {exc} (is it running? set PLANT_URL)") from exc

    def get(self, path: str, *, expect: tuple[str, ...] = (), **params: Any) -> dict[str, Any]:
        """The JSON object at ``path``; ``expect``: members it must have (else ApiError)."""
        return _members(_json_of(self.request("GET", path, params=_present(params))), expect, f"GET {path}")

    def post(self, path: str, body: dict[str, Any], *, idempotency_key: str | None = None,
             expect: tuple[str, ...] = ()) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return _members(_json_of(self.request("POST", path, json=body, headers=headers)), expect, f"POST {path}")

    def start_job(self, path: str, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """POST that starts a job, always with an ``Idempotency-Key``: the caller's, else a new
        one, so that a retry of a busy answer returns the job the first try may have started
        instead of starting a second. When no usable answer came (a timeout, a dropped
        connection) the job may have started all the same: the error names the key, so the
        command can be repeated with ``--idempotency-key`` and get that job, not a second one."""
        key = idempotency_key or f"plant-cli-{uuid.uuid4()}"
        try:
            return self.post(path, body, idempotency_key=key, expect=JOB_MEMBERS)
        except ApiError as error:
            if error.status is not None or isinstance(error.__cause__, NEVER_SENT):
                raise  # the server refused, or the request never left: nothing started
            raise ApiError(f"{error}; the job may have started: repeat with --idempotency-key {key} to get it "
                           "rather than start another") from error

    def delete(self, path: str, *, expect: tuple[str, ...] = ()) -> dict[str, Any]:
        return _members(_json_of(self.request("DELETE", path)), expect, f"DELETE {path}")

    def download(self, path: str, **params: Any) -> bytes:
        return self.request("GET", path, params=_present(params)).content

    def items(self, path: str, *, limit: int | None = None, page_size: int | None = None,
              **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paged list, following ``next_page_token``; at most ``limit``. A token
        handed out twice would page for ever (a server bug, a proxy replaying a page): ApiError."""
        page_size = page_size or min(limit or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
        token, seen, followed = None, 0, set()
        while True:
            page = self.get(path, page_size=page_size, page_token=token, **params)
            if not isinstance(page.get("items"), list):
                raise ApiError(f"GET {path} answered without a list of items: is PLANT_URL a Plant API?")
            for item in page["items"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield item
            token = page.get("next_page_token")
            if not token or (limit is not None and seen >= limit):  # the limit reached: no page more to ask
                return
            if token in followed:
                raise ApiError(f"GET {path} handed out the same page token twice: the listing would never end")
            followed.add(token)

    def job(self, job_id: str, *, wait: float = 0) -> dict[str, Any]:
        """The job resource; with ``wait`` the server holds the call until it ends or ``wait`` passes."""
        response = self.request("GET", f"/jobs/{job_id}", params={"wait": wait} if wait else None,
                                timeout=TIMEOUT_SECONDS + wait)
        return _members(_json_of(response), JOB_MEMBERS, f"GET /jobs/{job_id}")

    def _error(self, response: httpx.Response) -> ApiError:
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if not isinstance(problem, dict):
            text = response.text.strip().splitlines()
            return ApiError(f"{response.status_code} {response.reason_phrase}" + (f": {text[0][:200]}" if text else ""),
                            status=response.status_code)
        message = f"{response.status_code} {problem_line(problem)}"
        if response.status_code == 401 and self.config.api_key is None:
            where = f" (looked in {self.config.key_file})" if self.config.key_file else ""
            message += f"; set PLANT_API_KEY or run `make dev`{where}"
        return ApiError(message, status=response.status_code, problem=problem)


def retry_after_seconds(response: httpx.Response, *, now: dt.datetime | None = None) -> float:
    """The wait a ``Retry-After`` header asks for (delay-seconds or an HTTP-date, RFC 9110
    section 10.2.3), within 0 and ``MAX_RETRY_WAIT_SECONDS``; ``DEFAULT_RETRY_WAIT_SECONDS``
    when it is missing or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value) if value.isdigit() else None
        if seconds is None:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:  # the obsolete asctime form, or "-0000": both mean UTC here
                when = when.replace(tzinfo=dt.UTC)
            seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    except (TypeError, ValueError, OverflowError):
        seconds = DEFAULT_RETRY_WAIT_SECONDS
    return min(max(seconds, 0.0), MAX_RETRY_WAIT_SECONDS)


def _server_asked_wait(state: RetryCallState) -> float:
    return retry_after_seconds(state.outcome.result())


def _say_retrying(state: RetryCallState) -> None:
    response: httpx.Response = state.outcome.result()
    try:
        problem = response.json()
    except ValueError:
        problem = None
    why = visible_text(problem_line(problem) if isinstance(problem, dict) else response.reason_phrase)
    print(f"plant: {response.status_code} {why}; retrying in {state.upcoming_sleep:g} s "
          f"(try {state.attempt_number + 1} of {MAX_ATTEMPTS})", file=sys.stderr)


def _present(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _json_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of an answer: every Plant resource and list is one. Anything else (a
    proxy's page, another service at ``PLANT_URL``) is an ApiError, not a traceback later."""
    where = f"{shown_url(str(response.request.url))} answered {response.status_code}"
    try:
        value = response.json()
    except json.JSONDecodeError as exc:
        raise ApiError(f"{where} with something that is not JSON") from exc
    if not isinstance(value, dict):
        raise ApiError(f"{where} with JSON that is not an object: is PLANT_URL a Plant API?")
    return value


def _members(value: dict[str, Any], names: tuple[str, ...], what: str) -> dict[str, Any]:
    if missing := [name for name in names if name not in value]:
        raise ApiError(f"{what} answered without {', '.join(missing)}: is PLANT_URL a Plant API?")
    if mistyped := [name for name in names if name in MEMBER_TYPES and not isinstance(value[name], MEMBER_TYPES[name])]:
        raise ApiError(f"{what} answered with {', '.join(mistyped)} of another type: is PLANT_URL a Plant API?")
    return value


def shown_url(url: str) -> str:
    """``url`` without a password it may carry (``https://user:secret@host``): for messages."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:  # a Location header can hold anything
        return "a URL that does not parse"
    return str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else url
