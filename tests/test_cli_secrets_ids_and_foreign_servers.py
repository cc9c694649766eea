"""Review of the `plant` commands that talk to a server (jobs, watch, api-keys, work) and the
client under them: what they print when the server, the network or the operator's input is
not what they expect. Each test names the defect it pins.

The server shapes Plant never produces (a list, a redirect, a page without items) come from
an ``httpx.MockTransport``, as in tests/test_cli_escapes.py; a key the HTTP library refuses
needs a real socket, so those tests serve a tiny WSGI app on a real port.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

import cli.jobs as cli_jobs
from cli.client import ClientConfig, PlantClient
from cli.main import cli
from tests.conftest import refused_port


pytestmark = pytest.mark.usefixtures("no_server_log_lines")  # tests/conftest.py: CLI output without server log lines

JOB_ID = "00000000-0000-4000-8000-000000000001"
SECRET = "plant_s3cr3t-never-printed-0123456789abcdef"
Handler = Callable[[httpx.Request], httpx.Response]


def job(status: str = "queued", **extra: Any) -> dict[str, Any]:
    return {"id": JOB_ID, "kind": "agent.assign_team", "status": status, "attempts": 0, "params": {},
            "progress": {"done": 0, "total": None, "message": None}, "created_at": "2026-12-07T00:00:00Z", **extra}


class Server:
    """A scripted server behind a MockTransport that records every request it gets."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


@pytest.fixture
def plant(monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[Result, Server]]:
    monkeypatch.setenv("PLANT_URL", "http://plant.invalid")
    monkeypatch.setenv("PLANT_API_KEY", "k")

    def run(handler: Handler, *args: str) -> tuple[Result, Server]:
        server = Server(handler)
        monkeypatch.setattr(cli_jobs, "PlantClient", lambda config: PlantClient(
            config, transport=httpx.MockTransport(server), sleep=lambda _s: None))
        return CliRunner().invoke(cli, list(args)), server
    return run


def one_line(result: Result) -> str:
    """The command failed the documented way: ``plant: ...`` alone on stderr, no traceback."""
    assert not isinstance(result.exception, (KeyError, TypeError, AttributeError)), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("plant: "), result.stderr
    return lines[0]


# --- An API key is never echoed, and a key file's CRLF does not break every command --------


