"""Envoy-style ShouldRateLimit calls through xds-protos clients."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from tests.integration.ratelimit.conftest import OK, OVER, RlsClient, descriptor
from tests.support import free_port


def headers(resp) -> dict[str, str]:
    return {h.key: h.value for h in resp.response_headers_to_add}


def test_requests_within_limit_are_ok_then_over_limit(rls: RlsClient) -> None:
    codes = [rls.check(descriptor(("tenant", "acme"))).overall_code for _ in range(12)]
    assert codes == [OK] * 10 + [OVER] * 2


def test_status_carries_limit_remaining_reset_and_headers(rls: RlsClient) -> None:
    resp = rls.check(descriptor(("tenant", "hdr")))
    st = resp.statuses[0]
    assert st.code == OK
    assert st.current_limit.requests_per_unit == 10
    assert st.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.HOUR
    assert st.current_limit.name == "tenant-hourly"
    assert st.limit_remaining == 9
    assert 0 < st.duration_until_reset.ToTimedelta().total_seconds() <= 3600
    h = headers(resp)
    assert h["RateLimit-Limit"] == "10, 10;w=3600"
    assert h["RateLimit-Remaining"] == "9"
    assert "Retry-After" not in h
    for _ in range(9):
        rls.check(descriptor(("tenant", "hdr")))
    over = rls.check(descriptor(("tenant", "hdr")))
    assert over.overall_code == OVER
    # GCRA: one hit refills after unit/limit = 360 s.
    assert 300 <= int(headers(over)["Retry-After"]) <= 360


def test_each_tenant_value_has_its_own_bucket(rls: RlsClient) -> None:
    for _ in range(10):
        rls.check(descriptor(("tenant", "a")))
    assert rls.check(descriptor(("tenant", "a"))).overall_code == OVER
    assert rls.check(descriptor(("tenant", "b"))).overall_code == OK


def test_hits_addend_counts_as_that_many_hits(rls: RlsClient) -> None:
    # Request-level hits_addend applies to every descriptor.
    assert rls.check(descriptor(("tenant", "tok")), hits=7).statuses[0].limit_remaining == 3
    assert rls.check(descriptor(("tenant", "tok")), hits=4).overall_code == OVER
    assert rls.check(descriptor(("tenant", "tok")), hits=3).statuses[0].limit_remaining == 0
    # Per-descriptor hits_addend (token counts) wins over the request-level one.
    resp = rls.check(descriptor(("tenant", "tok2"), ("model", "m"), hits=600), hits=1)
    assert resp.statuses[0].limit_remaining == 400


def test_nested_descriptor_uses_the_rule_matched_at_the_last_entry(rls: RlsClient) -> None:
    resp = rls.check(descriptor(("tenant", "n"), ("model", "x")))
    assert resp.statuses[0].current_limit.requests_per_unit == 1000
    # An entry the tree does not know means no limit at all (Envoy semantics).
    resp = rls.check(descriptor(("tenant", "n"), ("nothing", "x")))
    assert resp.overall_code == OK and not resp.statuses[0].HasField("current_limit")


def test_several_descriptors_one_over_makes_overall_over(rls: RlsClient) -> None:
    for _ in range(10):
        rls.check(descriptor(("tenant", "multi")))
    resp = rls.check(descriptor(("tenant", "other")), descriptor(("tenant", "multi")))
    assert [s.code for s in resp.statuses] == [OK, OVER]
    assert resp.overall_code == OVER


def test_shadow_mode_answers_ok_but_counts_over_limit(rls: RlsClient, ratelimit) -> None:
    codes = [rls.check(descriptor(("shadow", "s"))).overall_code for _ in range(4)]
    assert codes == [OK] * 4
    # and the third and fourth hits are reported as shadow over-limit in the logs' metrics
    # (checked through the metrics endpoint in test_metrics_endpoint).


def test_unlimited_rule_is_never_limited(rls: RlsClient) -> None:
    for _ in range(50):
        assert rls.check(descriptor(("unlimited", "u")), hits=1000).overall_code == OK


def test_fixed_window_counts_every_hit_like_envoy(rls: RlsClient) -> None:
    codes = [rls.check(descriptor(("fixed", "f"))).overall_code for _ in range(7)]
    assert codes == [OK] * 5 + [OVER] * 2
    reset = rls.check(descriptor(("fixed", "f"))).statuses[0].duration_until_reset.ToTimedelta().total_seconds()
    assert 0 < reset <= 3600


def test_request_limit_override(rls: RlsClient) -> None:
    d = descriptor(("tenant", "ovr"))
    d.limit.CopyFrom(ratelimit_pb2.RateLimitDescriptor.RateLimitOverride(requests_per_unit=2, unit=3))
    codes = [rls.check(d).overall_code for _ in range(3)]
    assert codes == [OK, OK, OVER]


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (rls_pb2.RateLimitRequest(domain="", descriptors=[descriptor(("a", "b"))]), "domain must not be empty"),
        (rls_pb2.RateLimitRequest(domain="nope", descriptors=[descriptor(("a", "b"))]), "unknown domain 'nope'"),
        (rls_pb2.RateLimitRequest(domain="test"), "descriptors must not be empty"),
        (
            rls_pb2.RateLimitRequest(domain="test", descriptors=[descriptor(("a", "b"))] * 65),
            "too many descriptors: 65",
        ),
        (rls_pb2.RateLimitRequest(domain="test", descriptors=[descriptor()]), "descriptors[0] has no entries"),
        (
            rls_pb2.RateLimitRequest(domain="test", descriptors=[descriptor(("", "v"))]),
            "descriptors[0].entries[0].key must not be empty",
        ),
        (
            rls_pb2.RateLimitRequest(domain="test", descriptors=[descriptor(("tenant", "x"))], hits_addend=2**32 - 1),
            "hits_addend 4294967295 exceeds the maximum",
        ),
        (
            rls_pb2.RateLimitRequest(domain="test", descriptors=[descriptor(("tenant", "x"), hits=2**63)]),
            "descriptors[0].hits_addend 9223372036854775808 exceeds the maximum",
        ),
    ],
)
def test_bad_input_is_invalid_argument_with_a_clear_message(rls: RlsClient, req, message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        rls.stub.ShouldRateLimit(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_service_survives_bad_input_and_keeps_serving(rls: RlsClient) -> None:
    for _ in range(20):
        with pytest.raises(grpc.RpcError):
            rls.stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain=""), timeout=5)
    assert rls.check(descriptor(("tenant", "alive"))).overall_code == OK


def test_over_limit_key_is_answered_from_the_local_cache(start_ratelimit) -> None:
    port = free_port()
    svc = start_ratelimit("--metrics-listen", f"127.0.0.1:{port}")
    client = RlsClient(svc.address)
    try:
        for _ in range(15):
            client.check(descriptor(("tenant", "cached")))
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        cached = [ln for ln in body.splitlines() if ln.startswith("ratelimit_over_limit_with_local_cache_total")]
        # hit 10 empties the bucket (cached from then on): hits 11..15 never reach Redis.
        assert cached and float(cached[0].split()[-1]) == 5.0
    finally:
        client.close()


def test_metrics_endpoint_reports_per_rule_counters(start_ratelimit) -> None:
    port = free_port()
    svc = start_ratelimit("--metrics-listen", f"127.0.0.1:{port}", "--local-cache-entries", "0")
    client = RlsClient(svc.address)
    try:
        for _ in range(4):
            client.check(descriptor(("shadow", "m")))
        for value in ("v1", "v2"):
            client.check(descriptor(("detailed", value)))
        time.sleep(0.1)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        client.close()
    assert 'ratelimit_shadow_mode_total{domain="test",rule="test.shadow"} 2.0' in body
    assert 'ratelimit_total_hits_total{domain="test",rule="test.shadow"} 4.0' in body
    assert 'ratelimit_within_limit_total{domain="test",rule="test.detailed_v1"} 1.0' in body
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="ShouldRateLimit"' in body
    assert "ratelimit_redis_latency_seconds_bucket" in body


def test_invalid_utf8_in_a_string_field_is_invalid_argument(ratelimit) -> None:
    good = rls_pb2.RateLimitRequest(domain="test", descriptors=[descriptor(("tenant", "abc"))]).SerializeToString()
    bad = good.replace(b"abc", b"a\xffc")
    with grpc.insecure_channel(ratelimit.address) as ch:
        call = ch.unary_unary(
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            request_serializer=lambda b: b,
            response_deserializer=rls_pb2.RateLimitResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as err:
            call(bad, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request" in err.value.details() and "UTF-8" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            call(b"\xff\xff\xff", timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert call(good, timeout=5).overall_code == OK


def test_oversize_message_is_rejected(start_ratelimit) -> None:
    svc = start_ratelimit("--max-message-bytes", "2048")
    with grpc.insecure_channel(svc.address) as ch:
        stub = rls_pb2_grpc.RateLimitServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.ShouldRateLimit(
                rls_pb2.RateLimitRequest(domain="test", descriptors=[descriptor(("tenant", "x" * 4000))]), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.ShouldRateLimit(
            rls_pb2.RateLimitRequest(domain="test", descriptors=[descriptor(("tenant", "x"))]), timeout=5
        ).overall_code == OK
