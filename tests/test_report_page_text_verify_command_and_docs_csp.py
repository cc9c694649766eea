"""The audit report page and the Swagger docs pages, from a security-minded user's side.

The browser tests use the same real headless Chromium as tests/test_report_html.py.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.test_report_html import browser_origin  # noqa: F401 (a fixture the browser tests use)
from tests.test_report_html import run_chromium, serve_in_thread

API = "/api/v1"

DOCS_HTML_PAGES = ("/swagger", "/oauth2-redirect.html", "/")


def _directives(policy: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (part.split() for part in policy.split(";") if part.strip())}


# --- /docs: Swagger UI, where a reader pastes an API key -----------------------------------------

@pytest.mark.parametrize("path", [*DOCS_HTML_PAGES, "/swagger/js/swagger-ui-bundle.js"])
def test_the_docs_pages_load_and_call_only_their_own_origin_and_are_never_framed(client, path) -> None:
    """flask-openapi3 served the docs with no policy: any site could frame the page the API key is
    pasted into, and nothing held its script to this origin."""
    response = client.get(path)
    assert response.status_code == 200
    policy = _directives(response.headers.get("Content-Security-Policy", ""))
    assert policy.get("frame-ancestors") == ["'none'"] and response.headers.get("X-Frame-Options") == "DENY"
    assert policy.get("default-src") == ["'none'"]
    assert policy.get("connect-src") == ["'self'"]
    script = policy.get("script-src", [])
    assert script[0] == "'self'" and all(re.fullmatch(r"'sha256-[A-Za-z0-9+/]{43}='", s) for s in script[1:]), script
    assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script


def test_swagger_ui_renders_under_its_policy_in_chromium(app, tmp_path) -> None:
    """The policy is enforced by a real browser and the UI still draws every operation: the inline
    script that starts it is allowed by its hash, and nothing the bundle does is refused."""
    server, thread = serve_in_thread(app)
    try:
        result = run_chromium(f"http://127.0.0.1:{server.server_port}/swagger", tmp_path,
                              "--dump-dom", "--virtual-time-budget=15000")
    finally:
        server.shutdown()
        thread.join(timeout=10)
    refused = [line for line in result.stderr.splitlines() if "Content Security Policy" in line]
    assert refused == []
    operations = sum(len(methods) for methods in app.api_doc["paths"].values())
    assert result.stdout.count('class="opblock-summary-path"') >= operations > 30


# --- the page's own offline verification instructions --------------------------------------------

def _shown_command(client, run_id) -> list[str]:
    from tests.test_report_html import parse

    elements = parse(client.get(f"{API}/audit/runs/{run_id}/report.html").get_data(as_text=True))
    [command] = [e.text.strip() for e in elements if e.attrs.get("data-command") == "verify"]
    return shlex.split(command)


@pytest.mark.usefixtures("no_server_log_lines")
def test_the_page_s_verify_command_refuses_a_valid_report_of_another_run(client, engine, keyring, seeded,
                                                                          tmp_path, monkeypatch) -> None:
    """The page told its reader to run ``plant report verify audit-<run>.json --jwks jwks.json``: a
    validly signed report of another (older, clean) run saved under that name verified, exit 0.
    The command the page shows now pins the run, and a finished run's page the finished report."""
    from tests.test_export_csv_cache_and_page_escapes import _closed_run

    older, shown = _closed_run(engine, keyring), _closed_run(engine, keyring)
    command = _shown_command(client, shown)
    assert command[:3] == ["plant", "report", "verify"] and command[3] == f"audit-{shown}.json"
    monkeypatch.chdir(tmp_path)
    Path("jwks.json").write_text(json.dumps(client.get(f"{API}/signing-keys").get_json()))

    def verify_saved(run_id) -> int:
        document = client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": "json"}).data
        Path(f"audit-{shown}.json").write_bytes(document)
        return CliRunner().invoke(cli, command[1:]).exit_code

    assert verify_saved(shown) == 0
    assert verify_saved(older) == 4
    assert "--final" in command


# --- text from the report: never markup, never reordered -----------------------------------------