@pytest.fixture
def real_server() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on a real port answering every request with an empty job page, and
    the Authorization headers it got."""
    seen: list[str] = []

    @Request.application
    def app(request: Request) -> Response:
        seen.append(request.headers.get("Authorization", ""))
        return Response(json.dumps({"items": [], "next_page_token": None}), mimetype="application/json")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()
    thread.join(timeout=10)


def test_a_key_with_a_trailing_cr_is_sent_without_it(real_server, monkeypatch) -> None:
    """PLANT_API_KEY="$(cat key.txt)" keeps a CRLF file's CR. The HTTP library refused the
    header and its error, quoting the header, put the whole key on stderr (a CI log), with
    "is it running?" besides; the key file was stripped, the variable was not."""
    url, seen = real_server
    monkeypatch.setenv("PLANT_URL", url)
    monkeypatch.setenv("PLANT_API_KEY", SECRET + "\r")
    result = CliRunner().invoke(cli, ["jobs", "list", "--json"])
    assert SECRET not in result.stderr
    assert result.exit_code == 0, result.stderr
    assert seen == [f"Bearer {SECRET}"]


@pytest.mark.parametrize("bad", ["\n", "\r", "\x01", "\x7f", "\u00e9"])
def test_a_key_a_header_cannot_carry_is_refused_without_quoting_it(real_server, monkeypatch, bad) -> None:
    url, seen = real_server
    monkeypatch.setenv("PLANT_URL", url)
    monkeypatch.setenv("PLANT_API_KEY", SECRET[:10] + bad + SECRET[10:])
    result = CliRunner().invoke(cli, ["jobs", "list"])
    assert result.exit_code == 1
    line = one_line(result)
    assert "PLANT_API_KEY" in line and SECRET[:10] not in line and SECRET[10:] not in line, line
    assert seen == []  # nothing was sent with it either


def test_a_password_in_plant_url_is_not_printed(monkeypatch) -> None:
    monkeypatch.setenv("PLANT_API_KEY", SECRET)
    with refused_port() as port:
        monkeypatch.setenv("PLANT_URL", f"http://ops:hunter2-pw@127.0.0.1:{port}")
        result = CliRunner().invoke(cli, ["jobs", "list"])
    assert result.exit_code == 1
    line = one_line(result)
    assert "cannot reach the Plant API at http://127.0.0.1" in line and "hunter2-pw" not in line, line
    assert SECRET not in line


@pytest.mark.parametrize("url", ["http://plant:80x", "http://[::1", "localhost:8000", "ftp://plant", "http://"])
def test_a_plant_url_the_client_cannot_use_is_one_line(monkeypatch, url) -> None:
    """A port that is not a number was httpx's InvalidURL, raised as a traceback; no scheme
    said "cannot reach ... is it running?"."""
    monkeypatch.setenv("PLANT_URL", url)
    monkeypatch.setenv("PLANT_API_KEY", SECRET)
    result = CliRunner().invoke(cli, ["jobs", "list"])
    assert result.exit_code == 1
    assert "PLANT_URL" in one_line(result)


# --- An id put in a URL path cannot reach another endpoint -----------------------------------


OTHER = "00000000-0000-4000-8000-0000000000aa"


@pytest.mark.parametrize("args", [
    ("jobs", "cancel", f"../agents/{OTHER}/assign-team?"),   # was: POST .../assign-team, an assignment job started
    ("jobs", "show", "../api-keys?"),
    ("jobs", "watch", "../api-keys?"),
    ("api-keys", "revoke", f"../jobs/{OTHER}?"),
    ("assign", f"../genesis/skills/{OTHER}/certify?"),       # was: POST .../certify, a certification started
    ("audit", "findings", "../../api-keys?"),
    ("report", "export", "../../api-keys?", "-o", "-"),    # was: GET /audit/runs/../../api-keys?/report.html
])
def test_an_id_that_is_not_a_uuid_is_a_usage_error_before_any_request(plant, args) -> None:
    """The client resolves ``..`` and a ``?`` ends the path, so these ids reached other
    endpoints: ``jobs cancel`` started an assignment and printed it as the cancelled job."""
    result, server = plant(lambda r: httpx.Response(202, json=job("cancelled")), *args)
    assert result.exit_code == 2, result.output
    assert server.requests == []


def test_a_latest_run_whose_id_is_no_uuid_is_not_put_in_a_path(plant) -> None:
    result, server = plant(lambda r: httpx.Response(200, json={"items": [{"id": "../../api-keys?"}],
                                                               "next_page_token": None}),
                           "report", "export", "latest", "--format", "html", "-o", "-")
    assert result.exit_code == 1 and "UUID" in one_line(result), result.output
    assert [r.url.path for r in server.requests] == ["/api/v1/audit/runs"]


def test_a_run_id_is_sent_in_its_plain_form(plant) -> None:
    result, server = plant(lambda r: httpx.Response(200, json={"items": [], "next_page_token": None}),
                           "audit", "findings", f"urn:uuid:{OTHER}")
    assert result.exit_code == 0, result.output
    assert [r.url.path for r in server.requests] == [f"/api/v1/audit/runs/{OTHER}/findings"]


# --- A job-starting request that got no answer names the key to repeat it with --------------


def test_a_start_that_got_no_answer_names_its_idempotency_key(plant) -> None:
    """The POST may have started the job before the answer was lost; the key was made up and
    never shown, so running the command again started a second job. Now the line names it,
    and repeating with it sends the same key (the server then returns the first job)."""
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    result, server = plant(lost, "assign", OTHER)
    assert result.exit_code == 1
    line = one_line(result)
    sent = server.requests[0].headers["Idempotency-Key"]
    assert f"--idempotency-key {sent}" in line, line
    again, server = plant(lambda r: httpx.Response(202, json=job()), "assign", OTHER, "--idempotency-key", sent)
    assert again.exit_code == 0 and server.requests[0].headers["Idempotency-Key"] == sent


def test_a_start_the_server_refused_says_nothing_of_a_key(plant) -> None:
    result, _ = plant(lambda r: httpx.Response(404, json={"title": "Not found", "detail": "no agent"}), "assign", OTHER)
    assert result.exit_code == 1 and "idempotency" not in one_line(result)


# --- A server that is not Plant: one line, not a traceback -----------------------------------


@pytest.mark.parametrize("body", [[], {}, {"items": None}, "text"])
@pytest.mark.parametrize("args", [
    ("jobs", "list"), ("jobs", "show", JOB_ID), ("jobs", "watch", JOB_ID), ("jobs", "cancel", JOB_ID),
    ("api-keys", "list"), ("api-keys", "create", "ci"), ("api-keys", "revoke", JOB_ID), ("signing-keys", "list"),
    ("audit", "runs"), ("audit", "findings", "latest"), ("certify", "aml"), ("assign", JOB_ID),
])
def test_a_json_answer_of_another_shape_is_one_line(plant, args, body) -> None:
    """PLANT_URL pointing at another JSON service, or a proxy's answer: KeyError and
    TypeError tracebacks before."""
    result, _ = plant(lambda r: httpx.Response(200, json=body), *args)
    assert result.exit_code == 1
    assert "Plant API" in one_line(result) or "not JSON" in one_line(result)


def test_a_redirect_is_named_not_read_as_a_body(plant) -> None:
    """``PLANT_URL=http://...`` behind a proxy that sends HTTPS: "answered 301 with something
    that is not JSON" before, and a report download kept the redirect page as the report."""
    result, server = plant(lambda r: httpx.Response(301, headers={"Location": "https://plant.example/api/v1/jobs"}),
                           "jobs", "list")
    assert result.exit_code == 1
    assert "redirects to https://plant.example/api/v1/jobs" in one_line(result)
    assert len(server.requests) == 1


