"""The HTTP logs source over real HTTP: the Datadog logs intake's API as clients use it."""

from __future__ import annotations

import gzip
import time
import zlib

import aiohttp
import orjson
import pytest

from llmship.config import load_config_text
from llmship.sources.logs import MAX_HTTP_BODY_BYTES, LogsSource
from test_logs_tcp import Pipeline  # the same stand-in pipeline

API_KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def served():
    cfg = load_config_text("""
[sources.logs]
tcp = ""
http = "127.0.0.1:0"
max_line_bytes = 64
""")
    pipeline = Pipeline()
    source = LogsSource(cfg, pipeline)
    await source.start()
    host, port = source.http_address
    async with aiohttp.ClientSession(f"http://{host}:{port}") as session:
        yield session, pipeline
    await source.shutdown(time.monotonic() + 2)


async def post(session, path, body: bytes, **headers):
    headers.setdefault("Content-Type", "application/json")
    async with session.post(path, data=body, headers=headers) as r:
        return r.status, await r.read(), r.headers


async def test_one_object_as_the_intake_takes_it(served):
    session, pipeline = served
    status, body, _ = await post(session, "/api/v2/logs", orjson.dumps(
        {"message": "hi", "ddsource": "python", "ddtags": "env:dev", "service": "chat", "hostname": "h",
         "status": "info", "prompt": "p", "usr": {"id": 7}}), **{"DD-API-KEY": API_KEY})
    assert (status, body) == (202, b"{}")
    assert pipeline.records == [{"message": "hi", "ddsource": "python", "ddtags": "env:dev", "service": "chat",
                                 "hostname": "h", "status": "info", "prompt": "p", "usr": {"id": 7}}]


async def test_an_array_gzip_compressed(served):
    session, pipeline = served
    logs = [{"message": f"m{i}"} for i in range(1000)]
    status, _, _ = await post(session, "/api/v2/logs", gzip.compress(orjson.dumps(logs)),
                              **{"Content-Encoding": "gzip"})
    assert status == 202
    assert [r["message"] for r in pipeline.records] == [f"m{i}" for i in range(1000)]


@pytest.mark.parametrize("path", ["/v1/input", f"/v1/input/{API_KEY}", "/"])
async def test_the_v1_paths_answer_200(served, path):
    session, pipeline = served
    status, body, _ = await post(session, path, zlib.compress(b'{"message": "v1"}'), **{"Content-Encoding": "deflate"})
    assert (status, body) == (200, b"{}")
    assert pipeline.records == [{"message": "v1"}]


async def test_plain_text_bodies_are_lines_with_the_line_limit(served):
    session, pipeline = served
    status, _, _ = await post(session, "/v1/input", b'plain one\n{"message": "json"}\n' + b"z" * 100,
                              **{"Content-Type": "text/plain"})
    assert status == 200
    plain, json_line, long_line = pipeline.records
    assert plain == {"message": "plain one"} and json_line == {"message": "json"}
    assert long_line["message"] == "z" * 64 and long_line["llmship"] == {"line_bytes": 100}


async def test_query_parameters_apply_to_every_log(served):
    session, pipeline = served
    logs = [{"message": "a"}, {"message": "b", "service": "own", "ddtags": "team:x"}]
    status, _, _ = await post(session, "/api/v2/logs?ddtags=env:qa,src:q&ddsource=nodejs&service=from-query",
                              orjson.dumps(logs))
    assert status == 202
    assert pipeline.records == [
        {"message": "a", "ddsource": "nodejs", "service": "from-query", "ddtags": "env:qa,src:q"},
        {"message": "b", "ddsource": "nodejs", "service": "own", "ddtags": "team:x,env:qa,src:q"},
    ]


async def test_429_with_retry_after_while_the_logs_queue_is_full(served):
    session, pipeline = served
    pipeline.is_overloaded = True
    status, body, headers = await post(session, "/api/v2/logs", b'{"message": "x"}')
    assert status == 429 and headers["Retry-After"] == "1" and b"retry" in body
    assert pipeline.records == []
    pipeline.is_overloaded = False
    assert (await post(session, "/api/v2/logs", b'{"message": "x"}'))[0] == 202


@pytest.mark.parametrize(("body", "headers", "status", "reason"), [
    (b'{"message": ', {}, 400, b"invalid JSON"),
    (b"not gzip", {"Content-Encoding": "gzip"}, 400, b"cannot decompress"),
    (b"{}", {"Content-Encoding": "br"}, 415, b"Content-Encoding"),
    (gzip.compress(b"[" + b"0," * MAX_HTTP_BODY_BYTES + b"0]"), {"Content-Encoding": "gzip"}, 413, b"inflates"),
    (b"x" * (MAX_HTTP_BODY_BYTES + 1), {}, 413, b"over"),
])
async def test_bad_requests_get_a_reason(served, body, headers, status, reason):
    session, pipeline = served
    got, answer, _ = await post(session, "/api/v2/logs", body, **headers)
    assert got == status and reason in answer
    assert pipeline.records == []
    assert pipeline.telemetry.component("logs_http").get("errors") == 1
    assert (await post(session, "/api/v2/logs", b'{"message": "still fine"}'))[0] == 202


async def test_other_paths_and_methods_are_refused(served):
    session, _ = served
    async with session.get("/api/v2/logs") as r:
        assert r.status == 405
    async with session.post("/api/v1/series", data=b"{}") as r:
        assert r.status == 404
