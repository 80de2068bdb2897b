"""PromQL expressions checked against the metrics the services export (metrics.py).

Parsed with promql-parser (the Rust parser of GreptimeDB's PromQL engine), so a
function, keyword or label value is never mistaken for a metric name.
"""

from __future__ import annotations

import re

import promql_parser

from tests.deploy.metrics import TARGET_LABELS, exported_series

#: Grafana's template variables, replaced by something PromQL parses
GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}
_VAR = re.compile(r"\$\{?(\w+)\}?")


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    # Dashboard variables ($region, ${instance}) sit inside label matchers: any value does.
    return _VAR.sub("x", expr)


def problems(expr: str) -> list[str]:
    """What is wrong with `expr`: a parse error, a metric no service exports, or a label
    matcher on a label that metric does not have."""
    try:
        tree = promql_parser.parse(expr)
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    series = exported_series()
    found: list[str] = []

    def visit(node) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = list(node.matchers.matchers)
            name = node.name or next((m.value for m in matchers if m.name == "__name__"), None)
            if name not in series:
                found.append(f"metric {name!r} is not exported by any service")
                return True
            labels = series[name]
            if labels is None:
                return True
            for m in matchers:
                if m.name != "__name__" and m.name not in labels and m.name not in TARGET_LABELS:
                    found.append(f"metric {name!r} has no label {m.name!r} (labels: {', '.join(sorted(labels))})")
        return True

    promql_parser.walk(tree, visit)
    return found
