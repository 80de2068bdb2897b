"""Benchmark the classifier service (safeguards.v1.ClassifierService/Classify) against its limit.

    .venv/bin/python -m bench.classifier [--duration 5] [--low-duration 10] [--models ...]
                                         [--wait-load 120] [--no-write]

What it measures, in order (about 4-6 minutes on the 2-core box):

1. The machine's matrix-multiply rate: 1024x1024 float32 matmul, best of 10, in numpy
   (OpenBLAS; default kernel choice and OPENBLAS_CORETYPE=SkylakeX, 1 thread and all
   threads, each in a fresh process so the environment applies) and as a one-node ONNX
   Runtime graph (MatMul fp32, MatMulInteger u8 x s8) with the service's session options.
2. Raw ONNX Runtime throughput of every model at batch 1, 8 and 32, through
   `services.classifier.runtime.OnnxModel` (the service's own session options and
   featurizer) on one realistic ~0.9 KB English prompt (`PROMPT`: 254 WordPieces, so one
   full 256-token row for the encoders; 895 code points, one row for the n-gram model):
   rows/s, tokens/s, FLOP/s (counted from the graph's MatMul shapes, and from the BERT
   formula) and the fraction of the measured matmul rate. Also the raw cascade on the
   benign mix (`BENIGN_MIX`): the n-gram stage on every text, the encoder on the ones
   whose unsafe score falls in the cascade's band.
3. The service (`python -m services.classifier`, a separate process with every model in
   build/models) under h2load (nghttp2-client, another process) with one text per
   request: 1x1 (one connection, one stream) for latency at low load, then a concurrency
   sweep for throughput at saturation. Every step reads the service's /metrics before and
   after: `grpc_server_handled_total{grpc_code="OK"}` must cover every answer h2load
   counted (h2load only sees HTTP 200), and batch size, queue and inference time come
   from the classifier's own histograms. The cascade also runs on the benign mix, driven
   by a small Python gRPC client in a separate process (h2load sends a single body),
   which reads `answered_by` from every response.

Before anything it waits (up to --wait-load seconds) for the 1-minute load average to
fall below --max-load, so other people's test runs do not pollute the numbers; the
results say when it had to go ahead anyway, and every step shows the CPU the rest of
the box used meanwhile.

Results go to bench/RESULTS.md between the `bench.classifier` markers inside the
"## Classifier service" section (appended at the end the first time); the rest of the
file is left as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import h2load, harness, system
from bench.harness import REPO, free_port, log, parse_levels
from bench.reports.classifier import CASCADE, INT8, MINILM, NGRAM, RawResult, Step, render
from bench.results import RESULTS, publish

GHZ_CONFIG = REPO / "bench" / "ghz" / "classifier.json"
MODELS_DIR = REPO / "build" / "models"
METHOD = "/safeguards.v1.ClassifierService/Classify"
SECTION = "## Classifier service"

ONNX_MODELS = (MINILM, INT8, NGRAM)
ALL_MODELS = (MINILM, INT8, NGRAM, CASCADE)
BATCHES = (1, 8, 32)
MATMUL_N = 1024

# A realistic user prompt: 895 characters, 254 WordPieces with the models' tokenizer, so the
# encoders see exactly one full 256-token row ([CLS] + 254 + [SEP]) and the n-gram model one
# 895-code-point row. bench/ghz/classifier.json sends the same text.
PROMPT = (
    "Hi! I'm preparing the Q3 2024 review for our team in Lisbon and need your help. Below are notes from "
    "yesterday's meeting (Tue, 14:30-16:05 CET). Please: (1) summarise them in 5 bullet points; (2) list every "
    "action item with its owner & due date; (3) flag anything that looks risky for the Nov 18 launch. "
    "Notes: Revenue grew 12.4% QoQ to EUR 3.2M, driven mostly by the Pro tier (+840 seats) and the new API "
    "add-on; churn fell from 2.9% to 2.1%. Marta will finish the pricing-page A/B test by Oct 25 - variant B "
    "(annual-first) converts 7% better so far, but the sample is small (n=1,930). Jonas reported that p95 "
    "latency on the EU cluster regressed from 180 ms to 260 ms after the 4.7.2 deploy; he suspects the new "
    "connection-pool settings and will roll back on staging first. Priya needs two more QA engineers, but "
    "hiring is frozen until January. Keep it short and in plain English, thanks a lot!"
)

# Benign traffic of the kind a chat assistant sees: short questions, requests, code, mail.
BENIGN_MIX = (
    PROMPT,
    "What's the capital of Australia?",
    "Can you recommend a good book about the history of mathematics for a teenager?",
    "Translate 'Where is the train station?' into German and French.",
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "How do I make a sourdough starter from scratch? I have flour, water and a jar.",
    "Summarise the plot of Pride and Prejudice in three sentences.",
    "My tomato plants have yellow leaves at the bottom. What could be wrong?",
    "Explain the difference between TCP and UDP to a junior developer.",
    "Draft a polite email to my landlord asking when the heating will be repaired. It has been broken since "
    "Monday and the flat is very cold in the mornings; I work from home, so it is urgent for me.",
    "What are some good stretches after a long run?",
    "Give me a 3-day itinerary for Kyoto in autumn, with one day for temples and one for food.",
    "Why is the sky blue? Keep it simple, it's for my 8-year-old.",
    "Convert 72 degrees Fahrenheit to Celsius and show the formula.",
    "Here is my SQL: SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 5; why is it slow on "
    "a table with 40 million rows, and which index would help?",
    "Suggest five names for a small bakery that specialises in rye bread.",
    "What's a healthy breakfast I can prepare in under ten minutes?",
    "Help me write a birthday message for my grandmother, who is turning 90.",
    "How does compound interest work? Show an example with 1,000 euros at 4% for 10 years.",
    "List the planets of the solar system in order from the sun, with one fact about each.",
    "I keep getting 'permission denied' when running a shell script I wrote. What should I check?",
    "Please proofread: 'Their going to the park tomorow, weather permitting, and will bring there dog.'",
    "Compare renting and buying a flat in a big city, pros and cons, in a short table.",
    "What is the difference between a virus and a bacterium?",
)

# h2load sweep (clients x streams per client) for each model; 1x1 always runs first, longer.
DEFAULT_LEVELS = {
    MINILM: "1x2,1x4,1x8,1x32",
    INT8: "1x2,1x4,1x8,1x32",
    NGRAM: "1x4,1x16,4x16,4x64",
    CASCADE: "1x4,1x16,4x16,4x64",
}
MIX_CONCURRENCY = (1, 32)


# ---- 0. a quiet box ------------------------------------------------------------------------


def load1() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def wait_load(max_load: float, timeout_s: float) -> dict:
    """Wait until the 1-minute load average is below max_load (or timeout_s passes)."""
    t0 = time.monotonic()
    start = load1()
    log(f"load average {system.loadavg()}; waiting up to {timeout_s:.0f} s for the 1-min value < {max_load}")
    while load1() >= max_load and time.monotonic() - t0 < timeout_s:
        time.sleep(2)
    end = load1()
    waited = time.monotonic() - t0
    quiet = end < max_load
    busy = system.busy_processes({os.getpid()}, top=4)
    if not quiet:
        log(f"  load still {end:.2f} after {waited:.0f} s: measuring anyway (the results say so)")
    return {
        "start": start,
        "end": end,
        "waited_s": waited,
        "quiet": quiet,
        "max_load": max_load,
        "loadavg": system.loadavg(),
        "busy": busy,
    }


# ---- 1. matrix multiply ----------------------------------------------------------------------


def _best(fn, reps: int = 10) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def probe_numpy(n: int = MATMUL_N) -> dict:
    """In this process (environment already set by the parent): best n x n float32 matmul."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    t = _best(lambda: a @ b)
    return {"n": n, "seconds": t, "flops": 2 * n**3 / t}


