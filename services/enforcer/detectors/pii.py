"""PII and secret recognisers with validation, reporting spans in the ORIGINAL text.

Why validation: a pattern alone flags every 16-digit order number as a card and every
9-digit id as an SSN, and a policy that REDACTs or BLOCKs on that is useless. Each
recogniser here pairs a cheap candidate pattern with the check the issuer defines:
Luhn and issuer prefixes for cards, SSA allocation rules for SSNs, the IBAN registry's
per-country length and ISO 7064 mod-97, libphonenumber's metadata for phone numbers,
a decodable header for JWTs, entropy for generic `api_key = "..."` assignments.

Detectors scan `textnorm`'s *view* of the text (invisible characters removed,
fullwidth digits folded) and map spans back, so "4111\u200b1111..." is found and its
mask covers the zero-width space too. Payloads that `textnorm` decoded (base64, hex...)
are scanned as well; a finding inside one masks the whole encoded token. Rewrites of the
whole text (letters spaced out, leetspeak, ROT13) are not: they are for word filters and
the classifier, and a finding in one would mask the whole text.

Findings hold kinds and offsets only, never the matched value, so they are safe to log.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher

from services.enforcer.detectors.textnorm import Normalized, normalize

__all__ = [
    "ALL_KINDS",
    "DEFAULT_PHONE_REGIONS",
    "Finding",
    "PiiKind",
    "detect",
    "iban_is_valid",
    "luhn_is_valid",
    "mask",
    "ssn_is_valid",
]


class PiiKind(StrEnum):
    CARD = "CARD"
    EMAIL = "EMAIL"
    PHONE = "PHONE"
    SSN = "SSN"
    IBAN = "IBAN"
    API_KEY = "API_KEY"
    PRIVATE_KEY = "PRIVATE_KEY"


ALL_KINDS: frozenset[PiiKind] = frozenset(PiiKind)

#: Regions whose national formats are recognised without a "+country" prefix.
#: International numbers ("+44 20 7946 0958") are recognised whatever this says.
DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US", "GB")


@dataclass(frozen=True, slots=True)
class Finding:
    """One recognised value: its kind and its span [start, end) in the original text.
    `detail` says which recogniser (e.g. "visa", "aws_access_key_id", "base64:email")."""

    kind: str
    start: int
    end: int
    detail: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad span ({self.start}, {self.end})")


_Hit = tuple[str, int, int, str]  # kind, start, end, detail (in the scanned string)


# --------------------------------------------------------------------------- cards


def luhn_is_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_brand(digits: str) -> str | None:
    """The scheme whose issuer prefix (IIN) and length `digits` fits, else None."""
    n = len(digits)
    if not 13 <= n <= 19:
        return None
    p1, p2, p3, p4, p6 = int(digits[0]), int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if p1 == 4 and n in (13, 16, 19):
        return "visa"
    if (51 <= p2 <= 55 or 2221 <= p4 <= 2720) and n == 16:
        return "mastercard"
    if p2 in (34, 37) and n == 15:
        return "amex"
    if (p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or 622126 <= p6 <= 622925) and n >= 16:
        return "discover"
    if (300 <= p3 <= 305 or p4 == 3095 or p2 in (36, 38, 39)) and n >= 14:
        return "diners"
    if 3528 <= p4 <= 3589 and n >= 16:
        return "jcb"
    if 2200 <= p4 <= 2204 and n >= 16:
        return "mir"
    if p2 in (62, 81) and n >= 16:
        return "unionpay"
    if p2 in (60, 82) or p3 == 508:
        return "rupay" if n == 16 else None
    if p4 in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763) or p2 in (50, 56, 57, 58, 63, 67):
        return "maestro"
    return None


# Digits with optional single space/dash separators; not glued to words, decimals,
# "+country" prefixes or longer digit runs. ASCII digits only ([0-9], not \d): the view
# has fullwidth digits folded already, and Luhn needs ASCII.
_CARD_RE = re.compile(r"(?<![\w.+\-])[0-9](?:[ \-]?[0-9]){12,18}(?!\w|[.,\-][0-9])")
_SEP_RE = re.compile(r"[ \-]")


def _valid_card(candidate: str) -> str | None:
    digits = _SEP_RE.sub("", candidate)
    if len(set(digits)) == 1 or not luhn_is_valid(digits):
        return None
    return card_brand(digits)


def _cards(text: str, start: int = 0, end: int | None = None) -> Iterator[_Hit]:
    for m in _CARD_RE.finditer(text, start, len(text) if end is None else end):
        value = m.group()
        brand = _valid_card(value)
        if brand:
            yield PiiKind.CARD, m.start(), m.end(), brand
            continue
        # "4111-1111-1111-1111 123" (a CVV after it): where the separator changes, try
        # each consistently separated part alone. A consistently grouped run is taken
        # whole or not at all: "4-4-4-4-3" may be a 19-digit number, not a card + CVV.
        seps = _SEP_RE.findall(value)
        if len(set(seps)) < 2:
            continue
        for part in _consistent_parts(value):
            brand = _valid_card(value[part[0] : part[1]])
            if brand:
                yield PiiKind.CARD, m.start() + part[0], m.start() + part[1], brand


def _consistent_parts(value: str) -> list[tuple[int, int]]:
    """Split "4111-1111-1111-1111 123" at separator changes: [(0, 19), (20, 23)]."""
    parts: list[tuple[int, int]] = []
    start, sep = 0, ""
    for m in _SEP_RE.finditer(value):
        if sep and m.group() != sep:
            parts.append((start, m.start()))
            start = m.end()
        sep = m.group()
    parts.append((start, len(value)))
    return parts


# --------------------------------------------------------------------------- SSN

_SSN_RE = re.compile(r"(?<![\w\-.])([0-9]{3})([\- ])([0-9]{2})\2([0-9]{4})(?![\w\-]|[.,][0-9])")
# Numbers the SSA has voided after they were printed in advertising.
_SSN_VOID = frozenset({"078051120", "219099999", "123456789"})


def ssn_is_valid(area: str, group: str, serial: str) -> bool:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000."""
    a = int(area)
    return (
        a != 0
        and a != 666
        and a < 900
        and group != "00"
        and serial != "0000"
        and (area + group + serial) not in _SSN_VOID
    )


