"""The intake server in-process on a free port, driven by a real HTTP client."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from llmship import protobuf as pb
from llmship.compression import compress
from llmship.delivery.payload import PAYLOAD_ID_HEADER
from llmship.sinks.intakes import ROUTES
from llmship.intake.server import Faults, IntakeServer
from llmship.intake.store import IntakeStore

API_KEY = "0123456789abcdef0123456789abcdef"

BODIES = {
    "series": orjson.dumps({"series": [{"metric": "m", "points": [{"timestamp": 1, "value": 1.0}]}]}),
    "sketches": pb.f_msg(1, pb.f_str(1, "d") + pb.f_msg(7, pb.f_varint(2, 1))),
    "events": orjson.dumps({"title": "t", "text": "x"}),
    "service_checks": orjson.dumps([{"check": "c", "host_name": "h", "status": 0}]),
    "logs": orjson.dumps([{"message": "a"}, {"message": "b"}]),
    "llmobs": orjson.dumps([{"event_type": "span", "spans": [{"span_id": "1"}]}]),
    "traces": pb.f_msg(5, pb.f_msg(6, pb.f_msg(3, pb.f_str(1, "svc") + pb.f_str(2, "op")))),
}
ACCEPTED = {"series": {"errors": []}, "sketches": {}, "events": {"status": "ok"},
            "service_checks": {"status": "ok"}, "logs": {}, "llmobs": {}, "traces": {}}


class Client:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def post(self, kind: str, body: bytes | None = None, encoding: str | None = None, key: bool = True,
                   payload_id: str | None = None, path: str | None = None, method: str = "POST",
                   headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
        body = BODIES[kind] if body is None else body
        all_headers = {**({"DD-API-KEY": API_KEY} if key else {}), **(headers or {})}
        if encoding:
            body = compress(body, encoding)
            all_headers["Content-Encoding"] = encoding
        if payload_id:
            all_headers[PAYLOAD_ID_HEADER] = payload_id
        async with self.session.request(method, self.url + (path or ROUTES[kind].path), data=body,
                                        headers=all_headers) as resp:
            return resp.status, await resp.json(), dict(resp.headers)


@pytest.fixture
async def start(tmp_path: Path):
    """start(**faults) -> (Client, IntakeStore) for an intake on a free port."""
    started = []
    session = aiohttp.ClientSession()

    async def start_server(**faults) -> tuple[Client, IntakeStore]:
        store = IntakeStore(tmp_path / f"intake-{len(started)}.sqlite")
        server = IntakeServer(store, Faults(**faults))
        url = await server.start("127.0.0.1", 0)
        started.append((server, store))
        return Client(url, session), store

    yield start_server
    await session.close()
    for server, store in started:
        await server.shutdown()
        store.close()


@pytest.mark.parametrize("kind", list(ROUTES))
async def test_every_endpoint_accepts_records_and_answers_like_datadog(start, kind, tmp_path):
    client, store = await start()
    status, body, _ = await client.post(kind, encoding="gzip", payload_id=f"p-{kind}")
    assert (status, body) == (202, ACCEPTED[kind])
    records = store.records(kind)
    assert records and {r["payload_id"] for r in records} == {f"p-{kind}"}
    [request] = store.requests(kind)
    assert request["status"] == 202 and request["items"] == len(records) and request["api_key_present"]
    assert request["content_encoding"] == "gzip" and request["path"] == ROUTES[kind].path
    assert request["fault"] is None and request["reason"] is None
    # the key's value is never written anywhere in the database
    assert not any(API_KEY.encode() in p.read_bytes() for p in tmp_path.glob("intake-0.sqlite*"))


async def test_any_encoding_and_any_host(start):
    client, store = await start()
    for encoding in ("gzip", "deflate", "zstd", None):
        status, _, _ = await client.post("logs", encoding=encoding, headers={"Host": "http-intake.logs.datadoghq.eu"})
        assert status == 202
    assert len(store.records("logs")) == 8
    assert [r["content_encoding"] for r in store.requests()] == ["gzip", "deflate", "zstd", None]


async def test_missing_api_key_is_403_on_the_api_and_401_on_logs(start):
    client, store = await start()
    status, body, _ = await client.post("series", key=False)
    assert (status, body) == (403, {"errors": ["missing DD-API-KEY header"]})
    status, body, _ = await client.post("logs", key=False, headers={"DD-API-KEY": "  "})
    assert status == 401
    assert body == {"errors": [{"status": "401", "title": "Unauthorized", "detail": "missing DD-API-KEY header"}]}
    assert store.records() == []
    assert [(r["status"], r["api_key_present"]) for r in store.requests()] == [(403, False), (401, False)]


async def test_body_over_the_intake_limit_is_413(start):
    client, store = await start()
    too_big = b" " * 512_001  # series: 512,000 bytes on the wire at most
    status, body, _ = await client.post("series", body=too_big)
    assert status == 413 and "512000" in body["errors"][0]
    assert store.requests()[0]["bytes"] == 512_001

    async def chunked():  # no Content-Length: the limit holds while streaming
        for _ in range(600):
            yield b" " * 1000

    status, _, _ = await client.post("series", body=chunked())
    assert status == 413
    assert store.records() == []


async def test_body_inflating_past_the_limit_is_413(start):
    client, _ = await start()
    bomb = b"[" + b" " * 6_000_000 + b"]"  # tiny compressed, 6 MB inflated: logs allow 5 MB
    status, body, _ = await client.post("logs", body=bomb, encoding="zstd")
    assert status == 413 and "decompressed" in body["errors"][0]["detail"]


async def test_more_than_1000_logs_is_413(start):
    client, store = await start()
    status, _, _ = await client.post("logs", body=orjson.dumps([{"message": "x"}] * 1001), encoding="gzip")
    assert status == 413
    status, _, _ = await client.post("logs", body=orjson.dumps([{"message": "x"}] * 1000), encoding="gzip")
    assert status == 202 and len(store.records("logs")) == 1000


async def test_garbage_is_400_and_unknown_encoding_415_and_unknown_path_404(start):
    client, store = await start()
    status, body, _ = await client.post("series", body=b"\x00garbage")
    assert status == 400 and body["errors"][0].startswith("malformed series payload")
    status, _, _ = await client.post("traces", body=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert status == 400
    status, _, _ = await client.post("logs", headers={"Content-Encoding": "br"})
    assert status == 415
    status, _, _ = await client.post("series", path="/api/v1/series")
    assert status == 404
    status, _, _ = await client.post("series", method="GET")
    assert status == 404
    assert store.records() == []
    assert [r["status"] for r in store.requests()] == [400, 400, 415, 404, 404]
    assert all(r["reason"] for r in store.requests())


async def test_fail_first_with_retry_after_then_accepts(start):
    client, store = await start(fail_first=2, retry_after="3")
    answers = [await client.post("series", payload_id="same") for _ in range(3)]
    assert [a[0] for a in answers] == [503, 503, 202]
    assert answers[0][2]["Retry-After"] == "3" and "Retry-After" not in answers[2][2]
    assert len(store.records("series")) == 1  # faulted requests keep no records
    assert [(r["status"], r["fault"]) for r in store.requests()] == [(503, "fail_first"), (503, "fail_first"),
                                                                     (202, None)]


async def test_fail_status_http_date_and_fail_kind(start):
    date = "Wed, 21 Oct 2065 07:28:00 GMT"
    client, store = await start(fail_first=1, fail_status=429, retry_after=date, fail_kind="logs")
    assert (await client.post("series"))[0] == 202  # another kind: never faulted, nor counted
    status, body, headers = await client.post("logs")
    assert status == 429 and headers["Retry-After"] == date and body["errors"][0]["title"] == "Too Many Requests"
    assert (await client.post("logs"))[0] == 202
    assert [r["status"] for r in store.requests()] == [202, 429, 202]


async def test_fail_for_secs_fails_everything_then_recovers(start):
    client, store = await start(fail_for_secs=0.3, retry_after="1")
    began = time.monotonic()
    first = await client.post("logs")
    assert first[0] == 503 and first[2]["Retry-After"] == "1"
    deadline = began + 10
    while (status := (await client.post("logs"))[0]) != 202:
        assert status == 503 and time.monotonic() < deadline
    assert time.monotonic() - began >= 0.3
    faulted = [r for r in store.requests() if r["fault"] == "fail_for_secs"]
    assert faulted and len(store.records("logs")) == 2


async def test_latency_delays_every_response(start):
    client, _ = await start(latency_ms=200)
    began = time.monotonic()
    assert (await client.post("series"))[0] == 202
    assert time.monotonic() - began >= 0.2


async def test_max_body_bytes_answers_413_for_splitting(start):
    client, store = await start(max_body_bytes=100, fail_kind="logs")
    big = orjson.dumps([{"message": "x" * 200}])
    status, body, headers = await client.post("logs", body=big)
    assert status == 413 and "--max-body-bytes" in body["errors"][0]["detail"] and "Retry-After" not in headers
    assert (await client.post("logs", body=orjson.dumps([{"message": "x"}])))[0] == 202
    assert (await client.post("series", body=orjson.dumps({"series": [{"metric": "m" * 200, "points": []}]})))[0] == 202
    assert [(r["status"], r["fault"]) for r in store.requests()] == [(413, "max_body_bytes"), (202, None), (202, None)]


# ------------------------------------------------------------------------------------------ OTLP


async def test_otlp_endpoints_decode_json_and_protobuf_without_an_api_key(tmp_path):
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    store = IntakeStore(tmp_path / "otlp.sqlite")
    server = IntakeServer(store)
    url = await server.start()
    try:
        doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name",
                                                               "value": {"stringValue": "svc"}}]},
                                  "scopeSpans": [{"spans": [{"traceId": "0af7651916cd43dd8448eb211c80319c",
                                                             "spanId": "b7ad6b7169203331", "name": "chat m",
                                                             "kind": 3}]}]}]}
        request = trace_service_pb2.ExportTraceServiceRequest()
        span = request.resource_spans.add().scope_spans.add().spans.add()
        span.name, span.span_id = "pb", b"\x00" * 7 + b"\x01"
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/v1/traces", data=orjson.dumps(doc),
                                    headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 200 and await resp.json() == {}
            async with session.post(url + "/v1/traces", data=compress(request.SerializeToString(), "gzip"),
                                    headers={"Content-Type": "application/x-protobuf",
                                             "Content-Encoding": "gzip"}) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-protobuf"
            async with session.post(url + "/v1/logs", data=b"\xff\xff",
                                    headers={"Content-Type": "application/x-protobuf"}) as resp:
                assert resp.status == 400
        spans = [r["data"] for r in store.records("otlp_spans")]
        assert spans[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and spans[0]["resource"] == {
            "service.name": "svc"} and spans[0]["kind"] == 3
        assert spans[1]["name"] == "pb" and spans[1]["span_id"] == "0000000000000001"
        assert [r["status"] for r in store.requests("otlp_spans")] == [200, 200]
    finally:
        await server.shutdown()
