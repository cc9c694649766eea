"""Task events for Flower (worker/consumer.py).

Read off the broker by a real event receiver, from real workers: every job's
received/started/succeeded events arrive, in a few batched messages rather than about one
per event, a warm shutdown publishes the events of the job it waited for, and events
buffered when the broker went away arrive once it is back. Then the
consumer's scheduling of flushes, on a recording event loop: one flush per batch, a
cancelled timer does not stall the events, a lost connection publishes the buffer, and
once stopping it flushes as Celery does."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery.events.receiver import EventReceiver
from vine import promise
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from cli.ports import claim_port
from cli.services import EmbeddedRedis
from models.jobs import Job
from tests.conftest import wait_for
from tests.stack import ChaosStack
from worker.consumer import EVENT_FLUSH_SECONDS, STALE_FLUSH_SECONDS, Consumer

SLEEP = "/api/v1/diagnostics/sleep"
RECONNECTED = "Connected to tasks.broker:Transport"  # the consumer's log line on each connection
TASK_EVENTS = ("task-received", "task-started", "task-succeeded")


class Events:
    """What a receiver on the event exchange got: task events by task id, and how many
    broker messages carried them."""

    def __init__(self) -> None:
        self.by_task: dict[str, list[str]] = defaultdict(list)
        self.job_of_task: dict[str, str] = {}
        self.task_messages = 0
        self.probes = 0
        self.lock = threading.Lock()

    def on_message(self, body: Any) -> None:
        events = body if isinstance(body, list) else [body]
        with self.lock:
            if any(event.get("type", "").startswith("task-") for event in events):
                self.task_messages += 1
            for event in events:
                kind = event.get("type", "")
                if kind == "plant-probe":
                    self.probes += 1
                elif kind.startswith("task-"):
                    self.by_task[event["uuid"]].append(kind)
                    if kind == "task-received":
                        self.job_of_task[event["uuid"]] = event["args"]

    def kinds_by_job(self) -> dict[str, list[list[str]]]:
        """For each job, the event types of each task (message) that ran it."""
        by_job: dict[str, list[list[str]]] = defaultdict(list)
        with self.lock:
            for task, kinds in self.by_task.items():
                if task in self.job_of_task:
                    by_job[self.job_of_task[task].strip("[]'\"")].append(sorted(kinds))
        return by_job


class CountingReceiver(EventReceiver):
    def __init__(self, *args: Any, events: Events, **kwargs: Any) -> None:
        super().__init__(*args, handlers={}, **kwargs)
        self.events = events

    def _receive(self, body: Any, message: Any, *args: Any, **kwargs: Any) -> None:
        self.events.on_message(body)


@contextmanager
def receiving(stack: ChaosStack) -> Iterator[Events]:
    """A receiver subscribed (proved by a probe event it got) until the block ends."""
    events = Events()
    app = stack.celery
    with app.connection_for_read() as connection:
        receiver = CountingReceiver(connection, app=app, events=events, routing_key="#")
        thread = threading.Thread(target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False), daemon=True)
        thread.start()
        with app.connection_for_write() as publishing:
            dispatcher = app.events.Dispatcher(publishing, enabled=True)
            try:
                wait_for(lambda: dispatcher.send("plant-probe") or events.probes, what="the receiver to subscribe")
            finally:
                dispatcher.close()
        try:
            yield events
        finally:
            receiver.should_stop = True
            thread.join(timeout=10)


def succeeded(engine: Engine, job_ids: list[str]) -> int:
    with Session(engine) as session:
        ids = [uuid.UUID(j) for j in job_ids]
        return session.scalar(select(func.count()).where(Job.id.in_(ids), Job.status == "succeeded")) or 0


def submit(stack: ChaosStack, admin_key: str, n: int) -> list[str]:
    client = stack.client(admin_key)
    responses = [client.post(SLEEP, json={"seconds": 0, "steps": 1}) for _ in range(n)]
    assert {r.status_code for r in responses} == {202}
    return [r.get_json()["id"] for r in responses]


@pytest.mark.e2e
def test_every_job_has_its_three_events_in_few_messages(settings, engine, admin_key, tmp_path) -> None:
    stack = ChaosStack(settings, tmp_path)
    try:
        with receiving(stack) as events:
            jobs = submit(stack, admin_key, 60)  # queued before the worker starts: a busy worker
            stack.start_worker("events")
            wait_for(lambda: succeeded(engine, jobs) == len(jobs), timeout=60, what="the jobs")
            # Deadlines, not waits: on a loaded machine (the suite runs one process more than
            # the cores) the last batch of events took over 10 s to arrive after the last job.
            wait_for(lambda: all(events.kinds_by_job().get(j) == [sorted(TASK_EVENTS)] for j in jobs),
                     timeout=30, what="every job's task events")
    finally:
        stack.stop()
    # 180 task events. Celery alone publishes about one message per event-loop tick, which
    # on a busy worker is one or two events; batched, a message holds up to 24.
    assert events.task_messages <= 180 / 6, events.task_messages


@pytest.mark.e2e
def test_a_warm_shutdown_publishes_the_events_of_the_job_it_waited_for(settings, engine, admin_key, tmp_path) -> None:
    """SIGTERM while a job runs: the worker hands the job back and exits. The attempt's
    end (task-succeeded: the task returned) comes as the pool drains, after the event
    loop has stopped; Celery fires the hub's timers every 0.5 s while it waits for the
    pool, so here the pending flush usually publishes it, and the consumer's switch back
    to Celery's scheduling when it stops (tested below, on a recording loop) covers a
    pool that drains sooner."""
    stack = ChaosStack(settings, tmp_path)
    try:
        with receiving(stack) as events:
            worker = stack.start_worker("shutdown")
            client = stack.client(admin_key)
            job = client.post(SLEEP, json={"seconds": 30, "steps": 300}).get_json()["id"]
            wait_for(lambda: client.get(f"/api/v1/jobs/{job}").get_json()["status"] == "running", what="the job to run")
            worker.send_signal(signal.SIGTERM)  # warm shutdown
            assert worker.wait(timeout=30) == 0
            assert client.get(f"/api/v1/jobs/{job}").get_json()["status"] == "queued"  # handed back
            # The hand-back republished the job; the worker may have taken that message in
            # (task-received) before it stopped consuming.
            wait_for(lambda: sorted(TASK_EVENTS) in events.kinds_by_job().get(job, []), timeout=10,
                     what="the handed-back attempt's task events")
    finally:
        stack.stop()


@pytest.mark.e2e
def test_events_buffered_when_the_broker_goes_away_are_published_when_it_is_back(settings, engine, admin_key,
                                                                                 tmp_path) -> None:
    """A worker whose events wait an hour for their flush runs a job, then loses Redis: the
    consumer publishes its buffer as the connection closes, which fails and leaves the
    events to Celery's outbound buffer, which the next connection's dispatcher sends.
    Without that flush they stayed in the closed dispatcher's buffer, lost."""
    redis_server = EmbeddedRedis(tmp_path / "redis", claim_port())
    redis_server.start()
    stack = ChaosStack(settings, tmp_path, redis_url=redis_server.url, app="tests.held_events_app")
    log = tmp_path / "held.log"
    try:
        stack.start_worker("held", restart=True)
        [job] = submit(stack, admin_key, 1)
        wait_for(lambda: succeeded(engine, [job]) == 1, what="the job")
        redis_server.stop()
        # Back only after the worker's third failed attempt to reconnect (kombu waits 2, 4, 6 s
        # between them): its next one is 6 s away, and the receiver below subscribes well
        # within that. The events go out once, when the worker reconnects.
        wait_for(lambda: "Trying again in 6.00 seconds" in log.read_text(errors="replace"), timeout=60,
                 what="the worker's third attempt to reconnect")
        reconnections = log.read_text(errors="replace").count(RECONNECTED)
        redis_server.start()
        with receiving(stack) as events:
            assert log.read_text(errors="replace").count(RECONNECTED) == reconnections, \
                "the worker reconnected before the receiver subscribed: this run cannot tell"
            wait_for(lambda: events.kinds_by_job().get(job) == [sorted(TASK_EVENTS)], timeout=30,
                     what="the job's task events after the outage")
    finally:
        stack.stop()
        redis_server.stop()
    assert stack.restarts["held"] == 0  # the same worker: its buffer, not a new one's


