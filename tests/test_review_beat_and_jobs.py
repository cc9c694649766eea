"""Review of beat's hourly tasks and the job lifecycle: the purge and the digest run whatever the
clocks of beat's and the workers' hosts say, and copies of them that piled up return at once; a
job's outcome, claim, republish and error read true after a lost connection or a refused publish."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from models.audit_tables import LedgerDigest
from models.idempotency import IdempotencyKey
from tests.conftest import refused_port, wait_for

HOURS = dt.timedelta(hours=1)


def _run_keys_cleared(redis_client: redis.Redis) -> None:
    from tasks.beat_runs import RUN_KEY_PREFIX

    for key in redis_client.scan_iter(f"{RUN_KEY_PREFIX}*"):
        redis_client.delete(key)


def _expired_key(session: Session) -> tuple[str, str]:
    owner, key = "review", uuid.uuid4().hex
    past = dt.datetime.now(dt.UTC) - HOURS
    session.add(IdempotencyKey(owner=owner, key=key, request_hash=bytes(32), expires_at=past))
    return owner, key


def _digests(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(LedgerDigest))


@pytest.mark.parametrize("entry", ["purge-idempotency-keys", "ledger-digest"])
def test_an_hourly_task_sent_by_a_beat_whose_clock_lags_the_workers_by_two_hours_still_runs(
    settings, worker, engine, clean_db, redis_client, monkeypatch, entry
) -> None:
    # Each carried `expires` of one interval, which Celery dates by beat's clock and the worker
    # judges by its own: a worker more than an hour ahead of beat dropped every purge and digest.
    from tasks.celery_app import create_celery
    from worker.schedule import beat_schedule

    _run_keys_cleared(redis_client)
    with Session(engine) as session, session.begin():
        owner, key = _expired_key(session)
    beat = create_celery(settings)
    monkeypatch.setattr(beat, "now", lambda: dt.datetime.now(dt.UTC) - 2 * HOURS)
    sent = beat_schedule(settings)[entry]
    beat.send_task(sent["task"], args=sent.get("args"), kwargs=sent.get("kwargs"), **sent.get("options", {}))

    def done() -> bool:
        if entry == "ledger-digest":
            return _digests(engine) == 1
        with Session(engine) as session:
            return session.get(IdempotencyKey, (owner, key)) is None

    wait_for(done, timeout=20, what=f"beat's {entry} to run on the worker")


def test_purges_that_piled_up_behind_busy_workers_run_once(worker_sessions, settings, redis_client, monkeypatch) -> None:
    from models.db import transaction
    from tasks import runtime
    from tasks.maintenance import purge_idempotency_keys

    monkeypatch.setattr(runtime, "settings", lambda: settings)
    monkeypatch.setattr(runtime, "redis_client", lambda: redis_client)
    _run_keys_cleared(redis_client)
    purge = purge_idempotency_keys._get_current_object()
    with transaction(worker_sessions) as session:
        _expired_key(session)
    assert purge.run() == {"purged": 1}
    with transaction(worker_sessions) as session:
        left = _expired_key(session)
    assert purge.run() == {"skipped": "a purge ran within a tenth of an interval"}
    with worker_sessions() as session:
        assert session.get(IdempotencyKey, left) is not None  # the piled-up copy did no work


def test_digests_that_piled_up_behind_busy_workers_store_one_digest(
    worker_sessions, settings, engine, redis_client, monkeypatch
) -> None:
    from tasks import runtime
    from tasks.audit import ledger_store_digest

    monkeypatch.setattr(runtime, "settings", lambda: settings)
    monkeypatch.setattr(runtime, "redis_client", lambda: redis_client)
    _run_keys_cleared(redis_client)
    digest = ledger_store_digest._get_current_object()
    assert "digest_id" in digest.run()
    assert digest.run() == {"skipped": "a digest ran within a tenth of an interval"}
    assert _digests(engine) == 1


def test_a_beat_run_holds_off_copies_while_it_runs_and_lets_go_when_it_fails(redis_client, monkeypatch) -> None:
    from tasks import runtime
    from tasks.beat_runs import beat_run, run_key

    monkeypatch.setattr(runtime, "redis_client", lambda: redis_client)
    _run_keys_cleared(redis_client)
    with beat_run("review", 3600.0) as first, beat_run("review", 3600.0) as second:
        assert first and not second  # a copy taken by another worker slot meanwhile
    with pytest.raises(RuntimeError), beat_run("review-fails", 3600.0) as due:
        assert due
        raise RuntimeError("the work failed: its retry, or the next copy, must run")
    with beat_run("review-fails", 3600.0) as due:
        assert due
    assert 0 < redis_client.pttl(run_key("review-fails")) <= 360_000  # a tenth of the interval, by Redis's clock


def test_a_beat_run_that_cannot_reach_redis_runs(monkeypatch) -> None:
    from tasks import runtime
    from tasks.beat_runs import beat_run

    with refused_port() as port:
        monkeypatch.setattr(runtime, "redis_client", lambda: redis.Redis(port=port, socket_connect_timeout=1))
        with beat_run("review", 3600.0) as due:
            assert due
