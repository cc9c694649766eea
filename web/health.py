"""``GET /health``: real checks of the database, Redis, live Celery workers and this process's signing key.

Answers 200 when the database and Redis are up, reachable and writable and this process's signing
key is not sealed (``degraded`` if the database has no connection slot left for a new session, no
worker answered, a queue jobs or beat's recovery
are routed to has no worker consuming it, or no recovery sweep completed lately: beat is down, or
its messages are not taken), 503 naming the failing check otherwise, and never 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import redis
from flask import Response, json
from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy import Engine, text

from models.errors import SigningKeySealed
from models.migrate import schema_behind
from tasks.celery_app import QUEUES
from tasks.maintenance import SWEEP_FAILED_KEY, SWEEP_MARK_KEY, sweep_mark_age_ms, sweep_mark_lifetime_seconds
from web.openapi_headers import documents_headers
from web.schemas import HealthOut
from web.services import Services, services

log = logging.getLogger(__name__)

# Every queue needs a consumer: without one of the maintenance queue, nothing republishes a
# dead worker's job.
SERVED_QUEUES = sorted(QUEUES)

health_api = APIBlueprint("health", __name__, abp_tags=[Tag(name="health")])


class CheckFailed(Exception):
    """A check's own finding, safe to show: unlike a driver's error text, which can name
    hosts and users and goes to the log only, since ``/health`` needs no key."""


def _timed(name: str, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        outcome = {"status": "up", **check()}
    except CheckFailed as exc:
        outcome = {"status": "down", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a failing dependency is a result, not a crash
        log.warning("health check %s failed: %s: %s", name, type(exc).__name__, exc)
        outcome = {"status": "down", "error": f"{type(exc).__name__} (details in the API's log)"}
    outcome["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return outcome


def _database(svc: Services) -> dict[str, Any]:
    """A read that must find the database writable, on the API's own health pool, on one of its two threads, for at most the
    health timeout: a server that takes the connection and never answers would hold the
    request for libpq's connect timeout, or, on a pooled connection, until TCP gives up (the
    server's statement_timeout does not run on a frozen server). A check still waiting keeps
    its thread; one that timed out before it started is dropped."""
    timeout = svc.settings.health_timeout_seconds
    check = svc.health_checks.submit(_select_one, svc.health_engine)
    try:
        return check.result(timeout=timeout)
    except FutureTimeout:
        check.cancel()
        raise CheckFailed(f"no answer within {timeout}s") from None


# A standby, or a database set read-only, answers a read but refuses every write: every job
# submission, progress write and registry change would fail while the check said "up". A
# schema behind this code's migrations (an API started before `plant db upgrade` ran) answers
# too, and every query of a newer column fails.
# Then the server's sessions against the slots a role without reserved ones may take (the runtime
# role's): once they are all taken, the server refuses every new connection while this check's
# pooled one still answers. Sessions are counted as the runtime role sees them, since other roles'
# backend_type reads as null to it: every backend with a role and a database, client backends and,
# a moment each, a parallel query's workers. The logical replication launcher (a role, no database)
# and a replica's WAL sender (no database), which take no connection slot, are not counted.
SLOTS_FOUND = "connection_slots"  # what the database check read, for the connections check
DATABASE_CHECK = text(
    "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on', "
    "(SELECT version_num FROM alembic_version LIMIT 1), "
    "(SELECT count(*) FROM pg_stat_activity WHERE usesysid IS NOT NULL AND datid IS NOT NULL), "
    "current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
    " - coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)"
)


def _select_one(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        read_only, revision, in_use, limit = connection.execute(DATABASE_CHECK).one()
    if read_only:
        raise CheckFailed("the database is read-only (a standby, or default_transaction_read_only is on)")
    if (behind := schema_behind(revision)) is not None:
        raise CheckFailed(behind)
    return {SLOTS_FOUND: {"in_use": int(in_use), "limit": int(limit)}}


def _connection_slots(database: dict[str, Any]) -> dict[str, Any]:
    """Whether the server has a connection slot left for a new session of an ordinary role. None
    left is ``degraded``, not 503: this instance's pooled connections still serve (read by the
    database check, on its pooled connection, in the same statement)."""
    found = database.pop(SLOTS_FOUND, None)
    if found is None:
        return {"status": "skipped", "reason": "the database is down"}
    if found["in_use"] >= found["limit"]:
        return {"status": "down", "error": f"every connection slot is taken ({found['in_use']} of {found['limit']}): "
                                           "new connections are refused", **found}
    return {"status": "up", **found}


# A Redis that refuses writes answers PING: a replica (what a failover leaves the old primary
# as), one at its maxmemory under noeviction, or one whose last save to disk failed (a full disk:
# MISCONF, under stop-writes-on-bgsave-error, Redis's default, or after a failed append-only file
# write). No job could be published and no worker could take one or reply, so the check writes,
# as the database's checks that it is writable: one key, overwritten, whatever refuses it.
REDIS_PROBE_KEY = "plant:health"
REDIS_PROBE_TTL_MS = 60_000


def _write_refusal(exc: redis.ResponseError) -> str:
    """Why Redis refused the probe's write, in words fit for the public check (the error's own
    text goes to the log)."""
    if isinstance(exc, redis.ReadOnlyError):
        return "it is a read-only replica"
    if isinstance(exc, redis.OutOfMemoryError):
        return "it is out of memory (maxmemory, under noeviction)"
    if str(exc).startswith("MISCONF"):
        return "its last save to disk failed (a full or unwritable disk?); its log and INFO persistence say which"
    return "see the API's log"


def _redis(svc: Services) -> dict[str, Any]:
    try:
        svc.redis.set(REDIS_PROBE_KEY, "1", px=REDIS_PROBE_TTL_MS)
    except redis.ResponseError as exc:
        log.warning("health check redis: a write was refused: %s", exc)
        raise CheckFailed(f"Redis refuses writes: {_write_refusal(exc)}") from None
    return {}


def _workers(svc: Services) -> dict[str, Any]:
    """How many workers live, and how many consume each queue: every queue jobs or recovery
    are routed to needs one (compose runs the audit queue's workers apart, and audits would
    wait for good). Counted, not named: the check is public, and a node name is
    ``PREFIX@hostname`` (Flower, behind its password, names them)."""
    replies = svc.celery.control.inspect(timeout=svc.settings.health_timeout_seconds).active_queues() or {}
    if not replies:
        raise CheckFailed(f"no worker answered within {svc.settings.health_timeout_seconds}s")
    consumers = {queue: sum(1 for queues in replies.values() if any(q.get("name") == queue for q in queues or []))
                 for queue in SERVED_QUEUES}
    found = {"count": len(replies), "queues": consumers}
    unserved = [queue for queue, count in consumers.items() if not count]
    if unserved:
        return {"status": "down", "error": f"no worker consumes the {', '.join(unserved)} queue", **found}
    return found


def _beat(svc: Services) -> dict[str, Any]:
    """Whether beat's recovery sweep (every ``PLANT_REQUEUE_INTERVAL_SECONDS``) completed lately:
    without it the outbox is never published, lost jobs never republished and scheduled audits
    never fired, while every other check says up. Read from the mark the sweep leaves, which
    lapses (``tasks.maintenance.mark_sweep``); its age is its lifetime less what remains of it.
    With no mark, a sweep that failed meanwhile is named by its error's type
    (``tasks.maintenance.note_failed_sweep``): beat and the queue are not the cause then."""
    pipeline = svc.redis.pipeline(transaction=False)
    lifetime_ms, remaining_ms, failed = pipeline.get(SWEEP_MARK_KEY).pttl(SWEEP_MARK_KEY).get(SWEEP_FAILED_KEY).execute()
    age_ms = sweep_mark_age_ms(lifetime_ms, remaining_ms)
    if age_ms is None:
        window = sweep_mark_lifetime_seconds(svc.settings)
        cause = (f"the latest sweep failed: {failed.decode(errors='replace')[:100]} (the workers' log has why)"
                 if failed else "is beat running, and a worker consuming the maintenance queue?")
        return {"status": "down", "error": f"no recovery sweep completed in the last {window:g}s: {cause}"}
    return {"last_sweep_seconds_ago": round(age_ms / 1000, 1)}


def _signing_key(svc: Services) -> dict[str, Any]:
    """Whether this process may still sign: its active key sealed since it started makes it answer
    503 to every write (``models.keys.SealWatch``), so it is down, for an orchestrator to replace
    it with one started on the active key. The key's own guard: one ``stat``, no read. The kid stays
    out, as the seal's path: the check is public."""
    active = svc.keyring.active
    if active.guard is not None:
        try:
            active.guard()
        except SigningKeySealed as exc:
            log.warning("health check signing_key: %s", exc.detail)  # the path stays in the log
            raise CheckFailed("this process's signing key was sealed after it started, or its seal cannot be looked "
                              "for (the API's log names which): it signs nothing; restart it on the active key") from None
    return {}


