"""Names both ends of an inter-service API must spell the same. Services never import
each other (tests/test_imports.py), so what the rate limiter writes and the enforcer
reads is defined here, once."""

from __future__ import annotations

#: Set (true) in RateLimitResponse.dynamic_metadata when the rate-limit service decided
#: without its store (Redis unreachable; its --fail-mode answered): the caller applies its
#: own fail mode and records why, instead of trusting an OK that checked nothing.
RLS_DEGRADED_KEY = "safeguards.degraded"
