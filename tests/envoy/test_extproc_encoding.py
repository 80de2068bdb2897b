"""ext_proc and compressed completions, one exchange driven in process (real policies,
detectors and SSE decoder; tests/unit/enforcer_stream/helpers.py): a gzip or deflate
stream is decoded and passed on decoded; an encoding it cannot read, a corrupt stream
or a decompression bomb is cut, never passed unscreened. The same path through a real
Envoy: tests/envoy/test_sdks.py::test_gzip_sse_from_the_upstream_is_decoded_screened_and_cut."""

from __future__ import annotations

import gzip
import zlib

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from services.enforcer.edges.extproc import INFLATE_FACTOR, ExtProcConfig, HttpExchange
from tests.unit.enforcer_stream.helpers import make_screener

BODY = b'{"model": "gpt", "stream": true, "messages": [{"role": "user", "content": "Tell me a story"}]}'


def hdrs(pairs: dict[str, str]) -> ep.HttpHeaders:
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
        )
    )


def event(text: str) -> bytes:
    return b'data: {"choices":[{"index":0,"delta":{"content":"' + text.encode() + b'"}}]}\n\n'


async def exchange(
    tmp_path, encoding: str, config: ExtProcConfig | None = None
) -> tuple[HttpExchange, ep.HeadersResponse]:
    screener, _cl, _pub = make_screener(tmp_path, every=10, window=100)
    x = HttpExchange(screener, config or ExtProcConfig())
    await x.handle(
        ep.ProcessingRequest(
            request_headers=hdrs(
                {":path": "/v1/chat/completions", "content-type": "application/json", "x-safeguards-tenant": "acme"}
            )
        )
    )
    await x.handle(ep.ProcessingRequest(request_body=ep.HttpBody(body=BODY, end_of_stream=True)))
    out = await x.handle(
        ep.ProcessingRequest(
            response_headers=hdrs({":status": "200", "content-type": "text/event-stream", "content-encoding": encoding})
        )
    )
    return x, out.response_headers


async def chunk(x: HttpExchange, data: bytes, end: bool = False) -> ep.CommonResponse:
    out = await x.handle(ep.ProcessingRequest(response_body=ep.HttpBody(body=data, end_of_stream=end)))
    return out.response_body.response


async def test_gzip_stream_is_decoded_screened_and_passed_on_decoded(tmp_path) -> None:
    x, headers = await exchange(tmp_path, "gzip")
    assert set(headers.response.header_mutation.remove_headers) >= {"content-encoding", "content-length"}
    comp = zlib.compressobj(wbits=31)
    plain = event("Once upon a time ") + event("there was a river.") + b"data: [DONE]\n\n"
    data = comp.compress(plain) + comp.flush()
    out1 = await chunk(x, data[:7])  # a gzip header split anywhere
    out2 = await chunk(x, data[7:], end=True)
    assert out1.body_mutation.body + out2.body_mutation.body == plain


async def test_deflate_stream_with_a_leak_is_cut(tmp_path) -> None:
    x, _ = await exchange(tmp_path, "deflate")
    comp = zlib.compressobj()
    first = await chunk(x, comp.compress(event("Sure, ")) + comp.flush(zlib.Z_SYNC_FLUSH))
    assert first.body_mutation.body == event("Sure, ")
    cut = await chunk(x, comp.compress(event("the plutonium recipe is ")) + comp.flush(zlib.Z_SYNC_FLUSH))
    assert b'"finish_reason":"content_filter"' in cut.body_mutation.body and b"plutonium" not in cut.body_mutation.body
    assert (await chunk(x, comp.flush(), end=True)).body_mutation.body == b""  # the rest is dropped


async def test_an_encoding_that_is_not_decoded_is_refused_not_passed(tmp_path) -> None:
    x, headers = await exchange(tmp_path, "br")
    assert "content-encoding" in headers.response.header_mutation.remove_headers
    out = await chunk(x, b"\x1b\x03\x00\xf8\xa5\x1d\x10\x00", end=True)
    assert b'"finish_reason":"content_filter"' in out.body_mutation.body


async def test_a_corrupt_gzip_stream_is_cut(tmp_path) -> None:
    x, _ = await exchange(tmp_path, "gzip")
    out = await chunk(x, b"\x1f\x8b\x08\x00garbage-that-is-not-deflate")
    assert b'"finish_reason":"content_filter"' in out.body_mutation.body


async def test_a_decompression_bomb_is_cut_at_the_bound(tmp_path) -> None:
    limit = 1000
    x, _ = await exchange(tmp_path, "gzip", ExtProcConfig(max_completion_bytes=limit))
    bomb = gzip.compress(b": keep-alive\n" * (INFLATE_FACTOR * limit))  # comments only: no text to screen
    assert len(bomb) < INFLATE_FACTOR * limit // 20
    out = await chunk(x, bomb, end=True)
    assert b'"finish_reason":"content_filter"' in out.body_mutation.body
    assert len(out.body_mutation.body) < 1000
