"""The signed record format (services.actions.records), the key ring and its flags,
and the local snapshot's encoding (services.actions.snapshot)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from services.actions import snapshot
from services.actions.records import DEV_KEY_ID, KeyRing, Refused, Revocation, sign, verify
from services.common.errors import ConfigError
from services.enforcer.settings import EnforcerSettings
from tests.support import ROOT

TOPIC = "safeguards.actions.unit-1"
K1, K2 = os.urandom(32), os.urandom(32)


def ring(*pairs: tuple[str, bytes]) -> KeyRing:
    return KeyRing.parse(",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in pairs))


def test_a_signed_record_verifies_and_names_its_key() -> None:
    r = ring(("k1", K1))
    headers = sign(r, TOPIC, b"suspend:a:b", b"value")
    v = verify(r, TOPIC, b"suspend:a:b", b"value", headers)
    assert v.kid == "k1" and v.revokes == ""
    tomb = sign(r, TOPIC, b"suspend:a:b", None, revokes="act-1")
    assert verify(r, TOPIC, b"suspend:a:b", None, tomb).revokes == "act-1"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda k, v, h: (k, v, []), "unsigned"),
        (lambda k, v, h: (k, v, [x for x in h if x[0] != "sg-sig"]), "unsigned"),
        (lambda k, v, h: (k + b"x", v, h), "bad_signature"),  # another target
        (lambda k, v, h: (k, v + b"x", h), "bad_signature"),  # tampered value
        (lambda k, v, h: (k, None, h), "bad_signature"),  # turned into a tombstone
        (lambda k, v, h: (k, v, [*h, ("sg-revokes", b"other")]), "bad_signature"),
        (lambda k, v, h: (k, v, [("sg-kid", b"nope"), *[x for x in h if x[0] != "sg-kid"]]), "unknown_key"),
        (lambda k, v, h: (k, v, [*h, ("sg-sig", b"00")]), "malformed_header"),
        (lambda k, v, h: (k, v, [(n, b"\xff" if n == "sg-kid" else x) for n, x in h]), "malformed_header"),
    ],
)
def test_tampered_unsigned_or_unknown_records_are_refused(change, reason) -> None:
    r = ring(("k1", K1))
    key, value = b"suspend:a:b", b"value"
    k, v, h = change(key, value, sign(r, TOPIC, key, value))
    with pytest.raises(Refused) as err:
        verify(r, TOPIC, k, v, h)
    assert err.value.reason == reason


def test_a_tombstone_carries_its_revoke_signed_and_old_tombstones_still_verify() -> None:
    r = ring(("k1", K1))
    who = Revocation("ada", "appeal granted", 1_700_000_000.25)
    tomb = sign(r, TOPIC, b"suspend:a:b", None, revokes="act-1", revocation=who)
    assert verify(r, TOPIC, b"suspend:a:b", None, tomb).revocation == who
    assert verify(r, TOPIC, b"suspend:a:b", None, sign(r, TOPIC, b"suspend:a:b", None, "act-1")).revocation is None
    for name, forged in (("sg-revoked-by", b"mallory"), ("sg-revoke-reason", b"other"), ("sg-revoked-at", b"1")):
        with pytest.raises(Refused, match="bad_signature"):  # who and why are signed
            verify(r, TOPIC, b"suspend:a:b", None, [(n, forged if n == name else v) for n, v in tomb])
    partial = [(n, v) for n, v in tomb if n != "sg-revoke-reason"]
    with pytest.raises(Refused, match="malformed_header"):  # all three or none
        verify(r, TOPIC, b"suspend:a:b", None, partial)
    bad_time = [(n, b"soon" if n == "sg-revoked-at" else v) for n, v in tomb]
    with pytest.raises(Refused, match="malformed_header"):
        verify(r, TOPIC, b"suspend:a:b", None, bad_time)
    details = [h for h in tomb if h[0].startswith("sg-revoke")]
    with pytest.raises(Refused, match="malformed_header"):  # revoke details on an action record
        verify(r, TOPIC, b"suspend:a:b", b"value", sign(r, TOPIC, b"suspend:a:b", b"value") + details)


def test_an_empty_value_and_a_tombstone_sign_differently() -> None:
    r = ring(("k1", K1))
    with pytest.raises(Refused, match="bad_signature"):
        verify(r, TOPIC, b"k", None, sign(r, TOPIC, b"k", b""))


def test_a_record_signed_for_another_topic_or_with_another_key_is_refused() -> None:
    r = ring(("k1", K1))
    with pytest.raises(Refused, match="bad_signature"):
        verify(r, TOPIC, b"k", b"v", sign(r, "safeguards.alerts.unit-1", b"k", b"v"))
    forger = ring(("k1", os.urandom(32)))  # the right key id, the wrong key
    with pytest.raises(Refused, match="bad_signature"):
        verify(r, TOPIC, b"k", b"v", sign(forger, TOPIC, b"k", b"v"))
    with pytest.raises(Refused, match="unknown_key"):
        verify(r, TOPIC, b"k", b"v", sign(KeyRing.insecure_dev(), TOPIC, b"k", b"v"))


def test_rotation_the_first_key_signs_and_every_key_verifies() -> None:
    old, new = ring(("k1", K1)), ring(("k2", K2), ("k1", K1))
    assert new.signing_kid == "k2"
    assert verify(new, TOPIC, b"k", b"v", sign(old, TOPIC, b"k", b"v")).kid == "k1"  # old records still apply
    assert verify(new, TOPIC, b"k", b"v", sign(new, TOPIC, b"k", b"v")).kid == "k2"
    with pytest.raises(Refused, match="unknown_key"):  # once k1 is retired
        verify(ring(("k2", K2)), TOPIC, b"k", b"v", sign(old, TOPIC, b"k", b"v"))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no keys"),
        ("k1", "KEY_ID:BASE64"),
        ("bad kid:" + base64.b64encode(K1).decode(), "KEY_ID:BASE64"),
        ("k1:not base64!", "not valid base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "at least 32"),
        (f"k1:{base64.b64encode(K1).decode()},k1:{base64.b64encode(K2).decode()}", "appears twice"),
    ],
)
def test_bad_key_rings_say_what_is_wrong(text, error) -> None:
    with pytest.raises(ConfigError, match=error):
        KeyRing.parse(text)


def test_key_ring_file_allows_lines_and_comments(tmp_path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# rotated 2026-12\nk2:{base64.b64encode(K2).decode()}\nk1:{base64.b64encode(K1).decode()}\n")
    s = EnforcerSettings.parse(["--plaintext", "--action-keys-file", str(f)])
    assert [kid for kid, _ in s.action_key_ring().keys] == ["k2", "k1"]


def test_no_key_refuses_to_start_unless_the_insecure_dev_key_is_chosen(monkeypatch) -> None:
    monkeypatch.delenv("ENFORCER_INSECURE_DEV_ACTION_KEY", raising=False)
    with pytest.raises(ConfigError, match="no action signing key"):
        EnforcerSettings.parse(["--plaintext"]).action_key_ring()
    dev = EnforcerSettings.parse(["--plaintext", "--insecure-dev-action-key"]).action_key_ring()
    assert dev.signing_kid == DEV_KEY_ID and dev.insecure
    env = f"k1:{base64.b64encode(K1).decode()}"
    monkeypatch.setenv("ENFORCER_ACTION_KEYS", env)
    assert EnforcerSettings.parse(["--plaintext"]).action_key_ring().signing_kid == "k1"


def test_snapshot_round_trip_and_refusals(tmp_path) -> None:
    r = ring(("k1", K1))
    snap = snapshot.Snapshot(TOPIC, 1.7e9, {0: 12, 2: 3}, [("suspend:a:b", b"\x00value")])
    path = tmp_path / "state" / "actions.snapshot"
    snapshot.write(path, r, snap)
    assert snapshot.read(path, r, TOPIC) == snap
    assert snapshot.read(path, ring(("k2", K2), ("k1", K1)), TOPIC) == snap  # rotated: still verifies
    assert snapshot.read(path, ring(("k2", K2)), TOPIC) is None  # key retired
    assert snapshot.read(path, r, "safeguards.actions.other") is None
    raw = path.read_bytes()
    for bad in (raw[:-5], raw.replace(b"suspend:a:b", b"suspend:a:c"), b"", b"{}\n{}", raw.split(b"\n")[1]):
        path.write_bytes(bad)
        assert snapshot.read(path, r, TOPIC) is None
    assert snapshot.read(tmp_path / "missing", r, TOPIC) is None
    assert [p.name for p in path.parent.iterdir()] == ["actions.snapshot"]  # no temporary file left


@pytest.mark.parametrize("service", ["enforcer", "monitor"])
def test_a_service_without_action_keys_does_not_start(tmp_path, service) -> None:
    """The real process, with the tests' development-key default taken away."""
    key = tmp_path / "hmac.key"
    key.write_bytes(b"k" * 40)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_INSECURE_DEV_ACTION_KEY")}
    args = ["--plaintext", "--listen", "127.0.0.1:0", "--metrics-listen", "", "--hmac-key-file", str(key)]
    if service == "monitor":
        args += ["--database-url", "postgresql://127.0.0.1:1/none"]
    out = subprocess.run(
        [sys.executable, "-m", f"services.{service}", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "no action signing key" in out.stderr and "--insecure-dev-action-key" in out.stderr
