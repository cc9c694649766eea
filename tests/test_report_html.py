"""The auditor's HTML report, rendered by a real headless Chromium.

The Flask app is served over real HTTP by werkzeug in a thread. Chromium cannot send a
bearer header with ``--dump-dom``, so it talks to a small threaded proxy that forwards
each request to that server with ``Authorization`` added and hands back the status, the
body and the security headers unchanged: the browser gets the page through the real
serving stack and enforces the page's own Content-Security-Policy while rendering it.
The numbers the rendered DOM shows (``data-metric`` elements) are compared with the run
read from the API. Without Chromium these tests fail, unless PLANT_SKIP_BROWSER_TESTS=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import threading
import tomllib
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from fnmatch import fnmatch
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from models.api_keys import create_api_key
from models.audit import FindingRow
from models.audit_close import summarize_run
from models.audit_runs import start_run
from models.audit_tables import AuditChunk
from models.entities import Skill
from models.jobs import Job
from models.jws import verify_detached
from tests.conftest import EMBEDDER, REPO_ROOT, bearer, wait_for
from tests.test_audit_record_signed import written_by_plant

API = "/api/v1"
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
FORWARDED_HEADERS = ("Content-Type", "Content-Security-Policy", "X-Content-Type-Options", "Cache-Control")
SEVERITY_RANK = {"critical": 3, "error": 2, "warning": 1}
VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})
URL_ATTRIBUTES = frozenset({"src", "href", "srcset", "action", "formaction", "xlink:href", "poster", "data"})


# --- the browser and the servers -------------------------------------------------------

def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("PLANT_SKIP_BROWSER_TESTS") == "1":
        pytest.skip("PLANT_SKIP_BROWSER_TESTS=1 and no Chromium installed")
    pytest.fail("Chromium is not installed: run `apt-get install -y chromium` (Debian) to run the browser "
                "tests, or set PLANT_SKIP_BROWSER_TESTS=1 to skip them")


def run_chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"chromium-profile-{uuid.uuid4().hex[:8]}"
    command = [
        chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"chromium exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@dataclass
class Served:
    url: str
    paths: list[str] = field(default_factory=list)  # what the proxy was asked for, in order


def serve_in_thread(wsgi_app: Any) -> tuple[Any, threading.Thread]:
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def browser_origin(app: Any, admin_key: str) -> Iterator[Served]:
    """The real app on one port, and on another an auth-adding proxy for Chromium to load."""
    api_server, api_thread = serve_in_thread(app)
    upstream = f"http://127.0.0.1:{api_server.server_port}"
    served = Served("")

    @Request.application
    def forward(request: Request) -> Response:
        target = request.path + (f"?{request.query_string.decode()}" if request.query_string else "")
        served.paths.append(target)
        upstream_request = urllib.request.Request(upstream + target, headers={"Authorization": f"Bearer {admin_key}"})
        try:
            with urllib.request.urlopen(upstream_request, timeout=60) as answer:
                status, headers, body = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as refused:
            status, headers, body = refused.code, refused.headers, refused.read()
        return Response(body, status=status, headers=[(h, headers[h]) for h in FORWARDED_HEADERS if h in headers])

    proxy_server, proxy_thread = serve_in_thread(forward)
    served.url = f"http://127.0.0.1:{proxy_server.server_port}"
    try:
        yield served
    finally:
        for server, thread in ((proxy_server, proxy_thread), (api_server, api_thread)):
            server.shutdown()
            thread.join(timeout=10)


# --- reading the page --------------------------------------------------------------------

@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parent: Element | None
    text: str = ""


class PageParser(HTMLParser):
    """Every element with its attributes, parent and full text content."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, self.open[-1] if self.open else None)
        self.elements.append(element)
        if tag not in VOID_TAGS:
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs}, self.open[-1] if self.open else None))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.open) - 1, -1, -1):
            if self.open[depth].tag == tag:
                del self.open[depth:]
                return

    def handle_data(self, data: str) -> None:
        for element in self.open:
            element.text += data


