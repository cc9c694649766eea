"""What a reader following the README (and the docs it links) literally gets.

A walk through the Quickstart, the `plant` CLI section and the short tour against `make dev`
found these places where the code, or the docs, did not give what the README promises.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# --- /docs: "Swagger UI, served locally, nothing fetched from a CDN" -------------------------


def _swagger_config(page: str) -> dict:
    """The config the /swagger page spreads over Swagger UI's defaults (``...swagger_config``)."""
    match = re.search(r"const swagger_config = JSON\.parse\(`(?P<config>.*?)`\);", page)
    assert match, "the /swagger page no longer reads a config: check this test still means something"
    return json.loads(match["config"]) or {}


def test_the_docs_page_turns_off_swagger_ui_s_online_validator(client) -> None:
    """Swagger UI's default ``validatorUrl`` is https://validator.swagger.io/validator: on any host
    but localhost, /docs drew a badge image from there carrying this deployment's /openapi.json
    URL, which that service then fetched. The page must set it to "none"."""
    page = client.get("/docs", follow_redirects=True)
    assert page.status_code == 200
    bundle = client.get("/swagger/js/swagger-ui-bundle.js").data.decode()
    assert 'validatorUrl:"https://validator.swagger.io/validator"' in bundle  # the default the page overrides
    assert _swagger_config(page.data.decode()).get("validatorUrl") == "none"
