"""The audit report page and the Swagger docs pages, from a security-minded user's side.

The browser tests use the same real headless Chromium as tests/test_report_html.py.
"""

from __future__ import annotations

import re

import pytest

from tests.test_report_html import run_chromium, serve_in_thread

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
