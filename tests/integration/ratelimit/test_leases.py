"""Concurrency slots for long streams on ConcurrencyLimitService: acquire up to
the limit, release at stream end, and a lease whose holder died expires."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import duration_pb2
from safeguards.v1 import concurrency_pb2 as pb
from safeguards.v1 import concurrency_pb2_grpc


@pytest.fixture
def leases(ratelimit):
    channel = grpc.insecure_channel(ratelimit.address)
    yield concurrency_pb2_grpc.ConcurrencyLimitServiceStub(channel)
    channel.close()


def entries(value: str, key: str = "streams"):
    return [pb.DescriptorEntry(key=key, value=value)]


def test_slots_up_to_the_limit_then_release_frees_one(leases) -> None:
    a = leases.AcquireLease(pb.AcquireLeaseRequest(domain="test", entries=entries("acct1")))
    b = leases.AcquireLease(pb.AcquireLeaseRequest(domain="test", entries=entries("acct1")))
    c = leases.AcquireLease(pb.AcquireLeaseRequest(domain="test", entries=entries("acct1")))
    assert (a.granted, b.granted, c.granted) == (True, True, False)
    assert b.active == 2 and b.max_concurrent == 2 and c.lease_id == ""
    assert a.rule == "test.streams"
    rel = leases.ReleaseLease(pb.ReleaseLeaseRequest(domain="test", entries=entries("acct1"), lease_id=a.lease_id))
    assert rel.released and rel.active == 1
    # Releasing twice is harmless.
    again = leases.ReleaseLease(pb.ReleaseLeaseRequest(domain="test", entries=entries("acct1"), lease_id=a.lease_id))
    assert not again.released
    assert leases.AcquireLease(pb.AcquireLeaseRequest(domain="test", entries=entries("acct1"))).granted


def test_lease_of_a_dead_holder_expires_and_frees_its_slot(leases) -> None:
    for _ in range(2):
        assert leases.AcquireLease(pb.AcquireLeaseRequest(domain="test", entries=entries("dead"))).granted
    assert not leases.AcquireLease(pb.AcquireLeaseRequest(domain="test", entries=entries("dead"))).granted
    time.sleep(1.2)  # the rule's lease is 1 s; nobody renewed
    assert leases.AcquireLease(pb.AcquireLeaseRequest(domain="test", entries=entries("dead"))).granted


def test_renew_keeps_a_lease_alive_past_its_first_expiry(leases) -> None:
    held = leases.AcquireLease(pb.AcquireLeaseRequest(domain="test", entries=entries("renew")))
    for _ in range(3):
        time.sleep(0.5)
        r = leases.RenewLease(pb.RenewLeaseRequest(domain="test", entries=entries("renew"), lease_id=held.lease_id))
        assert r.renewed
    assert leases.AcquireLease(pb.AcquireLeaseRequest(domain="test", entries=entries("renew"))).active == 2
    time.sleep(1.2)
    gone = leases.RenewLease(pb.RenewLeaseRequest(domain="test", entries=entries("renew"), lease_id=held.lease_id))
    assert not gone.renewed


def test_requested_lease_time_is_capped_by_the_rule(leases) -> None:
    resp = leases.AcquireLease(
        pb.AcquireLeaseRequest(domain="test", entries=entries("cap"), lease_ttl=duration_pb2.Duration(seconds=3600))
    )
    assert resp.expires_at.ToDatetime().timestamp() - time.time() <= 1.5


def test_shadow_mode_grants_over_the_limit_and_says_so(leases) -> None:
    first = leases.AcquireLease(pb.AcquireLeaseRequest(domain="test", entries=entries("x", "streams_shadow")))
    second = leases.AcquireLease(pb.AcquireLeaseRequest(domain="test", entries=entries("x", "streams_shadow")))
    assert first.granted and not first.shadow_over_limit
    assert second.granted and second.shadow_over_limit and second.active == 2


def test_descriptor_without_concurrency_rule_is_unlimited(leases) -> None:
    resp = leases.AcquireLease(pb.AcquireLeaseRequest(domain="test", entries=entries("t", "tenant")))
    assert resp.granted and resp.lease_id == "" and resp.rule == ""


def test_bad_lease_requests_are_invalid_argument(leases) -> None:
    for req, msg in [
        (pb.AcquireLeaseRequest(domain="", entries=entries("a")), "domain must not be empty"),
        (pb.AcquireLeaseRequest(domain="test"), "entries has no entries"),
        (pb.ReleaseLeaseRequest(domain="test", entries=entries("a")), "lease_id must not be empty"),
    ]:
        method = leases.AcquireLease if isinstance(req, pb.AcquireLeaseRequest) else leases.ReleaseLease
        with pytest.raises(grpc.RpcError) as err:
            method(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert msg in err.value.details()
