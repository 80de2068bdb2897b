"""The linear-time report (bench.linear's block in bench/RESULTS.md): µs of CPU per KB of
hostile input, by shape and size."""

from __future__ import annotations


def render(run: dict) -> str:
    """run: rows [(shape, entry point, µs/KB per size)], sizes_kb, machine, quick."""
    rows, m, quick, sizes_kb = run["rows"], run["machine"], run["quick"], run["sizes_kb"]
    head = " | ".join(f"{kb} KB" for kb in sizes_kb)
    lines = [
        f"Run: {m['date']}, {m['nproc']} cores ({m['cpu']}), {m['memory']}, Linux {m['kernel']}, "
        f"Python {m['python']}; load average after: {m['loadavg']}. Mode: {'quick' if quick else 'full'}.",
        "",
        "### µs per KB, by shape",
        "",
        "µs of CPU per KB of input (best of several samples; `time.process_time`), through the entry points "
        "the enforcer calls per request: `run_tier0` with a 2,000-term blocklist (normalisation, decoders, PII, "
        "blocklist), `parse_chat_body`, and `SSEDecoder.feed` + `text_of` (4 KB reads unless stated). "
        "*256/1* = µs/KB at 256 KB over µs/KB at 1 KB: ≈1 means linear (below 1: a fixed per-call cost "
        "dominates 1 KB); a quadratic step would show ~256.",
        "",
        f"| shape | entry | {head} | 256/1 |",
        "|---|---|" + "---:|" * (len(sizes_kb) + 1),
    ]
    for name, entry, per_kb in rows:
        cells = " | ".join(f"{v:,.1f}" for v in per_kb)
        lines.append(f"| {name} | {entry} | {cells} | {per_kb[-1] / per_kb[0]:.2f} |")
    worst = max(rows, key=lambda r: r[2][-1] / r[2][0])
    lines += [
        "",
        f"Largest 256/1 ratio: {worst[2][-1] / worst[2][0]:.2f} ({worst[0]}). "
        "Reproduce: `make bench-linear` (or `.venv/bin/python -m bench.linear [--quick]`).",
    ]
    return "\n".join(lines)
