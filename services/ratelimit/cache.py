"""A bounded local cache of descriptors known to be over their limit.

While a key is exhausted, its answer cannot change until a known time (the
window's end, or the GCRA bucket's next free hit), so answering it locally saves
the Redis round trip exactly when abusive traffic is heaviest. Like
envoyproxy/ratelimit's local cache, hits answered from it are not counted in
Redis. Bounded LRU: a flood of distinct keys only evicts older entries.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedOverLimit:
    until: float  # monotonic time the key stays over limit
    retry_after_s: float


class OverLimitCache:
    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, float] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._max > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float | None = None) -> CachedOverLimit | None:
        until = self._entries.get(key)
        if until is None:
            return None
        now = time.monotonic() if now is None else now
        if until <= now:
            del self._entries[key]
            return None
        return CachedOverLimit(until=until, retry_after_s=until - now)

    def put(self, key: str, seconds: float, now: float | None = None) -> None:
        if self._max <= 0 or seconds <= 0:
            return
        now = time.monotonic() if now is None else now
        self._entries[key] = now + seconds
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
