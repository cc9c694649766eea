"""``GET /health``: real checks of the database, Redis and live Celery workers.

Answers 200 when the database and Redis are up (``degraded`` if no worker answered a
ping), 503 naming the failing check otherwise, and never 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Response, json
from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy import text

from web.schemas import HealthOut
from web.services import Services, services

log = logging.getLogger(__name__)

health_api = APIBlueprint("health", __name__, abp_tags=[Tag(name="health")])


def _timed(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        outcome = {"status": "up", **check()}
    except Exception as exc:  # noqa: BLE001 - a failing dependency is a result, not a crash
        outcome = {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
    outcome["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return outcome


def _database(svc: Services) -> dict[str, Any]:
    with svc.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return {}


def _redis(svc: Services) -> dict[str, Any]:
    svc.redis.ping()
    return {}


def _workers(svc: Services) -> dict[str, Any]:
    replies = svc.celery.control.ping(timeout=svc.settings.health_timeout_seconds)
    names = sorted(name for reply in replies for name in reply)
    if not names:
        raise RuntimeError(f"no worker answered within {svc.settings.health_timeout_seconds}s")
    return {"count": len(names), "workers": names}


def run_checks(svc: Services) -> tuple[int, dict[str, Any]]:
    checks = {"database": _timed(lambda: _database(svc)), "redis": _timed(lambda: _redis(svc))}
    if checks["redis"]["status"] == "up":
        checks["workers"] = _timed(lambda: _workers(svc))
    else:
        checks["workers"] = {"status": "skipped", "reason": "redis is down"}
    if any(checks[name]["status"] == "down" for name in ("database", "redis")):
        return 503, {"status": "unavailable", "checks": checks}
    overall = "ok" if checks["workers"]["status"] == "up" else "degraded"
    return 200, {"status": overall, "checks": checks}


@health_api.get("/health", responses={200: HealthOut, 503: HealthOut})
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
