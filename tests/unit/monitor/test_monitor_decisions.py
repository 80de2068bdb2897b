"""What the monitor keeps of a signal: categories from reasons, content only as the
data policy allows (enforced again on the monitor's side), and which decisions
become review cases."""

from __future__ import annotations

import pytest
from safeguards.v1 import safeguards_pb2, signals_pb2

from services.common.errors import InvalidArgument
from services.monitor.decisions import categories_of, category_of, decision_from_signal, is_audit
from tests.integration.monitor.monitor_support import admin_signal, make_signal

REGION = "mon-1"


def test_category_comes_from_the_reason_code() -> None:
    assert category_of("classifier.jailbreak") == "jailbreak"
    assert category_of("pii.card") == "pii"
    assert category_of("blocklist") == "blocklist"
    assert category_of("ratelimit.tenant-rpm") == "ratelimit"
    assert categories_of(()) == ("none",)
    assert categories_of((("pii.card", ""), ("pii.email", ""), ("classifier.harmful", ""))) == ("harmful", "pii")


def test_standard_keeps_the_redacted_snippet_and_sizes() -> None:
    sig = make_signal(region=REGION, tenant="t", data_policy="STANDARD", text="tell me a secret", request_id="r-9")
    d = decision_from_signal(sig, 0)
    assert d.content.snippet == "tell me a secret"
    assert d.content.characters == len("tell me a secret")
    assert d.content.text_hmac and d.content.request_id == "r-9"
    assert d.categories == ("jailbreak",) and d.needs_case


def test_metadata_only_keeps_no_snippet_even_if_the_signal_had_one() -> None:
    sig = make_signal(region=REGION, tenant="t", data_policy="METADATA_ONLY", text="abc")
    sig.content.redacted_snippet = "should not be here"  # a misbehaving producer
    d = decision_from_signal(sig, 0)
    assert d.content.snippet == ""
    assert d.content.characters == 3 and d.content.text_hmac


def test_zero_retention_keeps_nothing_even_if_the_signal_carried_content() -> None:
    sig = make_signal(region=REGION, tenant="t", data_policy="ZERO_RETENTION", text="abc")
    assert not sig.content.redacted_snippet and not sig.request_id  # as the enforcer builds it
    sig.content.redacted_snippet = "leak"
    sig.content.text_hmac = "h"
    sig.content.characters = 9
    sig.request_id = "rid"
    d = decision_from_signal(sig, 0)
    assert d.content.snippet == "" and d.content.text_hmac == "" and d.content.characters == 0
    assert d.content.request_id == ""


@pytest.mark.parametrize(
    ("action", "needs_case"),
    [("ALLOW", False), ("FLAG", True), ("BLOCK", True), ("THROTTLE", False), ("SUSPENDED", False)],
)
def test_flag_and_block_open_cases_but_not_enforced_blocks(action: str, needs_case: bool) -> None:
    assert decision_from_signal(make_signal(region=REGION, tenant="t", action=action), 0).needs_case is needs_case


def test_admin_audit_signals_are_not_decisions() -> None:
    assert is_audit(admin_signal(REGION, "t"))
    assert not is_audit(make_signal(region=REGION, tenant="t"))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: setattr(s, "decision_id", ""),
        lambda s: setattr(s, "tenant", ""),
        lambda s: setattr(s, "action", 42),
        lambda s: setattr(s, "decision_id", "x" * 300),
        lambda s: setattr(s, "decision_id", "\x00\x00"),  # nothing left once NULs are removed
        lambda s: setattr(s, "tenant", "\x00"),
        lambda s: setattr(s, "account_hmac", "a" * 20_000),  # no pseudonym is that long
    ],
)
def test_unusable_signals_are_rejected(mutate) -> None:
    sig = make_signal(region=REGION, tenant="t")
    mutate(sig)
    with pytest.raises(InvalidArgument):
        decision_from_signal(sig, 0)


def test_time_falls_back_to_the_record_timestamp() -> None:
    sig = signals_pb2.SafeguardSignal(decision_id="d", tenant="t", action=safeguards_pb2.ACTION_ALLOW)
    assert decision_from_signal(sig, 1234.5).time_s == 1234.5


def test_nul_characters_never_reach_the_store_and_long_fields_are_cut() -> None:
    """PostgreSQL text cannot hold NUL: one such field used to fail (and stall) a whole batch."""
    sig = make_signal(region=REGION, tenant="tenant", model="cla\x00ude", request_id="r\x00" + "q" * 5000)
    sig.tenant = "ten\x00ant"
    sig.policy_version = "v\x001"
    sig.verdict_reason = "slow\x00"
    sig.answered_by = "enc\x00oder"
    sig.failed_dependencies.extend(["classi\x00fier", "\x00"])
    sig.reasons.add(code="classifier.self\x00harm" + "x" * 5000, detail="d\x00" * 5000)
    sig.scores.add(category="sel\x00f", score=float("nan"), threshold=0.5)
    sig.content.redacted_snippet = "snip\x00pet"
    d = decision_from_signal(sig, 0)
    texts = [d.decision_id, d.tenant, d.account_hmac, d.model, d.policy_version, d.verdict_reason, d.answered_by,
             d.content.snippet, d.content.request_id, d.content.text_hmac, *d.categories, *d.failed_dependencies,
             *(x for r in d.reasons for x in r), *(s[0] for s in d.scores)]  # fmt: skip
    assert not [t for t in texts if "\x00" in t]
    assert (d.tenant, d.model, d.content.snippet) == ("tenant", "claude", "snippet")
    assert d.failed_dependencies == ("classifier",)
    assert max(len(t) for t in texts) <= 256
    assert all(s[1] == s[1] for s in d.scores)  # the NaN score is gone
