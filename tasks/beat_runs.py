"""Keeping beat's hourly tasks (the idempotency-key purge, the ledger digest) from doing their
work again and again when their messages pile up.

Beat's messages carry no expiry: Celery dates an expiry by beat's clock and drops the message by
the worker's, so a worker whose clock ran ahead of beat's by more than the expiry dropped every
one. Copies that piled up behind busy workers would then each do the work, back to back, once
slots free. So each run takes a key in Redis for a tenth of its task's interval as it starts, and
again as it completes (``SET ... PX``: Redis's clock alone says when it lapses, no two hosts'
clocks are compared); a copy that finds the key taken returns at once, and so does one run at the
same time on another worker slot. A run that fails lets its key go, so its retry, or the next
copy, runs. A Redis that cannot be reached lets the run go ahead: better the work twice than not
at all. (The recovery sweep judges the same by its own mark: ``tasks.maintenance.swept_lately``.)
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from tasks import runtime

log = logging.getLogger(__name__)

RUN_KEY_PREFIX = "plant:beat-run:"  # + the task's schedule entry: held by a run that started or completed lately
# Deletes the key only if it still holds this run's token: one that lapsed during a long run and
# was taken by another copy since is that copy's.
_LET_GO = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def run_key(entry: str) -> str:
    return RUN_KEY_PREFIX + entry


def window_ms(interval_seconds: float) -> int:
    """A tenth of the interval: copies that piled up run milliseconds apart; beat's next one,
    sent on time, comes about an interval after the last (less the time that one took)."""
    return max(int(interval_seconds * 100), 1)


@contextmanager
def beat_run(entry: str, interval_seconds: float, *, scheduled: bool = True) -> Iterator[bool]:
    """Yield True when this run is to do the work: no other run of ``entry`` started or completed
    within a tenth of ``interval_seconds``. The key is taken again when the block completes, and
    let go when it raises (a retry raises too), for the retry or the next copy to run. A run not
    ``scheduled`` (sent by other than beat, which sends ``scheduled=True``, as its sweeps) always
    does the work, and leaves the key alone."""
    if not scheduled:
        yield True
        return
    key, token, lifetime = run_key(entry), uuid.uuid4().hex, window_ms(interval_seconds)
    try:
        taken = bool(runtime.redis_client().set(key, token, nx=True, px=lifetime))
    except RedisError as exc:  # better a run too many than none
        log.warning("could not read whether %s ran lately, in Redis; it runs: %s", entry, type(exc).__name__)
        taken = True
    if not taken:
        yield False
        return
    try:
        yield True
    except BaseException:
        _redis_call(entry, "let go of", lambda: runtime.redis_client().eval(_LET_GO, 1, key, token))
        raise
    _redis_call(entry, "record", lambda: runtime.redis_client().set(key, token, px=lifetime))


def _redis_call(entry: str, what: str, call: Callable[[], object]) -> None:
    try:
        call()
    except RedisError as exc:  # the run's outcome stands; the key lapses on its own
        log.warning("could not %s the run of %s in Redis: %s", what, entry, type(exc).__name__)
