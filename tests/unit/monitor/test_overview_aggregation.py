"""The overview's per-minute aggregation (services.monitor.overview), on signals built
as the enforcer builds them: a retro-screen follow-up is not a decision, verdict
completeness shares (old producers included), latency percentiles from mergeable
histogram buckets, per-account rows only for blocks and retro catches."""

from __future__ import annotations

import time

import pytest
from safeguards.v1 import classifier_pb2, safeguards_pb2, signals_pb2

from services.common.errors import InvalidArgument
from services.monitor.decisions import FULL, NO_VERDICT, PARTIAL, decision_from_signal
from services.monitor.overview import (
    BUCKETS,
    LATENCY_BOUNDS_MS,
    MinuteTotals,
    account_tally,
    latency_bucket,
    percentile_ms,
    tally,
)
from services.monitor.store import minute_of, utc
from tests.integration.monitor.monitor_support import make_signal, retro_signal

REGION = "mon-1"
NOW = time.time()
V = classifier_pb2


def signal(action="ALLOW", *, verdict=V.VERDICT_COMPLETENESS_FULL, latency_s=0.01, tenant="acme", **kw):
    sig = make_signal(region=REGION, tenant=tenant, action=action, time_s=NOW, **kw)
    sig.verdict = verdict
    if verdict != V.VERDICT_COMPLETENESS_FULL:
        sig.verdict_reason = "deadline"
        sig.answered_by = "tier1"
    sig.latencies.total.FromNanoseconds(int(latency_s * 1e9))
    return sig


def retro(of: signals_pb2.SafeguardSignal, *, catch: bool, action: str = "BLOCK"):
    return retro_signal(of, region=REGION, catch=catch, action=action, time_s=NOW + 1)


def minute(d):
    return minute_of(utc(d.time_s))


def totals(signals) -> MinuteTotals:
    rows = tally([decision_from_signal(s, 0) for s in signals], minute)
    out = MinuteTotals()
    for r in rows.values():
        out.merge(r)
    return out


def test_a_retro_follow_up_is_not_counted_as_a_decision() -> None:
    original = signal("ALLOW", verdict=V.VERDICT_COMPLETENESS_PARTIAL)
    caught, cleared = retro(original, catch=True), retro(signal("ALLOW", verdict=V.VERDICT_COMPLETENESS_NONE),
                                                          catch=False, action="ALLOW")  # fmt: skip
    t = totals([original, caught, cleared])
    assert (t.decisions, t.blocked) == (1, 0)  # the BLOCK of the re-screen is no block of a decision
    assert (t.retro_screens, t.retro_catches) == (2, 1)
    assert sum(t.latency) == 1  # and no latency of its own
    d = decision_from_signal(caught, 0)
    assert d.is_retro and d.retro_of == original.decision_id and d.retro_catch
    assert d.original_action == safeguards_pb2.ACTION_ALLOW and not d.needs_case  # its own BLOCK opens no case


def test_completeness_shares_and_old_producers() -> None:
    sigs = [signal(verdict=V.VERDICT_COMPLETENESS_FULL) for _ in range(5)]
    sigs += [signal(verdict=V.VERDICT_COMPLETENESS_PARTIAL) for _ in range(3)]
    sigs += [signal(verdict=V.VERDICT_COMPLETENESS_NONE)]
    old_full = signal(verdict=V.VERDICT_COMPLETENESS_UNSPECIFIED)  # a producer older than the field
    old_none = signal(verdict=V.VERDICT_COMPLETENESS_UNSPECIFIED, failed_dependencies=("classifier",))
    t = totals([*sigs, old_full, old_none])
    assert (t.decisions, t.full, t.partial, t.no_verdict) == (11, 6, 3, 2)
    assert t.share(t.full) == pytest.approx(6 / 11) and t.share(t.no_verdict) == pytest.approx(2 / 11)
    assert MinuteTotals().share(0) is None  # a minute without decisions has no share
    assert decision_from_signal(old_full, 0).verdict == FULL
    assert decision_from_signal(old_none, 0).verdict == NO_VERDICT
    partial = decision_from_signal(sigs[5], 0)
    assert (partial.verdict, partial.verdict_reason, partial.answered_by) == (PARTIAL, "deadline", "tier1")


def test_latency_percentiles_come_from_the_buckets_and_merge_across_tenants() -> None:
    fast = [signal(latency_s=0.008, tenant="fast") for _ in range(98)]
    slow = [signal(latency_s=0.4, tenant="slow") for _ in range(2)]
    rows = tally([decision_from_signal(s, 0) for s in fast + slow], minute)
    assert len(rows) == 2  # one row per (minute, tenant) ...
    merged = MinuteTotals()
    for r in rows.values():
        merged.merge(r)  # ... that add up: a percentile of the sum, not of percentiles
    assert 5 < merged.p50_ms <= 10  # 8 ms lies in the (5, 10] bucket
    assert 300 < merged.p99_ms <= 500  # the 99th of 100 is one of the two slow ones
    assert merged.p99_ms == totals(fast + slow).p99_ms
    only_fast = totals(fast)
    assert only_fast.p99_ms <= 10


def test_percentile_edges() -> None:
    assert percentile_ms([0] * BUCKETS, 0.5) is None
    assert latency_bucket(0.0) == 0 and latency_bucket(0.001) == 0  # upper bounds inclusive
    assert latency_bucket(0.0011) == 1
    assert latency_bucket(60.0) == BUCKETS - 1  # beyond the last bound
    beyond = [0] * BUCKETS
    beyond[-1] = 3
    assert percentile_ms(beyond, 0.99) == LATENCY_BOUNDS_MS[-1]
    one = [0] * BUCKETS
    one[latency_bucket(0.1)] = 1  # 100 ms: the (75, 100] bucket
    assert 75 < percentile_ms(one, 0.5) <= 100
    no_latency = make_signal(region=REGION, tenant="t", action="ALLOW")
    no_latency.ClearField("latencies")
    assert decision_from_signal(no_latency, 0).latency_s is None
    assert sum(totals([no_latency]).latency) == 0 and totals([no_latency]).decisions == 1


def test_account_rows_only_for_blocks_and_retro_catches() -> None:
    allowed = signal("ALLOW", account="quiet", verdict=V.VERDICT_COMPLETENESS_PARTIAL)
    blocked = signal("BLOCK", account="loud")
    caught = retro(allowed, catch=True)
    cleared = retro(signal("ALLOW", account="quiet"), catch=False, action="ALLOW")
    rows = account_tally([decision_from_signal(s, 0) for s in (allowed, blocked, caught, cleared)], minute)
    by_account = {k[2]: v for k, v in rows.items()}
    assert by_account == {blocked.account_hmac: (1, 0), allowed.account_hmac: (0, 1)}


def test_a_retro_signal_must_name_the_decision_it_re_screened() -> None:
    bad = retro(signal(), catch=True)
    bad.retro_of_decision_id = ""
    with pytest.raises(InvalidArgument, match="retro_of_decision_id"):
        decision_from_signal(bad, 0)


def test_zero_retention_retro_and_decision_keep_no_request_id() -> None:
    sig = signal("ALLOW", verdict=V.VERDICT_COMPLETENESS_PARTIAL, data_policy="ZERO_RETENTION", request_id="r-1")
    sig.request_id = "r-1"  # a misbehaving producer: the monitor still keeps none
    d = decision_from_signal(sig, 0)
    assert d.content.request_id == "" and d.account_hmac  # the regional pseudonym only
    follow_up = retro(sig, catch=True)
    follow_up.request_id = "r-1"
    assert decision_from_signal(follow_up, 0).content.request_id == ""
