"""How ``plant jobs watch`` draws progress: in place on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from cli.watch import ProgressView


def job(status: str, done: int, total: int | None = 10, message: str | None = None) -> dict:
    return {"id": "j", "kind": "audit.run", "status": status, "progress": {"done": done, "total": total, "message": message}}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_gets_one_line_redrawn_with_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    view = ProgressView(out, live=True, clock=clock)
    view(job("queued", 0))
    view(job("running", 0))
    clock.now += 2
    view(job("running", 4, message="batch 2"))
    assert view.line(job("running", 4)).split() == ["running", "[###########-----------------]", "4/10", "40%", "2.0/s", "ETA", "0:03"]
    view(job("succeeded", 10))
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "2.0/s  ETA 0:03  batch 2" in text
    assert text.rstrip().endswith("succeeded  [############################]  10/10  100%")


def test_a_pipe_gets_a_line_per_change_and_no_carriage_returns() -> None:
    out, clock = io.StringIO(), Clock()
    view = ProgressView(out, live=False, clock=clock)
    for state in (job("running", 0, None), job("running", 0, None), job("running", 3, None), job("failed", 3, None)):
        clock.now += 1
        view(state)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split()[:3] for line in lines] == [["running", "0", "done"], ["running", "3", "done"], ["failed", "3", "done"]]
    assert lines[1].endswith("1.5/s")  # 3 done in the 2 s since progress was first seen; no total, no ETA


def test_following_a_job_paces_polls_the_server_answers_before_their_wait(monkeypatch) -> None:
    """A server whose long-poll slots are all taken answers ``?wait=1`` at once (README, Jobs):
    the CLI then waits out the rest of the second itself instead of asking again at once."""
    import cli.watch as watch

    answers = iter([job("running", 1), job("running", 2), job("succeeded", 10)])
    slept: list[float] = []

    class AnswersAtOnce:
        def job(self, job_id: str, *, wait: float = 0) -> dict:
            assert wait == watch.POLL_WAIT_SECONDS
            return next(answers)

    monkeypatch.setattr(watch.time, "sleep", slept.append)
    assert watch.follow(AnswersAtOnce(), job("queued", 0))["status"] == "succeeded"  # type: ignore[arg-type]
    assert len(slept) == 2 and all(0.9 < s <= watch.POLL_WAIT_SECONDS for s in slept), slept
