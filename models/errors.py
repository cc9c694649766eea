"""Domain exceptions: one place, no HTTP.

Each exception carries a stable ``code`` slug and a human ``title``; ``web`` maps the
classes to HTTP status codes and RFC 9457 problem documents, and workers store the same
shape in a failed job's ``error`` column via :meth:`PlantError.problem`.
"""

from __future__ import annotations

from typing import Any

PROBLEM_TYPE_PREFIX = "/problems/"


class PlantError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "plant-error"
    title = "Plant error"

    def __init__(self, detail: str = "", **extensions: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extensions = extensions

    def problem(self, status: int | None = None) -> dict[str, Any]:
        """The RFC 9457 problem object for this error (``status`` added when known)."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.code,
            "title": self.title,
            "detail": self.detail,
            **self.extensions,
        }
        if status is not None:
            body["status"] = status
        return body


class NotFound(PlantError):
    code = "not-found"
    title = "Not found"


class InvalidInput(PlantError):
    code = "invalid-input"
    title = "Invalid input"


class Conflict(PlantError):
    code = "conflict"
    title = "Conflict"


class JobNotCancellable(Conflict):
    code = "job-not-cancellable"
    title = "Job is already finished"


class JobCancelled(PlantError):
    """Raised inside a running job at a checkpoint after a cancel was requested."""

    code = "job-cancelled"
    title = "Job cancelled"


class StaleAttempt(PlantError):
    """A write from an attempt that no longer owns the job (fencing token mismatch)."""

    code = "stale-attempt"
    title = "Stale job attempt"


class JobTimedOut(PlantError):
    code = "job-timed-out"
    title = "Job exceeded its time limit"


class InternalJobError(PlantError):
    code = "internal-error"
    title = "Internal error"
