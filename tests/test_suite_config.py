"""How ``make test`` spreads the suite over processes (pytest-xdist, tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from tests.conftest import REPO_ROOT

ONE_TEST = "tests/test_canonical.py::test_rfc8785_number_vector"
SHARED = {"TEST_REDIS_URL": "redis://127.0.0.1:1/0"}  # never reached: no test here uses it


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()  # this run's own xdist worker variables included
             if k not in ("TEST_DATABASE_URL", "TEST_REDIS_URL", "PYTEST_ADDOPTS") and not k.startswith("PYTEST_XDIST")}
    # A basetemp of its own: a run that finds pytest's shared temp root sets it back to 0700.
    with tempfile.TemporaryDirectory(prefix="plant-nested-pytest-") as basetemp:
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={basetemp}/t",
                               *args, ONE_TEST], cwd=REPO_ROOT, env={**clean, **env}, capture_output=True, text=True,
                              timeout=120)


def test_auto_leaves_the_count_to_pytest_xdist_auto_num_workers_when_it_is_set(monkeypatch) -> None:
    """PYTEST_XDIST_AUTO_NUM_WORKERS sets the count: Plant's hook steps aside (None), and xdist's
    own reads it; unset, one worker more than the CPU cores (the end-to-end tests mostly wait on
    the processes they start). Called in this process: a nested run of two workers cost 20 s of
    the suite, and one of ``-n auto`` 30-50 s. That xdist calls the hook at all is proven by the
    nested run on shared servers below, where it makes ``-n auto`` start no worker."""
    from tests.conftest import pytest_xdist_auto_num_workers

    for name in ("TEST_DATABASE_URL", "TEST_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "2")
    assert pytest_xdist_auto_num_workers(None) is None
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS")
    assert pytest_xdist_auto_num_workers(None) == len(os.sched_getaffinity(0)) + 1


def test_make_test_lets_an_idle_worker_take_tests_queued_for_another() -> None:
    recipe = (REPO_ROOT / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "-m pytest -n $(TEST_WORKERS) --dist worksteal" in recipe, recipe


def test_on_shared_servers_auto_runs_in_one_process_and_workers_are_refused() -> None:
    auto = _pytest("-n", "auto", **SHARED)
    assert auto.returncode == 0 and "workers" not in auto.stdout, auto.stdout + auto.stderr
    two = _pytest("-n", "2", **SHARED)
    assert two.returncode == 4 and "the suite runs in one process on shared servers" in two.stderr, two.stderr


def test_the_suite_runs_without_xdist() -> None:
    run = _pytest("-p", "no:xdist")
    assert run.returncode == 0, run.stdout + run.stderr
