"""Per-tenant word filters: whole words and phrases, and the evasion tricks that must
not get past them."""

from __future__ import annotations

import base64
import random
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from services.enforcer.detectors.blocklist import Blocklist
from services.enforcer.detectors.textnorm import normalize
from tests.unit.detectors.strategies import HOMOGLYPHS, INVISIBLES, fullwidth, math_bold

PHRASES = ["password", "exploit kit", "nerve agent synthesis", "credit card dump", "bypass the filter"]
BLOCKLIST = Blocklist(PHRASES)


def test_whole_words_and_phrases_match_case_insensitively() -> None:
    bl = Blocklist(["ass", "Bad Phrase"])
    assert bl.match_text("you ASS!") == ("ass",)
    assert bl.match_text("first class passage, assassin, grass") == ()
    assert bl.match_text("a BAD   phrase\nhere") == ("Bad Phrase",)
    assert bl.match_text("a bad\n\tphrase") == ("Bad Phrase",)
    assert bl.match_text("bad phrases") == ()


def test_punctuation_counts_as_a_word_break() -> None:
    bl = Blocklist(["e-mail", "bad phrase"])
    assert bl.match_text("send an e mail") == ("e-mail",)
    assert bl.match_text("send an E-Mail") == ("e-mail",)
    assert bl.match_text("bad-phrase, bad_phrase, bad.phrase") == ("bad phrase",)


def test_hits_are_each_term_once_in_order_found() -> None:
    bl = Blocklist(["alpha", "beta", "gamma"])
    assert bl.match_text("gamma beta gamma alpha beta") == ("gamma", "beta", "alpha")


def test_duplicate_spellings_report_every_configured_term() -> None:
    bl = Blocklist(["Password", "password", "PASSWORD"])
    assert set(bl.match_text("my password")) == {"Password", "password", "PASSWORD"}


def test_accents_and_case_fold_both_ways() -> None:
    bl = Blocklist(["résumé fraud", "naive"])
    assert bl.match_text("RESUME FRAUD") == ("résumé fraud",)
    assert bl.match_text("so naïve") == ("naive",)


def test_terms_in_scripts_without_spaces_match_inside_running_text() -> None:
    bl = Blocklist(["炸弹", "ระเบิด", "bomb"])
    assert bl.match_text("如何制造炸弹呢") == ("炸弹",)
    assert bl.match_text("วิธีทำระเบิดที่บ้าน") == ("ระเบิด",)
    assert bl.match_text("制造bomb的方法") == ("bomb",)


def test_symbol_only_terms_match_as_substrings() -> None:
    bl = Blocklist(["💣", "$$$"])
    assert set(bl.match_text("send 💣 for $$$$ now")) == {"💣", "$$$"}


def test_letter_spacing_does_not_evade() -> None:
    assert BLOCKLIST.match_text("my p a s s w o r d is") == ("password",)
    assert BLOCKLIST.match_text("my p.a.s.s.w.o.r.d is") == ("password",)
    assert BLOCKLIST.match_text("an e x p l o i t kit") == ("exploit kit",)


def test_empty_blocklist_and_blank_terms() -> None:
    assert Blocklist([]).match_text("anything") == ()
    assert not Blocklist(["", "   ", "\u200b"])
    assert len(Blocklist(["a", "b"])) == 2


def test_repr_does_not_show_terms() -> None:
    assert "password" not in repr(BLOCKLIST)


def test_thousands_of_terms_compile_once_and_match_exactly() -> None:
    rng = random.Random(7)
    terms = {"".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 12))) for _ in range(5000)}
    terms |= {f"{a} {b}" for a, b in zip(list(terms)[:500], list(terms)[500:1000], strict=True)}
    bl = Blocklist(sorted(terms))
    planted = sorted(terms)[1234]
    text = " ".join(["lorem ipsum dolor sit amet"] * 50 + [planted.upper()] + ["consectetur"] * 50)
    assert planted in bl.match_text(text)
    n = normalize(text)
    for _ in range(100):  # one automaton walk per call
        assert planted in bl.match(n)


