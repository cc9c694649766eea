"""A database that vanishes under a pooled connection is found dead within the keepalive window,
and a job whose write a read-only database refuses goes back to the queue (stop 37's last review)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.socket_forward import forward_connections

REPO = Path(__file__).resolve().parent.parent


def _unix_to_tcp_forwarder(path: str, host: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    forward_connections(listener, lambda: socket.create_connection((host, port)))
    return listener


def _can_unshare_network() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare_network(), reason="needs unshare -n and ip (root)")
def test_a_pooled_connection_whose_server_host_vanished_is_found_dead_within_the_keepalive_window(
        settings, tmp_path) -> None:
    """Finding 1. TCP keepalive probes are sent only while nothing sent is unacknowledged: a
    pooled connection's next statement (or the pool's ping) to a host that vanished while it
    sat idle is retransmitted for tcp_retries2 (about 15 minutes), and keepalives never fire.
    The guarantee says such a connection is found dead within about a minute. Scaled x15 here:
    the keepalive window is ~4 s, so the statement must fail well within 10 s."""
    url = make_url(settings.database_url)
    if url.host in (None, "") or str(url.host).startswith("/"):
        pytest.skip("the test database is reached over a Unix socket")
    path = str(tmp_path / "pg.sock")
    listener = _unix_to_tcp_forwarder(path, url.host, url.port or 5432)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run(["unshare", "-n", sys.executable, str(REPO / "tests" / "vanished_host_child.py"),
                               path, settings.database_url, "10"],
                              capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    finally:
        listener.close()
    print(done.stdout, done.stderr[-2000:])
    assert done.stdout.startswith("failed after"), done.stdout + done.stderr[-2000:]


def test_a_job_whose_write_a_read_only_database_refused_goes_back_to_the_queue(worker_sessions, settings, monkeypatch) -> None:
    """Finding 2. The API answers a write a read-only database refused with 503 and Retry-After
    (an outage, retry); a job's runner called the same refusal a bug and failed the job for good
    (internal-error) as soon as its outcome write got through, where a lost connection at the
    same moment would have been retried (transient-error)."""
    from models.db import transaction
    from models.job_lifecycle import claim_job, create_job
    from models.jobs import Job, JobStatus
    from tasks import runner, runtime
    from tests.conftest import SentTasks

    monkeypatch.setattr(runtime, "settings", lambda: settings)
    sessions = worker_sessions
    with transaction(sessions) as session:
        job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}, to_publish=True).id
    with transaction(sessions) as session:
        claim = claim_job(session, job_id=job_id, worker="w", lease_seconds=60)

    def write_refused_as_read_only(claim, progress):  # what a standby or default_transaction_read_only answers
        with sessions() as session, session.begin():
            session.execute(text("SET TRANSACTION READ ONLY"))
            session.execute(text("UPDATE jobs SET worker = worker WHERE id = :id"), {"id": claim.job_id})

    attempt = runner._execute(claim, write_refused_as_read_only, None)
    if attempt.retry_after is not None:
        runner._retry_later(SentTasks(), claim, attempt)
    else:
        runner.record_outcome(claim, attempt.status, attempt.result, attempt.error)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.error["type"]) == (JobStatus.QUEUED.value, "/problems/transient-error"), job.error
