"""Shared by the monitor's tests: a private PostgreSQL database per test module on
the machine's server (127.0.0.1:5432, trust auth), and signals built exactly as the
enforcer builds them (services.enforcer.signals.build_signal)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from contextlib import contextmanager

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from safeguards.v1 import classifier_pb2, safeguards_pb2, signals_pb2

from services.common.privacy import RegionalKey
from services.enforcer.decision import CategoryScore, Outcome, Reason
from services.enforcer.policy import Action, parse_policy
from services.enforcer.signals import SignalInput, build_signal, signal_record

PG_ADMIN_URL = os.environ.get("MONITOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
KEY = RegionalKey.from_bytes("mon-1", b"monitor-test-key-" + b"k" * 40)


@contextmanager
def pg_database(prefix: str = "montest"):
    """A fresh database for one test module, dropped afterwards (even with connections left)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def policy(tenant: str, data_policy: str):
    return parse_policy(
        f"tenant: {tenant}\nversion: t.1\ndata_policy: {data_policy}\n"
        "categories:\n  jailbreak: {threshold: 0.5, action: BLOCK}\n  harmful: {threshold: 0.5, action: FLAG}\n",
        f"{tenant}.yaml",
    )


_ACTIONS = {
    "ALLOW": (Action.ALLOW, ()),
    "FLAG": (Action.FLAG, (Reason("classifier.harmful", "score 0.80"),)),
    "BLOCK": (Action.BLOCK, (Reason("classifier.jailbreak", "score 0.97"),)),
    "BLOCK_PII": (Action.BLOCK, (Reason("pii.private_key", "secret"), Reason("classifier.jailbreak", "score 0.9"))),
    "THROTTLE": (Action.THROTTLE, (Reason("ratelimit.tenant-rpm"),)),
    "SUSPENDED": (Action.BLOCK, (Reason("enforcement.suspended", "account suspended"),)),
}


def make_signal(
    *,
    region: str,
    tenant: str,
    data_policy: str = "STANDARD",
    action: str = "BLOCK",
    text: str = "some prompt",
    account: str = "acct-1",
    model: str = "model-a",
    request_id: str = "req-1",
    project: str = "proj-1",
    time_s: float | None = None,
    decision_id: str | None = None,
    failed_dependencies: tuple[str, ...] = (),
    key: RegionalKey = KEY,
) -> signals_pb2.SafeguardSignal:
    act, reasons = _ACTIONS[action]
    outcome = Outcome(
        action=act,
        reasons=reasons,
        scores=(CategoryScore("jailbreak", 0.97 if action.startswith("BLOCK") else 0.1, 0.5, Action.BLOCK),),
        redact=False,
        degraded=bool(failed_dependencies),
        failed_dependencies=failed_dependencies,
    )
    return build_signal(
        SignalInput(
            decision_id=decision_id or uuid.uuid4().hex,
            time_s=time.time() if time_s is None else time_s,
            region=region,
            tenant=tenant,
            account_hmac=key.account(tenant, account),
            project=project,
            model=model,
            request_id=request_id,
            surface=signals_pb2.SURFACE_SCREEN_PROMPT,
            text=text,
            messages=1,
            findings=(),
            outcome=outcome,
            policy=policy(tenant, data_policy),
            latencies={"total": 0.01},
            model_versions={"prompt_guard": 1},
        ),
        key,
        snippet_chars=280,
    )


def retro_signal(
    of: signals_pb2.SafeguardSignal,
    *,
    region: str,
    catch: bool = True,
    action: str = "BLOCK",
    time_s: float | None = None,
    key: RegionalKey = KEY,
    answered_by: str = "encoder",
) -> signals_pb2.SafeguardSignal:
    """The follow-up the enforcer emits after re-screening `of` with the full cascade
    (SURFACE_RETRO_SCREEN, same tenant, account and data policy)."""
    data_policy = signals_pb2.DataPolicy.Name(of.data_policy).removeprefix("DATA_POLICY_")
    sig = make_signal(region=region, tenant=of.tenant, action=action, data_policy=data_policy, time_s=time_s, key=key)
    sig.account_hmac = of.account_hmac
    sig.surface = signals_pb2.SURFACE_RETRO_SCREEN
    sig.retro_of_decision_id = of.decision_id
    sig.retro_catch = catch
    sig.original_action = of.action
    sig.verdict = classifier_pb2.VERDICT_COMPLETENESS_FULL
    sig.answered_by = answered_by
    return sig


def admin_signal(region: str, tenant: str) -> signals_pb2.SafeguardSignal:
    """An audit record of an admin call, as the enforcer's admin API writes them."""
    return signals_pb2.SafeguardSignal(
        decision_id=uuid.uuid4().hex,
        region=region,
        tenant=tenant,
        surface=signals_pb2.SURFACE_ADMIN,
        action=safeguards_pb2.ACTION_ALLOW,
        audit=signals_pb2.AdminAudit(actor="op@example", role="admin", method="IssueAction", allowed=True),
    )


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Every record of a topic, from the start to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not parts:
            await consumer.force_metadata_update()
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert parts, f"the topic {topic} exists"
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out = []
        deadline = time.monotonic() + 15
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"the topic {topic} could not be read to its end"
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out += records
        return out
    finally:
        await consumer.stop()


__all__ = ["KEY", "admin_signal", "make_signal", "pg_database", "read_topic", "signal_record"]
