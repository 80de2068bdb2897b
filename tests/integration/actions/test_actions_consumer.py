"""The actions consumer against a real broker (Tansu): the local snapshot is served
until the topic has been read, then the topic's state replaces it (an action revoked
while the replica was down goes away); --actions-wait-for-catchup holds the start
while Kafka is away; the snapshot is rewritten as the state changes."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import CollectorRegistry
from safeguards.v1 import enforcement_pb2 as pb

from services.actions import snapshot
from services.actions.consumer import ActionsConsumer
from services.actions.keys import action_key
from services.actions.projection import ActionMetrics, ActionTable
from services.actions.records import KeyRing
from services.actions.sink import KafkaActionSink
from services.common.topics import actions_topic
from tests.support import EmbeddedKafka, free_port
from tools.run_mesh import create_topics

RING = KeyRing.insecure_dev()


@pytest.fixture(scope="module")
def kafka():
    broker = EmbeddedKafka().start()
    try:
        yield broker
    finally:
        broker.stop()


def suspension(region: str, account: str) -> tuple[bytes, bytes, str]:
    a = pb.EnforcementAction(
        action_id=uuid.uuid4().hex,
        kind=pb.ENFORCEMENT_KIND_SUSPEND_ACCOUNT,
        target=pb.EnforcementTarget(tenant="acme", account_hmac=account),
        actor="test",
        reason="test",
        region=region,
    )
    return action_key(a.kind, a.target).encode(), a.SerializeToString(), a.action_id


def consumer(region: str, bootstrap: str, **kw) -> tuple[ActionsConsumer, ActionTable, CollectorRegistry]:
    registry = CollectorRegistry()
    table = ActionTable(region, ActionMetrics(registry))
    return ActionsConsumer(table, keys=RING, bootstrap=bootstrap, client_id="t", **kw), table, registry


async def eventually(check, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition did not hold")


async def test_the_topic_replaces_the_snapshot_once_read(kafka, tmp_path) -> None:
    region = "snap-" + uuid.uuid4().hex[:6]
    await create_topics(kafka.bootstrap, region)
    topic = actions_topic(region)
    path = tmp_path / "actions.snapshot"
    sink = KafkaActionSink(kafka.bootstrap, keys=RING, idempotence=False, timeout_s=5, client_id="t")
    kx, vx, idx = suspension(region, "x")
    ky, vy, _ = suspension(region, "y")
    await sink.send(topic, kx, vx)
    await sink.send(topic, ky, vy)
    first, table, _ = consumer(region, kafka.bootstrap, snapshot_path=path, snapshot_interval_s=0.1)
    await first.start()
    await eventually(lambda: table.blocking("acme", "y", "") is not None)
    await first.stop()  # writes the snapshot
    held = snapshot.read(path, RING, topic)
    assert held is not None and {k for k, _ in held.records} == {kx.decode(), ky.decode()}
    assert sum(held.positions.values()) == 2

    await sink.send(topic, kx, None, revokes=idx)  # revoked while the replica is down
    await sink.close()
    second, table2, registry = consumer(region, kafka.bootstrap, snapshot_path=path, snapshot_interval_s=0.1)
    second._restore()  # what start() serves first: the snapshot's state
    assert table2.blocking("acme", "x", "") is not None and table2.blocking("acme", "y", "") is not None
    assert registry.get_sample_value("enforcer_actions_snapshot_loaded") == 1
    await second.start()  # read to the end: the topic's state replaced the snapshot's
    try:
        assert table2.blocking("acme", "x", "") is None and table2.blocking("acme", "y", "") is not None
        assert registry.get_sample_value("enforcer_actions_snapshot_loaded") == 0
        await eventually(lambda: {k for k, _ in snapshot.read(path, RING, topic).records} == {ky.decode()})
    finally:
        await second.stop()


async def test_wait_for_catchup_holds_the_start_while_kafka_is_away(tmp_path) -> None:
    away = f"127.0.0.1:{free_port()}"
    held, _, _ = consumer("away", away, catchup_timeout_s=0.2, wait_for_catchup=True)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(held.start(), 3)
    await held.stop()
    served, _, registry = consumer("away", away, catchup_timeout_s=0.2)
    await asyncio.wait_for(served.start(), 3)  # without the flag: serves after the timeout
    assert not served.ready and registry.get_sample_value("enforcer_actions_caught_up") == 0
    await served.stop()
