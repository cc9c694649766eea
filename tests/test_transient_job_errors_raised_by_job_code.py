"""A ``TransientJobError`` raised by a job's own code (its word that a dependency was
unavailable: "the job is retried, unless this was its last allowed attempt") is retried as a
lost connection is, with a backoff and within ``PLANT_JOB_MAX_ATTEMPTS``. Before, the runner
caught it as any ``PlantError`` first and failed the job on its first attempt. The runner runs
here against the real job table; republishing is recorded instead of sent."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from models.db import transaction
from models.errors import TransientJobError
from models.job_lifecycle import create_job, get_job
from tasks import runner, runtime
from tests.conftest import REPO_ROOT, SentTasks, child_env, stop_process_group, wait_for

MAX_ATTEMPTS = 3
TASK = "plant.diagnostics.sleep"


@pytest.fixture
def sessions(worker_sessions, settings, monkeypatch):
    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(update={"job_max_attempts": MAX_ATTEMPTS}))
    return worker_sessions


def _unavailable(claim, progress):
    progress(1, 2, "half way")
    raise TransientJobError("the embedding service did not answer")


def test_a_transient_error_job_code_raises_is_retried_until_the_attempts_run_out(sessions) -> None:
    with transaction(sessions) as session:
        job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}).id
    for attempt in range(1, MAX_ATTEMPTS):
        publisher = SentTasks(name=TASK)
        assert runner.run_job(publisher, str(job_id), _unavailable) == {
            "job_id": str(job_id), "status": "queued", "retry": attempt + 1}
        [(task_name, args, _, countdown)] = publisher.sent
        assert (task_name, args) == (TASK, [str(job_id)]) and countdown >= 0
        with sessions() as session:
            job = get_job(session, job_id)
        assert (job.status, job.attempts, job.error["type"]) == ("queued", attempt, "/problems/transient-error")
        assert job.error["detail"] == f"attempt {attempt}: the embedding service did not answer", job.error
    publisher = SentTasks(name=TASK)
    assert runner.run_job(publisher, str(job_id), _unavailable)["status"] == "failed"  # the last attempt allowed
    assert publisher.sent == []
    with sessions() as session:
        job = get_job(session, job_id)
    assert (job.status, job.attempts, job.error["type"]) == ("failed", MAX_ATTEMPTS, "/problems/transient-error")


def test_a_job_retried_after_a_transient_error_of_its_own_succeeds_on_its_next_attempt(sessions) -> None:
    with transaction(sessions) as session:
        job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}).id
    calls = []

    def unavailable_once(claim, progress):
        calls.append(claim.attempt)
        if len(calls) == 1:
            raise TransientJobError("the embedding service did not answer")
        return {"done": claim.attempt}

    assert runner.run_job(SentTasks(name=TASK), str(job_id), unavailable_once)["status"] == "queued"
    assert runner.run_job(SentTasks(name=TASK), str(job_id), unavailable_once)["status"] == "succeeded"
    with sessions() as session:
        job = get_job(session, job_id)
    assert (job.status, job.attempts, job.result, calls) == ("succeeded", 2, {"done": 2}, [1, 2])


def test_a_transient_error_job_code_raises_counts_as_transient_for_an_audit_chunk_too() -> None:
    """tasks/audit.py retries a chunk's message on what ``is_transient`` says."""
    assert runner.is_transient(TransientJobError("blip"))


@pytest.fixture
def worker_with_a_job_unavailable_once(settings, tmp_path):
    """A real worker (``tests/worker_with_a_transient_task.py``: Plant's worker app and one task more)
    consuming a queue of its own, for that task, and ``default``, where the retry goes."""
    from tasks.celery_app import create_celery

    queue = f"review-transient-{os.getpid()}"
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.worker_with_a_transient_task", "worker", "-Q", f"{queue},default",
             "-c", "1", "-n", f"review-transient-{os.getpid()}@%h", "--without-mingle", "--without-gossip",
             "--loglevel=INFO"],
            cwd=REPO_ROOT, env=child_env(settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    app = create_celery(settings)
    try:
        wait_for(lambda: process.poll() is not None or app.control.ping(timeout=0.5), timeout=60,
                 what="the worker to answer a ping")
        if process.poll() is not None:
            pytest.fail(f"worker exited early:\n{log_path.read_text()[-3000:]}")
        yield app, queue
    finally:
        stop_process_group(process)


def test_a_real_worker_retries_a_job_whose_code_raised_a_transient_error(
        worker_with_a_job_unavailable_once, engine, clean_db) -> None:
    """The first attempt raises; the runner gives the job back and sends it, through Redis, to
    its kind's task (``plant.diagnostics.sleep``), which the worker runs to success."""
    from models.db import make_session_factory
    from tests.worker_with_a_transient_task import TASK

    app, queue = worker_with_a_job_unavailable_once
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}).id
    app.send_task(TASK, args=[str(job_id)], queue=queue)

    def ended():
        with sessions() as session:
            job = get_job(session, job_id)
            return job if job.status in ("succeeded", "failed", "cancelled") else None

    job = wait_for(ended, timeout=60, what="the job to end")
    assert (job.status, job.attempts) == ("succeeded", 2), (job.status, job.attempts, job.error)