def _one_node_session(op: str, n: int, threads: int):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from services.classifier.runtime import RuntimeOptions, session_options

    rng = np.random.default_rng(0)
    if op == "MatMul":
        a_t, out_t, b = TensorProto.FLOAT, TensorProto.FLOAT, rng.random((n, n), dtype=np.float32)
        a = rng.random((n, n), dtype=np.float32)
    else:  # MatMulInteger, as dynamic quantisation emits it: uint8 activations x int8 weights
        a_t, out_t, b = TensorProto.UINT8, TensorProto.INT32, rng.integers(-128, 127, (n, n), dtype=np.int8)
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])],
        "mm",
        [helper.make_tensor_value_info("A", a_t, [n, n])],
        [helper.make_tensor_value_info("Y", out_t, [n, n])],
        [numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(
        model.SerializeToString(),
        sess_options=session_options(RuntimeOptions(intra_op_threads=threads)),
        providers=["CPUExecutionProvider"],
    )
    return sess, a


def matmul_rates() -> list[dict]:
    """numpy (fresh process per environment) and ONNX Runtime one-node graphs."""
    rows = []
    ncpu = os.cpu_count() or 1
    for coretype in ("", "SkylakeX"):
        for threads in (ncpu, 1):
            env = dict(os.environ)
            env.pop("OPENBLAS_CORETYPE", None)
            if coretype:
                env["OPENBLAS_CORETYPE"] = coretype
            env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
            out = subprocess.run(
                [sys.executable, "-m", "bench.classifier", "probe-numpy"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            try:
                r = json.loads(out.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                log(f"numpy probe failed: {out.stderr[-500:]}")
                continue
            kernel = f"OPENBLAS_CORETYPE={coretype}" if coretype else "default kernel choice"
            rows.append({"what": f"numpy fp32 ({kernel})", "kind": "fp32", "threads": threads, **r})
    for op, kind in (("MatMul", "fp32"), ("MatMulInteger", "int8")):
        for threads in (0, 1):
            sess, a = _one_node_session(op, MATMUL_N, threads)
            t = _best(lambda s=sess, a=a: s.run(None, {"A": a}))
            label = "ORT MatMul fp32 (MLAS)" if kind == "fp32" else "ORT MatMulInteger u8xs8 (MLAS)"
            rows.append(
                {
                    "what": label,
                    "kind": kind,
                    "threads": threads or ncpu,
                    "n": MATMUL_N,
                    "seconds": t,
                    "flops": 2 * MATMUL_N**3 / t,
                }
            )
    for r in rows:
        log(
            f"  {r['what']:<44} {r['threads']} thr: "
            f"{r['flops'] / 1e9:7.1f} G{'FLOP' if r['kind'] == 'fp32' else 'OP'}/s"
        )
    return rows


# ---- 2. raw ONNX Runtime -------------------------------------------------------------------------


def bert_formula_flops(L: int, H: int = 384, I: int = 1536, layers: int = 6, head=(384, 256, 4)) -> float:  # noqa: E741
    """Per row: layers x [2 L (4 H^2 + 2 H I) + 2 * 2 L^2 H] + the classification head (2 H 256 + 2 256 4)."""
    per_layer = 2 * L * (4 * H * H + 2 * H * I) + 2 * 2 * L * L * H
    return layers * per_layer + 2 * head[0] * head[1] + 2 * head[1] * head[2]


def graph_matmul_ops(model_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Multiply-add ops (x2) per row of the MatMul-like nodes, from ONNX shape inference at the
    feeds' shape (batch 1): {'fp32': MatMul FLOPs, 'int8': MatMulInteger ops, 'nodes': count}."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_path))
    for inp in model.graph.input:
        if inp.name in feeds:
            dims = inp.type.tensor_type.shape.dim
            for i, size in enumerate(feeds[inp.name].shape[: len(dims)]):
                dims[i].ClearField("dim_param")
                dims[i].dim_value = 1 if i == 0 else int(size)
    inferred = shape_inference.infer_shapes(model, data_prop=True)

    def dims_of(vi):
        return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]

    shapes = {vi.name: dims_of(vi) for vi in [*inferred.graph.value_info, *inferred.graph.input]}
    shapes.update({t.name: list(t.dims) for t in inferred.graph.initializer})
    out = {"fp32": 0.0, "int8": 0.0, "nodes": 0}
    for node in inferred.graph.node:
        if node.op_type not in ("MatMul", "MatMulInteger"):
            continue
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not b or any(x is None for x in b[-2:]):
            continue
        k, n = b[-2], b[-1]
        if a and all(x is not None for x in a):
            rows = int(np.prod(a[:-1]))
        else:  # e.g. the head after pooling: one vector per row
            rows = 1
        ops = 2.0 * rows * k * n
        out["fp32" if node.op_type == "MatMul" else "int8"] += ops
        out["nodes"] += 1
    return out


def load_model(name: str):
    from services.classifier import manifest as mf
    from services.classifier.runtime import OnnxModel, RuntimeOptions

    man = mf.load(MODELS_DIR / name)
    return OnnxModel(man, MODELS_DIR / name / "1", RuntimeOptions())


def time_batches(model, feeds: dict[str, np.ndarray], min_s: float, min_iters: int = 3) -> list[float]:
    model.infer(dict(feeds))  # first run of this shape plans memory
    times: list[float] = []
    t_end = time.perf_counter() + min_s
    while len(times) < min_iters or time.perf_counter() < t_end:
        t = time.perf_counter()
        model.infer(dict(feeds))
        times.append(time.perf_counter() - t)
    return times


def raw_onnx(seconds: float) -> tuple[list[RawResult], dict]:
    results: list[RawResult] = []
    info: dict = {}
    for name in ONNX_MODELS:
        model = load_model(name)
        w = model.featurizer.windows([PROMPT])
        assert w.n_rows == 1, f"{name}: PROMPT should be one row, got {w.n_rows}"
        row = w.arrays
        width = int(next(iter(row.values())).shape[1])
        ops = graph_matmul_ops(MODELS_DIR / name / "1" / "model.onnx", row)
        info[name] = {"row_width": width, "graph_ops": ops, "provider": model.provider}
        if name != NGRAM:
            info[name]["formula_flops"] = bert_formula_flops(width)
        for b in BATCHES:
            feeds = {k: np.repeat(v, b, axis=0) for k, v in row.items()}
            times = time_batches(model, feeds, seconds)
            mean = sum(times) / len(times)
            r = RawResult(
                model=name,
                batch=b,
                iters=len(times),
                mean_s=mean,
                min_s=min(times),
                p50_s=sorted(times)[len(times) // 2],
                rows_per_s=b / mean,
                tokens_per_row=width,
                fp32_ops_per_row=ops["fp32"],
                int8_ops_per_row=ops["int8"],
            )
            results.append(r)
            log(
                f"  {name:<26} batch {b:>2}: {r.rows_per_s:8.1f} rows/s {r.tokens_per_s:10,.0f} tok/s "
                f"{r.mean_s * 1e3:8.2f} ms/batch ({r.iters} runs) {r.ops_per_s / 1e9:6.1f} GOP/s"
            )
        del model
    return results, info


def raw_cascade_mix(seconds: float) -> dict:
    """The cascade's work on BENIGN_MIX done straight in ONNX Runtime: n-gram on every text,
    the encoder on texts whose unsafe score is in the band; rows length-sorted, batches of 32."""
    from services.classifier import manifest as mf
    from services.classifier.pipeline import _unsafe
    from services.classifier.tokenize import max_over_windows

    casc = mf.load(MODELS_DIR / CASCADE)
    first, second = (load_model(s) for s in casc.stages)
    texts = list(BENIGN_MIX)
    w1 = first.featurizer.windows(texts)
    scores = max_over_windows(first.infer(dict(w1.arrays)), w1.text_index, w1.n_texts, first.manifest.labels)
    unsafe = _unsafe(scores, first.manifest.labels)
    lo, hi = casc.band
    escalate = [i for i in range(len(texts)) if lo <= unsafe[i] <= hi]
    w2 = second.featurizer.windows([texts[i] for i in escalate]) if escalate else None

    def batches(model, w):
        if w is None:
            return []
        lengths = model.featurizer.lengths(w)
        order = np.argsort(lengths, kind="stable")
        out = []
        for s in range(0, len(order), 32):
            idx = order[s : s + 32]
            width = int(lengths[idx].max())
            out.append({k: v[idx, :width] for k, v in w.arrays.items()})
        return out

    work = [(first, f) for f in batches(first, w1)] + [(second, f) for f in batches(second, w2)]
    for m, f in work:
        m.infer(dict(f))
    passes: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(passes) < 3 or time.perf_counter() < t_end:
        t = time.perf_counter()
        for m, f in work:
            m.infer(dict(f))
        passes.append(time.perf_counter() - t)
    mean = sum(passes) / len(passes)
    return {
        "texts": len(texts),
        "escalated": len(escalate),
        "escalated_rows": 0 if w2 is None else w2.n_rows,
        "first_rows": w1.n_rows,
        "texts_per_s": len(texts) / mean,
        "pass_ms": mean * 1e3,
        "band": casc.band,
    }


# ---- 3. the service --------------------------------------------------------------------------------


class Service:
    """`python -m services.classifier` in its own process group, plaintext on loopback."""

    def __init__(self, workdir: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        argv = [
            sys.executable,
            "-m",
            "services.classifier",
            "--plaintext",
            "--listen",
            self.address,
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            "--models",
            str(MODELS_DIR.relative_to(REPO)),
            "--log-level",
            "WARNING",
            *extra,
        ]
        self.process = harness.Process("classifier", argv, workdir / "classifier.log", stop_s=15)
        self.stderr_path = self.process.log_path
        self.start_s = float("nan")

    def start(self, timeout_s: float = 120) -> None:
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        self.process.start(timeout_s)
        self._wait_ready(deadline)
        self.start_s = time.monotonic() - t0

    def _wait_ready(self, deadline: float) -> None:
        """Every ONNX model serving a version, and /metrics answering."""
        import grpc
        from safeguards.v1 import classifier_pb2, classifier_pb2_grpc

        with grpc.insecure_channel(self.address) as ch:
            stub = classifier_pb2_grpc.ClassifierServiceStub(ch)
            while time.monotonic() < deadline:
                with contextlib.suppress(grpc.RpcError, OSError):
                    resp = stub.ListModels(classifier_pb2.ListModelsRequest(), timeout=5)
                    self.provider = resp.execution_provider
                    serving = {m.name for m in resp.models if m.serving_version > 0}
                    if all(m in serving for m in ONNX_MODELS):
                        scrape(self.metrics_port)
                        return
                time.sleep(0.2)
        raise RuntimeError("classifier models did not become ready")

    def pids(self) -> list[int]:
        return self.process.pids

    def stop(self) -> None:
        self.process.stop()


def _pick(s) -> str | None:
    if s.name == "grpc_server_handled_total" and s.labels.get("grpc_method") == "Classify":
        return f"code|{s.labels['grpc_code']}"
    if s.name in (
        "classifier_batch_size_sum",
        "classifier_batch_size_count",
        "classifier_queue_duration_seconds_sum",
        "classifier_queue_duration_seconds_count",
        "classifier_inference_duration_seconds_sum",
        "classifier_inference_duration_seconds_count",
        "classifier_rows_dropped_total",
        "classifier_requests_rejected_total",
    ):
        return f"{s.name}|{s.labels.get('model', '')}"
    if s.name == "classifier_batch_tokens_total":
        return f"{s.name}|{s.labels['model']}|{s.labels['kind']}"
    if s.name == "classifier_texts_total":
        return f"{s.name}|{s.labels['model']}|{s.labels['answered_by']}"
    return None


def scrape(port: int) -> dict[str, float]:
    """The counters this benchmark needs, flattened to 'name|label=value,...' keys."""
    return harness.scrape(port, _pick)


def stages_of(model: str) -> tuple[str, ...]:
    return (NGRAM, MINILM) if model == CASCADE else (model,)


def request_bytes(text: str, model: str) -> bytes:
    from safeguards.v1 import classifier_pb2

    return classifier_pb2.ClassifyRequest(texts=[text], models=[model]).SerializeToString()


class Runner:
    def __init__(self, args: argparse.Namespace, svc: Service, h2: str, workdir: Path) -> None:
        self.args = args
        self.svc = svc
        self.h2 = h2
        self.workdir = workdir
        self.bodies: dict[str, Path] = {}

    def body(self, model: str) -> Path:
        if model not in self.bodies:
            path = self.workdir / f"{model}.grpc"
            path.write_bytes(h2load.grpc_frame(request_bytes(PROMPT, model)))
            self.bodies[model] = path
        return self.bodies[model]

    def _threads(self) -> dict[int, tuple[str, float]]:
        out = {}
        for pid in self.svc.pids():
            out.update(system.thread_cpu(pid))
        return out

    def _begin(self) -> tuple[harness.Window, dict[int, tuple[str, float]], float]:
        window = harness.Window({"service": self.svc.pids()}, lambda: scrape(self.svc.metrics_port))
        window.start()
        return window, self._threads(), time.monotonic()

    def _end(self, step: Step, begun: tuple[harness.Window, dict[int, tuple[str, float]], float]) -> None:
        window, threads0, t0 = begun
        cpu = window.stop()
        elapsed = time.monotonic() - t0
        step.cpu = {"service": round(cpu.service), "loadgen": round(cpu.loadgen), "other": round(cpu.other)}
        per_name: dict[str, float] = collections.defaultdict(float)
        for tid, (name, secs) in self._threads().items():
            per_name[name] += secs - threads0.get(tid, (name, 0.0))[1]
        step.threads = sorted(
            ((n, round(v * 100 / elapsed)) for n, v in per_name.items() if v > 0), key=lambda x: -x[1]
        )[:4]
        d = window.metrics_delta()
        step.grpc_codes = harness.codes_of(d, "code|")
        step.ok_server = step.grpc_codes.get("OK", 0)
        step.non_ok = harness.not_ok(step.grpc_codes, step.in_flight)
        for m in stages_of(step.model):
            n = d.get(f"classifier_batch_size_count|{m}", 0.0)
            if n:
                step.batch[m] = d.get(f"classifier_batch_size_sum|{m}", 0.0) / n
                step.infer_ms[m] = (
                    1e3
                    * d.get(f"classifier_inference_duration_seconds_sum|{m}", 0.0)
                    / max(1.0, d.get(f"classifier_inference_duration_seconds_count|{m}", 0.0))
                )
            q = d.get(f"classifier_queue_duration_seconds_count|{m}", 0.0)
            if q:
                step.queue_ms[m] = 1e3 * d.get(f"classifier_queue_duration_seconds_sum|{m}", 0.0) / q
            real = d.get(f"classifier_batch_tokens_total|{m}|real", 0.0)
            pad = d.get(f"classifier_batch_tokens_total|{m}|padding", 0.0)
            if real + pad:
                step.padding[m] = pad / (real + pad)
            step.dropped += int(d.get(f"classifier_rows_dropped_total|{m}", 0.0))
            step.rejected += int(d.get(f"classifier_requests_rejected_total|{m}", 0.0))
        if step.loadgen == "h2load":
            step.answered_by = {
                k.split("|")[2]: int(v)
                for k, v in d.items()
                if k.startswith(f"classifier_texts_total|{step.model}|") and v
            }

    def h2load_step(self, model: str, clients: int, streams: int, duration: float) -> Step:
        warm = self.args.warmup
        step = Step(model, "h2load", clients, streams, duration, warm)
        log_file = Path(tempfile.mkstemp(prefix="h2load-", suffix=".log", dir=self.workdir)[1])
        cmd = h2load.command(
            self.h2,
            f"http://{self.svc.address}{METHOD}",
            self.body(model),
            clients=clients,
            streams=streams,
            duration_s=duration,
            log_file=log_file,
        )
        cmd[-1:-1] = ["--warm-up-time", f"{round(warm * 1000)}ms"]
        begun = self._begin()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        res = h2load.H2Result(clients, streams, None, duration)
        res = h2load.finish(proc, log_file, res, timeout_s=duration + warm + 60)
        self._end(step, begun)
        if res.returncode != 0 or not res.latencies_us:
            log(f"h2load failed (rc={res.returncode}):\n{res.output[-1500:]}")
        step.req_per_s = res.req_per_s
        step.answered = res.status_2xx
        step.client_failures = res.client_failures
        step.p50_ms, step.p99_ms, step.max_ms = res.p(50), res.p(99), res.max_ms
        self.say(step)
        if not step.verified:
            self.diagnose(step)
        return step

    def python_step(self, model: str, concurrency: int, duration: float) -> Step:
        warm = self.args.warmup
        step = Step(model, "python", concurrency, 1, duration, warm)
        cmd = [
            sys.executable,
            "-m",
            "bench.classifier",
            "drive",
            "--target",
            self.svc.address,
            "--model",
            model,
            "--concurrency",
            str(concurrency),
            "--duration",
            f"{duration:g}",
            "--warmup",
            f"{warm:g}",
        ]
        begun = self._begin()
        r = harness.run_driver(cmd, timeout_s=duration + warm + 120)
        self._end(step, begun)
        if r is None:
            return step
        step.req_per_s = r["req_per_s"]
        step.answered = r["count"]
        step.client_failures = sum(r["errors"].values())
        step.p50_ms, step.p99_ms, step.max_ms = r["p50_ms"], r["p99_ms"], r["max_ms"]
        step.answered_by = r["answered_by"]
        self.say(step)
        return step

    def diagnose(self, step: Step) -> None:
        """After a step with errors: what one plain call gets now, and the service log's tail."""
        import grpc
        from safeguards.v1 import classifier_pb2, classifier_pb2_grpc

        with grpc.insecure_channel(self.svc.address) as ch:
            stub = classifier_pb2_grpc.ClassifierServiceStub(ch)
            try:
                stub.Classify(classifier_pb2.ClassifyRequest(texts=[PROMPT], models=[step.model]), timeout=30)
                step.error_sample = "a plain call right after the step was OK"
            except grpc.RpcError as exc:
                step.error_sample = f"{exc.code().name}: {exc.details()}"
        tail = self.svc.stderr_path.read_text(errors="replace").splitlines()[-3:]
        log(f"  not verified; now: {step.error_sample}; service log tail:\n    " + "\n    ".join(tail))

    @staticmethod
    def say(s: Step) -> None:
        batch = " ".join(f"{k.removeprefix('prompt_guard_')}={v:.1f}" for k, v in s.batch.items())
        esc = f" escalated {s.escalated:.0%}" if s.model == CASCADE else ""
        log(
            f"  {s.model:<26} {s.level:>8}: {s.req_per_s:8.1f} req/s p50 {s.p50_ms:8.2f} ms p99 {s.p99_ms:8.2f} ms "
            f"batch {batch}{esc} {'OK' if s.verified else 'NOT VERIFIED'} codes {s.grpc_codes} "
            f"cpu svc/gen/other {s.cpu.get('service')}/{s.cpu.get('loadgen')}/{s.cpu.get('other')}%"
        )


def sanity(svc: Service) -> dict:
    """One real Classify per model on PROMPT, and the cascade on every text of the mix."""
    import grpc
    from safeguards.v1 import classifier_pb2, classifier_pb2_grpc

    out: dict = {"prompt": {}, "mix": collections.Counter(), "mix_flagged": 0}
    with grpc.insecure_channel(svc.address) as ch:
        stub = classifier_pb2_grpc.ClassifierServiceStub(ch)
        for m in ALL_MODELS:
            resp = stub.Classify(classifier_pb2.ClassifyRequest(texts=[PROMPT], models=[m]), timeout=30)
            ms = resp.results[0].models[0]
            out["prompt"][m] = {
                "answered_by": ms.answered_by,
                "windows": ms.windows,
                "flagged": list(ms.flagged_labels),
                "unsafe": max(s.score for s in ms.scores if s.label != "benign"),
            }
        for text in BENIGN_MIX:
            resp = stub.Classify(classifier_pb2.ClassifyRequest(texts=[text], models=[CASCADE]), timeout=30)
            ms = resp.results[0].models[0]
            out["mix"][ms.answered_by] += 1
            out["mix_flagged"] += bool(ms.flagged_labels)
    out["mix"] = dict(out["mix"])
    return out


# ---- the Python driver (subprocess): cycles through BENIGN_MIX, reads answered_by -------------


async def _drive(args: argparse.Namespace) -> dict:
    import grpc
    from safeguards.v1 import classifier_pb2

    bodies = [request_bytes(t, args.model) for t in BENIGN_MIX]
    channel = grpc.aio.insecure_channel(args.target)
    call = channel.unary_unary(
        METHOD, request_serializer=None, response_deserializer=classifier_pb2.ClassifyResponse.FromString
    )
    await asyncio.wait_for(channel.channel_ready(), 10)
    answered_by: collections.Counter[str] = collections.Counter()
    latencies, errors, elapsed = await harness.closed_loop(
        [call],
        bodies,
        args.concurrency,
        args.warmup,
        args.duration,
        on_answer=lambda resp: answered_by.update([resp.results[0].models[0].answered_by]),
        on_reset=answered_by.clear,
    )
    await channel.close()
    ms = [x * 1000 for x in latencies]
    return {
        "count": len(ms),
        "req_per_s": len(ms) / elapsed,
        "p50_ms": harness.percentile(ms, 50),
        "p99_ms": harness.percentile(ms, 99),
        "max_ms": ms[-1] if ms else float("nan"),
        "errors": dict(errors),
        "answered_by": dict(answered_by),
    }


def main_drive(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench.classifier drive")
    p.add_argument("--target", required=True)
    p.add_argument("--model", default=CASCADE)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    args = p.parse_args(argv)
    print(json.dumps(harness.run_async(_drive(args))))
    return 0


# ---- results ------------------------------------------------------------------------------------


def summarise(raw: list[RawResult], steps: list[Step], sanity_out: dict, mix: dict | None) -> list[dict]:
    by = {(r.model, r.batch): r for r in raw}
    out = []
    for model in ALL_MODELS:
        ss = [s for s in steps if s.model == model and s.loadgen == "h2load"]
        if not ss:
            continue
        # The cascade's limit on this prompt is the stage(s) that answer it.
        if model == CASCADE:
            ref = [MINILM, NGRAM] if sanity_out["prompt"][CASCADE]["answered_by"] == MINILM else [NGRAM]
        else:
            ref = [model]

        def rate(b: int, ref: list[str] = ref) -> float:
            return 1.0 / sum(1.0 / by[(m, b)].rows_per_s for m in ref)

        raw32 = rate(32)
        best_b = max(BATCHES, key=rate)
        raw1_ms = sum(by[(m, 1)].mean_s for m in ref) * 1e3
        good = [s for s in ss if s.verified]
        sat = max(good or ss, key=lambda s: s.req_per_s)
        low = next((s for s in ss if s.clients == 1 and s.streams == 1), ss[0])
        ops = sum(by[(m, 1)].fp32_ops_per_row + by[(m, 1)].int8_ops_per_row for m in ref)
        out.append(
            {
                "model": model,
                "sat": sat.req_per_s,
                "sat_at": sat.level,
                "raw32": raw32,
                "ratio32": sat.req_per_s / raw32,
                "raw_best": rate(best_b),
                "raw_best_b": best_b,
                "ratio_best": sat.req_per_s / rate(best_b),
                "gops": f"{sat.req_per_s * ops / 1e9:,.0f}" if ops else "–",
                "p50": low.p50_ms,
                "p99": low.p99_ms,
                "raw1_ms": raw1_ms,
                "p50_ratio": low.p50_ms / raw1_ms,
                "p99_ratio": low.p99_ms / raw1_ms,
            }
        )
    return out


def check_ghz_config() -> None:
    try:
        cfg = json.loads(GHZ_CONFIG.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log(f"warning: cannot read {GHZ_CONFIG.relative_to(REPO)}: {exc}")
        return
    if cfg.get("data", {}).get("texts") != [PROMPT]:
        log(f"warning: {GHZ_CONFIG.relative_to(REPO)} does not send PROMPT; keep them in step")


def versions() -> dict[str, str]:
    import onnxruntime as ort

    blas = "BLAS n/a"
    with contextlib.suppress(Exception):
        cfg = np.show_config(mode="dicts")
        b = cfg["Build Dependencies"]["blas"]
        blas = f"{b['name']} {b['version']}"
    return {"onnxruntime": ort.__version__, "numpy": np.__version__, "blas": blas}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["probe-numpy"]:
        print(json.dumps(probe_numpy()))
        return 0
    if argv[:1] == ["drive"]:
        return main_drive(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per sweep step (after the warm-up)")
    p.add_argument("--low-duration", type=float, default=0.0, help="seconds of the 1x1 step (0: 2 x --duration)")
    p.add_argument("--warmup", type=float, default=1.5, help="h2load --warm-up-time per step, seconds")
    p.add_argument("--raw-seconds", type=float, default=1.5, help="minimum seconds per raw ONNX Runtime cell")
    p.add_argument("--models", default=",".join(ALL_MODELS), help="models to load (comma separated)")
    for m in ALL_MODELS:
        p.add_argument(f"--levels-{m.replace('_', '-')}", default=DEFAULT_LEVELS[m], help=f"sweep for {m}")
    p.add_argument("--no-mix", action="store_true", help="skip the cascade benign-mix steps")
    p.add_argument("--max-load", type=float, default=1.0, help="wait for the 1-min load average below this")
    p.add_argument("--wait-load", type=float, default=120.0, help="wait at most this long (seconds)")
    p.add_argument("--service-arg", action="append", default=[], help="extra argument for the service (repeat)")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file to update")
    p.add_argument("--no-write", action="store_true", help="print the tables, leave RESULTS.md alone")
    args = p.parse_args(argv)
    args.low_duration = args.low_duration or 2 * args.duration
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    h2 = h2load.find_h2load()
    if h2 is None:
        print(h2load.INSTALL_HINT, file=sys.stderr)
        return 2
    check_ghz_config()
    t_start = time.monotonic()
    load = wait_load(args.max_load, args.wait_load)
    machine = system.machine()

    log("matrix multiply")
    mm = matmul_rates()
    log("raw ONNX Runtime")
    raw, raw_info = raw_onnx(args.raw_seconds)
    mix = raw_cascade_mix(args.raw_seconds) if CASCADE in models and not args.no_mix else None
    if mix:
        log(f"  raw cascade on the benign mix: {mix['texts_per_s']:.1f} texts/s, escalated {mix['escalated']}")

    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as tmp:
        workdir = Path(tmp)
        svc = Service(workdir, args.service_arg)
        log("starting the service")
        svc.start()
        try:
            sanity_out = sanity(svc)
            log(f"  sanity: {sanity_out}")
            runner = Runner(args, svc, h2, workdir)
            for model in models:
                levels = parse_levels(getattr(args, f"levels_{model}"))
                if model == CASCADE and sanity_out["prompt"][CASCADE]["answered_by"] == MINILM:
                    levels = parse_levels(DEFAULT_LEVELS[MINILM])
                steps.append(runner.h2load_step(model, 1, 1, args.low_duration))
                for c, m in levels:
                    steps.append(runner.h2load_step(model, c, m, args.duration))
            if CASCADE in models and not args.no_mix:
                for c in MIX_CONCURRENCY:
                    steps.append(runner.python_step(CASCADE, c, args.duration))
            provider = getattr(svc, "provider", "n/a")
            start_s = svc.start_s
        finally:
            svc.stop()

    run = {
        "argv": argv,
        "machine": machine,
        "load": load,
        "versions": {**versions(), "h2load": h2load.version(h2)},
        "provider": provider,
        "matmul": mm,
        "raw": raw,
        "raw_info": raw_info,
        "raw_mix": mix,
        "raw_seconds": args.raw_seconds,
        "steps": steps,
        "sanity": sanity_out,
        "summary": summarise(raw, steps, sanity_out, mix),
        "service_start_s": start_s,
        "warmup": args.warmup,
        "duration": args.duration,
        "low_duration": args.low_duration,
        "elapsed_s": time.monotonic() - t_start,
        "matmul_n": MATMUL_N,
        "prompt_chars": len(PROMPT),
        "mix_texts": len(BENIGN_MIX),
    }
    load["loadavg_end"] = system.loadavg()
    publish(render(run), SECTION, "classifier", no_write=args.no_write, path=args.results, echo=True, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
