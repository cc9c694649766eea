"""``/health`` and a full disk (helper-224). Redis with persistence refuses every write with
MISCONF once a save to disk failed: the Redis check's write meets it, as it meets a replica's
READONLY and an OOM, and now says which of them it was rather than blaming a replica or memory."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from cli.services import EmbeddedRedis
from tests.conftest import embedded_server, wait_for
from tests.test_metrics_health_and_broker_timeouts import redis_refusing_writes
from web import create_app
from web.services import app_services


@contextmanager
def redis_whose_save_failed() -> Iterator[str]:
    """A Redis of its own whose last background save failed, as on a full disk: its data
    directory is gone (``dir`` is a protected setting, and root writes anywhere else), so the
    save cannot create its file. It still answers reads."""
    with contextmanager(embedded_server)(EmbeddedRedis, "redis-misconf") as url:
        admin = redis.Redis.from_url(url)
        try:
            admin.set("before", "1")
            admin.config_set("save", "3600 1")  # the embedded server saves nothing; Redis's default does
            shutil.rmtree(Path(admin.config_get("dir")["dir"]))
            admin.bgsave()
            wait_for(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", timeout=10,
                     what="the background save to fail")
            with pytest.raises(redis.ResponseError, match="^MISCONF"):
                admin.lpush("celery", "a message")  # what publishing a job does
            assert admin.get("before") == b"1"  # reads still answer (PING does not: Redis refuses it too)
            yield url
        finally:
            admin.config_set("save", "")  # writes again, and a shutdown that need not save
            admin.close()


def _health(settings, url: str) -> tuple[int, dict]:
    app = create_app(settings.model_copy(update={"redis_url": url}))
    try:
        response = app.test_client().get("/health")
    finally:
        app_services(app).engine.dispose()
    return response.status_code, response.get_json()


def test_health_calls_a_redis_that_cannot_save_to_disk_down_and_says_so(settings) -> None:
    with redis_whose_save_failed() as url:
        status, body = _health(settings, url)
    assert status == 503 and body["checks"]["redis"]["status"] == "down", body
    assert body["checks"]["redis"]["error"].startswith("Redis refuses writes: its last save to disk failed"), body


@pytest.mark.parametrize(("refusal", "cause"), [("replica", "it is a read-only replica"),
                                                ("out-of-memory", "it is out of memory")])
def test_health_names_the_other_refusals_by_their_own_cause(settings, refusal: str, cause: str) -> None:
    with redis_refusing_writes(refusal) as url:
        status, body = _health(settings, url)
    assert status == 503 and body["checks"]["redis"]["error"].startswith(f"Redis refuses writes: {cause}"), body