# --- Listings ask for no page past --limit --------------------------------------------------


def test_a_listing_stops_asking_once_it_has_its_limit(plant) -> None:
    """``jobs list --limit 1`` asked for a second page it then threw away (and failed if that
    page failed)."""
    pages = iter([{"items": [job()], "next_page_token": "t1"}])
    result, server = plant(lambda r: httpx.Response(200, json=next(pages)), "jobs", "list", "--limit", "1", "--json")
    assert result.exit_code == 0, result.output
    assert [item["id"] for item in json.loads(result.stdout)["items"]] == [JOB_ID]
    assert len(server.requests) == 1


def test_a_listing_still_follows_tokens_below_its_limit(plant) -> None:
    ids = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(3)]
    pages = iter([{"items": [job(id=ids[0])], "next_page_token": "t1"},
                  {"items": [job(id=ids[1]), job(id=ids[2])], "next_page_token": None}])
    result, server = plant(lambda r: httpx.Response(200, json=next(pages)), "jobs", "list", "--limit", "5", "--json")
    assert [item["id"] for item in json.loads(result.stdout)["items"]] == ids
    assert [r.url.params.get("page_token") for r in server.requests] == [None, "t1"]


# --- The retry line escapes what the server said --------------------------------------------


def test_the_retry_line_escapes_control_codes_from_the_server(plant) -> None:
    answers = iter([httpx.Response(503, headers={"Retry-After": "0"},
                                   json={"title": "Busy\x1b[2K\x1b]0;owned\x07", "status": 503}),
                    httpx.Response(200, json={"items": [], "next_page_token": None})])
    result, _ = plant(lambda r: next(answers), "jobs", "list")
    assert result.exit_code == 0, result.output
    assert "retrying" in result.stderr and "Busy" in result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr, repr(result.stderr)


def test_the_client_refuses_a_key_it_cannot_send_wherever_it_comes_from(tmp_path, monkeypatch) -> None:
    """The dev admin key file is checked like the variable (it is stripped, as before)."""
    from cli.client import client_config_from_environment
    from cli.errors import PlantCliError

    monkeypatch.delenv("PLANT_API_KEY", raising=False)
    monkeypatch.setenv("PLANT_DATA_DIR", str(tmp_path))
    (tmp_path / "admin-api-key").write_text(f"{SECRET}\r\n")
    assert client_config_from_environment().api_key == SECRET
    (tmp_path / "admin-api-key").write_text(f"{SECRET[:8]}\x1b{SECRET[8:]}\n")
    with pytest.raises(PlantCliError) as refused:
        client_config_from_environment()
    assert SECRET[8:] not in str(refused.value)


@pytest.mark.parametrize("never_sent", [httpx.ConnectError, httpx.ConnectTimeout, httpx.LocalProtocolError])
def test_a_start_that_never_left_says_nothing_of_a_key(plant, never_sent) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise never_sent("not sent", request=request) if never_sent is not httpx.LocalProtocolError else never_sent("x")

    result, _ = plant(refused, "assign", OTHER)
    assert result.exit_code == 1 and "idempotency" not in one_line(result)


