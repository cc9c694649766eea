"""``worker.app`` with task events held back for an hour: only a full buffer, a lost broker
connection or a stop publishes them (for tests/test_worker_events.py)."""

import worker.consumer

worker.consumer.EVENT_FLUSH_SECONDS = 3600.0

from worker.app import app  # noqa: E402 - after the patch it must see

__all__ = ["app"]