def _ssns(text: str, start: int = 0, end: int | None = None) -> Iterator[_Hit]:
    for m in _SSN_RE.finditer(text, start, len(text) if end is None else end):
        if ssn_is_valid(m.group(1), m.group(3), m.group(4)):
            yield PiiKind.SSN, m.start(), m.end(), "us_ssn"


# --------------------------------------------------------------------------- e-mail

# The domain part, matched right after an "@"; the local part is walked back from it.
_EMAIL_DOMAIN_RE = re.compile(r"(?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63}(?![\w\-]|\.[^\W_])")
_LOCAL_EDGE = frozenset("%+-")  # besides letters and digits, what a local part may start/end with


def _is_local_char(ch: str) -> bool:
    return ch.isalnum() or ch in "._%+-"


def _emails(text: str) -> Iterator[_Hit]:
    """From each "@": the domain by regex, the local part by walking back at most 64
    characters (a regex over the whole text costs far more than a walk per "@")."""
    pos = 0
    while (at := text.find("@", pos)) >= 0:
        pos = at + 1
        d = _EMAIL_DOMAIN_RE.match(text, at + 1)
        if d is None:
            continue
        start = at
        while start > 0 and at - start < 65 and _is_local_char(text[start - 1]):
            start -= 1
        if start > 0 and _is_local_char(text[start - 1]):
            continue  # a local part longer than 64 characters
        while start < at and text[start] == ".":
            start += 1  # "...user@": the dots are punctuation, not the address
        local = text[start:at]
        if not local or local.endswith(".") or ".." in local or d.end() - start > 254:
            continue
        if not (local[0].isalnum() or local[0] == "_" or local[0] in _LOCAL_EDGE):
            continue
        yield PiiKind.EMAIL, start, d.end(), "email"
        pos = d.end()


# --------------------------------------------------------------------------- phone

# A cheap gate: digits with single phone-like separators (a separator must be followed
# by a digit or "("). libphonenumber decides, and finds the number inside the run.
_PHONE_RE = re.compile(
    r"(?<![\w+./\-:])\+?\(?[0-9]"
    r"(?:[0-9]|\)|\((?=[0-9])|[ .\-](?=[0-9(])){5,40}"
    r"(?<=[0-9])(?![\w/:]|[.\-][0-9])"
)
_IPV4_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


