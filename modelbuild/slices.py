"""Slices: the traffic families that metrics, thresholds and the regression gate are kept per.

A benign slice is a kind of ordinary traffic (short chat, everyday instructions, developer
questions, code, long documents, non-English text, ...); an attack slice is a kind of
attack.  Each example's slice follows from its source, so it is defined here once and
used by the threshold choice (every benign slice's false-positive rate must meet its
target on validation), the evaluation (per-slice metrics in ``eval.json`` and the model
cards) and the gate (per-slice recall against the committed baseline).
"""

from __future__ import annotations

from .examples import Example

#: Benign slices and the false-positive rate each must meet on validation: the issue's 1%.
#: The per-label thresholds spend each slice's budget where it catches the most attacks
#: (metrics.choose_slice_thresholds), so the strictest slice no longer decides every label
#: as it did when 1% first sent the harmful threshold to 0.9999.
BENIGN_TARGET_FPR = {
    "short_chat": 0.01,
    "everyday_instructions": 0.01,
    "developer_questions": 0.01,
    "customer_support": 0.01,
    "hard_negatives": 0.01,
    "sensitive_topics": 0.01,
    "code": 0.01,
    "long_documents": 0.01,
    "non_english": 0.01,
    "task_prompts": 0.01,
}
ATTACK_SLICES = ("jailbreak", "prompt_injection", "harmful", "hidden_in_document")

_BENIGN_PREFIXES = (
    ("generated/assistant-remarks", "short_chat"),
    ("chitchat-dataset", "short_chat"),
    ("chatterbot-corpus/english", "short_chat"),
    ("chatterbot-corpus/", "non_english"),
    ("generated/everyday", "everyday_instructions"),
    ("generated/developer", "developer_questions"),
    ("python-stdlib/questions", "developer_questions"),
    ("generated/customer-support", "customer_support"),
    ("generated/hard-negatives", "hard_negatives"),
    ("generated/sensitive-", "sensitive_topics"),
    ("python-stdlib/code", "code"),
    ("python-stdlib/doc", "long_documents"),
    ("python-pydoc-topics", "long_documents"),
    ("debian-docs", "long_documents"),
    ("promptinject-tasks", "task_prompts"),
)


def slice_of(e: Example) -> str:
    if e.label != "benign":
        return "hidden_in_document" if e.source.startswith("composite/") else e.label
    for prefix, name in _BENIGN_PREFIXES:
        if e.source.startswith(prefix):
            return name
    raise ValueError(f"benign source without a slice: {e.source}")


#: The output model's (completions') benign slices and their false-positive targets.
OUTPUT_BENIGN_TARGET_FPR = {
    "howto_answers": 0.01,
    "refusals": 0.01,
    "safety_education": 0.01,
    "documents": 0.01,
    "chat_replies": 0.01,
}
OUTPUT_ATTACK_SLICES = ("harmful_completion",)
_OUTPUT_PREFIXES = (
    ("derived/benign-howto", "howto_answers"),
    ("derived/refusal", "refusals"),
    ("derived/safety-education", "safety_education"),
    ("chatterbot-corpus", "chat_replies"),
    ("chitchat-dataset", "chat_replies"),
    ("python-", "documents"),
    ("debian-docs", "documents"),
)


def output_slice_of(e: Example) -> str:
    if e.label != "benign":
        return "harmful_completion"
    for prefix, name in _OUTPUT_PREFIXES:
        if e.source.startswith(prefix):
            return name
    raise ValueError(f"benign completion source without a slice: {e.source}")