def test_cancelling_a_running_job_says_the_cancel_was_asked(plant) -> None:
    """The answer to a cancel of a running job is the job, still ``running``: printed alone,
    "job ... running" read as if the cancel had been refused."""
    result, server = plant(lambda r: httpx.Response(200, json=job("running", cancelled_by="api-key:x")),
                           "jobs", "cancel", JOB_ID)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"job {JOB_ID}  agent.assign_team  running",
                                          "cancel asked: the job stops at its next checkpoint (plant jobs watch ID to "
                                          "see it end)"]
    assert [r.url.path for r in server.requests] == [f"/api/v1/jobs/{JOB_ID}/cancel"]
    queued, _ = plant(lambda r: httpx.Response(200, json=job("cancelled")), "jobs", "cancel", JOB_ID)
    assert queued.stdout.splitlines() == [f"job {JOB_ID}  agent.assign_team  cancelled"]


# --- A DATABASE_URL that does not parse: one line, nothing of the URL ------------------------


@pytest.mark.parametrize(("url", "said"), [
    ("not-a-url", "it does not parse"),
    ("postgresql://ops:p@ss:w0rd-secret@db/plant", "its port is not a number"),  # an unescaped @: the port is password
    ("postgresql://ops:pw-secret@[::1/plant", "its port is not a number"),
    ("postgres+nodriver://ops:pw-secret@db/plant", "names no database"),
])
@pytest.mark.parametrize("args", [("db", "check"), ("db", "upgrade"), ("signing-keys", "seal")])
def test_a_database_url_that_does_not_parse_is_one_line_without_the_url(monkeypatch, tmp_path, url, said, args) -> None:
    """SQLAlchemy's ArgumentError, NoSuchModuleError and bare ValueError (a port that is not a
    number) were tracebacks."""
    (tmp_path / "keys").mkdir()
    monkeypatch.setenv("PLANT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", url)
    for name in ("PLANT_DATABASE_URL", "PLANT_ADMIN_API_KEY", "PLANT_RUNTIME_ROLE"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 1
    line = one_line(result)
    assert "DATABASE_URL" in line and said in line, line
    assert "secret" not in line and "w0rd" not in line, line


def test_the_url_the_client_names_in_messages_has_no_password() -> None:
    """``report verify`` and ``digest verify`` say where the keys came from with this URL
    (``keys fetched from ...``): it printed PLANT_URL's password."""
    client = PlantClient(ClientConfig("https://ops:pw-secret@plant.example:8443", SECRET, None))
    try:
        assert client.url("/signing-keys") == "https://plant.example:8443/api/v1/signing-keys"
    finally:
        client.close()


def test_a_key_create_that_got_no_answer_says_the_key_may_be_live(plant) -> None:
    """The server may have created the key before the answer was lost: a live key whose secret
    no one saw. The line said only "did not answer in time"."""
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    result, server = plant(lost, "api-keys", "create", "ci")
    assert result.exit_code == 1 and len(server.requests) == 1  # a create is never repeated
    assert "plant api-keys revoke" in one_line(result)
    refused, _ = plant(lambda r: httpx.Response(422, json={"title": "Unprocessable"}), "api-keys", "create", "ci")
    assert refused.exit_code == 1 and "revoke" not in one_line(refused)


def test_a_watch_cut_short_ends_its_live_line_before_the_error(plant, monkeypatch) -> None:
    """On a terminal the bar is one line redrawn with ``\\r`` and no newline until the job
    ends; a watch that ended otherwise (the API gone, Ctrl-C) left it open, and the
    ``plant: ...`` line was glued to the bar."""
    import io

    from cli.watch import ProgressView

    screen = io.StringIO()
    monkeypatch.setattr(cli_jobs, "ProgressView", lambda: ProgressView(screen, live=True))
    answers = iter([httpx.Response(200, json=job("running"))])

    def then_refused(request: httpx.Request) -> httpx.Response:  # an outage is polled through (cli/watch.py)
        return next(answers, None) or httpx.Response(401, json={"title": "Unauthorized", "detail": "key revoked"})

    result, _ = plant(then_refused, "jobs", "watch", JOB_ID)
    assert result.exit_code == 1 and "key revoked" in one_line(result)
    assert screen.getvalue().startswith("\rrunning") and screen.getvalue().endswith("\n"), repr(screen.getvalue())