def _phone_verdict(cand: str, regions: tuple[str, ...]) -> list[tuple[int, int, str]]:
    """libphonenumber's verdict on one candidate run: (start, end, region) of each
    number in it (~150 µs a run: only runs that passed the cheap gate get here)."""
    tries = ("ZZ",) if cand.startswith("+") else regions
    found: list[tuple[int, int, str]] = []
    for region in tries:
        # STRICT_GROUPING: the written groups must match how that country writes
        # numbers, which rejects dates, timestamps and arbitrary digit groups.
        for match in PhoneNumberMatcher(cand, region, leniency=Leniency.STRICT_GROUPING):
            if any(s < match.end and match.start < e for s, e, _ in found):
                continue
            raw = match.raw_string
            # A bare national digit run is as likely an order number: formatted only.
            if not raw.startswith("+") and not any(ch in raw for ch in " .-("):
                continue
            region_code = phonenumbers.region_code_for_number(match.number) or region
            found.append((match.start, match.end, region_code))
        if found and found[0][:2] == (0, len(cand)):
            break  # the whole run is one number: no other region needs asking
    return found


#: libphonenumber runs allowed per `detect` call (~150 µs each). Past it, phone-shaped
#: runs of 7-15 digits are reported unverified ("phone_unverified"): over-masking a
#: hostile wall of digits is better than spending a second on it, or leaking a number.
MAX_PHONE_VERDICTS = 64


class _PhoneBudget:
    __slots__ = ("left",)

    def __init__(self, left: int = MAX_PHONE_VERDICTS) -> None:
        self.left = left


def _phones(
    text: str,
    regions: Sequence[str],
    start: int = 0,
    end: int | None = None,
    taken: Sequence[tuple[int, int]] = (),
    budget: _PhoneBudget | None = None,
) -> Iterator[_Hit]:
    """`taken`: sorted, non-overlapping spans already claimed by a card, SSN or IBAN;
    a run inside one is not tried as a phone number."""
    budget = budget if budget is not None else _PhoneBudget()
    taken_starts = [s for s, _ in taken]
    region_key = tuple(regions)
    for m in _PHONE_RE.finditer(text, start, len(text) if end is None else end):
        cand = m.group()
        i = bisect_right(taken_starts, m.start()) - 1
        if (i >= 0 and m.end() <= taken[i][1]) or _IPV4_RE.fullmatch(cand):
            continue
        if budget.left <= 0:
            if 7 <= sum(ch.isdigit() for ch in cand) <= 15:
                yield PiiKind.PHONE, m.start(), m.end(), "phone_unverified"
            continue
        budget.left -= 1
        for s, e, region_code in _phone_verdict(cand, region_key):
            yield PiiKind.PHONE, m.start() + s, m.start() + e, f"phone_{region_code}"


# --------------------------------------------------------------------------- IBAN

# SWIFT IBAN registry: country -> total IBAN length.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

_IBAN_START_RE = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})([0-9]{2})(?=[ ]?[A-Z0-9])")


def iban_is_valid(iban: str) -> bool:
    """Country length from the registry and ISO 7064 mod-97 == 1 (spaces ignored)."""
    s = iban.replace(" ", "").upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s) or not s.isalnum() or not s.isascii() or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _ibans(text: str, start: int = 0, end: int | None = None) -> Iterator[_Hit]:
    n = len(text)
    for m in _IBAN_START_RE.finditer(text, start, n if end is None else end):
        length = IBAN_LENGTHS.get(m.group(1))
        if length is None:
            continue
        # Walk alphanumerics, single spaces allowed between them, until the registry
        # length; the IBAN must end at a word boundary there.
        i, count, iban_end = m.start(), 0, -1
        while i < n and count < length:
            ch = text[i]
            if ch.isascii() and (ch.isdigit() or ch.isupper()):
                count += 1
                i += 1
                if count == length:
                    iban_end = i
            elif ch == " " and 0 < count and i + 1 < n and text[i + 1] != " ":
                i += 1
            else:
                break
        if iban_end < 0 or (iban_end < n and (text[iban_end].isalnum() or text[iban_end] == "_")):
            continue
        if iban_is_valid(text[m.start() : iban_end]):
            yield PiiKind.IBAN, m.start(), iban_end, f"iban_{m.group(1)}"