def run_checks(svc: Services) -> tuple[int, dict[str, Any]]:
    checks = {"signing_key": _timed("signing_key", lambda: _signing_key(svc))}
    checks["database"] = _timed("database", lambda: _database(svc))
    checks["connections"] = _connection_slots(checks["database"])
    checks["redis"] = _timed("redis", lambda: _redis(svc))
    if checks["redis"]["status"] == "up":
        # The workers check holds its request for the whole health timeout (inspect cannot know how
        # many workers will answer): one caller at a time reads it, the others get the last reading.
        checks["workers"] = svc.workers_reading.get(lambda: _timed("workers", lambda: _workers(svc)))
        checks["beat"] = _timed("beat", lambda: _beat(svc))
    else:
        checks["workers"] = checks["beat"] = {"status": "skipped", "reason": "redis is down"}
    if any(checks[name]["status"] == "down" for name in ("signing_key", "database", "redis")):
        return 503, {"status": "unavailable", "checks": checks}
    overall = "ok" if all(checks[name]["status"] == "up" for name in ("connections", "workers", "beat")) else "degraded"
    return 200, {"status": overall, "checks": checks}


@health_api.get("/health", responses={200: HealthOut, 503: HealthOut})
@documents_headers(responses={503: {"Retry-After": {"description": "5: seconds before checking again",
                                                    "schema": {"type": "integer"}}}})
def health() -> Response:
    """Liveness and readiness from real checks of every dependency."""
    try:
        status, body = run_checks(services())
    except Exception as exc:  # noqa: BLE001 - /health must never answer 500
        log.exception("health check crashed")
        status, body = 503, {"status": "unavailable", "checks": {}, "error": type(exc).__name__}
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response
