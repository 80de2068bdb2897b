"""The labelled example type and the deterministic sampling helpers every loader uses."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

LABELS = ("benign", "jailbreak", "prompt_injection", "harmful")
T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    """One training/evaluation text.

    ``source`` names the data file it came from (for the model card); ``group`` is the
    unit the train/val/test split is made on: all examples of a group land in one split,
    so near-duplicates (the same DAN template, the same stdlib module, the same
    PromptInject attack) never sit on both sides.
    """

    text: str
    label: str
    source: str
    group: str
    split: str = ""


def rank(key: str, salt: str = "") -> str:
    """A stable pseudo-random sort key: sampling by it is seed-fixed and independent of
    the order other items were seen in."""
    return hashlib.sha256(f"{salt}\x00{key}".encode()).hexdigest()


def sample(items: Iterable[T], cap: int | None, key: Callable[[T], str], salt: str) -> list[T]:
    """Up to ``cap`` items chosen by hash rank (all items when ``cap`` is None), in rank order."""
    ordered = sorted(items, key=lambda it: rank(key(it), salt))
    return ordered if cap is None else ordered[:cap]


def pick(options: Sequence[T], key: str, salt: str = "pick") -> T:
    """A deterministic choice from ``options`` driven by ``key``."""
    return options[int(rank(key, salt)[:8], 16) % len(options)]
