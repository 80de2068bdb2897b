"""PII and secret recognisers: valid values found with exact spans, near-misses and
look-alike identifiers not flagged, masking exact."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.enforcer.detectors.pii import (
    Finding,
    PiiKind,
    detect,
    iban_is_valid,
    luhn_is_valid,
    mask,
    ssn_is_valid,
)
from tests.unit.detectors.strategies import (
    card_digits,
    change_one_digit,
    formatted_card,
    iban,
    invalid_ssn,
    valid_ssn,
)


def spans(text: str, kind: str | None = None) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start : f.end]) for f in detect(text) if kind is None or f.kind == kind]


# --------------------------------------------------------------------------- cards


@settings(max_examples=300)
@given(card=formatted_card(), before=st.sampled_from(["pay with ", "card: ", "", "(", "number\n"]))
def test_luhn_valid_cards_with_known_prefixes_are_found(card: str, before: str) -> None:
    text = f"{before}{card} today"
    assert ("CARD", card) in spans(text)


@settings(max_examples=300)
@given(digits=card_digits(), index=st.integers(0, 18), delta=st.integers(1, 9), data=st.data())
def test_one_changed_digit_breaks_luhn_and_is_not_a_card(digits: str, index: int, delta: int, data) -> None:
    broken = change_one_digit(digits, index, delta)
    assert not luhn_is_valid(broken)
    card = data.draw(formatted_card(broken))
    assert spans(f"pay with {card} today", "CARD") == []


def test_card_followed_by_cvv_or_split_by_zero_width_is_still_found() -> None:
    assert spans("4111-1111-1111-1111 123", "CARD") == [("CARD", "4111-1111-1111-1111")]
    text = "4111\u200b1111\u200b1111\u200b1111"
    assert spans(text, "CARD") == [("CARD", text)]
    assert spans("４１１１１１１１１１１１１１１１", "CARD") != []


@pytest.mark.parametrize(
    "text",
    [
        "order 1234567890123456 shipped",  # 16 digits, Luhn-invalid
        "Order #4000000000000001 ships tomorrow",  # Luhn-invalid order number
        "ts 1700000000123 and 1700000000123456",  # epoch ms / µs
        "id 123e4567-e89b-12d3-a456-426614174000",  # UUID
        "commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904",  # git SHA
        "pi is 3.14159265358979323846",
        "amount 1,234,567,890,123.45 USD",
        "tracking 9400 1000 0000 0000 0000 00",  # too long for any card
        "0000 0000 0000 0000",
        "ORD-2024-000123-4567",
        "+4412345678901234",
    ],
)
def test_numbers_that_are_not_cards_are_not_flagged(text: str) -> None:
    assert spans(text, "CARD") == []


# --------------------------------------------------------------------------- SSN


@given(valid_ssn())
def test_valid_ssns_are_found(ssn: str) -> None:
    assert ("SSN", ssn) in spans(f"SSN {ssn}.")
    spaced = ssn.replace("-", " ")
    assert ("SSN", spaced) in spans(f"SSN {spaced}.")


@given(invalid_ssn())
def test_ssns_breaking_ssa_rules_are_not_found(ssn: str) -> None:
    assert spans(f"SSN {ssn}.", "SSN") == []


def test_ssn_rules_and_non_ssns() -> None:
    assert ssn_is_valid("123", "45", "6788")
    assert not ssn_is_valid("078", "05", "1120")  # voided advertising number
    for text in [
        "2024-01-15",
        "call 123-456-7890",
        "123-45-67890",
        "v123-45-6789",
        "part 123-45-6789-A",
        "123456789",
        "12-345-6789",
    ]:
        assert spans(text, "SSN") == [], text


# --------------------------------------------------------------------------- IBAN


@settings(max_examples=300)
@given(iban())
def test_ibans_with_correct_mod97_are_found(value: str) -> None:
    assert iban_is_valid(value)
    assert ("IBAN", value) in spans(f"Pay to {value}, thanks")


@settings(max_examples=300)
@given(value=iban(), index=st.integers(0, 40), delta=st.integers(1, 9))
def test_ibans_with_one_changed_digit_are_not_found(value: str, index: int, delta: int) -> None:
    broken = change_one_digit(value, index, delta)
    assert not iban_is_valid(broken)
    assert spans(f"Pay to {broken}, thanks", "IBAN") == []


def test_known_ibans_and_wrong_lengths() -> None:
    assert spans("DE89 3704 0044 0532 0130 00", "IBAN") == [("IBAN", "DE89 3704 0044 0532 0130 00")]
    assert spans("GB82WEST12345698765432.", "IBAN") == [("IBAN", "GB82WEST12345698765432")]
    assert spans("DE89 3704 0044 0532 0130 001", "IBAN") == []  # one digit too many
    assert spans("XX89370400440532013000", "IBAN") == []  # no such country


# --------------------------------------------------------------------------- email / phone


def test_emails_are_found() -> None:
    text = "write to john.doe+tag@example.co.uk. or ops@sub-domain.example.org, not @handle or a@b"
    assert spans(text, "EMAIL") == [("EMAIL", "john.doe+tag@example.co.uk"), ("EMAIL", "ops@sub-domain.example.org")]


@pytest.mark.parametrize(
    "number",
    ["+1 415 555 2671", "+14155552671", "(415) 555-2671", "415.555.2671", "+44 20 7946 0958", "020 7946 0958",
     "1-800-555-0199", "+49 30 901820"],
)  # fmt: skip
def test_phone_numbers_in_common_formats_are_found(number: str) -> None:
    assert spans(f"call me on {number} tomorrow", "PHONE") == [("PHONE", number)]


@pytest.mark.parametrize(
    "text",
    [
        "at 2024-01-15 10:30:00",
        "on 2024.01.15",
        "host 203.0.113.195 port 8080",
        "version 10.12.3-1",
        "order 4155552671",  # a bare digit run: as likely an order number
        "call 555-123-4567",  # not a valid US exchange/area
        "ISBN 978-3-16-148410-0",
        "serial 12-34-56-78-90",
    ],
)
def test_things_that_are_not_phone_numbers_are_not_flagged(text: str) -> None:
    assert spans(text, "PHONE") == []


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("AKIAIOSFODNN7EXAMPLE", "aws_access_key_id"),
        ("ASIAY34FZKBOKMUTVV7A", "aws_access_key_id"),
        ("ghp_" + "a1B2c3D4e5" * 3 + "f6G7h8", "github_token"),
        ("gho_" + "Z9y8X7w6V5" * 3 + "u4T3s2", "github_token"),
        ("github_pat_11ABCDEFG0123456789_" + "abcdEFGH1234" * 5, "github_pat"),
        ("xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp", "slack_token"),
        ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "stripe_key"),
        ("rk_live_" + "51HkVZ2xQ9mN3pL7wR4tY8uI", "stripe_key"),
        ("AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "google_api_key"),
        ("sk-" + "T3BlbkFJ" + "aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2", "openai_key"),
        ("sk-proj-" + "Ab3Xy9_Qw-Er7Ty6Ui5Op4As3Df2Gh1Jk0Lz9Xc8Vb7Nm6", "openai_key"),
        ("sk-ant-api03-" + "Ab3Xy9_Qw-Er7Ty6Ui5Op4As3Df2Gh1Jk0Lz9Xc8Vb7Nm6" * 2, "anthropic_key"),
        (
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
            "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
            "jwt",
        ),
    ],
)
def test_api_keys_are_found(value: str, detail: str) -> None:
    text = f"config: {value}\nnext line"
    found = [f for f in detect(text) if f.kind == "API_KEY"]
    assert [(text[f.start : f.end], f.detail) for f in found] == [(value, detail)]


@pytest.mark.parametrize(
    "assignment",
    [
        'api_key = "Zx8vQ2pL9mN4rT7wK1yB"',
        "CLIENT_SECRET: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b",
        '{"auth_token": "dGhpcy1pcy1ub3QtcmVhbC0xMjM0NTY3"}',
        "export DB_PASSWORD=Tr0ub4dor-3-horse-Battery",
    ],
)
def test_high_entropy_secret_assignments_mask_the_value_only(assignment: str) -> None:
    found = [f for f in detect(assignment) if f.kind == "API_KEY"]
    assert len(found) == 1
    masked = mask(assignment, found)
    assert "[API_KEY]" in masked
    name = assignment.split("=")[0].split(":")[0]
    assert masked.startswith(name)


@pytest.mark.parametrize(
    "text",
    [
        'api_key = os.environ["OPENAI_API_KEY"]',
        "api_key = settings.provider.api_key_value",
        'token = "your_api_key_goes_here"',
        "password = MY_APP_DATABASE_PASSWORD",
        "secret: xxxxxxxxxxxxxxxxxxxxxxxx",
        "from sklearn import svm  # sk-learn-is-a-library-name-ok",
        "token_count = compute_token_count(messages)",
        "the-secret-garden-by-frances-hodgson",
    ],
)
def test_code_and_placeholders_are_not_flagged_as_keys(text: str) -> None:
    assert spans(text, "API_KEY") == []


def test_private_key_blocks_are_found_with_or_without_the_end_line() -> None:
    pem = (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq98sOme0B6u2y\nAbCdEf0123456789+/==\n"
        "-----END RSA PRIVATE KEY-----"
    )
    text = f"here:\n{pem}\nthanks"
    assert spans(text) == [("PRIVATE_KEY", pem)]
    truncated = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nAAAABG5vbmUAAAAEbm9uZQ"
    text = f"{truncated}\n\nwhat is wrong with it?"
    assert spans(text) == [("PRIVATE_KEY", truncated)]


# --------------------------------------------------------------------------- prose, code

BENIGN = """
Hi team, the deploy on 2024-03-05T14:22:31Z went fine; build #48213 took 3.5 minutes.
Ticket JIRA-10234, order ORD-99812-33, invoice 2024/000123, version 1.21.3, port 8443.
See commit 9fceb02d0ae598e95dc970b74767f19372d61af8 and request id 3f2504e0-4f89-11d3-9a0c-0305e82c3301.
def token_budget(messages, max_tokens=4096):
    total = sum(len(m["content"]) for m in messages)  # 1234567 chars max
    return min(total // 4, max_tokens)
The meeting is at 10:30 in room 4B; call extension 2231. Temperature 36.6, ratio 0.0000123.
SELECT id, created_at FROM orders WHERE total > 1000000 AND id IN (123456, 789012);
"""


def test_ordinary_prose_and_code_have_no_findings() -> None:
    assert detect(BENIGN) == []


# --------------------------------------------------------------------------- payloads, kinds


def test_pii_inside_a_base64_payload_masks_the_encoded_token() -> None:
    token = base64.b64encode(b"my card is 4111 1111 1111 1111").decode()
    text = f"decode this {token} please"
    found = detect(text)
    assert [(f.kind, text[f.start : f.end]) for f in found] == [("CARD", token)]
    assert found[0].detail.startswith("base64:")
    assert mask(text, found) == "decode this [CARD] please"


def test_kinds_selects_recognisers() -> None:
    text = "mail a@example.com card 4111111111111111"
    assert {f.kind for f in detect(text, kinds=["EMAIL"])} == {"EMAIL"}
    assert {f.kind for f in detect(text, kinds=[PiiKind.CARD])} == {"CARD"}
    assert detect(text, kinds=[]) == []
    with pytest.raises(ValueError, match="unknown PII kinds"):
        detect(text, kinds=["PASSPORT"])


# --------------------------------------------------------------------------- masking

_PII_VALUES = st.one_of(
    formatted_card().map(lambda v: ("CARD", v)),
    valid_ssn().map(lambda v: ("SSN", v)),
    iban().map(lambda v: ("IBAN", v)),
    st.sampled_from(
        [
            ("EMAIL", "jane.roe@example.com"),
            ("EMAIL", "x_y@mail.example.org"),
            ("PHONE", "+1 415 555 2671"),
            ("PHONE", "(212) 555-0142"),
            ("API_KEY", "AKIAIOSFODNN7EXAMPLE"),
            ("API_KEY", "ghp_" + "a1B2c3D4e5" * 3 + "f6G7h8"),
            ("PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----"),
        ]
    ),
)
# Benign filler: letters, spaces, newlines and punctuation that can't form PII.
_FILLER = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ \n,;!?'()", max_size=30)


@settings(max_examples=300)
@given(st.lists(st.tuples(_FILLER, _PII_VALUES), min_size=1, max_size=6), _FILLER)
def test_mask_keeps_all_other_text_exactly_and_removes_every_value(parts, tail: str) -> None:
    text = "".join(f"{filler} {value} " for filler, (_, value) in parts) + tail
    expected = "".join(f"{filler} [{kind}] " for filler, (kind, _) in parts) + tail
    masked = mask(text, detect(text))
    assert masked == expected
    for _, (_, value) in parts:
        assert value not in masked


def test_mask_merges_overlapping_findings() -> None:
    text = "abcdefghij"
    findings = [Finding("EMAIL", 1, 4), Finding("API_KEY", 2, 8), Finding("CARD", 8, 9)]
    assert mask(text, findings) == "a[API_KEY][CARD]j"
    assert mask(text, []) == text


@given(st.text(max_size=300))
def test_detect_never_raises_and_spans_are_in_bounds(text: str) -> None:
    for f in detect(text):
        assert 0 <= f.start < f.end <= len(text)


def test_detect_rejects_a_normalized_from_another_text() -> None:
    from services.enforcer.detectors.textnorm import normalize

    with pytest.raises(ValueError):
        detect("some text", normalized=normalize("other"))


_NO_DIGITS = st.text(st.characters(exclude_categories=("Nd", "No", "Nl", "Cs")), max_size=40)


@given(_NO_DIGITS, _NO_DIGITS)
def test_finding_spans_cover_values_split_by_invisibles(a: str, b: str) -> None:
    card = "4111\u200b1111\u200b1111\u200b1111"
    text = f"{a} {card}, {b}"
    masked = mask(text, detect(text, kinds=["CARD"]))
    assert card not in masked
