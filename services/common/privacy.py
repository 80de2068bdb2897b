"""Pseudonymisation with a regional key (docs/ARCHITECTURE.md "Data residency and privacy").

Account ids and content hashes leave a process only as HMAC-SHA256 under the
region's key: stable within the region (so enforcement and review can follow an
account), meaningless outside it (another region's key gives other values, and
without the key the raw id cannot be recovered or confirmed by guessing).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import ConfigError

MIN_KEY_BYTES = 32
_PSEUDONYM = re.compile(r"[0-9a-f]{64}")


def is_pseudonym(value: str) -> bool:
    """Whether `value` has the shape of a `RegionalKey` pseudonym (HMAC-SHA256, hex)."""
    return _PSEUDONYM.fullmatch(value) is not None


@dataclass(frozen=True)
class RegionalKey:
    region: str
    key: bytes

    @classmethod
    def from_file(cls, region: str, path: str) -> RegionalKey:
        try:
            key = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the regional HMAC key {path}: {exc.strerror}") from None
        return cls.from_bytes(region, key)

    @classmethod
    def from_bytes(cls, region: str, key: bytes) -> RegionalKey:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"the regional HMAC key must be at least {MIN_KEY_BYTES} bytes")
        return cls(region, key)

    def _mac(self, kind: str, *parts: str) -> str:
        msg = "\x1f".join((kind, self.region, *parts)).encode()
        return hmac.new(self.key, msg, hashlib.sha256).hexdigest()

    def account(self, tenant: str, account: str) -> str:
        """The pseudonymous id of `account` within `tenant` (empty stays empty)."""
        return self._mac("account", tenant, account) if account else ""

    def text(self, text: str) -> str:
        """A keyed hash of content: equal texts match in-region, nothing else leaks."""
        return self._mac("text", text)
