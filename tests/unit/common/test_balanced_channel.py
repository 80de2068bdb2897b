"""`balanced_channel_options` with real gRPC servers on real sockets: calls spread over
every address of the target, a replica whose health is not SERVING (draining) leaves
the rotation, a stopped one loses no call, and pick_first stays on one replica."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.clients import Budget, balanced_channel_options, call_in_budget

SERVICE = "test.Who"


class Replica:
    def __init__(self, name: str) -> None:
        self.name = name
        self.server = grpc.aio.server()
        self.health = health.aio.HealthServicer()
        self.port = 0

    async def start(self) -> Replica:
        async def who(request: bytes, context) -> bytes:
            await asyncio.sleep(0.002)
            return self.name.encode()

        handler = grpc.method_handlers_generic_handler(SERVICE, {"Who": grpc.unary_unary_rpc_method_handler(who)})
        self.server.add_generic_rpc_handlers([handler])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        await self.health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        return self


async def replicas(n: int) -> list[Replica]:
    return [await Replica(chr(ord("A") + i)).start() for i in range(n)]


def target(rs: list[Replica]) -> str:
    return "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in rs)


async def ask(channel: grpc.aio.Channel, n: int) -> Counter:
    who = channel.unary_unary(f"/{SERVICE}/Who")
    answers = await asyncio.gather(*(who(b"", timeout=5) for _ in range(n)))
    return Counter(a.decode() for a in answers)


def test_options_carry_the_policy_health_and_keepalive() -> None:
    opts = dict(balanced_channel_options(SERVICE, keepalive_s=12))
    config = json.loads(opts["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": SERVICE}
    assert opts["grpc.keepalive_time_ms"] == 12_000
    assert "healthCheckConfig" not in json.loads(
        dict(balanced_channel_options(SERVICE, "pick_first"))["grpc.service_config"]
    )


async def test_round_robin_spreads_calls_and_skips_a_replica_that_is_not_serving() -> None:
    rs = await replicas(3)
    try:
        async with grpc.aio.insecure_channel(target(rs), options=balanced_channel_options(SERVICE)) as ch:
            await ch.channel_ready()
            await asyncio.sleep(0.3)  # every subchannel connected and health-checked
            counts = await ask(ch, 300)
            assert set(counts) == {"A", "B", "C"} and min(counts.values()) >= 60, counts
            await rs[0].health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(0.3)
            assert set(await ask(ch, 100)) == {"B", "C"}
            await rs[0].health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
            await asyncio.sleep(0.3)
            assert "A" in await ask(ch, 100)
    finally:
        for r in rs:
            await r.server.stop(None)


@pytest.mark.parametrize("graceful", [True, False])
async def test_stopping_a_replica_under_load_loses_no_call(graceful: bool) -> None:
    rs = await replicas(2)
    try:
        async with grpc.aio.insecure_channel(target(rs), options=balanced_channel_options(SERVICE)) as ch:
            await ch.channel_ready()
            await asyncio.sleep(0.3)
            who = ch.unary_unary(f"/{SERVICE}/Who")
            answers: Counter = Counter()
            failures: list[str] = []
            stop = asyncio.Event()

            async def caller() -> None:
                while not stop.is_set():
                    try:
                        answers[(await who(b"", timeout=5, wait_for_ready=False)).decode()] += 1
                    except grpc.aio.AioRpcError as exc:
                        failures.append(exc.code().name)

            tasks = [asyncio.create_task(caller()) for _ in range(8)]
            await asyncio.sleep(0.5)
            before = answers["B"]
            if graceful:  # what SIGTERM does: health NOT_SERVING, then stop with a grace period
                await rs[0].health.enter_graceful_shutdown()
                await asyncio.sleep(0.2)
                await rs[0].server.stop(2)
            else:  # no grace: in-flight calls are cancelled (UNAVAILABLE / CANCELLED to the client)
                await rs[0].server.stop(None)
            await asyncio.sleep(0.1)  # answers already on the wire when it stopped are counted
            a_after_stop = answers["A"]
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*tasks)
            assert answers["A"] == a_after_stop  # the stopped one gets nothing more
            assert answers["B"] > before
            if graceful:
                assert failures == []
            else:
                # Without a grace period a call in flight on the killed replica can fail;
                # the enforcer's budgeted retry (call_in_budget) re-picks, landing on B.
                assert set(failures) <= {"UNAVAILABLE", "CANCELLED"} and len(failures) <= 8, failures
    finally:
        for r in rs:
            await r.server.stop(None)


async def test_pick_first_stays_on_one_replica() -> None:
    rs = await replicas(2)
    try:
        async with grpc.aio.insecure_channel(target(rs), options=balanced_channel_options(SERVICE, "pick_first")) as ch:
            assert len(await ask(ch, 50)) == 1
    finally:
        for r in rs:
            await r.server.stop(None)


async def test_a_call_a_stopping_replica_cancelled_is_retried_on_the_other() -> None:
    rs = await replicas(2)
    cancelling = grpc.aio.server()

    async def cancel(request: bytes, context) -> bytes:
        await context.abort(grpc.StatusCode.CANCELLED, "server shutting down")

    cancelling.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"Who": grpc.unary_unary_rpc_method_handler(cancel)})]
    )
    port = cancelling.add_insecure_port("127.0.0.1:0")
    await cancelling.start()
    try:
        # No health service on the cancelling one: it stays in the rotation (gRPC treats
        # UNIMPLEMENTED health as healthy), so every other pick lands on it.
        addresses = f"ipv4:127.0.0.1:{port},127.0.0.1:{rs[1].port}"
        async with grpc.aio.insecure_channel(addresses, options=balanced_channel_options(SERVICE)) as ch:
            await ch.channel_ready()
            await asyncio.sleep(0.3)
            who = ch.unary_unary(f"/{SERVICE}/Who")
            raw = Counter()
            for _ in range(20):
                try:
                    raw[(await who(b"", timeout=5)).decode()] += 1
                except grpc.aio.AioRpcError as exc:
                    raw[exc.code().name] += 1
            assert raw["CANCELLED"] >= 5, raw  # the failure is real without a retry
            answers = [
                await call_in_budget(lambda t: who(b"", timeout=t), Budget.start(5.0), attempts=2) for _ in range(20)
            ]
            assert set(answers) == {b"B"}
    finally:
        await cancelling.stop(None)
        for r in rs:
            await r.server.stop(None)
