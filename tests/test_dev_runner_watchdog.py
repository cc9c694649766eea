"""The dev runner's watchdog (``cli/watchdog.py``) and the moment between starting a child and
recording it: what a runner that dies, or is signalled, leaves behind.

A small stand-in runner (``RUNNER`` below) starts process groups the way ``plant dev`` does and
names them to its watchdog; the whole runner is covered end to end by
``tests/test_dev_runner.py::test_dev_runs_everything_beside_another_runner_and_stops_clean``.
"""

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import requests

from cli.ports import claim_port
from cli.services import EmbeddedRedis
from cli.supervisor import Supervisor
from cli.watchdog import Watchdog
from tests.conftest import REPO_ROOT, wait_for
from tests.test_dev_runner import _alive, _in_dir

# Two groups, as the runner starts them: a "server" first, then "apps"; each leader notes in
# the log when its stop signal comes, and the apps' leader has children of its own in its group.
RUNNER = """
import signal, subprocess, sys, time
from cli.watchdog import Watchdog

log, mode = sys.argv[1], sys.argv[2]
# As plant dev installs its shutdown handlers before it starts anything: a SIGINT this process
# inherited as ignored (a test run started in the background by a non-interactive shell, which
# ignores SIGINT in its background jobs) would otherwise pass on to the server's sh, whose
# `trap ... INT` POSIX then ignores too; SIGINT did nothing, and the group was SIGKILLed after
# its grace without the line in the log.
signal.signal(signal.SIGINT, signal.default_int_handler)
watchdog = Watchdog.start()

def group(batch, trap, stop_signal, children):
    script = f"trap 'echo {batch} >> {log}; exit 0' {trap}; " + "sleep 300 & " * children + "wait"
    process = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    watchdog.watch(batch, process, stop_signal, 10)
    return process

server = group("server", "INT", signal.SIGINT, 1)
apps = group("apps", "TERM", signal.SIGTERM, 2)
print(watchdog.process.pid, server.pid, apps.pid, flush=True)
if mode == "clean":  # a normal shutdown: the runner stops and reaps each group, then closes the pipe
    for process in (apps, server):
        process.kill()
        process.wait()
        watchdog.release(process)
    watchdog.close()
    print("closed", flush=True)
time.sleep(300)
"""


def _group(pgid: int) -> list[psutil.Process]:
    """The live processes of group ``pgid``."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


def _start_runner(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], list[int]]:
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path / "stopped"), mode], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert runner.stdout is not None
    return runner, [int(pid) for pid in runner.stdout.readline().split()]


def test_a_watchdog_stops_its_dead_runner_s_groups_in_order_and_nothing_else(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)  # another runner's, say
    runner, (watchdog_pid, server, apps) = _start_runner(tmp_path, "killed")
    try:
        wait_for(lambda: len(_group(apps)) == 3 and len(_group(server)) == 2, what="each leader to start its children")
        runner.kill()
        runner.wait()
        wait_for(lambda: _group(watchdog_pid) == [], timeout=30, what="the watchdog to stop the groups and exit")
        assert _group(apps) == [] and _group(server) == []
        # As the runner's own shutdown: the apps first, each leader with its own stop signal.
        assert (tmp_path / "stopped").read_text().split() == ["apps", "server"]
        assert bystander.poll() is None
    finally:
        for pgid in (server, apps):
            for process in _group(pgid):
                process.kill()
        bystander.kill()
        bystander.wait()


def test_after_a_normal_shutdown_the_watchdog_exits_and_stops_nothing(tmp_path: Path) -> None:
    runner, (watchdog_pid, server, apps) = _start_runner(tmp_path, "clean")
    try:
        assert runner.stdout is not None and runner.stdout.readline().strip() == "closed"
        assert not psutil.pid_exists(watchdog_pid)  # Watchdog.close waited for it
        assert not (tmp_path / "stopped").exists()  # the runner had stopped them all, not the watchdog
    finally:
        runner.kill()
        runner.wait()
        for pgid in (server, apps):
            for process in _group(pgid):
                process.kill()


class Interrupted(BaseException):
    pass


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


@pytest.fixture
def signal_after_next_popen(monkeypatch):
    """Arms the next ``subprocess.Popen`` to be followed at once by a SIGTERM to us, handled in
    Python (raising :class:`Interrupted`): the moment before the caller records the child it started."""
    real_popen = subprocess.Popen

    def popen_then_signal(*args, **kwargs):
        monkeypatch.setattr(subprocess, "Popen", real_popen)
        process = real_popen(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return process

    previous = signal.signal(signal.SIGTERM, _interrupt)
    yield lambda: monkeypatch.setattr(subprocess, "Popen", popen_then_signal)
    signal.signal(signal.SIGTERM, previous)


def _alive_with(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if any(marker in part for part in process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            pass
    return found


def test_a_shutdown_signal_just_after_an_app_process_starts_does_not_orphan_it(signal_after_next_popen) -> None:
    """helper-151: a signal between ``Popen`` and ``_children.append`` in ``Supervisor.spawn``
    raised out of it with the child unrecorded, so the runner's shutdown never stopped it."""
    marker = f"review-spawn-{uuid.uuid4().hex}"
    with Watchdog.start() as watchdog:
        supervisor = Supervisor(dict(os.environ), watchdog)
        try:
            signal_after_next_popen()
            with pytest.raises(Interrupted):
                supervisor.spawn("sleeper", ["sh", "-c", "sleep 300", marker])
            supervisor.stop_all(grace=5)
            left = _alive_with(marker)
        finally:
            for process in _alive_with(marker):
                process.kill()
    assert left == []


