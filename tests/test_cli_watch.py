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


def _through_outage(errors: list, final: dict):
    """A client whose job polls raise ``errors`` one by one, then answer ``final``."""
    from cli.client import PlantClient, ClientConfig

    import httpx

    answers = iter([*errors, final])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, int):
            return httpx.Response(answer, json={"title": "Service Unavailable", "status": answer})
        return httpx.Response(200, json=answer)

    pauses: list[float] = []
    client = PlantClient(ClientConfig("http://plant.invalid", "k", None), transport=httpx.MockTransport(handler),
                         sleep=pauses.append)
    return client, pauses


def test_following_a_job_polls_on_through_an_api_restart(capsys) -> None:
    """`--wait` and `jobs watch` exited 1 when the API did not answer for a moment (a deploy
    restarting it), though the job went on: a CI step read that as the job's failure. The
    follow keeps polling through such an outage, saying so on stderr."""
    import httpx

    from cli.watch import OUTAGE_POLL_SECONDS, follow

    refused = httpx.ConnectError("connection refused")
    client, pauses = _through_outage([refused, refused, 502], job("succeeded", 10))
    done = follow(client, job("running", 1))
    assert done["status"] == "succeeded"
    assert pauses.count(OUTAGE_POLL_SECONDS) >= 3
    said = capsys.readouterr().err.splitlines()
    assert len([line for line in said if "goes on: polling again" in line]) == 3, said


def test_following_a_job_gives_up_on_an_outage_that_lasts_or_on_a_refusal() -> None:
    import httpx
    import pytest

    from cli.client import ApiError
    from cli.watch import OUTAGE_POLL_SECONDS, OUTAGE_SECONDS, follow

    tries = int(OUTAGE_SECONDS / OUTAGE_POLL_SECONDS) + 1
    client, _ = _through_outage([httpx.ConnectError("refused")] * tries, job("succeeded", 10))
    with pytest.raises(ApiError, match="cannot reach"):
        follow(client, job("running", 1))
    client, pauses = _through_outage([404], job("succeeded", 10))  # not an outage: the job is gone
    with pytest.raises(ApiError):
        follow(client, job("running", 1))
    assert pauses == []
    client, pauses = _through_outage([], {"html": "a proxy's page"})  # an answer that is no job will not mend
    with pytest.raises(ApiError, match="Plant API"):
        follow(client, job("running", 1))
    assert pauses == []


def test_an_outage_line_does_not_glue_onto_a_live_progress_line(capsys) -> None:
    import httpx

    from cli.watch import follow

    screen = io.StringIO()
    client, _ = _through_outage([httpx.ConnectError("refused")], job("succeeded", 10))
    follow(client, job("running", 1), ProgressView(screen, live=True))
    drawn = screen.getvalue()
    assert drawn.startswith("\rrunning") and "\n\rsucceeded" in drawn, repr(drawn)  # the bar ended before the line
