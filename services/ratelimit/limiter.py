"""The rate-limit decision, protocol-free: canonical request types in, a Decision
out. The gRPC layer converts Envoy's and our own messages at the edge, so one
limiter serves both APIs and is testable without gRPC."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from services.common.errors import InvalidArgument, Unavailable
from services.common.reloader import ReloadingConfig
from services.ratelimit.cache import OverLimitCache
from services.ratelimit.config import Algorithm, RateLimit, RateLimitConfig, Rule
from services.ratelimit.stats import LimiterStats
from services.ratelimit.store import LimitStore, RedisUnavailable

log = logging.getLogger("safeguards.ratelimit")


class Code(enum.Enum):
    OK = 1
    OVER_LIMIT = 2


class FailMode(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class Descriptor:
    """One descriptor of a request: entries in order, and optional per-descriptor
    hits_addend and limit override (Envoy's RateLimitDescriptor)."""

    entries: tuple[tuple[str, str], ...]
    hits_addend: int | None = None
    limit_override: RateLimit | None = None


@dataclass(frozen=True)
class DescriptorStatus:
    code: Code
    limit: RateLimit | None = None
    remaining: int = 0
    reset_after_s: float = 0.0
    retry_after_s: float = 0.0
    rule: str = ""
    shadow_over_limit: bool = False
    degraded: bool = False
    from_cache: bool = False


@dataclass(frozen=True)
class Decision:
    code: Code
    statuses: tuple[DescriptorStatus, ...]
    degraded: bool = False

    def response_headers(self) -> list[tuple[str, str]]:
        """IETF RateLimit headers (as envoyproxy/ratelimit sends them) for the most
        constrained limited descriptor, plus Retry-After when over the limit."""
        limited = [s for s in self.statuses if s.limit is not None and not s.limit.unlimited]
        if not limited:
            return []
        tightest = min(limited, key=lambda s: (s.code is not Code.OVER_LIMIT, s.remaining))
        lim = tightest.limit
        assert lim is not None
        headers = [
            ("RateLimit-Limit", f"{lim.requests_per_unit}, {lim.requests_per_unit};w={lim.unit.seconds}"),
            ("RateLimit-Remaining", str(tightest.remaining)),
            ("RateLimit-Reset", str(math.ceil(tightest.reset_after_s))),
        ]
        if self.code is Code.OVER_LIMIT:
            retry = max((s.retry_after_s for s in self.statuses if s.code is Code.OVER_LIMIT), default=0.0)
            headers.append(("Retry-After", str(max(1, math.ceil(retry)))))
        return headers


@dataclass(frozen=True)
class Lease:
    granted: bool
    lease_id: str = ""
    active: int = 0
    max_concurrent: int = 0
    expires_at: float = 0.0  # unix seconds
    rule: str = ""
    shadow_over_limit: bool = False
    degraded: bool = False


@dataclass(frozen=True)
class LimiterSettings:
    fail_mode: FailMode = FailMode.OPEN
    near_limit_ratio: float = 0.8
    max_descriptors: int = 64
    max_entries: int = 16
    max_value_bytes: int = 1024
    max_hits_addend: int = 10_000_000
    key_prefix: str = "rl:"


@dataclass
class RateLimiter:
    configs: ReloadingConfig[RateLimitConfig]
    store: LimitStore
    cache: OverLimitCache
    stats: LimiterStats
    settings: LimiterSettings = field(default_factory=LimiterSettings)

    # ---- validation -------------------------------------------------------------
    def _validate(self, domain: str, descriptors: Sequence[Descriptor], hits_addend: int) -> None:
        s = self.settings
        if not domain:
            raise InvalidArgument("domain must not be empty")
        if domain not in self.configs.current.domains:
            known = ", ".join(sorted(self.configs.current.domains)) or "none"
            raise InvalidArgument(f"unknown domain {domain!r} (configured: {known})")
        if not descriptors:
            raise InvalidArgument("descriptors must not be empty")
        if len(descriptors) > s.max_descriptors:
            raise InvalidArgument(f"too many descriptors: {len(descriptors)} (max {s.max_descriptors})")
        self._check_hits("hits_addend", hits_addend)
        for i, d in enumerate(descriptors):
            self._validate_entries(f"descriptors[{i}]", d.entries)
            if d.hits_addend is not None:
                self._check_hits(f"descriptors[{i}].hits_addend", d.hits_addend)

    def _validate_entries(self, where: str, entries: Sequence[tuple[str, str]]) -> None:
        s = self.settings
        if not entries:
            raise InvalidArgument(f"{where} has no entries")
        if len(entries) > s.max_entries:
            raise InvalidArgument(f"{where} has too many entries: {len(entries)} (max {s.max_entries})")
        for j, (key, value) in enumerate(entries):
            if not key:
                raise InvalidArgument(f"{where}.entries[{j}].key must not be empty")
            if len(key.encode()) > s.max_value_bytes or len(value.encode()) > s.max_value_bytes:
                raise InvalidArgument(f"{where}.entries[{j}] is longer than {s.max_value_bytes} bytes")

    def _check_hits(self, name: str, hits: int) -> None:
        if hits < 0:
            raise InvalidArgument(f"{name} must not be negative, got {hits}")
        if hits > self.settings.max_hits_addend:
            raise InvalidArgument(
                f"{name} {hits} exceeds the maximum {self.settings.max_hits_addend} "
                "(a negative number sent as an unsigned field arrives as a huge one)"
            )

    # ---- keys and labels ---------------------------------------------------------
    def _key(self, domain: str, entries: Sequence[tuple[str, str]], suffix: str) -> str:
        # One hash tag around the whole descriptor: every key of a descriptor lives in
        # one Redis Cluster slot. Components are escaped so values cannot break the tag.
        body = ":".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in entries)
        return f"{self.settings.key_prefix}{{{quote(domain, safe='')}:{body}}}:{suffix}"

    def _rule_label(self, rule: Rule | None, entries: Sequence[tuple[str, str]], domain: str) -> str:
        if rule is None:
            return "override"
        if rule.detailed_metric:
            return self.stats.rule_label(domain + "." + ".".join(f"{k}_{v}" for k, v in entries))
        return self.stats.rule_label(rule.path)

    # ---- rate limit --------------------------------------------------------------
    async def should_rate_limit(self, domain: str, descriptors: Sequence[Descriptor], hits_addend: int = 0) -> Decision:
        self._validate(domain, descriptors, hits_addend)
        cfg = self.configs.current
        if len(descriptors) == 1:  # the common case: no gather (a task per descriptor)
            d = descriptors[0]
            statuses = [await self._one(domain, cfg.match(domain, d.entries), d, d.hits_addend or hits_addend or 1)]
        else:
            statuses = await asyncio.gather(
                *(
                    self._one(domain, cfg.match(domain, d.entries), d, d.hits_addend or hits_addend or 1)
                    for d in descriptors
                )
            )
        over = any(s.code is Code.OVER_LIMIT for s in statuses)
        degraded = any(s.degraded for s in statuses)
        if degraded:
            self.stats.degraded.labels(domain, self.settings.fail_mode.value).inc()
            log.warning(
                "degraded decision: redis unavailable",
                extra={"domain": domain, "fail_mode": self.settings.fail_mode.value, "over_limit": over},
            )
        return Decision(Code.OVER_LIMIT if over else Code.OK, tuple(statuses), degraded)

    async def _one(self, domain: str, rule: Rule | None, d: Descriptor, cost: int) -> DescriptorStatus:
        limit = d.limit_override or (rule.rate_limit if rule else None)
        if limit is None or limit.unlimited:
            return DescriptorStatus(Code.OK, limit=limit, rule=rule.path if rule else "")
        shadow = bool(rule and rule.shadow_mode)
        label = self._rule_label(rule if d.limit_override is None else None, d.entries, domain)
        if d.limit_override is not None:
            suffix = f"o{limit.requests_per_unit}/{limit.unit.name.lower()}"
        else:
            suffix = "g" if limit.algorithm is Algorithm.GCRA else f"w{limit.unit.name.lower()}"
        key = self._key(domain, d.entries, suffix)
        self.stats.rule(domain, label).total_hits.inc(cost)

        cached = self.cache.get(key)
        if cached is not None:
            self.stats.rule(domain, label).over_limit_cached.inc(cost)
            return self._over(
                domain, label, limit, 0, cached.retry_after_s, cached.retry_after_s, shadow, cost, from_cache=True
            )
        try:
            if limit.algorithm is Algorithm.GCRA or d.limit_override is not None:
                emission_us = limit.unit.seconds * 1_000_000 / limit.requests_per_unit
                allowed, remaining, retry_us, reset_us, next_us = await self.store.run(
                    "gcra", key, (repr(emission_us), limit.capacity, cost, "")
                )
            else:
                allowed, remaining, reset_us = await self.store.run(
                    "fixed_window", key, (limit.requests_per_unit, cost, limit.unit.seconds * 1_000_000, "")
                )
                retry_us = next_us = reset_us
        except RedisUnavailable:
            over = self.settings.fail_mode is FailMode.CLOSED
            return DescriptorStatus(
                Code.OVER_LIMIT if over else Code.OK,
                limit=limit,
                rule=label,
                degraded=True,
                retry_after_s=1.0 if over else 0.0,
            )
        if remaining == 0 and next_us > 0:
            self.cache.put(key, next_us / 1e6)
        if not allowed:
            retry_s = (retry_us if retry_us >= 0 else reset_us) / 1e6
            return self._over(domain, label, limit, remaining, reset_us / 1e6, retry_s, shadow, cost)
        self.stats.rule(domain, label).within_limit.inc(cost)
        cap = limit.capacity if limit.algorithm is Algorithm.GCRA else limit.requests_per_unit
        if remaining < cap * (1 - self.settings.near_limit_ratio):
            self.stats.rule(domain, label).near_limit.inc(cost)
        return DescriptorStatus(Code.OK, limit=limit, remaining=remaining, reset_after_s=reset_us / 1e6, rule=label)

    def _over(self, domain, label, limit, remaining, reset_s, retry_s, shadow, cost, from_cache=False):
        if shadow:
            self.stats.rule(domain, label).shadow_over_limit.inc(cost)
            return DescriptorStatus(
                Code.OK,
                limit=limit,
                remaining=remaining,
                reset_after_s=reset_s,
                rule=label,
                shadow_over_limit=True,
                from_cache=from_cache,
            )
        self.stats.rule(domain, label).over_limit.inc(cost)
        return DescriptorStatus(
            Code.OVER_LIMIT,
            limit=limit,
            remaining=remaining,
            reset_after_s=reset_s,
            retry_after_s=retry_s,
            rule=label,
            from_cache=from_cache,
        )

    # ---- concurrency leases ----------------------------------------------------------
    def _lease_rule(self, domain: str, entries: Sequence[tuple[str, str]]) -> Rule | None:
        if not domain:
            raise InvalidArgument("domain must not be empty")
        if domain not in self.configs.current.domains:
            raise InvalidArgument(f"unknown domain {domain!r}")
        self._validate_entries("entries", entries)
        rule = self.configs.current.match(domain, entries)
        return rule if rule is not None and rule.concurrency is not None else None

    def _ttl(self, rule: Rule, requested_s: float) -> float:
        assert rule.concurrency is not None
        if requested_s < 0:
            raise InvalidArgument("lease_ttl must not be negative")
        return min(requested_s, rule.concurrency.lease_seconds) if requested_s else rule.concurrency.lease_seconds

    async def acquire(self, domain: str, entries: Sequence[tuple[str, str]], ttl_s: float = 0.0) -> Lease:
        rule = self._lease_rule(domain, entries)
        if rule is None:
            return Lease(granted=True)  # no concurrency rule: unlimited, nothing to hold
        assert rule.concurrency is not None
        label = self._rule_label(rule, entries, domain)
        lease_id = uuid.uuid4().hex
        ttl = self._ttl(rule, ttl_s)
        try:
            granted, active, expires_us, _now = await self.store.run(
                "lease_acquire",
                self._key(domain, entries, "c"),
                (rule.concurrency.max_concurrent, int(ttl * 1e6), lease_id, "1" if rule.shadow_mode else "0", ""),
            )
        except RedisUnavailable:
            self.stats.degraded.labels(domain, self.settings.fail_mode.value).inc()
            log.warning("degraded lease decision: redis unavailable", extra={"domain": domain})
            ok = self.settings.fail_mode is FailMode.OPEN
            self.stats.leases.labels(domain, label, "degraded").inc()
            return Lease(granted=ok, max_concurrent=rule.concurrency.max_concurrent, rule=rule.path, degraded=True)
        shadow_over = bool(rule.shadow_mode and not granted)
        outcome = "granted" if granted else ("shadow_over_limit" if shadow_over else "rejected")
        self.stats.leases.labels(domain, label, outcome).inc()
        return Lease(
            granted=bool(granted) or shadow_over,
            lease_id=lease_id if (granted or shadow_over) else "",
            active=active,
            max_concurrent=rule.concurrency.max_concurrent,
            expires_at=expires_us / 1e6,
            rule=rule.path,
            shadow_over_limit=shadow_over,
        )

    async def renew(
        self, domain: str, entries: Sequence[tuple[str, str]], lease_id: str, ttl_s: float = 0.0
    ) -> tuple[bool, float]:
        rule = self._lease_rule(domain, entries)
        if not lease_id:
            raise InvalidArgument("lease_id must not be empty")
        if rule is None:
            return False, 0.0
        renewed, expires_us = await self._lease_call(
            "lease_renew", domain, entries, (int(self._ttl(rule, ttl_s) * 1e6), lease_id, "")
        )
        return bool(renewed), expires_us / 1e6

    async def release(self, domain: str, entries: Sequence[tuple[str, str]], lease_id: str) -> tuple[bool, int]:
        rule = self._lease_rule(domain, entries)
        if not lease_id:
            raise InvalidArgument("lease_id must not be empty")
        if rule is None:
            return False, 0
        released, active = await self._lease_call("lease_release", domain, entries, (lease_id, ""))
        return bool(released), active

    async def _lease_call(self, script: str, domain: str, entries, args) -> list[int]:
        try:
            return await self.store.run(script, self._key(domain, entries, "c"), args)
        except RedisUnavailable as exc:
            raise Unavailable(f"concurrency store unavailable: {exc}") from None
