"""The trace-agent API over real HTTP: what real tracers sent (captures/ddtrace-4.16) goes in, spans and
LLM Observability events come out on a recording stand-in for the pipeline."""

from __future__ import annotations

import gzip
import hashlib
import json
import time

import aiohttp
import msgpack
import orjson
import pytest

from llmship.config import load_config_text
from llmship.llm import extract
from llmship.model import Span
from llmship.sinks.traces import AGENT_VERSION
from llmship.sources.traces import TraceSource, decode_v04
from llmship.telemetry import Telemetry

from harness import CAPTURES as CAPTURES_ROOT

CAPTURES = CAPTURES_ROOT / "ddtrace-4.16"


class RecordingPipeline:
    """What a source sees of the pipeline: submit_* record, overloaded() answers from ``full``."""

    def __init__(self) -> None:
        self.telemetry = Telemetry()
        self.span_batches: list = []
        self.llmobs: list = []
        self.full: set[str] = set()

    def transcode_v04(self, body, language) -> None:
        return None  # every chunk decoded into Span objects, for the tests to read

    def submit_spans(self, chunks, tracer) -> None:
        self.span_batches.append((chunks, tracer))

    def submit_llmobs_events(self, events) -> None:
        self.llmobs.extend(events)

    def overloaded(self, kind: str) -> bool:
        return kind in self.full

    @property
    def chunks(self) -> list[list[Span]]:
        return [chunk for chunks, _ in self.span_batches for chunk in chunks]


def capture_headers(name: str) -> dict[str, str]:
    """The request headers a capture was sent with, minus those the HTTP client sets itself."""
    doc = json.loads((CAPTURES / name).read_text())
    return {k: v for k, v in doc["headers"] if k not in ("host", "content-length")}


@pytest.fixture
def pipeline() -> RecordingPipeline:
    return RecordingPipeline()


@pytest.fixture
async def server(pipeline, tmp_path):
    cfg = load_config_text(f"""
[agent]
env = "prod"
[sources.traces]
listen = "127.0.0.1:0"
socket = "{tmp_path / 'apm.socket'}"
max_body_bytes = 1048576
""")
    source = TraceSource(cfg, pipeline, read_timeout_secs=0.5)
    await source.start()
    host, port = next(a for a in source.addresses if isinstance(a, tuple))[:2]
    source.url = f"http://{host}:{port}"
    yield source
    await source.shutdown(deadline=time.monotonic() + 5)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def counter(pipeline: RecordingPipeline, name: str, **labels: str) -> float:
    return pipeline.telemetry.component("traces").get(name, **labels)


async def test_info_advertises_what_we_serve(server, http, pipeline):
    async with http.get(server.url + "/info") as r:
        body = await r.read()
        assert r.status == 200
        assert r.headers["Datadog-Agent-Version"] == AGENT_VERSION
        assert r.headers["Datadog-Agent-State"] == hashlib.sha256(body).hexdigest()
    info = json.loads(body)
    assert "/evp_proxy/v2/" in info["endpoints"]  # or ddtrace sends LLM Observability agentless
    assert {"/v0.4/traces", "/v0.5/traces"} <= set(info["endpoints"])
    assert "/v0.7/config" not in info["endpoints"] and "/v0.6/stats" not in info["endpoints"]
    assert info["client_drop_p0s"] is False and info["span_meta_structs"] is True
    assert info["version"] and info["git_commit"]  # older libdatadog requires both
    assert info["config"]["max_request_bytes"] == 1048576
    assert info["config"]["default_env"] == "prod"
    assert info["config"]["receiver_port"] == 0 and info["config"]["statsd_port"] == 8125
    assert counter(pipeline, "requests", endpoint="info") == 1


async def test_v04_capture_yields_spans_and_llmobs_events(server, http, pipeline):
    body = (CAPTURES / "v04_traces_llmobs_default.msgpack").read_bytes()
    headers = capture_headers("v04_traces_llmobs_default.decoded.json")
    async with http.post(server.url + "/v0.4/traces", data=body, headers=headers) as r:
        assert r.status == 200
        assert r.headers["Datadog-Agent-Version"] == AGENT_VERSION
        rates = (await r.json())["rate_by_service"]
    assert rates == {"service:,env:": 1.0, "service:chatbot,env:staging": 1.0}

    chunks = pipeline.chunks
    assert [len(c) for c in chunks] == [2] * 6
    roots = [c[0] for c in chunks]
    assert all(s.name == "openai.request" and set(s.meta_struct) == {"_llmobs"} for s in roots)
    assert all(c[1].meta_struct == {} and c[1].parent_id == c[0].span_id for c in chunks)
    assert roots[0].trace_id == 11736565019625699723 and roots[0].meta["_dd.p.tid"] == "6b03df9500000000"
    assert roots[5].error == 1

    tracer = pipeline.span_batches[0][1]
    assert (tracer.language, tracer.language_version, tracer.tracer_version) == ("python", "3.11.7", "4.16.0")
    assert tracer.runtime_id == "629aa4e04069412fb19ca3bad2c49c69"

    assert counter(pipeline, "spans") == counter(pipeline, "received") == 12
    assert counter(pipeline, "llmobs_events") == 6
    assert counter(pipeline, "received_bytes") == len(body)
    assert counter(pipeline, "requests", endpoint="v0.4/traces") == 1


