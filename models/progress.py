"""The progress contract between long-running domain work and whoever runs it.

Domain functions report through a :class:`ProgressSink`; the task layer supplies one
that records progress on the job row, renews its lease, and raises ``JobCancelled``
when a cancel was requested. That keeps domain code free of Celery and of sessions it
does not own.
"""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    def __call__(self, done: int, total: int | None, message: str | None = None) -> None:
        """Record progress; may raise ``JobCancelled`` to stop the work at this point."""