# --------------------------------------------------------------------------- secrets


def shannon_entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values()) if n else 0.0


def _has_digit_and_letter(s: str) -> bool:
    return any(c.isdigit() for c in s) and any(c.isalpha() for c in s)


def _jwt_ok(value: str) -> bool:
    header = value.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(decoded, dict) and ("alg" in decoded or "typ" in decoded)


_DOTTED_IDENT = re.compile(r"[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+")
_CONSTANT_OR_IDENT = re.compile(r"[A-Z][A-Z0-9_]*|[a-z_][a-z0-9_]*|[a-z]+(?:[A-Z][a-z]+)+\d*")


def _generic_secret_ok(value: str) -> bool:
    """A value assigned to a secret-sounding name is a secret only if it looks random:
    not an identifier, env-var name or dotted path, with mixed character classes and
    high entropy (placeholders like "your_api_key_here" fail)."""
    if _DOTTED_IDENT.fullmatch(value) or _CONSTANT_OR_IDENT.fullmatch(value):
        return False
    classes = sum((any(c.islower() for c in value), any(c.isupper() for c in value), any(c.isdigit() for c in value)))
    if classes < 2:
        return False
    threshold = 3.0 if len(value) < 24 else 3.5
    return shannon_entropy(value) >= threshold


_B = r"(?<![A-Za-z0-9_\-])"  # token start
_E = r"(?![A-Za-z0-9_\-])"  # token end

