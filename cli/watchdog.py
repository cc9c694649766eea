"""The dev runner's watchdog: stops what the runner started when the runner dies without doing so.

The runner's servers and app processes each run in a session of their own (a terminal's
Ctrl-C reaches the runner alone, which stops them in order), so nothing else ties them to
it: a runner killed outright (SIGKILL, the OOM killer, an IDE's stop button) left them all
running, and PostgreSQL's data dir locked for the next start. The watchdog is a small
process, in a session of its own too, holding the read end of a pipe whose write end only
the runner holds. Over it the runner says which process groups it starts (leader pid and
start time, stop signal, grace, and the batch it stops with: ``apps``, ``redis``,
``postgres``) and which it has stopped and reaped itself. End of file means the runner is
gone, however it went: the watchdog then stops what is still on its list as the runner's
own shutdown would (batch by batch, the latest started first; each leader gets its stop
signal, and once it has exited or its batch's grace is up, its whole group SIGKILL), and
exits. After a normal shutdown the list is empty and it exits at once; the runner waits
for it. It knows only the groups its own runner named, so another runner's are never touched.

Run as ``python -m cli.watchdog FD``; :class:`Watchdog` is the runner's side. The other way
round, a runner started by another program (``plant demo``) can be handed the read end of a
pipe of that program's in ``PLANT_DEV_LIFELINE_FD``: at its end of file the runner stops as on
SIGTERM (:func:`stop_when_closed`), so a demo killed outright does not leave its stack running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import psutil

POLL_SECONDS = 0.1
# Signals the runner turns into its shutdown: while a child is being started and put on the
# lists that stop it, they wait (see signals_deferred).
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LIFELINE_VARIABLE = "PLANT_DEV_LIFELINE_FD"


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM/SIGHUP handled in Python until the block is done, then deliver
    them: a handler raising between ``Popen`` and the line that records the child orphaned it.

    Outside the main thread (where handlers cannot be set) and for signals left to the
    default action, this does nothing: only handlers written in Python run late anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = {sig: handler for sig in DEFERRED_SIGNALS if callable(handler := signal.getsignal(sig))}
    for sig in held:
        signal.signal(sig, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)  # its own handler runs now, before raise_signal returns


def process_started(pid: int) -> float:
    """When process ``pid`` started, as the runner and its watchdog both read it: on Linux, in
    seconds after boot (/proc/<pid>/stat), which no setting of the system clock moves. psutil's
    ``create_time`` adds the boot time as the wall clock has it at each call: set between the
    runner's reading and the watchdog's (NTP stepping it), every leader looked like another
    process's, and nothing was stopped. Without /proc (macOS), psutil's, recorded once by the
    kernel. ``psutil.NoSuchProcess`` when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        if not PROCFS.exists():
            return psutil.Process(pid).create_time()
        raise psutil.NoSuchProcess(pid) from None
    except ProcessLookupError:  # opened while it lived, read once it was reaped (ESRCH)
        raise psutil.NoSuchProcess(pid) from None
    return int(stat.rsplit(b")", 1)[1].split()[19]) / CLOCK_TICKS  # field 22, starttime, in clock ticks


PROCFS = Path("/proc/self/stat")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Watched:
    """A process group the runner started: its leader, known by pid and start time."""

    batch: str
    pid: int
    started: float  # process_started: tells the leader from a later process given its pid
    stop_signal: int
    grace: float

    def line(self) -> bytes:
        return f"watch {self.batch} {self.pid} {self.started!r} {self.stop_signal} {self.grace!r}\n".encode()

    def leader_running(self) -> bool:
        try:
            return process_started(self.pid) == self.started and psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def stop_leader(self) -> None:
        if self.leader_running():
            with suppress(ProcessLookupError):
                os.kill(self.pid, self.stop_signal)

    def kill_group(self) -> None:
        """SIGKILL what is left of the group, unless its id went to another process: a group
        id is not reused while the group has members (POSIX), so once another process holds
        the number, the group is empty."""
        with suppress(psutil.NoSuchProcess):
            if process_started(self.pid) != self.started:
                return
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


