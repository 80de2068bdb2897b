"""The config directory is reloaded on change without a restart; a broken file is
rejected with a logged error and the last good config stays live."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from tests.integration.ratelimit.conftest import OK, OVER, RlsClient, descriptor


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_new_file_and_changed_limit_apply_without_restart(ratelimit, rls: RlsClient, config_dir) -> None:
    with pytest.raises(grpc.RpcError):
        rls.check(descriptor(("k", "v")), domain="fresh")
    (config_dir / "fresh.yaml").write_text(
        "domain: fresh\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1}\n"
    )

    def fresh_live() -> bool:
        try:
            return rls.check(descriptor(("k", "v1")), domain="fresh").overall_code == OK
        except grpc.RpcError:
            return False

    wait_for(fresh_live)
    assert rls.check(descriptor(("k", "v1")), domain="fresh").overall_code == OVER
    (config_dir / "fresh.yaml").write_text(
        "domain: fresh\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 50}\n"
    )
    wait_for(
        lambda: rls.check(descriptor(("k", "v2")), domain="fresh").statuses[0].current_limit.requests_per_unit == 50
    )


def test_broken_file_keeps_last_good_config_and_logs_the_error(ratelimit, rls: RlsClient, config_dir) -> None:
    assert rls.check(descriptor(("tenant", "t"))).overall_code == OK
    (config_dir / "test.yaml").write_text(
        "domain: test\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n"
    )

    def rejected() -> bool:
        return any(
            json.loads(line).get("msg", "").startswith("config rejected")
            for line in ratelimit.logs().splitlines()
            if line.startswith("{")
        )

    wait_for(rejected)
    errors = [json.loads(line) for line in ratelimit.logs().splitlines() if "config rejected" in line]
    assert "test.yaml: descriptors[0].rate_limit: unit 'fortnight' is not one of second" in errors[0]["error"]
    # The last good config (10/hour, many other rules) still answers.
    resp = rls.check(descriptor(("tenant", "t")))
    assert resp.overall_code == OK and resp.statuses[0].current_limit.requests_per_unit == 10
    assert rls.check(descriptor(("fixed", "f"))).statuses[0].current_limit.requests_per_unit == 5
