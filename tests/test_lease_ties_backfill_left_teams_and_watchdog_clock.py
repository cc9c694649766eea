"""Found by the re-review of stop 39's changes (7029a14..d704114): audits published in one
statement keep each other leased, migration 0023's backfill passes over a version too deep to
parse, the incremental audit judges the team an agent left, and the dev runner's watchdog
knows its processes after the system clock was set.

Each test proves a finding on real PostgreSQL (or the real object).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy.orm import Session

from models.audit_chunks import record_chunks_published
from models.audit_runs import start_run
from models.job_lifecycle import claim_job, create_job
from models.job_recovery import claim_unpublished
from tests.conftest import EMBEDDER
from tests.test_audit_leases_and_worker_lost import renewal_of


def test_audits_the_outbox_published_in_one_statement_keep_each_other_leased(engine, keyring, committed_steward) -> None:
    """bd4e912: a batch renews the audits "published after" its own, by ``enqueued_at``. The
    sweeps stamp every job they publish in one UPDATE with ``now()`` (the outbox after a Redis
    outage, the lost-message and lapsed-lease sweeps), and publish them in RETURNING's order,
    which nothing fixes: two audits stamped together have the same time, and ``>`` renewed
    neither. The one whose chunks queued behind the other's lost its lease while it waited,
    alive, and the sweep took it for a dead worker's (attempts spent, worker-lost)."""
    ids = []
    for _ in range(2):  # submitted while Redis was away: both in the outbox, created apart
        with Session(engine) as session, session.begin():
            ids.append(create_job(session, kind="audit.run", queue="audit", params={"verify_signatures": "heads"}).id)
    with Session(engine) as session, session.begin():  # beat's outbox sweep publishes both at once
        assert {ref.job_id for ref in claim_unpublished(session, min_age=dt.timedelta(0))} >= set(ids)
    for job_id in ids:
        with Session(engine) as session, session.begin():
            claim = claim_job(session, job_id=job_id, worker=f"w-{job_id}", lease_seconds=300)
            assert claim is not None
            run = start_run(session, job_id=job_id, params=claim.params, keyring=keyring, embedder=EMBEDDER,
                            chunk_entities=1000)
            record_chunks_published(session, run_id=run.id, attempt=claim.attempt)
    first, second = ids
    for waiting, running in ((second, first), (first, second)):  # either may be the one queued behind
        renewed, left = renewal_of(engine, waiting=waiting, running=running)
        assert renewed == 1 and left > 250, (renewed, left)


def test_0023_passes_over_a_version_nested_too_deep_to_parse(make_database) -> None:
    """Migration 0023 reads every skill version naming a certificate id "in Python: a version
    row INSERTed through SQL may hold bytes that are no JSON, and must not stop the upgrade".
    It caught ValueError and AttributeError only: JSON nested deeper than Python's parser
    recurses (valid JSON all the same) raised RecursionError, and the upgrade stopped."""
    import psycopg

    from alembic import command

    from models.migrate import alembic_config, upgrade_head

    url = make_database("plant_review_stop39_migrations")
    command.upgrade(alembic_config(url), "0022")
    deep = b'{"certificate": {"certificate_id": "SKILL-GEN-004"}, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("INSERT INTO entity_versions (entity_type, entity_id, version, content, content_hash, prev_link, "
                     "link_hash, kid, signature, actor) VALUES ('skill', %s, 1, %s, %s, %s, %s, 'k', 's', 'test')",
                     (uuid.uuid4(), deep, bytes(32), bytes(32), (1).to_bytes(32, "big")))
        upgrade_head(url)
        assert conn.execute("SELECT count(*) FROM issued_certificates").fetchone() == (0,)


def test_the_team_an_agent_left_since_the_digest_is_judged(db_session, write_ctx, steward, keyring) -> None:
    """ca03510: the incremental audit judges "the seats a changed team, role or agent bears on",
    the teams of the agents changed since the digest among them, but only the team each sits in
    now. A team whose last agent was unseated since (a plain Plant write) has no agent: the full
    audit warns TEAM-01 on it; the incremental audit examined the agent alone and said nothing."""
    from models.entities import EntityType
    from models.ledger_store import store_digest
    from models.registry import update_entity
    from tests.test_audit import run_audit, run_incremental
    from tests.test_seat_rules import seat_world

    world = seat_world(db_session, write_ctx, steward)
    store_digest(db_session, keyring=keyring)
    update_entity(db_session, entity_type=EntityType.AGENT, entity_id=world.agent.id, changes={"team_id": None},
                  ctx=write_ctx)
    db_session.flush()

    def warned(findings: list) -> list:
        return sorted((f.entity_id, f.rule_id) for f in findings if f.code == "rule-warning")

    assert warned(run_audit(db_session, keyring)[1]) == [(world.team.id, "TEAM-01")]
    summary, findings = run_incremental(db_session, keyring)
    assert warned(findings) == [(world.team.id, "TEAM-01")]
    assert summary["total_entities"] == 2 and summary["entities_with_findings"] == 1


def _procfs_with_boot_time_moved(root, seconds: int, pid: int):
    """A procfs for psutil (``psutil.PROCFS_PATH``) that is the real one but for /proc/stat's
    ``btime``, moved as a step of the system clock moves it (Linux derives btime from the wall
    clock: an NTP step, a ``date -s``, a VM's clock set after a pause)."""
    import os
    from pathlib import Path

    root = Path(root)
    lines = Path("/proc/stat").read_text().splitlines()
    (root / "stat").write_text("\n".join(f"btime {int(line.split()[1]) + seconds}" if line.startswith("btime ")
                                         else line for line in lines) + "\n")
    for name in ("self", str(pid), str(os.getpid())):
        (root / name).symlink_to(Path("/proc") / name)
    return str(root)


def test_the_watchdog_knows_a_leader_after_the_system_clock_was_set(tmp_path, monkeypatch) -> None:
    """cli/watchdog.py knows a group's leader by pid and ``psutil.Process.create_time()``, read
    once by the runner and again by the watchdog when the runner is gone. psutil computes it on
    Linux from the process's start in ticks since boot plus /proc/stat's btime, which follows the
    wall clock: set between the two readings (NTP stepping it), every leader looked like another
    process's, so the watchdog signalled none and swept no group, and the stack stayed up."""
    import os
    import signal
    import subprocess
    import time

    import psutil

    from cli.watchdog import Watchdog, read_list, stop_listed

    leader = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        read_fd, write_fd = os.pipe()
        Watchdog(leader, write_fd).watch("apps", leader, signal.SIGTERM, 5.0)  # the runner names it
        os.close(write_fd)  # the runner is gone
        with os.fdopen(read_fd, "rb") as pipe:
            listed = read_list(iter(pipe))  # as the watchdog reads it
        monkeypatch.setattr(psutil, "PROCFS_PATH", _procfs_with_boot_time_moved(tmp_path, 1, leader.pid))
        stop_listed(listed)
        deadline = time.monotonic() + 10
        while leader.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leader.poll() is not None, "the watchdog took its runner's leader for another process"
    finally:
        leader.kill()
        leader.wait()