# (detail, substrings one of which must be present, pattern, validator or None)
_SECRET_PATTERNS: tuple[tuple[str, tuple[str, ...], re.Pattern[str], Callable[[str], bool] | None], ...] = (
    (
        "aws_access_key_id",
        ("AKIA", "ASIA"),
        re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
        None,
    ),
    (
        "github_token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
        re.compile(_B + r"gh[pousr]_[A-Za-z0-9]{36,255}" + _E),
        None,
    ),
    ("github_pat", ("github_pat_",), re.compile(_B + r"github_pat_[A-Za-z0-9_]{60,255}" + _E), None),
    ("slack_token", ("xox",), re.compile(_B + r"xox[abposre]-[A-Za-z0-9\-]{10,250}" + _E), _has_digit_and_letter),
    (
        "slack_webhook",
        ("hooks.slack.com",),
        re.compile(r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_\-]{20,}"),
        None,
    ),
    # Secret and restricted keys; publishable "pk_" keys are public by design.
    ("stripe_key", ("_live_",), re.compile(_B + r"(?:sk|rk)_live_[A-Za-z0-9]{16,250}" + _E), None),
    ("stripe_test_key", ("_test_",), re.compile(_B + r"(?:sk|rk)_test_[A-Za-z0-9]{16,250}" + _E), None),
    ("google_api_key", ("AIza",), re.compile(_B + r"AIza[A-Za-z0-9_\-]{35}" + _E), None),
    ("anthropic_key", ("sk-ant-",), re.compile(_B + r"sk-ant-[A-Za-z0-9_\-]{20,250}" + _E), None),
    (
        "openai_key",
        ("sk-",),
        re.compile(_B + r"sk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,250}" + _E),
        _has_digit_and_letter,
    ),
    (
        "jwt",
        ("eyJ",),
        re.compile(_B + r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*" + _E),
        _jwt_ok,
    ),
)

# `name = "value"` where the name sounds secret. Matched on a lower-cased, same-length
# copy of the text, only at occurrences of the anchor words (str.find, not a regex
# walk over the whole text); the value is read from the original.
_GENERIC_ANCHORS = ("api", "access", "private", "secret", "token", "passw", "pwd", "credential", "auth")
_GENERIC_SECRET_RE = re.compile(
    r"(?:api[_\-]?key|apikey|access[_\-]?key|private[_\-]?key|secret|token|passw(?:or)?d|pwd|credentials?|auth)"
    r"[a-z0-9_.\-]{0,40}[\"']?[ \t]{0,3}(?::=|=>|=|:)[ \t]{0,3}(?:[rbu]?[\"'`])?"
    r"([a-z0-9_\-+/.~]{16,512}={0,2})"
)
_MAX_GENERIC_ATTEMPTS = 512  # anchor words tried per text: "api_key=" x 10,000 is work too


def _generic_secrets(text: str) -> Iterator[_Hit]:
    if "=" not in text and ":" not in text:
        return
    low = text.lower() if text.isascii() else text.encode("ascii", "replace").decode("ascii").lower()
    seen: set[int] = set()
    attempts = 0
    for anchor in _GENERIC_ANCHORS:
        pos = 0
        while (i := low.find(anchor, pos)) >= 0 and attempts < _MAX_GENERIC_ATTEMPTS:
            attempts += 1
            pos = i + 1
            # The secret-sounding word may be the end of a longer name ("db_password"):
            # the regex starts at a keyword, so try from here only.
            m = _GENERIC_SECRET_RE.match(low, i)
            if m is None or m.start(1) in seen:
                continue
            seen.add(m.start(1))
            value = text[m.start(1) : m.end(1)]
            if _generic_secret_ok(value):
                yield PiiKind.API_KEY, m.start(1), m.end(1), "generic_secret"


def _api_keys(text: str) -> Iterator[_Hit]:
    for detail, gates, rx, ok in _SECRET_PATTERNS:
        if not any(g in text for g in gates):
            continue
        for m in rx.finditer(text):
            value = m.group()
            if ok is None or ok(value):
                yield PiiKind.API_KEY, m.start(), m.end(), detail
    yield from _generic_secrets(text)


_PEM_BEGIN_RE = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY(?: BLOCK)?-----")
_PEM_END_RE = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
# Without an END line (a truncated paste), the key runs over the whole lines that
# follow it and are PEM headers, base64 or blank.
_PEM_BODY_RE = re.compile(
    r"(?:[ \t]*\r?\n"
    r"(?:(?:Proc-Type|DEK-Info|Comment):[^\n]*|[A-Za-z0-9+/=]{8,}[ \t]*(?=\r?\n|$)|[ \t]*(?=\r?\n|$)))*"
)
_PEM_MAX = 64 * 1024


def _private_keys(text: str) -> Iterator[_Hit]:
    """PEM private-key blocks: BEGIN to END (within `_PEM_MAX`), or BEGIN and the PEM
    lines that follow it when there is no END.

    Linear however many BEGIN lines a text holds: the next END line is searched once
    and reused by every BEGIN before it (searching `_PEM_MAX` ahead of each BEGIN
    anew cost 64 KB per line on a wall of BEGIN lines), and a truncated block's end is
    found by stripping only its own body, not the whole text before it.
    """
    if "PRIVATE KEY" not in text:
        return
    pos = 0
    next_end: re.Match[str] | None = None
    end_searched_from = -1  # no END line starts in [end_searched_from, next_end's start)
    while (m := _PEM_BEGIN_RE.search(text, pos)) is not None:
        if (next_end is None and end_searched_from < 0) or (next_end is not None and next_end.start() < m.end()):
            next_end = _PEM_END_RE.search(text, m.end())
            end_searched_from = m.end()
        # An END line that starts after this BEGIN is the first one after it: nothing
        # in between matched when it was searched, and END lines cannot overlap.
        if next_end is not None and next_end.end() <= m.end() + _PEM_MAX:
            end = next_end.end()
        else:
            body = _PEM_BODY_RE.match(text, m.end())
            end = m.end() + len(text[m.end() : body.end()].rstrip()) if body else m.end()
        label = m.group(1).strip().lower().replace(" ", "_") or "pkcs8"
        yield PiiKind.PRIVATE_KEY, m.start(), end, f"private_key_{label}"
        pos = end


# --------------------------------------------------------------------------- driver


# Digits -> "0", everything else -> " " (non-ASCII too, after encode(errors="replace"),
# which keeps one byte per character so offsets stay the same).
_DIGIT_MASK = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_WINDOW_MIN_DIGITS = 7  # the fewest digits any number-shaped recogniser needs (a phone)
_WINDOW_GAP = 4  # digit runs this close belong to one number ("GB82WEST1234...")
_WINDOW_MARGIN = 48  # context kept around a cluster: IBAN letters, look-behinds


def _digit_windows(text: str) -> list[tuple[int, int]]:
    """Regions of `text` around clusters of >= 7 digits. Card, SSN, phone and IBAN
    patterns only run there: most prose has no such cluster, and a regex walk over the
    whole text costs ~15 ns a character per pattern."""
    mask = text.encode("ascii", "replace").translate(_DIGIT_MASK)
    n = len(mask)
    windows: list[tuple[int, int]] = []
    cluster_start = cluster_end = -1
    digits = 0
    pos = 0

    def flush() -> None:
        if cluster_start >= 0 and digits >= _WINDOW_MIN_DIGITS:
            ws, we = max(0, cluster_start - _WINDOW_MARGIN), min(n, cluster_end + _WINDOW_MARGIN)
            if windows and ws <= windows[-1][1]:
                windows[-1] = (windows[-1][0], we)
            else:
                windows.append((ws, we))

    while (i := mask.find(b"0", pos)) >= 0:
        j = mask.find(b" ", i)
        if j < 0:
            j = n
        if cluster_start >= 0 and i - cluster_end <= _WINDOW_GAP:
            cluster_end = j
            digits += j - i
        else:
            flush()
            cluster_start, cluster_end, digits = i, j, j - i
        pos = j
    flush()
    return windows


# Capitals and digits -> "A", space -> " ", anything else -> ".".
_IBAN_MASK = bytes(
    0x41 if chr(i).isascii() and (chr(i).isdigit() or chr(i).isupper()) else (0x20 if i == 0x20 else 0x2E)
    for i in range(256)
)
_IBAN_SHAPES = (b"A" * 15, b"AAAA AAAA AAAA")  # the shortest IBAN is 15; printed form groups by 4


def _iban_windows(text: str) -> list[tuple[int, int]]:
    """Regions that can hold an IBAN: 15+ capitals/digits in a row, or three groups of
    four (how IBANs are printed). Few texts have any."""
    mask = text.encode("ascii", "replace").translate(_IBAN_MASK)
    starts: list[int] = []
    for shape in _IBAN_SHAPES:
        pos = 0
        # Every IBAN start is an occurrence; stepping 10 on means some found i lies in
        # (start - 10, start], and the window below then covers the whole IBAN.
        while (i := mask.find(shape, pos)) >= 0:
            starts.append(i)
            pos = i + 10
    windows: list[tuple[int, int]] = []
    for i in sorted(starts):
        ws, we = max(0, i - 12), min(len(text), i + 60)
        if windows and ws <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(we, windows[-1][1]))
        else:
            windows.append((ws, we))
    return windows