def test_a_signal_just_after_a_server_starts_does_not_orphan_it(tmp_path: Path, signal_after_next_popen) -> None:
    """The same moment in an embedded server's start: its ``stop()`` must know the process."""
    server = EmbeddedRedis(tmp_path / "redis", claim_port())
    marker = f"127.0.0.1:{server.port}"  # redis-server's title names its address, not its data dir
    try:
        signal_after_next_popen()
        with pytest.raises(Interrupted):
            server.start()
        left = _alive_with(marker)
    finally:
        for process in _alive_with(marker):
            process.kill()
    assert left == []


def start_demo(data_dir: Path, log: Path) -> subprocess.Popen:
    """``plant demo`` on ``data_dir`` and free ports, its output in ``log``; ``demo.port`` is its API's."""
    port = claim_port()
    with open(log, "wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "demo", "--data-dir", str(data_dir), "--port", str(port),
             "--flower-port", str(claim_port()), "--pause", "30"],
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    demo.port, demo.log_path = port, log  # type: ignore[attr-defined]
    return demo


def wait_for_healthy_demo(demo: subprocess.Popen) -> None:
    def healthy() -> bool:
        if demo.poll() is not None:
            pytest.fail(f"the demo exited {demo.returncode}:\n{demo.log_path.read_text()[-4000:]}")  # type: ignore[attr-defined]
        try:
            return requests.get(f"http://127.0.0.1:{demo.port}/health", timeout=5).json()["status"] == "ok"  # type: ignore[attr-defined]
        except (requests.RequestException, ValueError):
            return False

    wait_for(healthy, timeout=120, what="the demo stack to be healthy")


@pytest.mark.e2e
def test_demos_killed_outright_or_hung_up_beside_each_other_stop_their_stacks(tmp_path: Path, server_tmp: Path) -> None:
    """``plant demo`` runs its ``plant dev`` in a session of its own. Two demos run side by
    side, on data dirs and ports of their own. One is killed outright (SIGKILL: nothing of it
    runs to stop the stack), which left that runner and all it had started running, and the
    next demo refused to start on the data dir: its watchdog must stop them. The other is hung
    up (``make demo`` in a terminal that closes), which must stop its stack too, exiting as a
    hangup does. Neither may stop anything of the other's while it is still running."""
    killed_dir, hung_up_dir = server_tmp / "demo-killed", server_tmp / "demo-hung-up"
    killed = start_demo(killed_dir, tmp_path / "killed.log")
    hung_up = start_demo(hung_up_dir, tmp_path / "hung-up.log")
    demos = (killed, hung_up)
    started: dict[str, list[psutil.Process]] = {}
    try:
        for demo in demos:
            wait_for_healthy_demo(demo)
        for name, demo, data_dir in (("killed", killed, killed_dir), ("hung up", hung_up, hung_up_dir)):
            ours = psutil.Process(demo.pid).children(recursive=True)
            started[name] = ours + [p for p in psutil.process_iter() if _in_dir(p, data_dir) and p not in ours]
            assert started[name], name
        killed.kill()
        killed.wait()
        wait_for(lambda: not _alive(started["killed"]), timeout=60, what="the killed demo's stack to stop")
        wait_for_healthy_demo(hung_up)  # the other demo's stack is still whole: its runner, API, workers and beat
        hung_up.send_signal(signal.SIGHUP)
        assert hung_up.wait(timeout=90) == 128 + signal.SIGHUP
        wait_for(lambda: not _alive(started["hung up"]), timeout=30, what="the hung-up demo's stack to stop")
    finally:
        for demo in demos:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
        left = {name: _alive(processes) for name, processes in started.items()}
        for process in (p for processes in left.values() for p in processes):
            process.kill()
    assert left == {"killed": [], "hung up": []}
