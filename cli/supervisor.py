"""The dev runner's app processes (gunicorn, the Celery worker, beat, Flower): each started as
the leader of a process group of its own, told to the watchdog, its output prefixed with its
role and forwarded to our stdout, and all stopped together, SIGTERM first and SIGKILL for
what is left after the grace period. :mod:`cli.dev` decides what runs; this runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from cli.services import CHILD_UMASK
from cli.watchdog import Watchdog, signals_deferred

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHUTDOWN_GRACE_SECONDS = 45.0  # above gunicorn's graceful_timeout (35 s), as compose's stop_grace_period
POLL_SECONDS = 0.1


@dataclass
class Child:
    """One supervised process, leader of its own process group."""

    role: str
    process: subprocess.Popen[bytes]
    argv: list[str]

    def exit_status(self) -> int | None:
        """The exit code (or killing signal) once the leader has exited, else ``None``."""
        # WNOWAIT leaves the zombie unreaped: while it exists its pid (= the group id) cannot
        # be reused, so killing the group afterwards cannot hit an unrelated process.
        result = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return None if result is None else result.si_status

    def has_exited(self) -> bool:
        return self.exit_status() is not None

    def terminate(self) -> None:
        # os.kill, not Popen.send_signal: that polls first and would reap the zombie.
        os.kill(self.process.pid, signal.SIGTERM)

    def kill_group(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


class Supervisor:
    """Starts the app processes, forwards their output, and stops them all."""

    def __init__(self, env: dict[str, str], watchdog: Watchdog) -> None:
        self._env = env
        self._watchdog = watchdog
        self._children: list[Child] = []
        self._readers: list[threading.Thread] = []
        self._output_lock = threading.Lock()

    def spawn(self, role: str, argv: list[str]) -> None:
        with signals_deferred():  # a shutdown signal between Popen and the lists orphaned the child
            process = subprocess.Popen(
                argv, cwd=PROJECT_ROOT, env=self._env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, umask=CHILD_UMASK,
            )
            self._children.append(Child(role, process, argv))
            self._watchdog.watch("apps", process, signal.SIGTERM, SHUTDOWN_GRACE_SECONDS)
        reader = threading.Thread(target=self._forward, args=(role, process), daemon=True)
        reader.start()
        self._readers.append(reader)

    def _forward(self, role: str, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            # Keep draining even if our stdout is gone: a full pipe would block the child.
            with self._output_lock, suppress(OSError):
                print(f"{role:>6} | {line}", flush=True)

    def wait_for_first_exit(self) -> tuple[Child, int]:
        """Block until some child exits on its own; return it and its status.

        A shutdown signal interrupts the wait with ShutdownRequested.
        """
        while True:
            for child in self._children:
                status = child.exit_status()
                if status is not None:
                    return child, status
            time.sleep(POLL_SECONDS)

    def wait_for_failure(self, restarted_on_exit_0: frozenset[str]) -> tuple[Child, int]:
        """Block until some child exits on its own and is not restarted; return it and its status.

        A child of a role in ``restarted_on_exit_0`` that exits 0 stopped itself on purpose (a
        Celery worker whose signing key was sealed since it started: tasks.runtime), for its
        supervisor to start it again, as compose's restart policy does; it is started again.
        """
        while True:
            child, status = self.wait_for_first_exit()
            if status != 0 or child.role not in restarted_on_exit_0:
                return child, status
            with suppress(OSError):
                print(f"{child.role:>6} | exited 0 on its own: starting it again", flush=True)
            self._stop(child)
            self._children.remove(child)
            self.spawn(child.role, child.argv)

    def _stop(self, child: Child) -> None:
        """Kill what is left of ``child``'s group, reap its leader, and take it off the watchdog's list."""
        child.kill_group()
        child.process.wait()
        self._watchdog.release(child.process)

    def stop_all(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """SIGTERM every leader in start order, wait within one deadline, SIGKILL what is left.

        SIGTERM goes to the leader only: celery's prefork processes die at once on SIGTERM,
        which would abort the tasks the worker's warm shutdown is waiting for. The SIGKILL
        sweep then covers the whole group, including anything the leader left behind.
        """
        for child in self._children:
            if not child.has_exited():
                child.terminate()
        deadline = time.monotonic() + grace
        for child in self._children:
            while not child.has_exited() and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
            self._stop(child)
        for reader in self._readers:
            reader.join(timeout=2)