RLO, ZWSP = "\u202e", "\u200b"
BIDI_OR_HIDDEN = re.compile("[\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
BREAKOUT = "\"'></title></svg></code><script>document.title='pwned'</script>"


def _running_run_with(engine, keyring, findings) -> str:
    from sqlalchemy.orm import Session

    from models.audit_chunks import pending_chunks
    from models.audit_tables import AuditChunk
    from tests.test_audit_record_signed import _started, written_by_plant

    with Session(engine) as session, session.begin():
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        written_by_plant(session, run, session.get(AuditChunk, pending_chunks(session, run.id)[0]), keyring, findings)
        return str(run.id)


def test_codes_rule_ids_and_types_on_the_page_cannot_read_as_other_text(client, engine, keyring, seeded) -> None:
    """Only a finding's detail and a repair's actor went through visible_text: a code, a rule id, an
    entity type, a severity (and a database role's name, a kid) were shown as they were, so a right-to-left
    override in one (any text a Plant-signed row may hold: these columns are free text) reversed what
    followed it in the chart's labels, the tables and the entity rows."""
    import uuid

    from models.audit import FindingRow
    from tests.test_report_html import parse

    code, rule, kind = f"row-{RLO}hctamsim", f"L0-{RLO}10{ZWSP}", f"sk{RLO}lli"
    run_id = _running_run_with(engine, keyring, [
        FindingRow(kind, uuid.UUID(int=7), 1, code, "", rule_id=rule),
        FindingRow(None, None, None, code, "run level"),
    ])
    elements = parse(client.get(f"{API}/audit/runs/{run_id}/report.html").get_data(as_text=True))
    shown = [(e.tag, e.text) for e in elements if BIDI_OR_HIDDEN.search(e.text)]
    assert shown == []  # in no element's text: chart labels and tooltips, tables, rows, the run-level list
    assert {e.attrs["data-bar"] for e in elements if "data-bar" in e.attrs} == {f"by_rule:{rule}", f"by_code:{code}"}
    cells = {e.attrs["data-col"]: e.text for e in elements if "data-col" in e.attrs}
    assert cells["codes"] == "row-\\u202ehctamsim"  # shown as the CLI shows it, kept whole in data-* attributes


def test_hostile_text_in_every_field_stays_text_in_chromium(client, engine, keyring, seeded, request, tmp_path) -> None:
    """Attribute, SVG <title>/<text>, table and list contexts, rendered by a real browser: a value
    that closes its quote, its element or the SVG, and opens a script, is shown as text."""
    import uuid

    from models.audit import FindingRow

    run_id = _running_run_with(engine, keyring, [
        FindingRow(BREAKOUT[:16], uuid.UUID(int=9), 1, BREAKOUT[:64], BREAKOUT, rule_id=BREAKOUT[:32]),
        FindingRow(None, None, None, BREAKOUT[:64], BREAKOUT),
    ])
    origin = request.getfixturevalue("browser_origin")
    dom = run_chromium(f"{origin.url}{API}/audit/runs/{run_id}/report.html", tmp_path, "--dump-dom").stdout
    assert f"<title>Audit report {run_id}</title>" in dom and "pwned" not in dom.split("</title>")[0]
    assert "<script" not in dom
    assert dom.count("&lt;/title&gt;&lt;/svg&gt;") >= 4  # the detail, the run-level code, a bar's tooltip, a row


def test_a_critical_run_level_finding_is_listed_however_many_warnings_come_before_it(client, engine, keyring, seeded) -> None:
    """The page listed the first 100 findings about the registry as a whole in the order written,
    and said nothing of the rest: a critical one written after 100 warnings (the close's
    ``audit-record-invalid`` is written last) was on no line of the page. They are listed worst
    first now, and a cut list says so."""
    from models.audit import FindingRow
    from models.key_seals import SEAL_INVALID_CODE
    from tests.test_report_html import parse

    run_id = _running_run_with(engine, keyring, [
        *(FindingRow(None, None, None, "rule-warning", f"warning {n}") for n in range(150)),
        FindingRow(None, None, None, SEAL_INVALID_CODE, "the critical one"),
    ])
    elements = parse(client.get(f"{API}/audit/runs/{run_id}/report.html").get_data(as_text=True))
    listed = [e.attrs["data-run-level-code"] for e in elements if "data-run-level-code" in e.attrs]
    assert len(listed) == 100 and listed[0] == SEAL_INVALID_CODE
    assert "run-level-capped" in [e.attrs.get("data-banner") for e in elements]
