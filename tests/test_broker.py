"""The broker transport (``tasks/broker.py``): kombu's Redis transport with one Redis
client object per channel, on a real redis-server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import redis

from tasks.broker import Channel, Transport
from tasks.celery_app import create_celery
from tasks.dispatch import publish_job


# A Redis database no test worker consumes, so what is published here stays to be read.
QUIET_DB = 15


@pytest.fixture
def quiet(settings, redis_url: str) -> Iterator[tuple[object, redis.Redis]]:
    url = urlparse(redis_url)._replace(path=f"/{QUIET_DB}").geturl()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield settings.model_copy(update={"redis_url": url}), client
    client.flushdb()
    client.close()


def test_redis_brokers_use_the_shared_client_transport_and_messages_arrive(quiet) -> None:
    settings, redis_client = quiet
    app = create_celery(settings)
    queue = "broker-test"
    try:
        with app.connection_for_write() as connection:
            assert isinstance(connection.transport, Transport)
            channel = connection.default_channel
            assert isinstance(channel, Channel)
            assert channel._create_client() is channel._create_client()
            assert channel._create_client(asynchronous=True) is not channel._create_client()

            for n in range(3):
                app.send_task("plant.test.noop", args=[n], queue=queue)
            assert [json.loads(m)["headers"]["argsrepr"] for m in reversed(redis_client.lrange(queue, 0, -1))] == [
                "[0]", "[1]", "[2]"]

            # A new pool (kombu makes one after a fork or a disconnect) gets a new client.
            before = channel._create_client()
            channel._disconnect_pools()
            after = channel._create_client()
            assert after is not before and after.connection_pool is channel.pool
            assert after.ping()
    finally:
        app.close()


def test_the_api_publish_path_goes_through_it(quiet) -> None:
    settings, redis_client = quiet
    app = create_celery(settings)
    try:
        job_id = uuid.uuid4()
        assert publish_job(app, job_id=job_id, kind="diagnostics.sleep")
        assert any(json.loads(m)["headers"]["argsrepr"] == repr([str(job_id)])
                   for m in redis_client.lrange("default", 0, -1))
    finally:
        app.close()


def test_publishing_a_job_declares_nothing_and_the_message_still_arrives(quiet) -> None:
    """On a broker no worker has declared anything on (a fresh Redis database), the
    message lands in the queue's list, and no declaration (kombu's binding set) is made."""
    settings, redis_client = quiet
    app = create_celery(settings)
    try:
        job_id = uuid.uuid4()
        assert publish_job(app, job_id=job_id, kind="diagnostics.sleep")
        assert publish_job(app, job_id=job_id, kind="audit.run")
        assert [json.loads(m)["headers"]["argsrepr"] for m in redis_client.lrange("default", 0, -1)] == [repr([str(job_id)])]
        assert redis_client.llen("audit") == 1
        assert redis_client.keys("_kombu.binding.*") == []
        # What makes that safe: Celery sends a message for a queue whose exchange is direct,
        # with no exchange or routing key given, through the anonymous exchange straight to
        # the queue (celery.app.amqp send_task_message), which needs no declaration.
        assert {q.exchange.type for q in app.amqp.queues.values()} == {"direct"}
    finally:
        app.close()


def test_other_schemes_keep_kombus_transport(settings) -> None:
    for url in ("rediss://127.0.0.1:6380/0", "sentinel://127.0.0.1:26379/0"):
        assert create_celery(settings.model_copy(update={"redis_url": url})).conf.broker_transport is None


@pytest.mark.parametrize("settle", ["ack", "reject"])
def test_an_ack_redis_does_not_answer_still_gives_the_prefetch_slot_back(quiet, monkeypatch, settle) -> None:
    """kombu freed the slot only once Redis answered the ack: one that timed out (Redis frozen:
    "Couldn't ack") left a worker with prefetch 1 taking no message again until restarted (seen in
    the frozen-BRPOP test, 120 s without a job). The message stays in Redis's unacked set, for
    kombu to restore; Plant's job rows refuse a run of a job already ended."""
    settings, redis_client = quiet
    app = create_celery(settings)
    queue = "broker-test"
    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            app.send_task("plant.test.noop", queue=queue)
            channel.basic_qos(prefetch_count=1)
            message = channel.basic_get(queue, no_ack=False)
            assert message is not None and not channel.qos.can_consume()

            def no_answer(*_: object) -> object:
                raise redis.exceptions.TimeoutError("Timeout reading from socket")

            monkeypatch.setattr(channel.qos, "_remove_from_indices", no_answer)
            with pytest.raises(redis.exceptions.TimeoutError):
                message.ack() if settle == "ack" else message.reject(requeue=False)
            assert channel.qos.can_consume()  # the slot is back
            assert redis_client.hlen("unacked") == 1  # and the message is Redis's to restore
    finally:
        app.close()
