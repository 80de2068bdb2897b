"""Near-duplicate clustering and the group-wise train/val/test split.

Attack corpora are full of near-copies: DAN templates pasted into the in-the-wild set with
a few words changed, the same HarmBench behaviour rephrased in the past and future tense.
A random row split would put one copy in training and its twin in the test set and report
memorisation as generalisation.  So examples are first merged into groups (their source
template, plus any near-duplicate found across all attack sources), and whole groups are
assigned to splits.

Near-duplicates are pairs whose word-shingle sets overlap strongly: 5-word shingles
(Jaccard >= 0.25) for long texts, content-word sets (Jaccard >= 0.5) for short ones.
Candidate pairs come from an inverted index over rare features, so the cost stays near
linear in the corpus.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from .examples import Example, rank

# Fraction of each source's groups that go to validation (thresholds) and test (metrics).
VAL_FRACTION = 0.15
TEST_FRACTION = 0.20

_WORD = re.compile(r"[a-z0-9']+")
_STOP = frozenset(
    "a an the and or of to in on for with by at from as is are was were be been being it its this that these those "
    "i you he she we they me my your our their his her them us do does did how what why when where which who whom "
    "can could will would should shall may might must not no so if then than there here into about over under "
    "in past future years coming".split()
)

LONG_WORDS = 40
SHINGLE = 5
LONG_JACCARD = 0.25
SHORT_JACCARD = 0.5
MAX_POSTING = 60  # features shared by more texts than this are too common to propose pairs


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _features(text: str) -> tuple[bool, frozenset]:
    words = _WORD.findall(text.lower())
    if len(words) >= LONG_WORDS:
        return True, frozenset(" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1))
    content = [w[:6] for w in words if w not in _STOP and len(w) > 2]
    return False, frozenset(content)


def cluster(examples: Sequence[Example]) -> list[Example]:
    """The examples with ``group`` replaced by the id of their near-duplicate cluster.

    Examples that already share a group stay together; a cluster is named after its
    smallest member group, so the name is stable across runs.
    """
    n = len(examples)
    uf = _UnionFind(n)
    first_of_group: dict[str, int] = {}
    for i, ex in enumerate(examples):
        j = first_of_group.setdefault(ex.group, i)
        uf.union(i, j)
    feats = [_features(ex.text) for ex in examples]
    postings: dict[tuple[bool, str], list[int]] = defaultdict(list)
    for i, (is_long, fs) in enumerate(feats):
        for f in fs:
            postings[(is_long, f)].append(i)
    seen: set[tuple[int, int]] = set()
    for ids in postings.values():
        if len(ids) < 2 or len(ids) > MAX_POSTING:
            continue
        for a_pos, a in enumerate(ids):
            for b in ids[a_pos + 1 :]:
                if (a, b) in seen or uf.find(a) == uf.find(b):
                    continue
                seen.add((a, b))
                long_a, fa = feats[a]
                _, fb = feats[b]
                if not fa or not fb:
                    continue
                jac = len(fa & fb) / len(fa | fb)
                if jac >= (LONG_JACCARD if long_a else SHORT_JACCARD):
                    uf.union(a, b)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[uf.find(i)].append(i)
    names = {root: min(examples[i].group for i in idx) for root, idx in members.items()}
    return [replace(ex, group=names[uf.find(i)]) for i, ex in enumerate(examples)]


def assign_splits(examples: Sequence[Example], salt: str) -> list[Example]:
    """Split whole groups, stratified by each group's home source (the source of its
    smallest member) so every source -- even one with nine groups -- reaches val and test."""
    by_source: dict[str, set[str]] = defaultdict(set)
    home: dict[str, str] = {}
    for ex in sorted(examples, key=lambda e: (e.group, e.source)):
        home.setdefault(ex.group, ex.source)
    for group, source in home.items():
        by_source[source].add(group)
    split_of: dict[str, str] = {}
    for _source, groups in sorted(by_source.items()):
        ordered = sorted(groups, key=lambda g: rank(g, salt))
        n = len(ordered)
        n_test = round(n * TEST_FRACTION) if n >= 3 else 0
        n_val = round(n * VAL_FRACTION) if n >= 3 else 0
        if n >= 3:
            n_test, n_val = max(n_test, 1), max(n_val, 1)
        for k, g in enumerate(ordered):
            split_of[g] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return [replace(ex, split=split_of[ex.group]) for ex in examples]
