"""The Prometheus metrics the services export, read from their source.

Every metric is created in code with a string name (`Counter("enforcer_decisions",
..., ["action", "surface"])`, a `GaugeMetricFamily(...)` in a custom collector), so
the catalog comes from the services' own definitions: a dashboard or alert that names
a metric or label nobody exports fails its test instead of drawing an empty panel.

Names are resolved from string literals, f-strings whose parts are a parameter's
default or a keyword argument given anywhere in services/ (`StateMetrics(registry,
prefix="safeguards_monitor")`), and names bound to literals in the same function or
module; label lists likewise. A label list that cannot be resolved is None (the
metric's labels are then not checked).
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
#: offline code, not a service (the model build exports nothing)
SKIP = ("modelbuild",)

#: constructor -> (kind, index of the label list among positional args, its keyword)
CONSTRUCTORS = {
    "Counter": ("counter", 2, "labelnames"),
    "Gauge": ("gauge", 2, "labelnames"),
    "Histogram": ("histogram", 2, "labelnames"),
    "Summary": ("summary", 2, "labelnames"),
    "Info": ("info", 2, "labelnames"),
    "Enum": ("enum", 2, "labelnames"),
    "CounterMetricFamily": ("counter", 2, "labels"),
    "GaugeMetricFamily": ("gauge", 2, "labels"),
    "HistogramMetricFamily": ("histogram", 2, "labels"),
    "SummaryMetricFamily": ("summary", 2, "labels"),
    "InfoMetricFamily": ("info", 2, "labels"),
}

#: labels every series gets from Prometheus itself (target labels) or from the
#: scrape configs of deploy/prometheus.yml and deploy/k8s (kubernetes_sd relabelling)
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "region"})
#: series Prometheus makes itself for every target
SYNTHETIC = {"up": frozenset(), "scrape_duration_seconds": frozenset(), "ALERTS": None}


@dataclass(frozen=True)
class Metric:
    name: str  # as given to the constructor
    kind: str
    labels: frozenset[str] | None  # None: not resolvable statically
    where: str

    def series(self) -> dict[str, frozenset[str] | None]:
        """The series names it is exposed as (prometheus_client's naming) -> labels."""
        base, labels = self.name, self.labels

        def extra(*more: str) -> frozenset[str] | None:
            return None if labels is None else labels | frozenset(more)

        if self.kind == "counter":
            base = base.removesuffix("_total")
            return {f"{base}_total": labels, f"{base}_created": labels}
        if self.kind == "histogram":
            return {
                f"{base}_bucket": extra("le"),
                f"{base}_sum": labels,
                f"{base}_count": labels,
                f"{base}_created": labels,
            }
        if self.kind == "summary":
            return {base: extra("quantile"), f"{base}_sum": labels, f"{base}_count": labels, f"{base}_created": labels}
        if self.kind == "info":
            return {f"{base}_info": None}  # an Info's labels are its values' keys
        if self.kind == "enum":
            return {base: extra(base)}
        return {base: labels}


def _strings(node: ast.AST | None, env: dict[str, list[ast.AST]], kwargs: dict[str, set[str]]) -> set[str]:
    """Every string `node` may evaluate to (empty when unknown)."""
    if node is None:
        return set()
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Name):
        found: set[str] = set()
        for value in env.get(node.id, []):
            found |= _strings(value, env, kwargs)
        return found | kwargs.get(node.id, set())
    if isinstance(node, ast.JoinedStr):
        parts: list[set[str]] = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append({str(value.value)})
            elif isinstance(value, ast.FormattedValue):
                options = _strings(value.value, env, kwargs)
                if not options:
                    return set()
                parts.append(options)
        return {"".join(p) for p in itertools.product(*parts)}
    return set()


def _string_list(node: ast.AST | None, env: dict[str, list[ast.AST]]) -> frozenset[str] | None:
    if node is None:
        return frozenset()
    if isinstance(node, ast.List | ast.Tuple):
        items = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        return frozenset(items) if len(items) == len(node.elts) else None
    if isinstance(node, ast.Name) and len(env.get(node.id, [])) == 1:
        return _string_list(env[node.id][0], env)
    return None


def _bindings(scope: ast.AST) -> dict[str, list[ast.AST]]:
    """name -> the values bound to it in `scope` (assignments and parameter defaults),
    not descending into nested functions or classes."""
    env: dict[str, list[ast.AST]] = defaultdict(list)
    if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
        args = scope.args
        positional = args.posonlyargs + args.args
        for arg, default in zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True):
            env[arg.arg].append(default)
        for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
            if default is not None:
                env[arg.arg].append(default)
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    env[target.id].append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            env[node.target.id].append(node.value)
        todo.extend(ast.iter_child_nodes(node))
    return env


def _source_files() -> list[Path]:
    return sorted(p for p in SERVICES.rglob("*.py") if not any(s in p.parts for s in SKIP))


@cache
def catalog() -> dict[str, Metric]:
    """Every metric defined under services/, by the name given to its constructor."""
    trees = {path: ast.parse(path.read_text(), str(path)) for path in _source_files()}
    # keyword=value string constants passed anywhere (e.g. prefix="safeguards_monitor")
    kwargs: dict[str, set[str]] = defaultdict(set)
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                        kwargs[kw.arg].add(kw.value.value)
    found: dict[str, Metric] = {}
    for path, tree in trees.items():
        module_env = _bindings(tree)
        scopes: list[tuple[ast.AST, dict[str, list[ast.AST]]]] = [(tree, module_env)]
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                scopes.append((node, {**module_env, **_bindings(node)}))
        for scope, env in scopes:
            for call in _calls_in(scope):
                func = call.func
                fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if fname not in CONSTRUCTORS or not call.args:
                    continue
                kind, label_pos, label_kw = CONSTRUCTORS[fname]
                label_node = next((k.value for k in call.keywords if k.arg == label_kw), None)
                if label_node is None and len(call.args) > label_pos:
                    label_node = call.args[label_pos]
                labels = _string_list(label_node, env)
                where = f"{path.relative_to(ROOT)}:{call.lineno}"
                for name in _strings(call.args[0], env, kwargs):
                    if _is_metric_name(name):
                        found[name] = Metric(name, kind, labels, where)
    return found


def _is_metric_name(name: str) -> bool:
    return bool(name) and name.replace("_", "a").replace(":", "a").isalnum() and not name[0].isdigit()


def _calls_in(scope: ast.AST):
    """Calls directly in `scope` (not in nested functions, which are scopes of their own)."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Call):
            yield node
        todo.extend(ast.iter_child_nodes(node))


@cache
def exported_series() -> dict[str, frozenset[str] | None]:
    """Series name -> its labels (None: unknown), for every exported series, plus the
    ones Prometheus makes itself (`up`, `ALERTS`)."""
    series: dict[str, frozenset[str] | None] = dict(SYNTHETIC)
    for metric in catalog().values():
        series.update(metric.series())
    return series