def _scan(
    text: str, kinds: frozenset[str], phone_regions: Sequence[str], phone_budget: _PhoneBudget | None = None
) -> list[_Hit]:
    hits: list[_Hit] = []
    if PiiKind.PRIVATE_KEY in kinds:
        hits.extend(_private_keys(text))
    if PiiKind.API_KEY in kinds:
        hits.extend(_api_keys(text))
    if PiiKind.EMAIL in kinds:
        hits.extend(_emails(text))
    if PiiKind.IBAN in kinds:
        for ws, we in _iban_windows(text):
            hits.extend(_ibans(text, ws, we))
    if kinds.isdisjoint(_NUMBER_KINDS - {PiiKind.IBAN}):
        return hits
    windows = _digit_windows(text)
    for ws, we in windows:
        if PiiKind.CARD in kinds:
            hits.extend(_cards(text, ws, we))
        if PiiKind.SSN in kinds:
            hits.extend(_ssns(text, ws, we))
    if PiiKind.PHONE in kinds:
        # A run already taken as a card, SSN or IBAN is not also tried as a phone.
        taken = _disjoint(sorted((s, e) for k, s, e, _ in hits if k in _NUMBER_KINDS))
        for ws, we in windows:
            hits.extend(_phones(text, phone_regions, ws, we, taken, phone_budget))
    return hits


