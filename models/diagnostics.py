"""The ``diagnostics.sleep`` job: a real job with no domain side effects.

It exists to check a deployment end to end (API -> row -> broker -> worker -> row) and
to benchmark the pipeline. It sleeps in ``steps`` slices and reports after each; within
a slice it checks in at least once a second, so a cancel is honoured promptly even for
one long step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from models.progress import ProgressSink

MAX_SECONDS = 3599.0  # a second below the default soft time limit (PLANT_JOB_SOFT_TIME_LIMIT, 3600 s)
CHECK_IN_SECONDS = 1.0


@dataclass(frozen=True)
class SleepResult:
    slept: float


def sleep_in_steps(
    *,
    seconds: float,
    steps: int,
    progress: ProgressSink,
    sleep: Callable[[float], None] = time.sleep,
) -> SleepResult:
    """Sleep ``seconds`` in ``steps`` equal slices, reporting ``done/steps`` after each."""
    progress(0, steps, "starting")
    per_step = seconds / steps
    for step in range(1, steps + 1):
        remaining = per_step
        while remaining > CHECK_IN_SECONDS:
            sleep(CHECK_IN_SECONDS)
            remaining -= CHECK_IN_SECONDS
            progress(step - 1, steps, f"step {step} of {steps}")
        if remaining > 0:
            sleep(remaining)
        progress(step, steps, f"slept {step} of {steps} steps")
    return SleepResult(slept=seconds)
