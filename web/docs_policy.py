"""The Content-Security-Policy of the interactive API docs (``/docs``, that is ``/swagger``).

A reader pastes an API key into Swagger UI's "Authorize" dialog, and the page holds it while
it is open. flask-openapi3 serves the UI's pages with no policy at all: any site could frame
them, and nothing stopped the page from running script, or sending what it holds, anywhere.
Each HTML page of the docs (the UI, its OAuth2 redirect, the index at ``/``) is served here
with a policy that lets it load and call only this origin, and run inline only the scripts it
was rendered with when the app was made: their SHA-256 hashes are taken then, from the page
as the app renders it (the pages take nothing from the request), so a page that were ever to
differ would have its script refused rather than allowed.
"""

from __future__ import annotations

import base64
import hashlib
import re

from flask import Flask, Response, request

# Endpoints of the HTML pages flask-openapi3 and its Swagger plugin register.
DOCS_PAGES = ("swagger.swagger", "swagger.oauth2-redirect", "openapi.openapi")
# The policy of everything else the docs serve (the UI's script, stylesheet and images).
DOCS_POLICY = ("default-src 'none'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; "
               "form-action 'none'; frame-ancestors 'none'")
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def inline_script_hashes(html: str) -> list[str]:
    """CSP source expressions (``'sha256-…'``) for each inline ``<script>`` of ``html``."""
    return [f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
            for body in _INLINE_SCRIPT.findall(html)]


def docs_policy(app: Flask) -> str:
    """The policy for the docs' pages of ``app``: its pages rendered once, their scripts hashed."""
    hashes: list[str] = []
    for endpoint in DOCS_PAGES:
        view = app.view_functions.get(endpoint)
        if view is None:
            continue
        with app.test_request_context():
            hashes += inline_script_hashes(str(view()))
    return DOCS_POLICY.format(hashes="".join(f" {h}" for h in dict.fromkeys(hashes)))


def init_docs_policy(app: Flask) -> None:
    """Serve every answer of the docs' blueprints under :func:`docs_policy`, never framed."""
    policy = docs_policy(app)

    def set_policy(response: Response) -> Response:
        if request.blueprint in ("swagger", "openapi") and request.endpoint != "openapi.doc_url":
            response.headers["Content-Security-Policy"] = policy
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    app.after_request(set_policy)
