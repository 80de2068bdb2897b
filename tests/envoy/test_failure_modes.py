"""Failure semantics with a real Envoy (deploy/envoy/envoy.yaml, issue 15 item 7):
- the enforcer unreachable: ext_authz denies, with its configurable status_on_error;
- ext_proc unreachable: per its failure_mode_allow (false: refused; true: served
  unscreened and counted in Envoy's ext_proc failure_mode_allowed stat);
- the rate limiter unreachable: Envoy's ratelimit filter fails open (its
  failure_mode_allowed counter) and so does the enforcer's own limit check, per the
  policy (enforcer_degraded_decisions_total / enforcer_dependency_failures_total);
- the enforcer paused in the middle of a streamed completion: the stream ends (reset),
  the rest of the completion never reaches the client unscreened;
- a config Envoy itself accepts (`envoy --mode validate`), the shipped one included."""

from __future__ import annotations

import re
import signal
import urllib.request

import anthropic
import openai
import pytest

from tests.e2e.meshes import DEV_ENV, REGION
from tests.envoy.test_sdks import ask
from tests.support import ServiceProcess, free_port
from tools.dev_upstream import ECHO
from tools.envoy_gateway import TEMPLATE, validate


def dead() -> str:
    return f"127.0.0.1:{free_port()}"


def client(gw, envoy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://{envoy.address}", api_key=gw.token(), max_retries=0, timeout=30)


def served(gw, marker: str) -> bool:
    return any(marker in r["body"] for r in gw.upstream_requests())


def test_enforcer_down_ext_authz_denies_with_503(gateway) -> None:
    envoy = gateway.another_envoy("enforcer-down", enforcer=dead())
    with pytest.raises(anthropic.InternalServerError) as exc:
        client(gateway, envoy).messages.create(model="m", max_tokens=8, messages=ask("enforcer-down-1"))
    assert exc.value.status_code == 503
    assert not served(gateway, "enforcer-down-1")
    assert envoy.stats("http.model_api.ext_authz.")["http.model_api.ext_authz.error"] >= 1


def test_ext_authz_status_on_error_is_configurable(gateway) -> None:
    envoy = gateway.another_envoy(
        "authz-403", enforcer=dead(), extproc=gateway.enforcer.address, authz_status_on_error=403
    )
    with pytest.raises(anthropic.PermissionDeniedError):
        client(gateway, envoy).messages.create(model="m", max_tokens=8, messages=ask("authz-403-1"))
    assert not served(gateway, "authz-403-1")


def test_ext_proc_down_fails_closed_by_default(gateway) -> None:
    envoy = gateway.another_envoy("extproc-closed", extproc=dead())
    with pytest.raises(anthropic.InternalServerError) as exc:
        client(gateway, envoy).messages.create(model="m", max_tokens=8, messages=ask("extproc-closed-1"))
    assert exc.value.status_code == 503 and not served(gateway, "extproc-closed-1")


def test_ext_proc_down_with_failure_mode_allow_serves_unscreened_and_says_so(gateway) -> None:
    envoy = gateway.another_envoy("extproc-open", extproc=dead(), extproc_failure_mode_allow=True)
    msg = client(gateway, envoy).messages.create(model="m", max_tokens=8, messages=ask("extproc-open-1"))
    assert msg.stop_reason == "end_turn" and served(gateway, "extproc-open-1")
    stats = envoy.stats("http.model_api.ext_proc.")
    assert stats["http.model_api.ext_proc.failure_mode_allowed"] >= 1, stats


def metric(port: int, name: str, label: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}_total{{[^}}]*{label}[^}}]*}} (\S+)$", text, re.M))


def test_rate_limiter_down_fails_open_in_envoy_and_in_the_enforcer(gateway) -> None:
    rls = dead()
    metrics = free_port()
    b = gateway.backends
    enforcer = ServiceProcess(
        "services.enforcer",
        [
            *b.enforcer_args(
                region=REGION, policies=gateway.policies, key=gateway.key, metrics_listen=f"127.0.0.1:{metrics}"
            ),
            "--extproc-after-authz", "--ratelimit-addr", rls, "--upstream-connect-timeout-seconds", "0",
        ],
        env=DEV_ENV,
    ).start(timeout=60)  # fmt: skip
    b.procs.append(enforcer)
    envoy = gateway.another_envoy("rls-down", ratelimit=rls, enforcer=enforcer.address)
    msg = client(gateway, envoy).messages.create(model="m", max_tokens=8, messages=ask("rls-down-1"))
    assert msg.stop_reason == "end_turn" and served(gateway, "rls-down-1")
    stats = envoy.stats("cluster.model_upstream.ratelimit.")
    assert stats["cluster.model_upstream.ratelimit.failure_mode_allowed"] >= 1, stats
    assert metric(metrics, "enforcer_dependency_failures", 'dependency="ratelimit"') >= 1


@pytest.mark.parametrize("which", ["shipped", "rendered"])
def test_envoy_itself_accepts_the_config(gateway, which) -> None:
    if which == "shipped":
        # The shipped file names /etc/safeguards/gateway/jwks.json; point it at a real JWKS.
        config = gateway.tmp / "shipped.yaml"
        config.write_text(
            TEMPLATE.read_text().replace("/etc/safeguards/gateway/jwks.json", str(gateway.creds.jwks_path))
        )
    else:
        config = gateway.envoy.folder / "envoy.json"
    out = validate(config)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


def test_enforcer_paused_mid_stream_ends_the_stream_never_passes_the_rest_unscreened(gateway) -> None:
    slow = ServiceProcess("tools.dev_upstream", ["--listen", "127.0.0.1:0", "--delay-ms", "150"]).start()
    gateway.backends.procs.append(slow)
    envoy = gateway.another_envoy("paused", upstream=slow.address)
    gpt = openai.OpenAI(base_url=f"http://{envoy.address}/v1", api_key=gateway.token(), max_retries=0, timeout=30)
    prompt = "The river flows to the sea. " * 10 + ECHO  # echoed back in 24-character deltas, 150 ms apart
    stream = iter(gpt.chat.completions.create(model="m", messages=ask(prompt), stream=True))
    parts = [next(stream).choices[0].delta.content or ""]
    gateway.enforcer.signal(signal.SIGSTOP)  # ext_proc's next message times out (message_timeout 0.5 s)
    finish = None
    try:
        with pytest.raises(openai.APIError):
            for chunk in stream:
                for choice in chunk.choices:
                    parts.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
    finally:
        gateway.enforcer.signal(signal.SIGCONT)
    text = "".join(parts)
    assert finish is None and len(text) < len(prompt) - len(ECHO) - 20, text  # cut short, not completed