# --------------------------------------------------------------------------- evasion (hypothesis)


@settings(max_examples=300)
@given(phrase=st.sampled_from(PHRASES), data=st.data())
def test_zero_width_characters_anywhere_in_a_blocked_phrase_do_not_evade(phrase: str, data) -> None:
    chars = list(phrase)
    out = []
    for ch in chars:
        out.append(ch)
        out.append(data.draw(st.text(st.sampled_from(INVISIBLES), max_size=3)))
    evasive = data.draw(st.text(st.sampled_from(INVISIBLES), max_size=3)) + "".join(out)
    assert phrase in BLOCKLIST.match_text(f"tell me about {evasive} please")


@settings(max_examples=300)
@given(phrase=st.sampled_from(PHRASES), data=st.data())
def test_homoglyph_substitution_does_not_evade(phrase: str, data) -> None:
    out = []
    for ch in phrase:
        if data.draw(st.booleans()):
            ch = ch.upper() if data.draw(st.booleans()) else ch
        kind = data.draw(st.sampled_from(["same", "homoglyph", "fullwidth", "math"]))
        if kind == "homoglyph" and ch in HOMOGLYPHS:
            ch = data.draw(st.sampled_from(HOMOGLYPHS[ch]))
        elif kind == "fullwidth":
            ch = fullwidth(ch)
        elif kind == "math":
            ch = math_bold(ch)
        out.append(ch)
    evasive = "".join(out)
    assert phrase in BLOCKLIST.match_text(f"how do I get an {evasive}?"), evasive


@settings(max_examples=200)
@given(phrase=st.sampled_from(PHRASES), prefix=st.sampled_from(["", "please ", "Decode: "]), urlsafe=st.booleans())
def test_base64_encoded_blocked_phrase_is_caught(phrase: str, prefix: str, urlsafe: bool) -> None:
    raw = f"{prefix}{phrase} now".encode()
    token = (base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)).decode()
    assert phrase in BLOCKLIST.match_text(f"run this: {token}")


@settings(max_examples=200)
@given(phrase=st.sampled_from(PHRASES), upper=st.booleans(), prefix=st.booleans())
def test_hex_encoded_blocked_phrase_is_caught(phrase: str, upper: bool, prefix: bool) -> None:
    token = f"about {phrase}".encode().hex()
    token = token.upper() if upper else token
    token = "0x" + token if prefix else token
    assert phrase in BLOCKLIST.match_text(f"decode {token} and answer")


def test_other_encodings_are_caught() -> None:
    assert BLOCKLIST.match_text("p%61ssw%6Frd") == ("password",)
    assert BLOCKLIST.match_text(r"\u0070\u0061\u0073\u0073\u0077\u006f\u0072\u0064") == ("password",)
    assert BLOCKLIST.match_text("&#112;&#97;ssword") == ("password",)
    smuggled = "".join(chr(0xE0000 + ord(c)) for c in "give me the password")
    assert BLOCKLIST.match_text(f"hello{smuggled}") == ("password",)


@settings(max_examples=200)
@given(st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz .,"), max_size=200))
def test_text_without_the_terms_has_no_hits(text: str) -> None:
    bl = Blocklist(["zzzq", "qqq xxx"])
    assert bl.match_text(text) == ()


@given(st.text(st.sampled_from(list("ab9_-. ,!?\n")), max_size=80) | st.text(max_size=80))
def test_word_split_fast_paths_match_the_regex(text: str) -> None:
    from services.enforcer.detectors.blocklist import _NON_WORD_RE, _words

    s = _NON_WORD_RE.sub(" ", text).strip()
    expected = f" {' '.join(s.split())} " if s else " "
    assert _words(text) == expected
