"""Tier-0 detectors: in-process, no network, microseconds to a few milliseconds.

The enforcer's policy code calls `run_tier0` once per prompt (and per completion
window); it normalises the text once and hands the same `Normalized` to every
detector, and returns what policy needs to decide: PII findings (to BLOCK or to
`mask`), blocklist hits, and the evasion tricks normalisation saw.

Pure and protocol-free: nothing here imports gRPC or logs content.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.enforcer.detectors import pii, textnorm
from services.enforcer.detectors.blocklist import Blocklist
from services.enforcer.detectors.pii import DEFAULT_PHONE_REGIONS, Finding, PiiKind, detect, mask
from services.enforcer.detectors.redact import Redactor
from services.enforcer.detectors.textnorm import DEFAULT_MAX_DECODED_BYTES, Normalized, normalize

__all__ = ["Blocklist", "Finding", "PiiKind", "Redactor", "Tier0Result", "mask", "run_tier0", "warm_up"]


def warm_up(phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> None:
    """Load what the detectors load lazily (lookalike tables, phone metadata) so the
    first request doesn't pay tens of milliseconds for it: call once at startup."""
    textnorm.warm_up()
    pii.warm_up(phone_regions)


@dataclass(frozen=True, slots=True, repr=False)
class Tier0Result:
    findings: tuple[Finding, ...]
    blocklist_hits: tuple[str, ...]
    normalization_signals: frozenset[str]
    #: The normalised text, for the classifier (`normalized.text`) and for callers that
    #: want the decoded payloads; not part of equality.
    normalized: Normalized | None = None

    def __repr__(self) -> str:
        # Kinds and counts only: blocklist terms and text stay out of logs.
        kinds = sorted({f.kind for f in self.findings})
        return (
            f"Tier0Result(findings={len(self.findings)} {kinds}, blocklist_hits={len(self.blocklist_hits)}, "
            f"signals={sorted(self.normalization_signals)})"
        )

    @property
    def pii_kinds(self) -> frozenset[str]:
        return frozenset(f.kind for f in self.findings)

    def redact(self, text: str) -> str:
        """`text` (the one given to `run_tier0`) with every finding masked."""
        return mask(text, self.findings)

    def redactor(self, text: str) -> Redactor:
        """Masks these findings' values (found in `text`, the one given to `run_tier0`)
        wherever they occur in other texts: the fields of the body `text` was joined from."""
        return Redactor(text, self.findings)


def run_tier0(
    text: str,
    blocklist: Blocklist | None = None,
    pii_kinds: Iterable[str] | None = None,
    *,
    phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> Tier0Result:
    """Normalise `text` once, then run the PII recognisers (`pii_kinds`: None for all,
    empty for none) and the tenant's `blocklist` (None or empty: skipped) on it."""
    n = normalize(text, max_decoded_bytes=max_decoded_bytes)
    findings = detect(text, pii_kinds, normalized=n, phone_regions=phone_regions)
    hits = blocklist.match(n) if blocklist else ()
    return Tier0Result(tuple(findings), hits, n.signals, n)
