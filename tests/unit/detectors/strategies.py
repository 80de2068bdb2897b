"""Hypothesis strategies that build valid PII values the way issuers do (Luhn check
digits, IBAN mod-97 check digits, SSA-valid SSNs), and evasion helpers."""

from __future__ import annotations

from hypothesis import strategies as st

from services.enforcer.detectors.pii import IBAN_LENGTHS

# (issuer prefix range lo, hi, total length) — one row per scheme we recognise.
CARD_IINS: tuple[tuple[int, int, int], ...] = (
    (4, 4, 16),  # Visa
    (4, 4, 13),
    (51, 55, 16),  # Mastercard
    (2221, 2720, 16),
    (34, 34, 15),  # Amex
    (37, 37, 15),
    (6011, 6011, 16),  # Discover
    (644, 649, 16),
    (65, 65, 19),
    (3528, 3589, 16),  # JCB
    (36, 36, 14),  # Diners
    (300, 305, 14),
    (62, 62, 16),  # UnionPay
    (2200, 2204, 16),  # Mir
)


def luhn_check_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # these get doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


@st.composite
def card_digits(draw: st.DrawFn) -> str:
    lo, hi, length = draw(st.sampled_from(CARD_IINS))
    prefix = str(draw(st.integers(lo, hi)))
    rest = draw(st.text("0123456789", min_size=length - len(prefix) - 1, max_size=length - len(prefix) - 1))
    body = prefix + rest
    return body + luhn_check_digit(body)


@st.composite
def formatted_card(draw: st.DrawFn, digits: str | None = None) -> str:
    """A card number written with random separators: none, or one of space/dash
    between groups of 4 (or Amex's 4-6-5)."""
    d = digits if digits is not None else draw(card_digits())
    sep = draw(st.sampled_from(["", " ", "-"]))
    if not sep:
        return d
    if len(d) == 15:
        groups = [d[:4], d[4:10], d[10:]]
    else:
        groups = [d[i : i + 4] for i in range(0, len(d), 4)]
    return sep.join(groups)


def change_one_digit(s: str, index: int, delta: int) -> str:
    """Replace the index-th digit of s by another digit (delta 1..9 added mod 10)."""
    positions = [i for i, ch in enumerate(s) if ch.isdigit()]
    i = positions[index % len(positions)]
    return s[:i] + str((int(s[i]) + delta) % 10) + s[i + 1 :]


_VOID_SSNS = {"078051120", "219099999", "123456789"}


@st.composite
def valid_ssn(draw: st.DrawFn) -> str:
    area = draw(st.integers(1, 899).filter(lambda a: a != 666))
    group = draw(st.integers(1, 99))
    serial = draw(st.integers(1, 9999))
    s = f"{area:03d}-{group:02d}-{serial:04d}"
    if s.replace("-", "") in _VOID_SSNS:
        s = "001-01-0001"
    return s


@st.composite
def invalid_ssn(draw: st.DrawFn) -> str:
    which = draw(st.sampled_from(["area0", "area666", "area9xx", "group", "serial"]))
    area = draw(st.integers(1, 899).filter(lambda a: a != 666))
    group = draw(st.integers(1, 99))
    serial = draw(st.integers(1, 9999))
    if which == "area0":
        area = 0
    elif which == "area666":
        area = 666
    elif which == "area9xx":
        area = draw(st.integers(900, 999))
    elif which == "group":
        group = 0
    else:
        serial = 0
    return f"{area:03d}-{group:02d}-{serial:04d}"


def iban_check_digits(country: str, bban: str) -> str:
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{98 - int(numeric) % 97:02d}"


@st.composite
def iban(draw: st.DrawFn, spaced: bool | None = None) -> str:
    country = draw(st.sampled_from(sorted(IBAN_LENGTHS)))
    length = IBAN_LENGTHS[country]
    # Digits with a few capital letters, like real BBANs (bank codes are often letters).
    bban = draw(st.text("0123456789" * 3 + "ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=length - 4, max_size=length - 4))
    value = country + iban_check_digits(country, bban) + bban
    if spaced is None:
        spaced = draw(st.booleans())
    if spaced:
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


# Lookalikes of Latin letters from other scripts (Cyrillic, Greek, Armenian...) plus
# fullwidth and mathematical forms: what a person uses to dodge a word filter.
HOMOGLYPHS: dict[str, str] = {
    "a": "аɑα",
    "c": "сϲ",
    "d": "ԁ",
    "e": "е",
    "h": "һ",
    "i": "іι",
    "j": "ј",
    "k": "κ",
    "l": "ⅼǀ",
    "n": "ո",
    "o": "оοօ",
    "p": "рρ",
    "q": "ԛ",
    "s": "ѕ",
    "u": "ս",
    "v": "ν",
    "w": "ԝ",
    "x": "хх",
    "y": "уү",
    "A": "АΑ",
    "B": "ВΒ",
    "C": "С",
    "E": "ЕΕ",
    "H": "НΗ",
    "I": "ІΙ",
    "K": "КΚ",
    "M": "МΜ",
    "N": "Ν",
    "O": "ОΟ",
    "P": "РΡ",
    "S": "Ѕ",
    "T": "ТΤ",
    "X": "ХΧ",
    "Z": "Ζ",
}


def fullwidth(ch: str) -> str:
    return chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch


def math_bold(ch: str) -> str:
    if "a" <= ch <= "z":
        return chr(0x1D41A + ord(ch) - ord("a"))
    if "A" <= ch <= "Z":
        return chr(0x1D400 + ord(ch) - ord("A"))
    return ch


INVISIBLES = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f\u202a\u202c\u2066\u2069\ufe0f\U000e0100\u034f"