def _disjoint(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if out and s < out[-1][1]:
            out[-1] = (out[-1][0], max(e, out[-1][1]))
        else:
            out.append((s, e))
    return out


_NUMBER_KINDS = frozenset({PiiKind.CARD, PiiKind.SSN, PiiKind.IBAN, PiiKind.PHONE})


def _drop_contained(findings: list[Finding]) -> list[Finding]:
    """Drop duplicates and findings that lie inside a longer one (digits inside an API
    key are not a phone number; a key inside a PEM block is the PEM block)."""
    unique: dict[tuple[int, int, str], Finding] = {}
    for f in findings:
        unique.setdefault((f.start, f.end, f.kind), f)
    ordered = sorted(unique.values(), key=lambda f: (f.start, -(f.end - f.start), f.kind))
    kept: list[Finding] = []
    widest: Finding | None = None  # the kept finding reaching furthest right
    for f in ordered:
        if widest is not None and f.end <= widest.end and (widest.end - widest.start) > (f.end - f.start):
            continue
        kept.append(f)
        if widest is None or f.end > widest.end:
            widest = f
    return kept


def _resolve_kinds(kinds: Iterable[str] | None) -> frozenset[str]:
    if kinds is None:
        return frozenset(ALL_KINDS)
    resolved = frozenset(str(k).upper() for k in kinds)
    unknown = resolved - ALL_KINDS
    if unknown:
        raise ValueError(f"unknown PII kinds: {sorted(unknown)}; known: {sorted(ALL_KINDS)}")
    return resolved


def detect(
    text: str,
    kinds: Iterable[str] | None = None,
    *,
    normalized: Normalized | None = None,
    phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
) -> list[Finding]:
    """Find PII and secrets in `text`; spans index into `text` itself.

    `kinds`: which `PiiKind`s to look for (None: all; empty: none). Pass `normalized`
    (`textnorm.normalize(text)`) when the caller already has it, to skip normalising
    again. Values inside decoded payloads are reported with the encoded token's span.
    """
    wanted = _resolve_kinds(kinds)
    if not wanted or not text:
        return []
    n = normalized if normalized is not None else normalize(text)
    view = n.view
    if view is None or view.original_length != len(text):
        raise ValueError("`normalized` was not made from this text")
    findings: list[Finding] = []
    phone_budget = _PhoneBudget()
    for kind, s, e, detail in _scan(view.text, wanted, phone_regions, phone_budget):
        os_, oe = view.to_original(s, e)
        findings.append(Finding(str(kind), os_, oe, detail))
    for p in n.payloads:
        if p.rewrite:
            continue  # the whole text read another way: its span would mask all of it
        seen: set[str] = set()
        for kind, _s, _e, detail in _scan(p.text, wanted, phone_regions, phone_budget):
            if kind not in seen:
                seen.add(kind)
                findings.append(Finding(str(kind), p.start, p.end, f"{p.kind}:{detail}"))
    return _drop_contained(findings)


def merged_spans(findings: Iterable[Finding]) -> Iterator[tuple[int, int, str]]:
    """(start, end, kind) of each masked span, ascending: overlapping findings merge into
    one span labelled with its longest finding's kind."""
    spans = sorted(findings, key=lambda f: (f.start, -(f.end - f.start)))
    i = 0
    while i < len(spans):
        f = spans[i]
        start, end, label, label_len = f.start, f.end, f.kind, f.end - f.start
        i += 1
        while i < len(spans) and spans[i].start < end:
            g = spans[i]
            if g.end - g.start > label_len:
                label, label_len = g.kind, g.end - g.start
            end = max(end, g.end)
            i += 1
        yield start, end, label


def mask(text: str, findings: Iterable[Finding]) -> str:
    """Replace each finding's span with "[KIND]", merging overlapping spans (the merged
    span is labelled with its longest finding's kind). Text outside spans is kept
    exactly."""
    out: list[str] = []
    pos = 0
    for start, end, label in merged_spans(findings):
        if end > len(text):
            raise ValueError("finding span outside the text")
        out.append(text[pos:start])
        out.append(f"[{label}]")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def warm_up(phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> None:
    """Load libphonenumber's metadata for the regions now (it loads lazily, taking
    milliseconds per region on first use), so the first request doesn't pay for it."""
    for region in (*phone_regions, "ZZ"):
        for _ in PhoneNumberMatcher("+1 415 555 2671, 020 7946 0958", region, leniency=Leniency.STRICT_GROUPING):
            pass
