"""Shutdown does not cut long streams mid-event (issue 14 item 9): on SIGTERM the
enforcer keeps screening in-flight completions for --drain-grace-seconds, then ends each
one with its provider's well-formed ending (ext_proc: Anthropic `stop_reason:
max_tokens`; ScreenCompletion: the stream's decision) before the server cancels the
call, and records it (`completion.drained`). Real processes and real gRPC, driven as
Envoy drives ext_proc."""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
import uuid

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from safeguards.v1 import safeguards_pb2 as pb
from safeguards.v1 import safeguards_pb2_grpc

from services.enforcer.edges.sse import SSEDecoder
from tests.e2e.meshes import backends
from tests.e2e.test_streaming import BENIGN, POLICY, REGION, completion_signals, headers, request_part

GRACE_S = 3.0
EVENT = (
    'event: content_block_delta\ndata: {{"type":"content_block_delta","index":0,'
    '"delta":{{"type":"text_delta","text":"{text}"}}}}\n\n'
)
START = (
    'event: message_start\ndata: {"type":"message_start","message":{"id":"m1","role":"assistant"}}\n\n'
    'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    '"content_block":{"type":"text","text":""}}\n\n'
)


def feeder(first: list, chunks: queue.Queue):
    yield from first
    while (item := chunks.get()) is not None:
        yield item


def test_sigterm_ends_in_flight_streams_well_formed_before_the_grace_runs_out(tmp_path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "default.yaml").write_text(POLICY)
    (tmp_path / "rl").mkdir()
    (tmp_path / "rl" / "e2es.yaml").write_text(
        "domain: e2es\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: hour, requests_per_unit: 10000}\n"
    )
    (tmp_path / "hmac.key").write_bytes(b"e2e-drain-key-" + b"z" * 40)
    with backends(tmp_path, tmp_path / "rl") as b:
        args = b.enforcer_args(region=REGION, policies=tmp_path / "policies", key=tmp_path / "hmac.key")
        enf = b.enforcer([*args, "--drain-grace-seconds", str(GRACE_S)])
        rid = "drain-" + uuid.uuid4().hex[:6]
        body = {"model": "claude", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
        ext_chunks: queue.Queue = queue.Queue()
        native_chunks: queue.Queue = queue.Queue()
        first = [
            *request_part("/v1/messages", body, rid),
            ep.ProcessingRequest(response_headers=headers({":status": "200", "content-type": "text/event-stream"})),
            ep.ProcessingRequest(response_body=ep.HttpBody(body=START.encode())),
        ]
        start = pb.ScreenCompletionRequest(
            start=pb.CompletionStart(context=pb.RequestContext(tenant="acme", request_id=rid + "-n"))
        )
        out: dict[str, list] = {"ext": [], "native": []}
        errors: dict[str, grpc.StatusCode] = {}

        def run(name: str, call) -> None:
            try:
                for resp in call:
                    out[name].append((time.monotonic(), resp))
            except grpc.RpcError as exc:
                errors[name] = exc.code()

        with grpc.insecure_channel(enf.address) as ch:
            ext = ep_grpc.ExternalProcessorStub(ch).Process(feeder(first, ext_chunks), timeout=60)
            native = safeguards_pb2_grpc.SafeguardsServiceStub(ch).ScreenCompletion(
                feeder([start], native_chunks), timeout=60
            )
            threads = [threading.Thread(target=run, args=a) for a in (("ext", ext), ("native", native))]
            for t in threads:
                t.start()
            for text in BENIGN[:2]:
                ext_chunks.put(ep.ProcessingRequest(response_body=ep.HttpBody(body=EVENT.format(text=text).encode())))
                native_chunks.put(pb.ScreenCompletionRequest(chunk=text))
                time.sleep(0.2)
            enf.proc.send_signal(signal.SIGTERM)
            sigterm = time.monotonic()
            # The upstream keeps streaming through the grace (Envoy's chunks keep coming).
            while time.monotonic() - sigterm < GRACE_S + 2 and any(t.is_alive() for t in threads):
                text = BENIGN[int(time.monotonic() * 10) % len(BENIGN)]
                ext_chunks.put(ep.ProcessingRequest(response_body=ep.HttpBody(body=EVENT.format(text=text).encode())))
                native_chunks.put(pb.ScreenCompletionRequest(chunk=text))
                time.sleep(0.2)
            ext_chunks.put(None)
            native_chunks.put(None)
            for t in threads:
                t.join(10)
        assert enf.wait(20) == 0
        # One signal each, naming the drain (read before the broker stops).
        sigs = completion_signals(b.kafka.bootstrap, {rid, rid + "-n"})

        # ext_proc: the ending the enforcer wrote parses as well-formed events (the open
        # block closed, stop_reason max_tokens, message_stop), written before the grace ran out.
        sent = b""
        ended_at = None
        for at, resp in out["ext"]:
            if resp.HasField("response_body"):
                mutation = resp.response_body.response.body_mutation
                if mutation.HasField("body"):
                    sent += mutation.body
                    if b"max_tokens" in mutation.body and ended_at is None:
                        ended_at = at
        assert ended_at is not None, f"no drained ending; errors: {errors}"
        assert ended_at - sigterm < GRACE_S
        events = [json.loads(e.data) for e in SSEDecoder().feed(sent)]
        assert events[-1]["type"] == "message_stop"
        assert events[-2]["delta"]["stop_reason"] == "max_tokens"
        assert [e["type"] for e in events].count("content_block_stop") == 1
        # ScreenCompletion: the last message carries the stream's decision, said drained.
        last = out["native"][-1][1]
        assert last.HasField("decision") and "completion.drained" in [r.code for r in last.decision.reasons]
        assert sorted(s.request_id for s in sigs) == sorted([rid, rid + "-n"])
        assert all("completion.drained" in [r.code for r in s.reasons] for s in sigs)