class RecordingLoop:
    """Stands in for the worker's event loop (kombu's Hub): records what is scheduled."""

    def __init__(self) -> None:
        self.later: list[tuple[float, Any]] = []
        self.soon: list[Any] = []

    def call_later(self, delay: float, callback: Any) -> None:
        self.later.append((delay, callback))

    def call_soon(self, callback: Any) -> None:
        self.soon.append(callback)


class RecordingDispatcher:
    def __init__(self) -> None:
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


class StoppingBlueprint:
    def __init__(self) -> None:
        self.stopped = False

    def stop(self, consumer: Any) -> None:
        self.stopped = True


def consumer_on(loop: RecordingLoop) -> Consumer:
    """The consumer's event-scheduling hooks alone: no broker, no pool."""
    consumer = Consumer.__new__(Consumer)
    consumer.hub = loop
    consumer.event_dispatcher = RecordingDispatcher()
    consumer.blueprint = StoppingBlueprint()
    consumer.controller = consumer.timer = consumer.pool = None  # what Celery's on_close cleans up
    consumer.task_buckets = {}
    consumer._flush_events_promise = promise(consumer._flush_events)
    return consumer


def test_buffered_events_are_flushed_once_per_interval() -> None:
    loop = RecordingLoop()
    consumer = consumer_on(loop)
    for _ in range(5):
        consumer.on_send_event_buffered()
    assert [delay for delay, _ in loop.later] == [EVENT_FLUSH_SECONDS] and loop.soon == []
    loop.later.pop()[1]()  # the timer fires
    assert consumer.event_dispatcher.flushes == 1
    consumer.on_send_event_buffered()
    assert len(loop.later) == 1  # the next event schedules the next flush