def parse(html: str) -> list[Element]:
    parser = PageParser()
    parser.feed(html)
    parser.close()
    return parser.elements


def metrics(elements: list[Element]) -> dict[str, str]:
    found = [(e.attrs["data-metric"], e.text.strip()) for e in elements if "data-metric" in e.attrs]
    assert len(found) == len(dict(found)), f"a metric is shown twice: {Counter(k for k, _ in found)}"
    return dict(found)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def prefixed(shown: dict[str, str], prefix: str) -> dict[str, int]:
    return {key.split(":", 1)[1]: int(number(value)) for key, value in shown.items() if key.startswith(prefix + ":")}


def row_of(element: Element) -> str | None:
    while element is not None and "data-entity-id" not in element.attrs:
        element = element.parent
    return element.attrs["data-entity-id"] if element is not None else None


def entity_table(elements: list[Element]) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {e.attrs["data-entity-id"]: {} for e in elements if "data-entity-id" in e.attrs}
    for element in elements:
        if "data-col" in element.attrs:
            rows[row_of(element)][element.attrs["data-col"]] = element.text.strip()
    return rows


def external_references(elements: list[Element]) -> list[str]:
    return [f"<{e.tag} {name}={value!r}>" for e in elements for name, value in e.attrs.items()
            if name in URL_ATTRIBUTES and ("://" in value or value.strip().startswith("//"))]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


# --- the run under test ------------------------------------------------------------------

def finished_job(client: Any, response: Any) -> dict[str, Any]:
    assert response.status_code == 202, response.get_json()
    url = response.headers["Location"]
    return wait_for(lambda: (j := client.get(url, query_string={"wait": 5}).get_json())["status"]
                    in ("succeeded", "failed", "cancelled") and j, timeout=120, what=f"job {url}")


def all_findings(client: Any, run_id: str) -> list[dict[str, Any]]:
    items, token = [], None
    while True:
        query = {"page_size": 1000, **({"page_token": token} if token else {})}
        page = client.get(f"{API}/audit/runs/{run_id}/findings", query_string=query).get_json()
        items += page["items"]
        if not (token := page["next_page_token"]):
            return items


