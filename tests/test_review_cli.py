"""helper-203's review of the CLI and the dev runner: what it found, each as a test that fails
without its fix (or a strict xfail where it is left open)."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT, wait_for
from tests.test_dev_runner_watchdog import RUNNER, _group


def test_the_watchdog_test_runner_stops_its_server_by_sigint_even_when_started_ignoring_it(tmp_path: Path) -> None:
    """The flake of ``test_a_watchdog_stops_its_dead_runner_s_groups_in_order_and_nothing_else``:
    a test run started in the background by a non-interactive shell (``make test &``, a CI
    step) has SIGINT ignored, and an ignored signal passes to every child. The stand-in runner
    passed it on to its "server" sh, whose ``trap ... INT`` POSIX then ignores too: the
    watchdog's SIGINT did nothing, the group was SIGKILLed after its grace, and the trap's line
    never reached the log. plant dev installs its handlers before it starts anything; so must
    the stand-in."""
    log = tmp_path / "stopped"
    runner = subprocess.Popen(["sh", "-c", 'trap "" INT; exec "$@"', "sh", sys.executable, "-c", RUNNER, str(log),
                               "killed"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert runner.stdout is not None
    watchdog_pid, server, apps = (int(pid) for pid in runner.stdout.readline().split())
    try:
        wait_for(lambda: len(_group(apps)) == 3 and len(_group(server)) == 2, what="each leader to start its children")
        runner.kill()
        runner.wait()
        wait_for(lambda: _group(watchdog_pid) == [], timeout=30, what="the watchdog to stop the groups and exit")
        assert log.read_text().split() == ["apps", "server"]
    finally:
        for pgid in (server, apps):
            for process in _group(pgid):
                process.kill()
