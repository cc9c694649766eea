"""Review of the deployment and the dev runner: what the compose stack, the image, Terraform
and ``plant dev`` promise, checked on the real processes and the real files."""

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from cli.services import free_port
from tests.conftest import REPO_ROOT, wait_for
from tests.test_dev_runner import DevRunner, _alive, _in_dir


@pytest.mark.e2e
def test_a_hangup_stops_the_dev_runner_and_everything_it_started(tmp_path: Path, server_tmp: Path) -> None:
    """Closing the terminal (or losing the ssh session) sends SIGHUP. The runner's children each
    run in a session of their own, so the hangup never reaches them: the runner must stop them,
    or the next ``make dev`` finds PostgreSQL's data dir still locked by the orphan."""
    runner = DevRunner(server_tmp / "plant data", tmp_path / "dev.log")  # a path with a space, too
    runner.start()
    started = psutil.Process(runner.process.pid).children(recursive=True)
    started += [p for p in psutil.process_iter() if _in_dir(p, runner.data_dir)]
    try:
        runner.process.send_signal(signal.SIGHUP)
        assert runner.process.wait(timeout=60) == 0
    finally:
        left = _alive(started)
        for process in left:  # never leave them to the next test
            process.kill()
        runner.log.close()
    assert left == []


@pytest.mark.e2e
def test_a_hangup_stops_the_demo_and_its_stack(tmp_path: Path, server_tmp: Path) -> None:
    """``make demo`` runs its ``plant dev`` in a session of its own: a hangup of the demo must
    stop that stack, not leave it (and its servers) running."""
    data_dir = server_tmp / "demo"
    port = free_port()
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "demo", "--data-dir", str(data_dir), "--port", str(port),
             "--flower-port", str(free_port()), "--pause", "30"],
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            if demo.poll() is not None:
                pytest.fail(f"the demo exited {demo.returncode}:\n{log.read_text()[-4000:]}")
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["status"] == "ok"
            except (requests.RequestException, ValueError):
                return False

        wait_for(healthy, timeout=120, what="the demo stack to be healthy")
        started = [p for p in psutil.process_iter() if _in_dir(p, data_dir)]
        assert started
        demo.send_signal(signal.SIGHUP)
        assert demo.wait(timeout=90) == 128 + signal.SIGHUP
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        left = _alive([p for p in psutil.process_iter() if _in_dir(p, data_dir)])
        for process in left:
            process.kill()
    assert left == []

