"""The names of the evasion tricks normalisation and decoding report
(`Normalized.signals`): plain strings, stable, since policy and metrics refer to them."""

from __future__ import annotations


class Signal:
    """Names that can appear in `Normalized.signals` (plain strings, stable: policy and
    metrics refer to them)."""

    ZERO_WIDTH = "zero_width"  # ZWSP/ZWNJ/ZWJ, word joiner, BOM, soft hyphen, fillers...
    BIDI = "bidi"  # bidirectional controls (LRM/RLM, embeddings, overrides, isolates)
    TAG = "tag"  # Unicode tag characters (U+E0000 block): invisible ASCII smuggling
    VARIATION_SELECTOR = "variation_selector"
    CONTROL = "control"  # C0/C1 control characters other than tab/newline/CR
    COMPATIBILITY = "nfkc"  # NFKC changed the text: fullwidth, mathematical letters, ligatures...
    HOMOGLYPH = "homoglyph"  # lookalike letters folded to Latin inside a word
    COMBINING_MARKS = "combining_marks"  # stacks of 3+ diacritics ("zalgo")
    BASE64 = "base64"
    HEX = "hex"
    PERCENT = "percent"
    UNICODE_ESCAPE = "unicode_escape"
    HTML_ENTITY = "html_entity"
    LETTER_SPACING = "letter_spacing"  # "h o w  t o": spaced-out letters (a rewrite of the whole text)
    LEETSPEAK = "leetspeak"  # "h0w 70 m4k3": leet digits and symbols for letters (a rewrite)
    ROT13 = "rot13"  # the text reads as English once ROT13'd (a rewrite)
    NESTED_ENCODING = "nested_encoding"  # a payload decoded from inside a payload
    DECODE_LIMIT = "decode_limit"  # size/count/depth limit reached: something was not decoded
