"""Every way a request to the trace API can be refused: status, reason and counter, over real sockets."""

from __future__ import annotations

import asyncio
import gzip
import time

import aiohttp
import msgpack
import pytest

from llmship.config import load_config_text
from llmship.sources.traces import DECODERS, DECODER_WAIT_SECS, TraceSource

from test_traces_api import RecordingPipeline, counter

LIMIT = 1 << 20
SPAN = {"service": "s", "name": "n", "resource": "r", "trace_id": 1, "span_id": 2, "start": 1, "duration": 1}
MSGPACK = {"Content-Type": "application/msgpack"}


async def start_source(pipeline: RecordingPipeline, read_timeout_secs: float) -> TraceSource:
    cfg = load_config_text(f'[sources.traces]\nlisten = "127.0.0.1:0"\nmax_body_bytes = {LIMIT}\n')
    source = TraceSource(cfg, pipeline, read_timeout_secs=read_timeout_secs)
    await source.start()
    source.host, source.port = source.addresses[0][:2]
    source.url = f"http://{source.host}:{source.port}"
    return source


@pytest.fixture
def pipeline() -> RecordingPipeline:
    return RecordingPipeline()


@pytest.fixture
async def server(pipeline):
    source = await start_source(pipeline, read_timeout_secs=0.5)
    yield source
    await source.shutdown(deadline=time.monotonic() + 5)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def raw_request(server, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send ``head`` (and ``body``) on a plain socket, return the status and the whole response."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head + body)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(65536), timeout=5)
    finally:
        writer.close()
    return int(response.split(b" ", 2)[1]), response


async def test_oversized_content_length_is_refused_before_reading(server, pipeline):
    head = (b"POST /v0.4/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
            b"Content-Length: %d\r\n\r\n" % (LIMIT + 1))
    started = time.monotonic()
    status, response = await raw_request(server, head)  # no body sent at all
    assert status == 413 and b"payload-too-large" in response
    assert time.monotonic() - started < 1
    assert counter(pipeline, "refused", reason="payload_too_large") == 1
    assert counter(pipeline, "received_bytes") == 0


async def test_oversized_stream_without_length_is_cut_off(server, http, pipeline):
    async def chunks():
        yield b"\x91" + b"\x00" * LIMIT  # chunked transfer: no Content-Length to check up front

    async with http.post(server.url + "/v0.4/traces", data=chunks(), headers=MSGPACK) as r:
        assert r.status == 413
    assert counter(pipeline, "refused", reason="payload_too_large") == 1
    assert pipeline.span_batches == []


async def test_decompression_bomb_is_refused(server, http, pipeline):
    bomb = gzip.compress(b"\x00" * (20 * LIMIT))
    assert len(bomb) < LIMIT // 10
    async with http.post(server.url + "/v0.4/traces", data=bomb,
                         headers={**MSGPACK, "Content-Encoding": "gzip"}) as r:
        assert r.status == 413
        assert "inflates past" in await r.text()
    assert counter(pipeline, "refused", reason="payload_too_large") == 1


async def test_gzipped_traces_are_accepted(server, http, pipeline):
    async with http.post(server.url + "/v0.4/traces", data=gzip.compress(msgpack.packb([[SPAN]])),
                         headers={**MSGPACK, "Content-Encoding": "gzip"}) as r:
        assert r.status == 200
    assert len(pipeline.chunks) == 1


@pytest.mark.parametrize("path, body, reason_text", [
    ("/v0.4/traces", b"\xc1\xc1\xc1", "decoding-error"),
    ("/v0.4/traces", msgpack.packb({"not": "a list"}), "expected an array of traces"),
    ("/v0.4/traces", msgpack.packb([[{**SPAN, "trace_id": "abc"}]]), "trace_id"),
    ("/v0.4/traces", msgpack.packb([[SPAN, 3]]), "span to be a map"),
    ("/v0.5/traces", msgpack.packb([["", "a"], [[[1, 1, 1, 1, 2, 0, 1, 1, 0, {}, {}, 9]]]]), "string index 9"),
    ("/v0.5/traces", msgpack.packb([["a"], [[[0, 0]]]]), "12 elements"),
])
async def test_malformed_payloads_are_bad_requests(server, http, pipeline, path, body, reason_text):
    async with http.post(server.url + path, data=body, headers=MSGPACK) as r:
        assert r.status == 400
        assert reason_text in await r.text()
    assert counter(pipeline, "refused", reason="decoding_error") == 1
    assert pipeline.span_batches == []


async def test_malformed_evp_body_is_a_bad_request(server, http, pipeline):
    async with http.post(server.url + "/evp_proxy/v2/api/v2/llmobs", data=b"{not json",
                         headers={"Content-Type": "application/json", "X-Datadog-EVP-Subdomain": "llmobs-intake"}) as r:
        assert r.status == 400
    async with http.post(server.url + "/evp_proxy/v2/api/v2/llmobs", json=[{"spans": "nope"}],
                         headers={"X-Datadog-EVP-Subdomain": "llmobs-intake"}) as r:
        assert r.status == 400
    assert counter(pipeline, "refused", reason="decoding_error") == 2
    assert pipeline.llmobs == []


@pytest.mark.parametrize("path, headers, reason", [
    ("/v0.4/traces", {"Content-Type": "text/plain"}, "unsupported_media_type"),
    ("/v0.5/traces", {"Content-Type": "application/json"}, "unsupported_media_type"),
    ("/v0.4/traces", {**MSGPACK, "Content-Encoding": "br"}, "unsupported_encoding"),
    ("/evp_proxy/v2/api/v2/llmobs", {"Content-Type": "application/msgpack",
                                     "X-Datadog-EVP-Subdomain": "llmobs-intake"}, "unsupported_media_type"),
])
async def test_unsupported_media_types_and_encodings(server, http, pipeline, path, headers, reason):
    async with http.post(server.url + path, data=msgpack.packb([]), headers=headers) as r:
        assert r.status == 415
    assert counter(pipeline, "refused", reason=reason) == 1


async def test_slow_body_times_out(server, pipeline):
    head = (b"POST /v0.4/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
            b"Content-Length: 100\r\n\r\n")
    status, response = await raw_request(server, head, b"\x91" * 10)  # 90 bytes never come
    assert status == 408
    assert counter(pipeline, "refused", reason="timeout") == 1


async def test_overloaded_traces_follow_the_agent(server, http, pipeline):
    pipeline.full.add("spans")
    body = msgpack.packb([[SPAN]])
    async with http.post(server.url + "/v0.4/traces", data=body,
                         headers={**MSGPACK, "Datadog-Send-Real-Http-Status": "true"}) as r:
        assert r.status == 429 and r.headers["Retry-After"] == "1"
    # Without the header the Agent answers 200 with its rates even for a payload it drops.
    async with http.post(server.url + "/v0.4/traces", data=body, headers=MSGPACK) as r:
        assert r.status == 200 and "rate_by_service" in await r.json()
    async with http.post(server.url + "/v0.4/traces", data=body,
                         headers={**MSGPACK, "Datadog-Send-Real-Http-Status": "false"}) as r:
        assert r.status == 200
    assert counter(pipeline, "refused", reason="overloaded") == 3
    assert pipeline.span_batches == []


async def test_overloaded_llmobs_is_always_429(server, http, pipeline):
    pipeline.full.add("llmobs")
    async with http.post(server.url + "/evp_proxy/v2/api/v2/llmobs", json=[{"spans": [{}]}],
                         headers={"X-Datadog-EVP-Subdomain": "llmobs-intake"}) as r:
        assert r.status == 429 and r.headers["Retry-After"] == "1"
    assert counter(pipeline, "refused", reason="overloaded") == 1
    assert pipeline.llmobs == []


async def test_slow_clients_do_not_hold_the_decoders(pipeline):
    """Bodies still being read hold no decoder: with more stalled clients than decoders, a tracer that
    sends its whole payload is served at once (it used to wait for a decoder, then get 429)."""
    source = await start_source(pipeline, read_timeout_secs=DECODER_WAIT_SECS + 5)
    head = (b"POST /v0.4/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
            b"Content-Length: 100\r\n\r\n\x91")
    stalled = []
    try:
        for _ in range(DECODERS + 2):
            reader, writer = await asyncio.open_connection(source.host, source.port)
            writer.write(head)
            await writer.drain()
            stalled.append(writer)
        await until(lambda: counter(pipeline, "requests", endpoint="v0.4/traces") == DECODERS + 2)
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.post(source.url + "/v0.4/traces", data=msgpack.packb([[SPAN]]),
                                 headers={**MSGPACK, "Datadog-Send-Real-Http-Status": "1"}) as r:
                assert r.status == 200
            assert time.monotonic() - started < DECODER_WAIT_SECS
        assert len(pipeline.chunks) == 1
        assert counter(pipeline, "refused", reason="no_decoder") == 0
    finally:
        for writer in stalled:
            writer.close()
        await source.shutdown(deadline=time.monotonic() + 5)


async def test_payload_waiting_too_long_for_a_decoder_is_refused(pipeline):
    """Every decoder busy (held here as a long decode would hold it): the next payload is refused after
    the decoder wait, as the Agent refuses it (apm_config.decoder_timeout)."""
    source = await start_source(pipeline, read_timeout_secs=5)
    held = [await source._decoders.acquire() for _ in range(DECODERS)]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(source.url + "/v0.4/traces", data=msgpack.packb([]),
                                 headers={**MSGPACK, "Datadog-Send-Real-Http-Status": "1"}) as r:
                assert r.status == 429
        assert counter(pipeline, "refused", reason="no_decoder") == 1
    finally:
        for _ in held:
            source._decoders.release()
        await source.shutdown(deadline=time.monotonic() + 5)
