"""Tier-0 detectors (`run_tier0`: normalisation, PII recognisers, blocklist) on hostile
shapes: time grows linearly with the input, and a planted value is found whatever junk
surrounds it."""

from __future__ import annotations

import random
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.enforcer.detectors import Blocklist, run_tier0
from services.enforcer.detectors.pii import PiiKind, detect
from services.enforcer.detectors.textnorm import Signal, normalize
from tests.unit.linear_time.growth import assert_linear, repeat_to

_RNG = random.Random(11)
_TERMS = ["".join(_RNG.choices(string.ascii_lowercase, k=_RNG.randint(4, 10))) for _ in range(500)]
BLOCKLIST = Blocklist([*_TERMS, "password", "bad phrase", "a", "p a", "炸弹", "$$$"])

#: name -> a function of n making n characters of that shape.
SHAPES = {
    "long digit run": lambda n: "1" * n,
    "digits and spaces": lambda n: repeat_to("1 ", n),
    "digits and dashes": lambda n: repeat_to("12-", n),
    "phone numbers": lambda n: repeat_to("(415) 555-2671 ", n),
    "card numbers": lambda n: repeat_to("4111 1111 1111 1111 ", n),
    "SSNs": lambda n: repeat_to("123-45-6789 ", n),
    "IBANs": lambda n: repeat_to("DE89 3704 0044 0532 0130 00 ", n),
    "IBAN-like starts": lambda n: repeat_to("GB12", n),
    "capitals run": lambda n: "A" * n,
    "e-mail addresses": lambda n: repeat_to("a@b.co ", n),
    "one @, then labels": lambda n: "x@" + repeat_to("a.", n),
    "@ and hyphens": lambda n: repeat_to("@" + "a-" * 40 + " ", n),
    "one long local part": lambda n: "a" * (n - 5) + "@b.co",
    "PEM BEGIN lines without END": lambda n: repeat_to("-----BEGIN PRIVATE KEY-----\n", n),
    "PEM blocks": lambda n: repeat_to("-----BEGIN RSA PRIVATE KEY-----\nAAAAAAAA\n-----END RSA PRIVATE KEY-----\n", n),
    "PEM BEGIN and words": lambda n: "-----BEGIN " + repeat_to("A ", n),
    "JWT-like tokens": lambda n: repeat_to("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.", n),
    "one eyJ token": lambda n: "eyJ" + "a" * n,
    "secret assignments": lambda n: repeat_to("password=aB3dE5gH7jK9mN1pQ ", n),
    "secret anchors": lambda n: repeat_to("api_key=", n),
    "key prefixes": lambda n: repeat_to("sk-", n),
    "blocklist terms": lambda n: repeat_to(" ".join(_TERMS), n),
    "one-letter words": lambda n: repeat_to("a ", n),
    "spaced-out letters": lambda n: repeat_to("p a s s w o r d ", n),
    "CJK": lambda n: repeat_to("炸弹制作方法", n),
    "CJK glued to Latin": lambda n: repeat_to("a炸 b", n),
    "punctuation between letters": lambda n: repeat_to("a.", n),
    "everything at once": lambda n: repeat_to(
        "раss\u200bword %41%42 &#65; \\u0041 炸弹 4111 1111 1111 1111 a@b.co (415) 555-2671 ", n
    ),
}


def _tier0(text: str) -> object:
    return run_tier0(text, BLOCKLIST)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_run_tier0_time_grows_linearly(shape: str) -> None:
    assert_linear(_tier0, SHAPES[shape])


def test_pem_begin_lines_take_linear_time() -> None:
    # Each BEGIN searched up to 64 KB ahead for an END line, and a block with none
    # copied the whole text before it to strip its end.
    assert_linear(lambda t: detect(t, [PiiKind.PRIVATE_KEY]), SHAPES["PEM BEGIN lines without END"])


# ----------------------------------------------------------------- correctness

_JUNK_ATOMS = [
    "%41", "\\u0041", "&#65;", "QUFBQUFBQUFBQUFBQUFBQQ==", "1", "12-", "4111", "@", "a.", "\u200b", "\u0301",
    "р", "炸", "Ａ", "\U000e0041", " ", "\t", "-----BEGIN ", "eyJ", "api_key=", "GB12", "x",
]  # fmt: skip
_JUNK = st.lists(st.sampled_from(_JUNK_ATOMS), max_size=40).map("".join)

_PLANTED = {
    PiiKind.EMAIL: "jane.roe@example.com",
    PiiKind.CARD: "4111 1111 1111 1111",
    PiiKind.SSN: "219-09-9998",
    PiiKind.IBAN: "DE89 3704 0044 0532 0130 00",
    PiiKind.API_KEY: "AKIAIOSFODNN7EXAMPLE",
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(_PLANTED)), before=_JUNK, after=_JUNK, repeat=st.integers(1, 200))
def test_planted_pii_is_masked_whatever_junk_surrounds_it(kind: str, before: str, after: str, repeat: int) -> None:
    value = _PLANTED[kind]
    text = before * repeat + "\n" + value + "\n" + after * repeat
    start = len(before) * repeat + 1
    findings = detect(text)
    # Covered by some finding (a wider one may absorb it: masking still hides it).
    assert any(f.start <= start and start + len(value) <= f.end for f in findings), kind
    assert value not in run_tier0(text, None).redact(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(term=st.sampled_from(["password", "bad phrase", "炸弹"]), before=_JUNK, after=_JUNK, repeat=st.integers(1, 200))
def test_planted_blocklist_term_is_found_whatever_junk_surrounds_it(
    term: str, before: str, after: str, repeat: int
) -> None:
    text = before * repeat + "\n" + term + "\n" + after * repeat
    assert term in run_tier0(text, BLOCKLIST).blocklist_hits


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    filler=st.sampled_from(["QUFBQUFBQUFBQUFBQUFBQQ== ", "%41%42 ", "aaaa ", "x" * 300]), size=st.integers(0, 200_000)
)
def test_an_encoded_term_after_junk_is_found_or_the_decode_limit_is_signalled(filler: str, size: int) -> None:
    # Decoding is bounded (bytes and payload count per request): past the bound the
    # request says so (`decode_limit`) for policy to act on, rather than spend more.
    text = repeat_to(filler, size) + " cGFzc3dvcmQgaXMgc2VjcmV0"  # base64("password is secret")
    n = normalize(text)
    found = "password" in BLOCKLIST.match(n)
    assert found or Signal.DECODE_LIMIT in n.signals


def test_redacting_every_field_is_linear_however_many_values_were_found() -> None:
    """ext_proc's REDACT masks one tier-0 run's findings in every field of the body: with
    thousands of distinct e-mail addresses found, building the matcher and masking the
    fields still grows linearly with the body."""

    def make(n: int) -> str:
        return "".join(f"u{i}@example.com " for i in range(n // 18))[:n]

    def redact_all(text: str) -> str:
        return run_tier0(text, None, [PiiKind.EMAIL]).redactor(text)(text)

    assert_linear(redact_all, make)
    text = make(4096)
    assert "@example.com" not in redact_all(text).replace("[EMAIL]", "")
