"""Following a job to its end: long-poll the job resource and show progress as it moves.

Each poll is ``GET /api/v1/jobs/{id}?wait=N``: the server answers as soon as the job ends,
else after N seconds with its current progress. On a terminal the progress is one line
redrawn in place (a bar, done/total, percent, rate and ETA); anywhere else (a pipe, a log,
CI) it is a plain line each time the progress changes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

import httpx

from cli.client import ApiError, PlantClient, problem_line
from cli.errors import JobUnsuccessful
from models.canonical import visible_text

POLL_WAIT_SECONDS = 1.0
# A follow keeps polling through an API that does not answer, or answers 502/503/504 past the
# client's own retries (a deploy restarting it, a proxy between), for this long: the job goes
# on meanwhile, and a --wait that gave up would read as the job's failure (exit 1).
OUTAGE_SECONDS = 300.0
OUTAGE_POLL_SECONDS = 2.0
OUTAGE_STATUSES = frozenset({502, 503, 504})
BAR_WIDTH = 28
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def is_terminal(job: dict[str, Any]) -> bool:
    return job["status"] in TERMINAL_STATUSES


def follow(client: PlantClient, job: dict[str, Any], on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Poll until the job ends; ``on_update`` sees every state polled, the last one included."""
    while True:
        if on_update is not None:
            on_update(job)
        if is_terminal(job):
            return job
        asked = time.monotonic()
        job = _poll(client, job["id"], before_message=getattr(on_update, "end_line", None))
        if not is_terminal(job):  # answered before its wait (every long-poll slot of the server taken): pace it
            time.sleep(max(0.0, POLL_WAIT_SECONDS - (time.monotonic() - asked)))


def _poll(client: PlantClient, job_id: str, *, before_message: Callable[[], None] | None = None) -> dict[str, Any]:
    """The job, polled again through an outage of the API (:data:`OUTAGE_SECONDS`, counted
    both by the clock and by the pauses taken), with a line on stderr each time (after
    ``before_message``: a live progress line is ended first); any other error, or one
    outlasting that, is raised."""
    began, pauses = time.monotonic(), 0
    while True:
        try:
            return client.job(job_id, wait=POLL_WAIT_SECONDS)
        except ApiError as error:
            # No answer (the connection refused, reset or timed out), or a gateway's 502/503/504:
            # not an answer that is no job (a proxy's page, another service), which will not mend.
            cause = error.__cause__
            outage = error.status in OUTAGE_STATUSES or (
                isinstance(cause, httpx.TransportError) and not isinstance(cause, httpx.LocalProtocolError))
            spent = max(time.monotonic() - began, pauses * OUTAGE_POLL_SECONDS)
            if not outage or spent >= OUTAGE_SECONDS:
                raise
            if before_message is not None:
                before_message()
            print(f"plant: {visible_text(str(error))}; job {job_id} goes on: polling again in "
                  f"{OUTAGE_POLL_SECONDS:g} s (for up to {OUTAGE_SECONDS:g} s)", file=sys.stderr, flush=True)
            client.pause(OUTAGE_POLL_SECONDS)
            pauses += 1


def require_success(job: dict[str, Any]) -> dict[str, Any]:
    """The job if it succeeded; otherwise JobUnsuccessful (exit code 3) saying why."""
    if job["status"] == "succeeded":
        return job
    reason = problem_line(job["error"]) if job.get("error") else "no error recorded"
    raise JobUnsuccessful(f"job {job['id']} ({job['kind']}) {job['status']}: {reason}")


class ProgressView:
    """Renders a job's progress: redrawn in place on a terminal, appended lines elsewhere."""

    def __init__(self, stream: IO[str] | None = None, *, live: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream or sys.stdout
        self._live = self._stream.isatty() if live is None else live
        self._clock = clock
        self._first: tuple[float, int] | None = None  # (time, done) when progress was first seen
        self._last_line = ""
        self._width = 0
        self._open = False  # a live line drawn and not ended

    def __call__(self, job: dict[str, Any]) -> None:
        line = self.line(job)
        if self._live:
            self._width = max(self._width, len(line))
            self._stream.write("\r" + line.ljust(self._width))
            self._open = not is_terminal(job)
            if not self._open:
                self._stream.write("\n")
        elif line != self._last_line:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._last_line = line

    def end_line(self) -> None:
        """End a live line the follow left open (an error, Ctrl-C), so the ``plant: ...`` line
        said next starts a line of its own rather than trailing the bar."""
        if self._open:
            self._stream.write("\n")
            self._stream.flush()
            self._open = False

    def line(self, job: dict[str, Any]) -> str:
        progress = job.get("progress") or {}
        done, total, message = progress.get("done") or 0, progress.get("total"), progress.get("message")
        rate = self._rate(job["status"], done)
        parts = [f"{job['status']:<9}"]
        if total:
            fraction = min(done / total, 1.0)
            filled = int(fraction * BAR_WIDTH)
            parts += [f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}]", f"{done}/{total}", f"{fraction:4.0%}"]
        else:
            parts.append(f"{done} done")
        if rate is not None and not is_terminal(job):
            parts.append(f"{rate:.1f}/s")
            if total and rate > 0:
                parts.append(f"ETA {_duration(max(total - done, 0) / rate)}")
        if message:
            parts.append(message)
        return visible_text("  ".join(parts))  # the message is the job's: no control codes reach the terminal

    def _rate(self, status: str, done: int) -> float | None:
        """Items per second since progress was first seen, once there is any to measure."""
        now = self._clock()
        if status != "running" and self._first is None:
            return None
        if self._first is None:
            self._first = (now, done)
            return None
        started, done_then = self._first
        elapsed = now - started
        return (done - done_then) / elapsed if elapsed > 0 and done > done_then else None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"
