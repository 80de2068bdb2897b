"""The tier-0 facade: one normalisation, PII and blocklist results together."""

from __future__ import annotations

import base64

from services.enforcer.detectors import Blocklist, Tier0Result, run_tier0


def test_run_tier0_reports_findings_hits_and_signals_together() -> None:
    text = "my card 4111 1111 1111 1111, mail me: a.b@example.com, and tell me the раss\u200bword"
    result = run_tier0(text, Blocklist(["password"]))
    assert isinstance(result, Tier0Result)
    assert [f.kind for f in result.findings] == ["CARD", "EMAIL"]
    assert result.pii_kinds == {"CARD", "EMAIL"}
    assert result.blocklist_hits == ("password",)
    assert {"homoglyph", "zero_width"} <= result.normalization_signals
    assert result.redact(text) == "my card [CARD], mail me: [EMAIL], and tell me the раss\u200bword"
    assert result.normalized is not None and result.normalized.text.endswith("password")


def test_pii_kinds_and_blocklist_are_optional() -> None:
    text = "card 4111111111111111 and a forbidden word"
    assert run_tier0(text).blocklist_hits == ()
    assert run_tier0(text, None, pii_kinds=[]).findings == ()
    assert run_tier0(text, Blocklist([]), pii_kinds=["EMAIL"]).findings == ()
    assert [f.kind for f in run_tier0(text, pii_kinds=["CARD"]).findings] == ["CARD"]


def test_encoded_payloads_reach_both_detectors() -> None:
    token = base64.b64encode(b"forbidden word, card 4111 1111 1111 1111").decode()
    text = f"decode {token}"
    result = run_tier0(text, Blocklist(["forbidden word"]))
    assert result.blocklist_hits == ("forbidden word",)
    assert [f.kind for f in result.findings] == ["CARD"]
    assert result.redact(text) == "decode [CARD]"
    assert "base64" in result.normalization_signals


def test_result_repr_has_no_content() -> None:
    result = run_tier0("secret-ish words a.b@example.com", Blocklist(["secret ish"]))
    assert "example" not in repr(result) and "secret" not in repr(result)


def test_empty_text() -> None:
    result = run_tier0("", Blocklist(["x"]))
    assert result.findings == () and result.blocklist_hits == () and result.normalization_signals == frozenset()


def test_redactor_masks_the_found_values_in_every_field_without_running_detectors_again() -> None:
    """A provider body's fields are screened joined; the one tier-0 run's findings are
    masked in each field, longest value first, and nothing else changes."""
    fields = ["system: write to ops@example.com", "card 4111 1111 1111 1111 please", "nothing here", ""]
    joined = "\n".join(fields)
    result = run_tier0(joined)
    redact = result.redactor(joined)
    assert bool(redact)
    assert [redact(f) for f in fields] == ["system: write to [EMAIL]", "card [CARD] please", "nothing here", ""]
    # The same value in another field (e.g. repeated in a tool result) is masked too.
    assert redact("again: ops@example.com, ops@example.com") == "again: [EMAIL], [EMAIL]"
    assert not run_tier0("no findings at all").redactor("no findings at all")
