"""Layering rules that keep the codebase the shape STYLE.md describes."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV_READ = re.compile(r"os\.environ|os\.getenv|getenv\(")


def test_import_contracts_hold() -> None:
    result = subprocess.run(
        [Path(sys.executable).parent / "lint-imports"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_settings_loader_reads_the_environment() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for package in ("models", "tasks", "worker", "web")
        for path in (REPO / package).rglob("*.py")
        if path != REPO / "models" / "settings.py" and ENV_READ.search(path.read_text())
    ]
    assert offenders == []


def test_importing_the_entry_points_does_nothing() -> None:
    """No connection, no app, no settings at import time (Celery/gunicorn import these)."""
    code = (
        "import os; os.environ['DATABASE_URL']='postgresql://nobody@127.0.0.1:1/none';"
        "os.environ['PLANT_PORT']='not-a-port';"  # a settings read at import would raise
        "import web, worker.app, tasks.diagnostics, tasks.maintenance, models.schema"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_api_does_not_load_the_bulk_solver() -> None:
    """models.bulk_assignment, models.bulk_plan and models.bulk_records load numpy and SciPy's
    solvers (about 0.4 s and tens of MB a process); the API only ever ends such a job (a
    cancel), and loaded them at start through models.job_results. models.bulk_apply, the rest
    of the bulk code, has no business in the API either."""
    bulk = ("models.bulk_assignment", "models.bulk_plan", "models.bulk_records", "models.bulk_apply")
    code = f"import sys, web; print(sorted(m for m in {('numpy', 'scipy', *bulk)!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
