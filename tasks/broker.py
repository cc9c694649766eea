"""kombu's Redis transport, with one Redis client object per channel instead of one per command,
and an ack that gives back its prefetch slot even when Redis does not answer it.

kombu builds a new ``redis.Redis`` around its connection pool for every publish and every
ack (``Channel._create_client``); with redis-py 8 that object costs about 58 µs to build
(it copies its 169 response callbacks), against about 95 µs for the LPUSH itself. A
worker pays it for each ack and each task event, the API for each publish. A
``redis.Redis`` holds no connection of its own (each command borrows one from the pool),
so one object per channel can serve every command. It is rebuilt whenever the channel
gets a new pool (after a fork, after a disconnect). The asynchronous client the consumer
polls with is kombu's own, unchanged.

kombu's Redis ack removes the message from Redis's unacked set first and from the worker's own
count of unacked messages only once Redis answered: an ack that timed out (Redis frozen, a network
cut: "Couldn't ack") kept its prefetch slot for good, and a worker with prefetch 1 and one process
took no message again until restarted (seen in the frozen-BRPOP test). :class:`QoS` gives the slot
back whatever Redis answered; the message stays in Redis's unacked set, which kombu restores to
its queue after the visibility timeout (or when a worker stops), and a job's row refuses a run of
a job already ended (``models.job_lifecycle.claim_job``): at worst a delivery too many.

:func:`tasks.celery_app.create_celery` selects it for ``redis://`` brokers; other schemes
(``rediss://``, ``sentinel://``) keep kombu's transport as it is.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

TRANSPORT_PATH = "tasks.broker:Transport"


class QoS(kombu_redis.QoS):
    """kombu's, but an ack or a reject gives the prefetch slot back whatever Redis answered
    (the module's docstring). Giving it back twice is nothing: it adds the tag to a set."""

    def ack(self, delivery_tag: Any) -> None:
        try:
            super().ack(delivery_tag)
        finally:
            virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        finally:
            virtual.QoS.ack(self, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