class Watchdog:
    """The runner's side: start the watchdog, tell it what to stop, close it when done.

    Writes are single ``os.write`` calls of a line shorter than ``PIPE_BUF``, so each line
    arrives whole whatever kills the runner; a watchdog that died makes them no-ops.
    """

    def __init__(self, process: subprocess.Popen[bytes], write_fd: int) -> None:
        self.process = process
        self._write_fd: int | None = write_fd

    @classmethod
    def start(cls, *, holding: tuple[int, ...] = ()) -> Self:
        """Start the watchdog; it keeps ``holding`` (the runner's data dir lock) open until it
        exits, so a runner killed outright holds its data dir until its processes are stopped."""
        read_fd, write_fd = os.pipe()  # neither end is inherited by the runner's other children
        try:
            with signals_deferred():
                process = subprocess.Popen(
                    [sys.executable, "-m", "cli.watchdog", str(read_fd)], pass_fds=(read_fd, *holding),
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        return cls(process, write_fd)

    def watch(self, batch: str, process: subprocess.Popen[bytes], stop_signal: int, grace: float) -> None:
        """Put ``process`` (a group leader, not yet reaped) on the list, in ``batch``."""
        try:
            started = process_started(process.pid)
        except psutil.NoSuchProcess:  # reaped already: nothing of it to stop
            return
        self._send(Watched(batch, process.pid, started, stop_signal, grace).line())

    def release(self, process: subprocess.Popen[bytes]) -> None:
        """Take ``process`` off the list: the runner has stopped and reaped it."""
        self._send(f"release {process.pid}\n".encode())

    def close(self) -> None:
        """Close the pipe (the watchdog stops whatever is still listed) and wait for it to exit."""
        if self._write_fd is not None:
            fd, self._write_fd = self._write_fd, None
            os.close(fd)
        self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(self, line: bytes) -> None:
        if self._write_fd is not None:
            with suppress(OSError):
                os.write(self._write_fd, line)


def stop_when_closed(fd: int) -> None:
    """SIGTERM this process once every write end of the pipe ``fd`` reads is closed: the program
    that started us and holds it is gone. Reads in a daemon thread; the handler does the rest."""
    def wait_for_end() -> None:
        with suppress(OSError):
            while os.read(fd, 512):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_for_end, name="lifeline", daemon=True).start()


def read_list(lines: Iterator[bytes]) -> dict[int, Watched]:
    """The groups still listed when ``lines`` ends, in the order they were started."""
    listed: dict[int, Watched] = {}
    for line in lines:
        match line.split():
            case [b"watch", batch, pid, started, stop_signal, grace]:
                listed[int(pid)] = Watched(batch.decode(), int(pid), float(started), int(stop_signal), float(grace))
            case [b"release", pid]:
                listed.pop(int(pid), None)
    return listed


def stop_listed(listed: dict[int, Watched]) -> None:
    """Stop each batch in turn, the latest started first, as the runner's own shutdown does."""
    batches: dict[str, list[Watched]] = {}
    for watched in listed.values():
        batches.setdefault(watched.batch, []).append(watched)
    for batch in reversed(batches.values()):
        for watched in batch:
            watched.stop_leader()
        deadline = time.monotonic() + max(watched.grace for watched in batch)
        for watched in batch:
            while watched.leader_running() and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
            watched.kill_group()


def main(read_fd: int) -> None:
    with os.fdopen(read_fd, "rb") as pipe:
        listed = read_list(iter(pipe))
    if listed:
        with suppress(OSError):
            print(f"plant dev watchdog: the runner is gone; stopping {len(listed)} process group(s) it left",
                  file=sys.stderr, flush=True)
        stop_listed(listed)


if __name__ == "__main__":
    main(int(sys.argv[1]))