async def test_llmobs_conversion_equals_what_ddtrace_posts_on_the_evp_path():
    """The same six OpenAI calls were captured both ways; the converted events match field for field."""
    chunks = decode_v04((CAPTURES / "v04_traces_llmobs_default.msgpack").read_bytes(), "application/msgpack")
    evp = json.loads((CAPTURES / "evp_llmobs_spans_apm_tracing_disabled.json").read_text())["body"]
    assert len(evp) == len(chunks) == 6
    events = [extract.from_span(chunk[0], "", "", "").event for chunk in chunks]
    for chunk, envelope, event in zip(chunks, evp, events):
        span, expected = chunk[0], envelope["spans"][0]
        assert set(event) == set(expected)
        assert set(event["_dd"]) == set(expected["_dd"])
        for key in ("name", "status", "parent_id", "meta", "metrics", "tags"):
            assert event[key] == expected[key], key
        # ids, start and duration come from the APM span that carried the struct
        assert event["span_id"] == event["_dd"]["span_id"] == str(span.span_id)
        assert (event["start_ns"], event["duration"]) == (span.start, span.duration)
        assert event["_dd"]["apm_trace_id"] == f"{span.meta['_dd.p.tid']}{span.trace_id:016x}"
        assert event["trace_id"] == span.meta["llmobs_trace_id"]
    assert events[5]["status"] == "error"
    assert "error_type:openai.RateLimitError" in events[5]["tags"]


async def test_v05_capture_decodes_string_table_and_arrays(server, http, pipeline):
    body = (CAPTURES / "v05_traces_apm_only.msgpack").read_bytes()
    decoded = json.loads((CAPTURES / "v05_traces_apm_only.decoded.json").read_text())
    async with http.put(server.url + "/v0.5/traces", data=body,
                        headers=capture_headers("v05_traces_apm_only.decoded.json")) as r:
        assert r.status == 200
    table, traces = decoded["body"]
    chunks = pipeline.chunks
    assert [len(c) for c in chunks] == [len(t) for t in traces]
    for chunk, trace in zip(chunks, traces):
        for span, fields in zip(chunk, trace):
            assert (span.service, span.name, span.resource) == tuple(table[i] for i in fields[:3])
            assert (span.trace_id, span.span_id, span.parent_id) == tuple(fields[3:6])
            assert (span.start, span.duration, span.error) == tuple(fields[6:9])
            assert span.meta == {table[int(k)]: table[v] for k, v in fields[9].items()}
            assert span.meta_struct == {}
    assert counter(pipeline, "spans") == sum(len(t) for t in traces)


async def test_v04_json_is_accepted(server, http, pipeline):
    trace = [{"service": "svc", "name": "op", "resource": "r", "trace_id": 7, "span_id": 1, "start": 10,
              "duration": 5, "meta": {"env": "dev"}, "metrics": {"_sampling_priority_v1": 1}}]
    async with http.post(server.url + "/v0.4/traces", json=[trace]) as r:
        assert r.status == 200
        assert (await r.json())["rate_by_service"]["service:svc,env:dev"] == 1.0
    (span,), = pipeline.chunks
    assert (span.service, span.trace_id, span.parent_id, span.metrics) == ("svc", 7, 0, {"_sampling_priority_v1": 1.0})


async def test_undecodable_llmobs_struct_keeps_the_apm_span(server, http, pipeline):
    """The source passes meta_struct blobs on as they came: reading _llmobs is the LLM stage's job."""
    span = {"service": "s", "name": "n", "resource": "r", "trace_id": 1, "span_id": 2, "start": 1, "duration": 1,
            "meta_struct": {"_llmobs": b"\xc1", "appsec": msgpack.packb({"k": 1})}}
    async with http.post(server.url + "/v0.4/traces", data=msgpack.packb([[span]]),
                         headers={"Content-Type": "application/msgpack"}) as r:
        assert r.status == 200
    (got,), = pipeline.chunks
    assert got.meta_struct == {"_llmobs": b"\xc1", "appsec": msgpack.packb({"k": 1})}


async def test_evp_llmobs_capture(server, http, pipeline):
    doc = json.loads((CAPTURES / "evp_llmobs_spans_apm_tracing_disabled.json").read_text())
    headers = {k: v for k, v in doc["headers"] if k not in ("host", "content-length")}
    async with http.post(server.url + doc["path"], data=orjson.dumps(doc["body"]), headers=headers) as r:
        assert r.status == 202
    assert pipeline.llmobs == [e for envelope in doc["body"] for e in envelope["spans"]]
    assert counter(pipeline, "llmobs_events") == 6
    assert counter(pipeline, "requests", endpoint="evp_llmobs") == 1


