"""The worker's consumer: Celery's own, with task events sent in batches a few times a second.

A worker sends three task events per task (received, started, succeeded) for Flower.
Celery buffers them per event-loop tick and publishes each tick's buffer as one
``task.multi`` message, so a busy worker publishes nearly once per event: a Redis PUBLISH,
kombu's message building and a JSON encoding each time, about a fifth of a ``sleep(0)``
job's worker CPU (docs/benchmarks.md, stop 31). This consumer publishes the buffer at most
``EVENT_FLUSH_SECONDS`` after its first event, or as soon as it holds Celery's batch limit
(24 events), whichever comes first. Flower sees the same events, about 50 ms later.

The buffer is also published where Celery's own scheduling would have published it but
a timer would not:

- when the connection to the broker is lost (``on_close``, before Celery replaces the
  event dispatcher: the new one takes over only what the old one failed to send, not its
  buffer);
- when the consumer stops (a warm shutdown: before the pool finishes its running tasks).
  From then on it schedules flushes as Celery does (the hub's ready callbacks, which run
  once more as the hub closes after the pool has drained), so the last tasks' events are
  not left in a timer that no longer fires.
"""

from __future__ import annotations

import time

from celery.worker import consumer

# Publish buffered task events at most this long after the first of them.
EVENT_FLUSH_SECONDS = 0.05
# A flush due this long ago without having run no longer holds the next one back: Celery
# cancels every timer entry added while a connection attempt failed before its event loop
# ran (Consumer._cancel_connection_timer_entries), a pending flush included.
STALE_FLUSH_SECONDS = 1.0


class Consumer(consumer.Consumer):
    _event_flush_due: float | None = None
    _stopping = False

    def on_send_event_buffered(self) -> None:
        """Celery's hook for an event put in the buffer: flush soon, not on the next tick."""
        if not self.hub:
            return
        if self._stopping:
            super().on_send_event_buffered()
            return
        now = time.monotonic()
        due = self._event_flush_due
        if due is not None and now < due + STALE_FLUSH_SECONDS:
            return  # a flush is already on its way
        self._event_flush_due = now + EVENT_FLUSH_SECONDS
        self.hub.call_later(EVENT_FLUSH_SECONDS, self._flush_buffered_events)

    def _flush_buffered_events(self) -> None:
        self._event_flush_due = None
        self._flush_events()

    def on_close(self) -> None:
        self._flush_events()
        super().on_close()

    def stop(self) -> None:
        self._stopping = True
        self._flush_events()
        super().stop()
