"""The sleep job's domain logic, with a recorded clock instead of real sleeping."""

import pytest

from models.diagnostics import sleep_in_steps
from models.errors import JobCancelled


def test_reports_each_step_and_checks_in_during_long_steps() -> None:
    slept, reports = [], []
    result = sleep_in_steps(seconds=5, steps=2, progress=lambda d, t, m=None: reports.append((d, t)),
                            sleep=slept.append)
    assert result.slept == 5
    assert sum(slept) == pytest.approx(5)
    assert max(slept) <= 1.0
    assert reports[0] == (0, 2) and reports[-1] == (2, 2)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)


def test_a_cancelling_sink_stops_the_work() -> None:
    calls = []

    def sink(done, total, message=None):
        calls.append(done)
        if done == 1:
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        sleep_in_steps(seconds=3, steps=3, progress=sink, sleep=lambda s: None)
    assert calls == [0, 1]