async def test_evp_accepts_one_gzipped_envelope(server, http, pipeline):
    envelope = {"_dd.stage": "raw", "event_type": "span", "spans": [{"span_id": "1", "name": "x"}]}
    async with http.post(server.url + "/evp_proxy/v2/api/v2/llmobs", data=gzip.compress(orjson.dumps(envelope)),
                         headers={"Content-Type": "application/json", "Content-Encoding": "gzip",
                                  "X-Datadog-EVP-Subdomain": "llmobs-intake"}) as r:
        assert r.status == 202
    assert pipeline.llmobs == [{"span_id": "1", "name": "x"}]


async def test_other_evp_targets_are_accepted_and_counted(server, http, pipeline):
    async with http.post(server.url + "/evp_proxy/v2/api/intake/llm-obs/v2/eval-metric", json={"data": {}},
                         headers={"X-Datadog-EVP-Subdomain": "api"}) as r:
        assert r.status == 202
    assert pipeline.llmobs == []
    assert counter(pipeline, "requests", endpoint="evp_unsupported") == 1


async def test_evp_without_subdomain_is_a_bad_request(server, http, pipeline):
    async with http.post(server.url + "/evp_proxy/v2/api/v2/llmobs", json=[]) as r:
        assert r.status == 400
        assert "X-Datadog-EVP-Subdomain" in await r.text()
    assert counter(pipeline, "refused", reason="missing_subdomain") == 1


@pytest.mark.parametrize("method, path, status, endpoint", [
    ("POST", "/v0.7/config", 404, "v0.7/config"),
    ("POST", "/telemetry/proxy/api/v2/apmtelemetry", 202, "telemetry"),
    ("POST", "/v0.6/stats", 200, "v0.6/stats"),
    ("POST", "/debugger/v2/input", 202, "debugger"),
    ("GET", "/nope", 404, "unknown"),
    ("GET", "/v0.4/traces", 405, "v0.4/traces"),
])
async def test_other_endpoints(server, http, pipeline, method, path, status, endpoint):
    async with http.request(method, server.url + path, data=b"{}") as r:
        assert r.status == status
        assert r.headers["Datadog-Agent-Version"] == AGENT_VERSION
    assert counter(pipeline, "requests", endpoint=endpoint) == 1


async def test_unix_socket_serves_the_same_api(server, pipeline, tmp_path):
    connector = aiohttp.UnixConnector(path=str(tmp_path / "apm.socket"))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post("http://localhost/v0.4/traces", data=msgpack.packb([]),
                                headers={"Content-Type": "application/msgpack"}) as r:
            assert r.status == 200
        async with session.get("http://localhost/info") as r:
            assert "/evp_proxy/v2/" in (await r.json())["endpoints"]


async def test_poison_values_cost_only_themselves(server, http, pipeline):
    """A NaN sampling priority used to fail the whole payload's encoding; now the value is dropped and
    counted where it enters, and the spans around it go on."""
    spans = [{"service": "s", "name": "n", "trace_id": 1, "span_id": 1, "start": 1, "duration": 1,
              "metrics": {"_sampling_priority_v1": float("nan")}},
             {"service": "s", "name": "n", "trace_id": 1, "span_id": 2, "parent_id": 1, "start": 1, "duration": 1}]
    async with http.post(server.url + "/v0.4/traces", data=msgpack.packb([spans]),
                         headers={"Content-Type": "application/msgpack"}) as r:
        assert r.status == 200
    (chunk,) = pipeline.chunks
    assert len(chunk) == 2 and chunk[0].metrics == {}
    assert counter(pipeline, "discarded", reason="poison_value", intentional="false") == 1


async def test_rates_follow_a_reloaded_env_for_the_same_roots(server, http):
    """The rates bodies are remembered by the roots' (service, env): a root without an env takes the
    configured one, and a reload's new env reaches the next answer for the very same roots."""
    body = msgpack.packb([[{"service": "web", "name": "req", "span_id": 1, "trace_id": 1}],
                          [{"service": "db", "name": "q", "span_id": 2, "trace_id": 2, "meta": {"env": "qa"}}]])
    expected = {"service:,env:": 1.0, "service:web,env:prod": 1.0, "service:db,env:qa": 1.0}
    for _ in range(2):
        async with http.put(server.url + "/v0.4/traces", data=body, headers={"Content-Type": "application/msgpack"}) as r:
            assert (await r.json())["rate_by_service"] == expected
    server.reload(load_config_text('[agent]\nenv = "canary"\n[sources.traces]\nmax_body_bytes = 1048576\n'))
    async with http.put(server.url + "/v0.4/traces", data=body, headers={"Content-Type": "application/msgpack"}) as r:
        assert (await r.json())["rate_by_service"] == {"service:,env:": 1.0, "service:web,env:canary": 1.0,
                                                       "service:db,env:qa": 1.0}