def test_a_flush_whose_timer_never_fired_does_not_hold_events_back(monkeypatch) -> None:
    loop = RecordingLoop()
    consumer = consumer_on(loop)
    consumer.on_send_event_buffered()
    loop.later.clear()  # cancelled (Celery cancels a failed connection attempt's timer entries)
    consumer.on_send_event_buffered()
    assert loop.later == []  # within the grace period, still waiting for it
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + EVENT_FLUSH_SECONDS + STALE_FLUSH_SECONDS + 0.01)
    consumer.on_send_event_buffered()
    assert len(loop.later) == 1


def test_a_lost_connection_publishes_the_buffer_before_celery_replaces_the_dispatcher() -> None:
    """Celery's restart after a lost broker connection calls on_close, then builds a new
    event dispatcher that takes over only what the old one failed to send: a buffer still
    waiting for its timer would be dropped."""
    loop = RecordingLoop()
    consumer = consumer_on(loop)
    consumer.on_send_event_buffered()
    consumer.on_close()
    assert consumer.event_dispatcher.flushes == 1


def test_once_stopping_the_consumer_flushes_and_schedules_as_celery_does() -> None:
    loop = RecordingLoop()
    consumer = consumer_on(loop)
    consumer.on_send_event_buffered()
    consumer.stop()
    assert consumer.event_dispatcher.flushes == 1 and consumer.blueprint.stopped
    # Events of the tasks the pool still finishes: Celery's own next-tick flush, which it
    # runs once more after the pool has drained (a timer would no longer fire).
    consumer.on_send_event_buffered()
    assert loop.soon == [consumer._flush_events_promise] and len(loop.later) == 1
