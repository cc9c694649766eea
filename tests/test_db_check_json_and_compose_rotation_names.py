"""The README followed literally: what its commands print, run as a reader runs them.

Each test names the README sentence it holds the code to. The CLI runs here as a real
process (``python -m cli.main``), as ``plant`` runs in a shell: click's test runner swaps
``sys.stdout``, and a library that bound the real one at import time writes past it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent


def plant(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def cli_env(settings, tmp_path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PLANT_")}
    env.update(DATABASE_URL=settings.database_url, PLANT_DATA_DIR=str(tmp_path / "plant"))
    return env


def test_db_check_json_prints_json_alone(cli_env) -> None:
    """README: "Every command takes `--json`"; `plant db check --json` is `"drift": false`.
    Alembic's check wrote "No new upgrade operations detected." to the process's stdout
    ahead of the JSON, so `plant db check --json | jq` failed on a database at head."""
    result = plant("db", "check", "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"drift": False}
    text = plant("db", "check", env=cli_env)
    assert text.returncode == 0 and text.stdout == "no schema drift\n"


def test_compose_rotation_keeps_each_retired_key_under_a_name_of_its_own() -> None:
    """docs/deploy.md, "Rotating the signing key" (compose): the old key's public half went to
    `secrets/retired/key-$(date +%Y%m%d).pem`, so a second rotation the same day overwrote the
    first retired key, and every version it signed would fail the audit."""
    import re

    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    rotation = text[text.index("- Rotating the signing key"):text.index("## B. Google Cloud")]
    target = re.search(r"openssl pkey [^\n]*-out (secrets/retired/[^\n]+)", rotation)
    assert target is not None, rotation
    assert "%H%M%S" in target.group(1), target.group(1)
