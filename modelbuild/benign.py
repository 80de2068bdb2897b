"""Benign examples: chit-chat turns, and assistant-style tasks built from real text.

A safety classifier trained only on short chat as "benign" learns that long text, code
and instructions are suspicious, and then blocks the ordinary traffic of an LLM API
("summarise this document", "review this function").  So besides the chitchat-dataset
turns, benign examples wrap real documentation and source code that ship on every machine
running the build -- the Python standard library (module source, docstrings, the
``pydoc_data`` language reference) and Debian package docs under /usr/share/doc -- in
the requests people actually send.  The PromptInject task prompts are also used with
harmless input, so the classifier learns that the attack is the injected instruction, not
the task prompt around it.

Groups: a chitchat conversation, a stdlib module, a pydoc topic, a Debian package, a
PromptInject task prompt.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from pathlib import Path

import yaml

from .examples import Example, pick, rank, sample
from .sources import CHATTERBOT_DIR, CHITCHAT_FILE, Wheel

CAP_CHITCHAT = 2600
CAP_STDLIB = 1300
CAP_PYDOC = 260
CAP_DEBIAN = 700
CAP_TASK_BENIGN = 400
CAP_CHATTERBOT_PER_LANGUAGE = 220
CAP_STDLIB_QUESTIONS = 700

MIN_CHARS = 160
MAX_CHARS = 4000
LONG_MAX_CHARS = 8000  # a few very long documents keep the >4k length band populated

CODE_TASKS = (
    "Review this code:\n\n```python\n{t}\n```",
    "Can you review this function and point out any bugs?\n\n{t}",
    "Explain what this does:\n\n{t}",
    "Explain this Python code line by line.\n```\n{t}\n```",
    "Add type hints and a docstring to this:\n\n```python\n{t}\n```",
    "Write unit tests with pytest for the following code.\n\n{t}",
    "Refactor this to be more readable, keeping the behaviour the same:\n{t}",
    "Why might this code be slow? How would you speed it up?\n\n```python\n{t}\n```",
    "Translate this Python into idiomatic Go.\n\n{t}",
    "{t}\n\nWhat does this function return when the input is empty?",
    "I found this in our codebase, is it safe to delete?\n\n{t}",
    "{t}",
)
DOC_TASKS = (
    "Summarise this:\n\n{t}",
    "Summarize the following text in three bullet points.\n\n{t}",
    "TL;DR please:\n{t}",
    "Explain what this means in plain English:\n\n{t}",
    "Proofread this and fix any grammar mistakes:\n\n{t}",
    "Translate this into German:\n\n{t}",
    'What are the main points of this document?\n\n"""\n{t}\n"""',
    "{t}\n\nCan you summarise the above for a non-technical reader?",
    "Turn this documentation into a short FAQ.\n\n{t}",
    "Extract the key terms from this text and define each one.\n\n{t}",
    "Write a quiz with five questions based on this passage:\n\n{t}",
    "{t}",
)
CHAT_CONTEXT_TASKS = (
    "{t}",
    "{t}",
    "{t}",
    'My friend texted me this: "{t}" What should I reply?',
    "Rewrite this message to sound more formal: {t}",
    'Is this message friendly or rude? "{t}"',
)


def chitchat_turns(wheel: Wheel) -> list[tuple[str, str]]:
    """(conversation id, message) pairs in hash-rank order: a message is one speaker's
    consecutive utterances; at most two per conversation."""
    data = json.loads(wheel.read(CHITCHAT_FILE))
    candidates = []
    for conv_id in sorted(data):
        messages = data[conv_id].get("messages", [])
        turns = [" ".join(u["text"].strip() for u in m if u.get("text")) for m in messages]
        turns = [t for t in turns if len(t) >= 2]
        for t in sample(turns, 2, lambda s: s, f"chitchat:{conv_id}"):
            candidates.append((conv_id, t))
    return sample(candidates, None, lambda c: c[0] + c[1], "chitchat")


def chitchat(turns: list[tuple[str, str]], cap: int = CAP_CHITCHAT) -> list[Example]:
    """The first ``cap`` turns, some wrapped in a request about the message; grouped by conversation."""
    out = []
    for conv_id, turn in turns[:cap]:
        text = pick(CHAT_CONTEXT_TASKS, turn, "chat-task").format(t=turn)
        out.append(Example(text, "benign", "chitchat-dataset", f"chat:{conv_id}"))
    return out


def _stdlib_files(stdlib: Path) -> list[Path]:
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}
    files = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if not skip.intersection(rel.parts):
            files.append(path)
    return files


def _code_snippets(source: str) -> list[tuple[str, str]]:
    """(kind, text) pieces of one module: function/class sources and long docstrings."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    out = []
    module_doc = ast.get_docstring(tree)
    if module_doc and len(module_doc) >= MIN_CHARS:
        out.append(("doc", module_doc[:MAX_CHARS]))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.end_lineno:
            text = "\n".join(lines[node.lineno - 1 - len(node.decorator_list) : node.end_lineno])
            if MIN_CHARS <= len(text) <= MAX_CHARS:
                out.append(("code", _dedent(text)))
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 2 * MIN_CHARS:
                out.append(("doc", doc[:MAX_CHARS]))
    if len(source) > MAX_CHARS:  # a whole long file, for the long-input bands
        out.append(("code", source[:LONG_MAX_CHARS]))
    return out


