"""The benchmark's own judgements: a result that cannot fail proves nothing (helper-71)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest

from bench.harness import BenchResult
from models.assignment_solver import AssignmentProblem, solve_assignment


def test_at_least_never_passes_against_a_baseline_of_zero_or_below() -> None:
    """-10 / -5 is 2: a worse negative total passed against a better one."""
    assert not BenchResult.at_least("x", -10.0, "total", baseline=-5.0, min_ratio=1.0).passed
    assert not BenchResult.at_least("x", 1.0, "total", baseline=0.0, min_ratio=1.0).passed
    assert BenchResult.at_least("x", 10.0, "total", baseline=5.0, min_ratio=1.0).passed


@pytest.mark.parametrize("applied", [{"placed": 0, "total_similarity": 0.0}, None], ids=["seats nobody", "as planned"])
def test_the_bulk_scenario_fails_when_its_job_applies_less_than_its_plan(monkeypatch, applied) -> None:
    """The scenario judged a plan it computed itself and never what the job applied."""
    from bench.scenarios import bulk_assignment as scenario

    rng = np.random.default_rng(0)
    problem = AssignmentProblem(rng.standard_normal((20, 4)), rng.standard_normal((4, 4)), [5] * 4, [[0, 1, 2, 3]] * 20)
    solved = solve_assignment(problem)
    plan = SimpleNamespace(problem=problem, total_similarity=solved.total_similarity, method=solved.method,
                           placements=solved.placements)
    outcome = applied or {"placed": len(plan.placements), "total_similarity": solved.total_similarity}

    class NoRows:
        def execute(self, *a, **k):
            return SimpleNamespace(scalar=lambda: 0)

    stack = SimpleNamespace(session=lambda settings: contextlib.nullcontext(NoRows()),
                            start_worker=lambda *a, **k: None, stop=lambda *a, **k: None, settle=lambda settings: None)
    monkeypatch.setattr(scenario, "build", lambda *a: "settings")
    monkeypatch.setattr(scenario, "plan_assignment", lambda *a, **k: plan)
    monkeypatch.setattr(scenario, "_reset", lambda *a: None)
    monkeypatch.setattr(scenario, "run_job_to_end", lambda *a, **k: (1.0, {"requested": 20, **outcome}))
    wall = next(r for r in scenario.run(stack, quick=True) if r.scenario.startswith("bulk_assign.wall"))
    assert wall.passed == (applied is None)


def test_the_audit_s_peak_memory_is_the_kernel_s_high_water_mark_of_each_process(monkeypatch) -> None:
    """A peak between two samples was missed: the sampler saw only the RSS of the moment."""
    import subprocess
    import sys

    from bench.scenarios.audit import PeakRss

    child = subprocess.Popen([sys.executable, "-c", (
        "import sys\n"
        "sys.stdin.readline()\n"
        "held = bytearray(150 * 2**20); held[::4096] = b'x' * len(held[::4096]); del held\n"
        "print('freed', flush=True)\n"
        "sys.stdin.readline()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        sampler = PeakRss(child.pid)
        sampler.INTERVAL_SECONDS = 3600  # no sample but the last
        with sampler:
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "freed\n"  # 150 MB touched and given back before any sample
        assert sampler.peak_mb >= 150
        with PeakRss(child.pid) as again:  # reset as it starts: the earlier peak is not this block's
            pass
        assert again.peak_mb < 100
        from bench.scenarios import audit

        monkeypatch.setattr(audit, "_reset_high_water_mark", lambda _pid: False)
        with PeakRss(child.pid) as unreset:  # a mark that could not be reset is not read at all
            pass
        assert unreset.peak_mb < 100
    finally:
        child.kill()
        child.wait()


def test_the_copy_baseline_runs_its_server_process_and_its_reader_on_cores_of_their_own(settings) -> None:
    """Left to the scheduler they sometimes shared a core, and the baseline moved by 40 %."""
    import os

    import psutil
    import psycopg

    from bench.scenarios.audit import cores_apart
    from models.settings import libpq_url

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: nothing to place")
    if os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("the bench's server is its own, local; a shared one may be neither")
    ours = os.sched_getaffinity(0)
    with psycopg.connect(libpq_url(settings.database_url)) as conn:
        backend = psutil.Process(conn.info.backend_pid)
        theirs = backend.cpu_affinity()
        with cores_apart(conn) as apart:
            assert apart
            assert len(backend.cpu_affinity()) == 1 and len(os.sched_getaffinity(0)) == 1
            assert set(backend.cpu_affinity()).isdisjoint(os.sched_getaffinity(0))
        assert os.sched_getaffinity(0) == ours and backend.cpu_affinity() == theirs
        # What another host's server looks like: its pid names some process here, not the one
        # at the other end of the socket (this one). Left alone.
        elsewhere = SimpleNamespace(info=SimpleNamespace(backend_pid=os.getpid()), pgconn=conn.pgconn)
        with cores_apart(elsewhere) as apart:
            assert not apart and os.sched_getaffinity(0) == ours


def test_settled_data_leaves_nothing_for_postgres_or_the_kernel_to_write_during_a_measurement(settings,
                                                                                             monkeypatch) -> None:
    """The load's dirty pages, written back by the kernel over the next half minute, slowed
    the raw COPY baseline by 40 %."""
    import os
    from types import SimpleNamespace

    import psycopg

    from bench.harness import BenchStack
    from models.settings import libpq_url

    if os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("the bench's server is its own, where it may CHECKPOINT; a shared one may not let it")

    def last_checkpoint() -> str:  # a manual CHECKPOINT always writes a new one
        with psycopg.connect(libpq_url(settings.database_url), autocommit=True) as conn:
            return str(conn.execute("SELECT checkpoint_lsn FROM pg_control_checkpoint()").fetchone()[0])

    synced: list[str] = []
    monkeypatch.setattr(os, "sync", lambda: synced.append(last_checkpoint()))
    before = last_checkpoint()
    BenchStack.settle(SimpleNamespace(), settings)
    assert len(synced) == 1 and synced[0] != before  # the kernel's write-back after PostgreSQL's