def expected_rows(findings: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The entity table worked out independently from the findings API."""
    by_entity: dict[str, list[dict[str, Any]]] = {}
    for finding in findings:
        if finding["entity_id"]:
            by_entity.setdefault(finding["entity_id"], []).append(finding)
    return {
        entity_id: {
            "findings": str(len(items)),
            "codes": ", ".join(sorted({f["code"] for f in items})),
            "worst_severity": max((f["severity"] for f in items), key=lambda s: SEVERITY_RANK.get(s, 0)),
        }
        for entity_id, items in by_entity.items()
    }


@pytest.fixture
def audited(client: Any, seeded: Any, engine: Any, worker: Any) -> dict[str, Any]:
    """A finished audit with a critical finding: one skill row edited behind the chain's back."""
    with Session(engine) as session, session.begin():
        skill_id = session.scalar(select(Skill.id).where(Skill.skill_key == "copywriting"))
        session.execute(Skill.__table__.update().where(Skill.id == skill_id).values(description="forged"))
    job = finished_job(client, client.post(f"{API}/audit/run", json={"verify_signatures": "all"}))
    assert job["status"] == "succeeded", job
    run = next(r for r in client.get(f"{API}/audit/runs").get_json()["items"] if r["job_id"] == job["id"])
    return {"run": run, "tampered": str(skill_id)}


# --- tests -------------------------------------------------------------------------------

def test_the_report_renders_in_chromium_with_the_runs_numbers(client, audited, browser_origin, keyring, tmp_path) -> None:
    run, summary = audited["run"], audited["run"]["summary"]
    assert summary["non_compliant"] == 1 and summary["findings"] > 1  # the page has something to show
    path = f"{API}/audit/runs/{run['id']}/report.html"
    dom = run_chromium(browser_origin.url + path, tmp_path, "--dump-dom")
    assert [line for line in dom.stderr.splitlines() if "Content Security Policy" in line] == []  # nothing refused
    assert set(browser_origin.paths) <= {path, "/favicon.ico"}, browser_origin.paths  # nothing else was fetched
    elements = parse(dom.stdout)
    shown = metrics(elements)

    for key in ("total_entities", "compliant", "non_compliant", "versions_verified", "findings"):
        assert number(shown[key]) == summary[key], key
    assert number(shown["duration_seconds"]) == summary["duration_seconds"]
    assert shown["signatures"] == summary["signatures"] == "all"
    # The suite connects as the embedded server's superuser: the page says it could lift the guards.
    assert summary["database_role"] == {"name": shown["database_role"], "can_lift_guards": True,
                                         "why": "is a superuser"}
    assert [e.attrs["data-flag"] for e in elements if "data-flag" in e.attrs] == ["guards-liftable"]
    assert shown["constitution_versions"] == ", ".join(summary["constitution_versions"]) != ""
    for key in ("status", "created_at", "finished_at"):
        assert shown[key] == run[key], key
    assert (shown["run_id"], shown["job_id"]) == (run["id"], run["job_id"])
    assert prefixed(shown, "by_rule") == summary["by_rule"]
    assert prefixed(shown, "by_code") == summary["by_code"]
    bars = {e.parent.attrs["data-bar"]: int(e.attrs["data-bar-count"]) for e in elements if "data-bar-count" in e.attrs}
    assert bars == {**{f"by_rule:{k}": v for k, v in summary["by_rule"].items()},
                    **{f"by_code:{k}": v for k, v in summary["by_code"].items()}}

    findings = all_findings(client, run["id"])
    assert len(findings) == summary["findings"]
    rows = entity_table(elements)
    assert rows == expected_rows(findings)
    first_row = next(e.attrs["data-entity-id"] for e in elements if "data-entity-id" in e.attrs)
    assert first_row == audited["tampered"] and rows[first_row]["worst_severity"] == "critical"
    assert number(shown["entities_with_findings"]) == len(rows)
    assert number(shown["clean_entities"]) == summary["total_entities"] - len(rows)
    assert not any(e.attrs.get("data-banner") for e in elements)  # finished: no in-progress banner

    exported = client.get(f"{API}/audit/export", query_string={"run_id": run["id"], "format": "json"}).data
    document = json.loads(exported)
    # The hash the page shows is the one its instructions compute from the saved export.
    assert shown["report_sha256"] == hashlib.sha256(rfc8785.dumps(document["report"])).hexdigest()
    assert shown["jws"] == document["signature"]
    page_jwks = json.loads(shown["jwks"])
    assert page_jwks["keys"][0] in client.get(f"{API}/signing-keys").get_json()["keys"]
    verified = verify_detached(rfc8785.dumps(document["report"]), shown["jws"], page_jwks)
    assert (shown["kid"], shown["alg"]) == (verified.kid, verified.alg) == (keyring.active.kid, keyring.active.algorithm)
    assert f"plant report verify audit-{run['id']}.json --jwks jwks.json" in dom.stdout


def test_a_screenshot_of_the_report_shows_a_page(audited, browser_origin, tmp_path) -> None:
    screenshot = tmp_path / "report.png"
    url = f"{browser_origin.url}{API}/audit/runs/{audited['run']['id']}/report.html"
    run_chromium(url, tmp_path, f"--screenshot={screenshot}", "--window-size=1280,2000", "--hide-scrollbars")
    assert png_size(screenshot) == (1280, 2000)
    # A blank 1280×2000 PNG compresses to a few kilobytes; text, tables and bars do not.
    assert screenshot.stat().st_size > 40_000, screenshot.stat().st_size


def test_the_page_is_self_contained_and_served_safely(client, audited) -> None:
    response = client.get(f"{API}/audit/runs/{audited['run']['id']}/report.html")
    assert response.status_code == 200
    assert response.mimetype == "text/html" and response.mimetype_params.get("charset") == "utf-8"
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    elements = parse(response.get_data(as_text=True))
    assert external_references(elements) == []
    assert not {"script", "link", "img", "iframe", "object", "embed"} & {e.tag for e in elements}
    assert [e.tag for e in elements if e.tag == "svg"] == ["svg", "svg"]  # by rule, by code
    assert b"http://" not in response.data and b"https://" not in response.data


def test_a_restored_entity_is_listed_with_its_signed_repair(client, audited, engine, write_ctx) -> None:
    from models.entities import EntityType
    from models.repair import restore_entity

    page = parse(client.get(f"{API}/audit/runs/{audited['run']['id']}/report.html").get_data(as_text=True))
    assert [e.attrs.get("data-repairs") for e in page if "data-repairs" in e.attrs] == ["none"]
    with Session(engine) as session, session.begin():
        repair_id = str(restore_entity(session, entity_type=EntityType.SKILL, entity_id=uuid.UUID(audited["tampered"]),
                                       keyring=write_ctx.keyring, embedder=write_ctx.embedder, actor="operator:report").repair.id)
    job = finished_job(client, client.post(f"{API}/audit/run", json={"verify_signatures": "all"}))
    run = next(r for r in client.get(f"{API}/audit/runs").get_json()["items"] if r["job_id"] == job["id"])
    assert run["summary"]["non_compliant"] == 0  # restored: the audit is clean, and the repair is the trail
    page = parse(client.get(f"{API}/audit/runs/{run['id']}/report.html").get_data(as_text=True))
    rows = [e for e in page if e.attrs.get("data-repair-id")]
    assert [e.attrs["data-repair-id"] for e in rows] == [repair_id]
    assert [e.text for e in page if e.attrs.get("data-repair-col") == "verified"] == ["valid"]
    exported = json.loads(client.get(f"{API}/audit/export", query_string={"run_id": run["id"], "format": "json"}).data)
    assert [r["id"] for r in exported["report"]["repairs"]] == [repair_id]


def test_unknown_run_is_a_404_problem(client) -> None:
    response = client.get(f"{API}/audit/runs/{uuid.uuid4()}/report.html")
    assert response.status_code == 404 and response.mimetype == "application/problem+json"
    assert response.get_json()["type"] == "/problems/not-found"


def test_malformed_run_id_is_a_422_problem(client) -> None:
    response = client.get(f"{API}/audit/runs/not-a-uuid/report.html")
    assert response.status_code == 422 and response.mimetype == "application/problem+json"


def test_the_page_needs_a_read_key(app, engine, clean_db) -> None:
    path = f"{API}/audit/runs/{uuid.uuid4()}/report.html"
    anonymous = app.test_client().get(path)
    assert anonymous.status_code == 401 and anonymous.mimetype == "application/problem+json"
    assert "Bearer" in anonymous.headers["WWW-Authenticate"]
    with Session(engine) as session, session.begin():
        reader = create_api_key(session, name="reader", scopes=["read"]).plaintext
    assert app.test_client().get(path, environ_base=bearer(reader)).status_code == 404  # past auth


def test_a_running_audit_renders_with_an_in_progress_banner(client, seeded, engine, keyring) -> None:
    hostile = "<script>alert(1)</script>"
    with Session(engine) as session, session.begin():
        job = Job(kind="audit.run", queue="audit", status="running", params={})  # never published
        session.add(job)
        session.flush()
        run = start_run(session, job_id=job.id, params={}, keyring=keyring, embedder=EMBEDDER, chunk_entities=50_000)
        entity_id = session.scalar(select(Skill.id).limit(1))
        chunk = session.scalar(select(AuditChunk).where(AuditChunk.run_id == run.id, AuditChunk.entity_type == "skill"))
        written_by_plant(session, run, chunk, keyring, [  # a hostile code and rule id, as if Plant wrote them
            FindingRow("skill", entity_id, None, "row-content-mismatch", ""),
            FindingRow("skill", entity_id, None, hostile, "", rule_id="R&D"),
        ])
        run_id, entities_total = str(run.id), run.entities_total

    response = client.get(f"{API}/audit/runs/{run_id}/report.html")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    elements = parse(html)
    assert [e.attrs["data-banner"] for e in elements if "data-banner" in e.attrs] == ["in-progress"]
    assert "In progress" in html
    shown = metrics(elements)
    assert shown["status"] == "running" and shown["finished_at"] == "—"
    assert number(shown["findings"]) == 2 and number(shown["total_entities"]) == entities_total
    assert shown["non_compliant"] == shown["compliant"] == shown["versions_verified"] == "—"
    assert number(shown["entities_with_findings"]) == 1 and "clean_entities" not in shown
    assert prefixed(shown, "by_code") == {"row-content-mismatch": 1, hostile: 1}
    assert prefixed(shown, "by_rule") == {"R&D": 1}
    assert entity_table(elements) == {str(entity_id): {
        "findings": "2", "codes": f"{hostile}, row-content-mismatch", "worst_severity": "critical"}}
    assert hostile not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # escaped, never markup
    assert "script" not in {e.tag for e in elements}


def test_a_finished_run_s_report_signature_is_recorded_once_for_a_later_seal(client, seeded, engine, keyring) -> None:
    """A report (JSON export or page) is signed on the way out and not kept: its signature's
    hash is, once the run has finished, so that sealing the key can list it."""
    from models.jws import b64url_decode, signature_sha256

    with Session(engine) as session, session.begin():
        job = Job(kind="audit.run", queue="audit", status="running", params={})
        session.add(job)
        session.flush()
        run_id = str(start_run(session, job_id=job.id, params={}, keyring=keyring, embedder=EMBEDDER, chunk_entities=50_000).id)

    def recorded() -> list[tuple[str, bytes]]:
        with engine.connect() as connection:
            return sorted((r.kid, bytes(r.signature_sha256)) for r in connection.execute(
                text("SELECT kid, signature_sha256 FROM signed_exports")))

    def export() -> dict:
        return json.loads(client.get(f"{API}/audit/export", query_string={"run_id": run_id, "format": "json"}).data)

    assert export()["report"]["run"]["status"] == "running" and recorded() == []  # a running audit's: not kept
    assert client.get(f"{API}/audit/runs/{run_id}/report.html").status_code == 200 and recorded() == []
    with Session(engine) as session, session.begin():
        summarize_run(session, run_id=uuid.UUID(run_id), keyring=keyring)
    exported = [export() for _ in range(2)]
    jws = exported[0]["signature"]
    assert exported[1]["signature"] == jws  # Ed25519: the same report, the same signature
    report_hash = signature_sha256(b64url_decode(jws.split(".")[2]))
    assert recorded() == [(keyring.active.kid, report_hash)]
    assert client.get(f"{API}/audit/runs/{run_id}/report.html").status_code == 200  # the page's JWS: the same one
    assert client.get(f"{API}/ledger/digest").status_code == 200  # digests are not listed (see models/ledger_digest.py)
    assert recorded() == [(keyring.active.kid, report_hash)]


def test_the_template_ships_in_the_installed_package() -> None:
    """The image installs a wheel (no source tree): a template left out of it is a 500 there."""
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-data", {}).get("web", [])
    templates = [p.relative_to(REPO_ROOT / "web").as_posix() for p in (REPO_ROOT / "web" / "templates").rglob("*") if p.is_file()]
    assert templates, "no templates found"
    missing = [t for t in templates if not any(fnmatch(t, pattern) for pattern in patterns)]
    assert missing == [], f'not in the wheel: {missing}; pyproject.toml needs [tool.setuptools.package-data] web = ["templates/*.html"]'
