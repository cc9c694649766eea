"""Found by the re-review of stop 40's changes: an audit planned before migration 0024 keeps its lease, a watchdog leader reaped mid-read counts as gone, a dangling retired-keys link is refused.

Real PostgreSQL throughout (the suite's embedded server).
"""

from __future__ import annotations

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from models.audit_chunks import keep_waiting_audits_leased
from models.audit_tables import AuditRun
from models.jobs import Job
from tests.test_audit_leases_and_worker_lost import running_audit


def test_an_audit_planned_by_a_release_before_0024_is_still_kept_leased_while_its_chunks_wait(
        engine, keyring, committed_steward) -> None:
    """Migration 0024 adds ``chunks_published_attempt`` empty to every run, and a release before
    it (an audit worker not yet replaced in a rolling rollout) plans runs without writing it: such
    a run's chunks are on the queue all the same. Renewing only runs whose record names the
    current attempt took every audit in flight at the upgrade for a dead worker's once its lease
    ran out behind another audit (an attempt counted, worker-lost). A run this release plans
    starts at 0 (no message yet), which is still not renewed until its chunks are published."""
    with Session(engine) as session, session.begin():
        me = running_audit(session, keyring, worker="me").job_id
    with Session(engine) as session, session.begin():
        legacy = running_audit(session, keyring, worker="old-release", published=False).job_id
        unpublished = running_audit(session, keyring, worker="killed-after-planning", published=False).job_id
        session.execute(update(AuditRun).where(AuditRun.job_id == legacy).values(chunks_published_attempt=None))
        session.execute(update(Job).where(Job.id.in_([legacy, unpublished])).values(
            lease_expires_at=text("clock_timestamp() + interval '10 seconds'")))
    with Session(engine) as batch, batch.begin():
        keep_waiting_audits_leased(batch, job_id=me, lease_seconds=300)
    with Session(engine) as session:
        left = dict(session.execute(select(Job.id, Job.lease_expires_at - func.clock_timestamp())
                                    .where(Job.id.in_([legacy, unpublished]))).all())
        planned = session.scalar(select(AuditRun.chunks_published_attempt).where(AuditRun.job_id == unpublished))
    assert left[legacy].total_seconds() > 250, left
    assert left[unpublished].total_seconds() < 11 and planned == 0, (left, planned)


def test_a_leader_that_exits_while_its_stat_is_read_counts_as_gone(monkeypatch) -> None:
    """cli/watchdog.py::process_started reads /proc/<pid>/stat: opened while the process lived
    and read once it was reaped, the read fails with ESRCH (ProcessLookupError), not
    FileNotFoundError. It escaped ``leader_running`` and ``kill_group`` (which catch psutil's
    errors only), and the watchdog stopped no batch after it."""
    import os
    import signal
    from pathlib import Path

    from cli import watchdog

    real = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if str(path).startswith("/proc/") and str(path).endswith("/stat") and "self" not in str(path):
            raise ProcessLookupError(3, "No such process")
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    killed: list[int] = []
    monkeypatch.setattr(watchdog.os, "killpg", lambda pid, sig: killed.append(pid))
    gone = watchdog.Watched("api", os.getpid(), 1.0, signal.SIGTERM, 0.0)
    assert gone.leader_running() is False
    gone.kill_group()  # what is left of its group is killed: the leader's number was not seen reused
    assert killed == [os.getpid()]


def test_a_retired_keys_path_that_is_a_dangling_link_is_refused_at_start(tmp_path) -> None:
    """docs/guarantees.md: "a retired-keys path that is not a directory stops the process at
    start". A symbolic link whose target is gone (a volume not mounted, a secret path renamed)
    is no directory, yet ``exists()`` is False for it and it read as "no key retired so far":
    every chain a retired key signed then passed for tampered, and every seal was gone."""
    import pytest

    from models.errors import SigningKeyError
    from models.keys import keyring_from_settings
    from models.settings import load_settings
    from models.key_material import generate_ed25519

    active = tmp_path / "active.pem"
    active.write_bytes(generate_ed25519().private_pem())
    active.chmod(0o600)
    retired = tmp_path / "retired"
    retired.symlink_to(tmp_path / "mount-that-is-not-there")
    with pytest.raises(SigningKeyError, match="not a directory"):
        keyring_from_settings(load_settings(signing_key_file=active, retired_signing_keys_dir=retired))
