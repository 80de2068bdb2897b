"""The one port actions (and the monitor's alert notifications, which share its
producer) are produced with, and its Kafka adapter.

`send()` returns only once the broker acknowledged the record (acks=all): an
operator must know an action landed, and an outbox marks a row produced only then.
With a key ring, every record is signed (`records.sign`, the topic bound in) so the
consumers of the actions topic can tell it from a forged one.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.actions.records import KeyRing, Revocation, sign
from services.common.errors import Unavailable
from services.common.kafka import KafkaSecurity, stop_within


class ActionSink(Protocol):
    async def send(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        *,
        revokes: str = "",
        revocation: Revocation | None = None,
    ) -> None:
        """Deliver one record and return only once the broker acknowledged it (else
        raise Unavailable). For a tombstone: `revokes`, the id of the action it revokes,
        and `revocation`, who revoked it and why (signed headers)."""

    async def close(self) -> None: ...


class KafkaActionSink:
    """A producer of its own (acks=all), started on first use and replaced after a
    failure, so an outage at start does not stop a service from serving."""

    def __init__(
        self,
        bootstrap: str,
        *,
        keys: KeyRing | None,
        idempotence: bool,
        timeout_s: float,
        client_id: str,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.keys = keys
        self.idempotence = idempotence
        self.timeout_s = timeout_s
        self.client_id = client_id
        self.security = security or KafkaSecurity()
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    client_id=self.client_id,
                    acks="all",
                    enable_idempotence=self.idempotence,
                    request_timeout_ms=int(self.timeout_s * 1000),
                    **self.security.client_kwargs(),
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def send(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        *,
        revokes: str = "",
        revocation: Revocation | None = None,
    ) -> None:
        all_headers = list(headers or ())
        if self.keys is not None:
            all_headers += sign(self.keys, topic, key, value, revokes, revocation)
        connected = False
        try:
            async with asyncio.timeout(self.timeout_s):
                producer = await self._get()
                connected = True
                await producer.send_and_wait(topic, value, key=key, headers=all_headers or None)
        except (TimeoutError, KafkaError, OSError) as exc:
            await self.close()
            if not connected:
                raise Unavailable(
                    f"Kafka is not reachable ({type(exc).__name__}): nothing was written, retry when it is"
                ) from None
            # Sent, not acknowledged: the broker may hold the record and append it on
            # recovery. Never "nothing was changed": the caller retries idempotently.
            raise Unavailable(
                f"the actions topic did not acknowledge the record in time ({type(exc).__name__}): it may "
                "still be written when the broker recovers. Retry when Kafka is reachable (an IssueAction "
                "with the same idempotency_key, so that the action is issued once)"
            ) from None

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_within(producer, 2.0)
