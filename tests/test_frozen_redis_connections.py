"""A Redis that takes a worker's or beat's connections and stops answering without closing them
(paused, a network dropping their packets, a NAT that forgot them) no longer holds the process
for good: each read from the broker waits ``PLANT_BROKER_READ_TIMEOUT_SECONDS`` at most (2 s
here, 10 s by default), and the process carries on over fresh connections.

The processes reach Redis through a :class:`tests.socket_forward.Forwarder`; ``freeze()`` stops
every connection open at that moment for good (nothing passes, nothing is closed) while new
connections pass, as they would once a client reconnects. Each test uses Redis database 7 (the
chaos stacks'), so the suite's shared worker on database 0 takes none of its messages.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.conftest import wait_for
from tests.socket_forward import Forwarder
from tests.stack import ChaosStack
from web import create_app

pytestmark = pytest.mark.e2e
SLEEP = "/api/v1/diagnostics/sleep"
DB = 7
# PLANT_BROKER_READ_TIMEOUT_SECONDS for the processes here: kombu's checks of their long-lived
# connections run at the same interval. Shorter than the default (10 s), so the test is quick.
READ_TIMEOUT = HEALTH_CHECK = 2.0
FAST_BROKER = {"PLANT_BROKER_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT)}
# kombu drops a BRPOP connection whose reply is overdue by its poll (1 s) plus the health-check
# interval, checking once an interval; a read of a frozen connection gives up after READ_TIMEOUT;
# what is left is reconnecting and the recovery sweep republishing the message the frozen BRPOP
# took (every 0.5 s here).
RECOVERY_BOUND = 1 + 2 * HEALTH_CHECK + 2 * READ_TIMEOUT + 10


def _redis_url(url: str, port: int) -> str:
    """``url`` (its password kept) to database DB on 127.0.0.1:``port``."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}",
                                     path=f"/{DB}"))


@pytest.fixture
def forwarder(settings):
    target = urlsplit(settings.redis_url)
    forwarder = Forwarder.to_tcp(target.hostname, target.port)
    yield forwarder
    forwarder.close()


@pytest.fixture
def direct_url(settings) -> str:
    url = _redis_url(settings.redis_url, urlsplit(settings.redis_url).port)
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    yield url
    with redis.Redis.from_url(url) as client:
        client.flushdb()


def _log(stack: ChaosStack, name: str) -> str:
    return (stack.log_dir / f"{name}.log").read_text()


def test_a_worker_whose_redis_connections_freeze_goes_on_consuming(settings, admin_key, tmp_path: Path, forwarder,
                                                                   direct_url) -> None:
    """Without a read timeout the worker's event loop sat for good in the reply to its next
    heartbeat (a PUBLISH on a frozen connection): no job ran again, and kombu's own check of the
    frozen BRPOP never got a turn. Before the freeze, jobs longer than the read timeout with the
    worker's every slot busy (its BRPOP paused, its subscription idle) run and are acked without
    a reconnection: the timeout bounds only replies, not idle waits."""
    worker = ChaosStack(settings, tmp_path, redis_url=_redis_url(settings.redis_url, forwarder.port), **FAST_BROKER)
    recovery = ChaosStack(settings, tmp_path / "beat", redis_url=direct_url)  # beat, straight to Redis
    recovery.log_dir.mkdir()
    client = create_app(recovery.settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
    try:
        worker.start_worker("worker")
        recovery.start_beat()
        long_jobs = [client.post(SLEEP, json={"seconds": READ_TIMEOUT + 2, "steps": 2}).headers["Location"]
                     for _ in range(2)]
        jobs = wait_for(lambda: all((j := client.get(u).get_json())["status"] == "succeeded" for u in long_jobs) and j,
                        timeout=READ_TIMEOUT * 2 + 30, interval=0.5, what="two jobs longer than the read timeout")
        assert jobs["attempts"] == 1
        log = _log(worker, "worker")
        assert "Connection to broker lost" not in log and "dropping stale" not in log, log[-3000:]

        assert forwarder.freeze() > 0
        frozen_at = time.monotonic()
        after = client.post(SLEEP, json={"seconds": 0, "steps": 1}).headers["Location"]
        wait_for(lambda: client.get(after).get_json()["status"] == "succeeded", timeout=RECOVERY_BOUND, interval=0.5,
                 what="a job submitted after the freeze")
        took = time.monotonic() - frozen_at
        # Asked straight through Redis: the test's own connections through the forwarder froze too.
        wait_for(lambda: recovery.celery.control.ping(timeout=0.5, destination=[worker.node("worker")], limit=1),
                 timeout=RECOVERY_BOUND, what="the worker to answer remote control again")
        assert worker.processes["worker"].poll() is None  # the same process, not a restart
        print(f"a job submitted after the freeze ran {took:.1f} s later")
    finally:
        worker.stop()
        recovery.stop()


def test_beat_whose_redis_connections_freeze_goes_on_publishing(settings, tmp_path: Path, forwarder,
                                                                direct_url) -> None:
    """Without a read timeout beat's next publish waited for good for the reply to its LPUSH: no
    recovery sweep and no scheduled audit was sent again. Beat sends the recovery sweep every
    0.5 s here; nothing consumes the maintenance queue, so its length counts what got through."""
    beat = ChaosStack(settings, tmp_path, redis_url=_redis_url(settings.redis_url, forwarder.port), **FAST_BROKER)
    with redis.Redis.from_url(direct_url) as redis_client:
        try:
            beat.start_beat()
            wait_for(lambda: redis_client.llen("maintenance") >= 2, timeout=60, what="beat to publish")
            assert forwarder.freeze() > 0
            frozen_at = time.monotonic()
            sent = redis_client.llen("maintenance")
            wait_for(lambda: redis_client.llen("maintenance") > sent + 2, timeout=READ_TIMEOUT * 2 + 10, interval=0.2,
                     what="beat to publish again after the freeze")
            print(f"beat published again {time.monotonic() - frozen_at:.1f} s after the freeze")
            assert beat.processes["beat"].poll() is None
        finally:
            beat.stop()