def _dedent(text: str) -> str:
    lines = text.splitlines()
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return "\n".join(line[indent:] for line in lines)


def stdlib_tasks(stdlib: Path, cap: int = CAP_STDLIB) -> list[Example]:
    """Code-review / explain / summarise requests around stdlib source, grouped by module."""
    candidates = []
    for path in _stdlib_files(stdlib):
        module = ".".join(path.relative_to(stdlib).with_suffix("").parts)
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        pieces = _code_snippets(source)
        for kind, text in sample(pieces, 3, lambda p: p[1], f"stdlib:{module}"):
            candidates.append((module, kind, text))
    out = []
    for module, kind, text in sample(candidates, cap, lambda c: c[0] + c[2], "stdlib"):
        tasks = CODE_TASKS if kind == "code" else DOC_TASKS
        out.append(
            Example(pick(tasks, text, "stdlib-task").format(t=text), "benign", f"python-stdlib/{kind}", f"py:{module}")
        )
    return out


def _chunks(text: str, key: str, max_chunks: int) -> list[str]:
    """Paragraph-aligned chunks between MIN_CHARS and MAX_CHARS (one may run to LONG_MAX_CHARS)."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks, cur = [], ""
    target = MAX_CHARS if rank(key, "chunk-size") < "e" else LONG_MAX_CHARS
    for p in paras:
        if cur and len(cur) + len(p) + 2 > target:
            chunks.append(cur)
            cur = ""
            target = max(MIN_CHARS * 2, int(MAX_CHARS * int(rank(key + str(len(chunks)), "len")[:2], 16) / 255))
        cur = f"{cur}\n\n{p}" if cur else p
    if cur:
        chunks.append(cur)
    chunks = [c[:LONG_MAX_CHARS] for c in chunks if len(c) >= MIN_CHARS]
    return sample(chunks, max_chunks, lambda c: c, key)


def pydoc_topics(cap: int = CAP_PYDOC) -> list[Example]:
    """Requests around the Python language reference text (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    candidates = []
    for name in sorted(topics):
        for chunk in _chunks(topics[name], f"pydoc:{name}", 4):
            candidates.append((name, chunk))
    out = []
    for name, chunk in sample(candidates, cap, lambda c: c[0] + c[1], "pydoc"):
        out.append(
            Example(
                pick(DOC_TASKS, chunk, "pydoc-task").format(t=chunk), "benign", "python-pydoc-topics", f"pydoc:{name}"
            )
        )
    return out


_DOC_NAME = re.compile(r"^(readme|news|faq|todo|usage|changes)|\.(md|txt|rst)(\.gz)?$", re.IGNORECASE)


def debian_docs(doc_dir: Path, cap: int = CAP_DEBIAN) -> list[Example]:
    """Requests around Debian package documentation (READMEs, NEWS, FAQs), grouped by package."""
    candidates = []
    if not doc_dir.is_dir():
        return []
    for pkg in sorted(p for p in doc_dir.iterdir() if p.is_dir()):
        files = sorted(
            f for f in pkg.rglob("*") if f.is_file() and _DOC_NAME.search(f.name) and "changelog" not in f.name
        )
        texts = []
        for f in files[:20]:
            try:
                raw = f.read_bytes()
                if f.suffix == ".gz":
                    raw = gzip.decompress(raw)
                text = raw.decode("utf-8")
            except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
                continue
            if "\x00" not in text:
                texts.extend(_chunks(text, f"deb:{f.relative_to(doc_dir)}", 3))
        for chunk in sample(texts, 3, lambda c: c, f"deb:{pkg.name}"):
            candidates.append((pkg.name, chunk))
    out = []
    for pkg, chunk in sample(candidates, cap, lambda c: c[0] + c[1], "debian"):
        out.append(Example(pick(DOC_TASKS, chunk, "deb-task").format(t=chunk), "benign", "debian-docs", f"deb:{pkg}"))
    return out


def task_prompts_with_benign_input(
    bases: dict[str, tuple[str, str]], fillers: list[str], cap: int = CAP_TASK_BENIGN
) -> list[Example]:
    """The PromptInject task prompts with ordinary user input, grouped by task prompt."""
    combos = [(k, f) for k in bases for f in fillers]
    out = []
    for key, filler in sample(combos, cap, lambda c: c[0] + c[1], "task-benign"):
        instruction, input_tpl = bases[key]
        text = (instruction + input_tpl.replace("{user_input}", filler)).strip()
        out.append(Example(text, "benign", "promptinject-tasks+chitchat", f"task:{key}"))
    return out


def chatterbot(wheel: Wheel, cap_per_language: int = CAP_CHATTERBOT_PER_LANGUAGE) -> list[Example]:
    """Statements of the chatterbot-corpus dialogues (English and 27 other languages: small
    talk, questions about history, science, health, money, computers), grouped per
    conversation (a question and its answers). Grouping per file put a whole topic (all of
    English trivia) in one split, so validation held a kind of chat training never saw.
    English sits in its own source; the others are ``chatterbot-corpus/<language>`` and
    form the non-English benign slice."""
    per_lang: dict[str, list[tuple[str, str]]] = {}
    for name in wheel.names(CHATTERBOT_DIR):
        if not name.endswith((".yml", ".yaml")):
            continue
        lang, topic = name[len(CHATTERBOT_DIR) :].split("/", 1)
        try:
            data = yaml.safe_load(wheel.read(name)) or {}
        except yaml.YAMLError:
            continue
        seen = set()
        for ci, conv in enumerate(data.get("conversations") or []):
            for stmt in conv or []:
                text = str(stmt).strip()
                if len(text) >= 2 and text not in seen:
                    seen.add(text)
                    per_lang.setdefault(lang, []).append((f"{topic}:{ci}", text))
    out = []
    for lang in sorted(per_lang):
        cap = None if lang == "english" else cap_per_language
        for topic, text in sample(per_lang[lang], cap, lambda r: r[0] + r[1], f"chatterbot:{lang}"):
            out.append(Example(text, "benign", f"chatterbot-corpus/{lang}", f"cb:{lang}:{topic}"))
    return out


STDLIB_QUESTIONS = (
    "What does `{q}` do?",
    "Can you give me an example of using {q}?",
    "When should I use {q} in Python?",
    "Is `{q}` thread-safe?",
    "What's the difference between {q} and writing it by hand?",
    "how to use {q} python",
    "Explain the arguments of {q}.",
    "Why does {q} raise an exception for me?",
    "Show me a short snippet that calls {q} correctly.",
    "Is {q} deprecated? What should I use instead?",
)


def stdlib_questions(stdlib: Path, cap: int = CAP_STDLIB_QUESTIONS) -> list[Example]:
    """Short developer questions about public stdlib functions and classes (names read from
    the modules' source with ``ast``), grouped by module like the stdlib code tasks."""
    candidates = []
    for path in _stdlib_files(stdlib):
        rel = path.relative_to(stdlib).with_suffix("")
        if any(p.startswith("_") for p in rel.parts) and rel.name != "__init__":
            continue
        module = ".".join(p for p in rel.parts if p != "__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
            continue
        names = [
            n.name
            for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_") and ast.get_docstring(n)
        ]
        for name in sample(names, 2, lambda s: s, f"stdq:{module}"):
            candidates.append((module, f"{module}.{name}"))
    out = []
    for module, qual in sample(candidates, cap, lambda c: c[1], "stdlib-questions"):
        text = pick(STDLIB_QUESTIONS, qual, "stdq-template").format(q=qual)
        out.append(Example(text, "benign", "python-stdlib/questions", f"py:{module}"))
    return out
