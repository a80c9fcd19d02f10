"""The OTLP/HTTP source over real HTTP: what real OpenTelemetry clients sent (captures/otel-1.45) goes in;
APM spans, processed LLM calls (through the real emitter and LLM stage), metric points, sketches and logs
come out on a recording stand-in for the shipping plane's router."""

from __future__ import annotations

import base64
import gzip
import json
import time

import aiohttp
import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from llmship.aggregation import COUNT, GAUGE
from llmship.config import load_config_text
from llmship.llm.stage import LLMStage
from llmship.processing import Emitter
from llmship.sources.otlp import OTLPSource
from llmship.sources.otlp_map import Cumulative
from llmship.telemetry import Telemetry
from llmship.transforms.logs import LogProcessor
from llmship.transforms.sampling import Sampler
from llmship.transforms.scrub import Scrubber

from harness import CAPTURES as CAPTURES_ROOT

CAPTURES = CAPTURES_ROOT / "otel-1.45"
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
MARKER = "…[truncated]"
CHAT_TAGS = ("service:chatbot", "env:bars", "version:2.0", "model:gpt-4o-mini", "provider:openai",
             "endpoint:/v1/chat/completions")


class RecordingRouter:
    """The shipping plane as the emitter sees it, recording what reaches it."""

    def __init__(self) -> None:
        self.telemetry = Telemetry()
        self.chunks, self.outputs, self.logs, self.metrics, self.points, self.sketches = [], [], [], [], [], []
        self.full: set[str] = set()
        cumulative = Cumulative(self.add_point, self.add_sketch)  # the real router's: points become differences
        self.add_cumulative_sum, self.add_cumulative_histogram = cumulative.add_sum, cumulative.add_histogram

    def add_metric(self, *sample, **kwargs) -> None:
        self.metrics.append(sample)

    def add_metrics(self, samples) -> None:
        self.metrics += samples

    def add_point(self, name, series_type, value, tags, timestamp, host=None) -> None:
        self.points.append((name, series_type, value, tags, timestamp))

    def add_sketch(self, name, sketch, tags, timestamp, host=None) -> None:
        self.sketches.append((name, sketch, tags, timestamp))

    def dsd_event(self, event) -> None: ...

    def service_check(self, check) -> None: ...

    def trace_items(self, items, language) -> None:
        self.chunks.extend(chunk for chunk, _ in items)

    def calls(self, outputs) -> None:
        self.outputs.extend(outputs)

    def log_items(self, records) -> None:
        self.logs.extend(records)

    async def handed_over(self) -> None:
        """In one process everything is handed over when submitted."""

    # The sinks as the emitter sees them: items "encode" as themselves, so what reaches the router can be read.
    def encode_chunks(self, chunks, tracer):
        return [((chunk, tracer), len(chunk)) for chunk in chunks]

    @staticmethod
    def encode(item):
        return item

    @staticmethod
    def encode_many(items):
        return list(items)

    def emitter(self, cfg, scrubber=None) -> Emitter:
        telemetry = self.telemetry
        scrubber = scrubber or Scrubber(cfg.scrub.rules, telemetry.component("scrub"))
        return Emitter(telemetry=telemetry, router=self, llm=LLMStage(cfg, scrubber, telemetry),
                       log_processor=LogProcessor(cfg, Sampler(cfg.llm.sampling), scrubber, telemetry),
                       trace_sink=self, llmobs_sink=self, logs_sink=self, scrubber=scrubber)

    def overloaded(self, lane: str) -> bool:
        return lane in self.full

    @property
    def events(self) -> list[dict]:
        return [o.event for o in self.outputs if o.event is not None]

    def samples(self, name: str) -> list:
        return [s for o in self.outputs for s in o.samples if s[0] == name]


CONFIG = """
[agent]
hostname = "test-host"
[sources.otlp]
http = "127.0.0.1:0"
max_body_bytes = 65536
[llm]
max_text_chars = 64
[llm.sampling]
prompt_log_rate = 1.0
"""


@pytest.fixture
def router() -> RecordingRouter:
    return RecordingRouter()


@pytest.fixture
async def server(router):
    cfg = load_config_text(CONFIG)
    source = OTLPSource(cfg, router.emitter(cfg), read_timeout_secs=0.5)
    await source.start()
    host, port = source.addresses[0][:2]
    source.url = f"http://{host}:{port}"
    yield source
    await source.shutdown(deadline=time.monotonic() + 5)


async def post(server, path: str, body: bytes, headers: dict) -> tuple[int, bytes, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + path, data=body, headers=headers) as r:
            return r.status, await r.read(), dict(r.headers)


def capture(name: str) -> bytes:
    return (CAPTURES / name).read_bytes()


def hex_ids(doc):
    """The capture's proto3 JSON (base64 ids) in OTLP/JSON's form: ids as hex."""
    if isinstance(doc, dict):
        return {k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") and v else hex_ids(v))
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [hex_ids(v) for v in doc]
    return doc


def user_text(event: dict) -> str:
    return event["meta"]["input"]["messages"][-1]["content"]


# ------------------------------------------------------------------------------------------ traces


@pytest.mark.parametrize("app", ["openai-v2", "openinference"])
async def test_captured_traces_become_apm_spans_and_processed_llm_calls(server, router, app):
    status, body, headers = await post(server, "/v1/traces", capture(f"{app}_traces_1.pb"), PROTOBUF)
    assert status == 200 and headers["Content-Type"] == "application/x-protobuf"
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    assert not response.HasField("partial_success")

    spans = [s for chunk, _ in router.chunks for s in chunk]
    assert len(spans) == 7 and len(router.chunks) == 1
    tracer = router.chunks[0][1]
    assert tracer.language == "python" and tracer.tracer_version == "otlp-1.45.2"
    root = next(s for s in spans if s.parent_id == 0)
    assert root.resource == "handle_request" and root.name == "Internal" and root.metrics["_top_level"] == 1
    for s in spans:  # the Agent's conversion: ids, unified service tags, status, scope
        assert s.service == "chatbot" and s.meta["env"] == "bars" and s.meta["version"] == "2.0"
        assert len(s.meta["otel.trace_id"]) == 32 and s.meta["_dd.p.tid"] == s.meta["otel.trace_id"][:16]
        assert s.trace_id == int(s.meta["otel.trace_id"][16:], 16)
        # prompt text leaves only in the LLM Observability event
        assert not any(k.startswith(("gen_ai.input", "gen_ai.output", "llm.input_messages", "llm.output_messages"))
                       or k in ("input.value", "output.value") for k in s.meta)
    calls = [s for s in spans if s is not root]
    assert all(s.parent_id == root.span_id for s in calls)
    assert sum(s.error for s in spans) == 1
    failed = next(s for s in spans if s.error)
    assert failed.meta["otel.status_code"] == "Error" and "429" in failed.meta["error.msg"]

    events = router.events
    assert len(events) == 6 and all(e["meta"]["span"]["kind"] == "llm" for e in events)
    assert {e["span_id"] for e in events} == {str(s.span_id) for s in calls}
    by_text = {user_text(e): e for e in events}
    plain = by_text["What is the capital of France?"]
    assert plain["metrics"] == {"input_tokens": 10, "output_tokens": 11, "total_tokens": 21}
    assert plain["meta"]["output"]["messages"] == [{"role": "assistant", "content": "Paris is the capital of France."}]
    assert plain["parent_id"] == "undefined" and plain["trace_id"] == root.meta["otel.trace_id"]
    for tag in (*CHAT_TAGS, "ml_app:chatbot", "error:0"):
        assert tag in plain["tags"], tag
    # scrubbed, then truncated
    assert "And of Peru? Reply to [REDACTED:email]" in by_text
    long = next(e for text, e in by_text.items() if text.startswith("LONGPROMPT"))
    assert user_text(long).endswith(MARKER) and len(user_text(long)) == 64
    assert "llmship.truncated:true" in long["tags"] and long["metrics"]["input_tokens"] == 308
    failed_event = next(e for e in events if e["status"] == "error")
    assert failed_event["meta"]["model_name"] == "error-model"
    assert "429" in failed_event["meta"]["error"]["message"]

    # the same llm.* metrics as any call: six requests, one error, exact tokens
    assert len(router.samples("llm.requests")) == 6
    assert [s[3] for s in router.samples("llm.errors")] == ["service:chatbot,env:bars,version:2.0,model:error-model,"
                                                            "provider:openai,endpoint:/v1/chat/completions"]
    assert sum(s[2] for s in router.samples("llm.tokens.input")) == 10 + 8 + 11 + 308 + 8
    assert sum(s[2] for s in router.samples("llm.tokens.output")) == 5 * 11
    assert all(set(CHAT_TAGS) <= set(s[3].split(",")) for s in router.samples("llm.tokens.total"))
    assert len(router.samples("llm.cost.usd")) == 5
    logs = [o.log for o in router.outputs if o.log is not None]
    assert len(logs) == 6 and all(log["ddsource"] == "llmship" for log in logs)


@pytest.mark.parametrize("ids", ["base64", "hex"])
async def test_json_rendering_gives_the_same_calls_as_protobuf(server, router, ids):
    await post(server, "/v1/traces", capture("openai-v2_traces_1.pb"), PROTOBUF)
    from_protobuf = sorted(router.events, key=lambda e: e["span_id"])
    router.outputs.clear()
    doc = json.loads(capture("openai-v2_traces_1.json"))
    status, body, headers = await post(server, "/v1/traces", orjson.dumps(hex_ids(doc) if ids == "hex" else doc),
                                       JSON)
    assert status == 200 and headers["Content-Type"] == "application/json" and json.loads(body) == {}
    assert sorted(router.events, key=lambda e: e["span_id"]) == from_protobuf


async def test_gzip_bodies(server, router):
    status, _, _ = await post(server, "/v1/traces", gzip.compress(capture("openinference_traces_1.pb")),
                              {**PROTOBUF, "Content-Encoding": "gzip"})
    assert status == 200 and len(router.events) == 6


async def test_partial_success_for_spans_with_invalid_ids(server, router):
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(capture("openai-v2_traces_1.pb"))
    request.resource_spans[0].scope_spans[0].spans[0].span_id = b""
    status, body, _ = await post(server, "/v1/traces", request.SerializeToString(), PROTOBUF)
    assert status == 200
    partial = trace_service_pb2.ExportTraceServiceResponse.FromString(body).partial_success
    assert partial.rejected_spans == 1 and "invalid" in partial.error_message
    assert sum(len(c) for c, _ in router.chunks) == 6
    status, body, _ = await post(server, "/v1/traces", json_format.MessageToJson(request).encode(), JSON)
    assert json.loads(body)["partialSuccess"]["rejectedSpans"] == "1"  # int64: a string in proto3 JSON


@pytest.mark.parametrize("body, headers, status, reason", [
    (b"\xff\xff\xff", PROTOBUF, 400, "cannot decode traces request"),
    (b"[1, 2]", JSON, 400, "expected a JSON object"),
    (b'{"resourceSpans": "nope"}', JSON, 400, "cannot decode traces request"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "' + b"g" * 32 + b'"}]}]}]}', JSON, 400,
     "not a hex id"),
    (b"not gzip", {**PROTOBUF, "Content-Encoding": "gzip"}, 400, "cannot decompress gzip"),
    (b"{}", {"Content-Type": "text/plain"}, 415, "unsupported media type"),
    (b"{}", {**JSON, "Content-Encoding": "br"}, 415, "unsupported Content-Encoding"),
    (b"\0" * 70000, PROTOBUF, 413, "payload too large"),
    (gzip.compress(b"\0" * 70000), {**PROTOBUF, "Content-Encoding": "gzip"}, 413, "inflates past"),
])
async def test_bad_requests_are_answered_with_a_status_and_the_reason(server, router, body, headers, status, reason):
    code, answer, answer_headers = await post(server, "/v1/traces", body, headers)
    assert code == status
    if answer_headers.get("Content-Type") == "application/json":
        message = json.loads(answer)["message"]
    else:  # google.rpc.Status: code (1, varint) then message (2, length-delimited)
        assert answer[:2] == b"\x08\x03" and answer[2] == 0x12
        message = answer[4:].decode() if answer[3] < 128 else answer[5:].decode()
    assert reason in message
    assert router.chunks == []


async def test_other_methods_and_paths(server):
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/v1/traces") as r:
            assert r.status == 405
        async with session.post(server.url + "/v1/profiles", data=b"", headers=PROTOBUF) as r:
            assert r.status == 404


@pytest.mark.parametrize("lane, path", [("traces", "/v1/traces"), ("logs", "/v1/logs"), ("series", "/v1/metrics")])
async def test_overloaded_answers_429_with_retry_after(server, router, lane, path):
    router.full.add(lane)
    status, _, headers = await post(server, path, trace_service_pb2.ExportTraceServiceRequest().SerializeToString(),
                                    PROTOBUF)
    assert status == 429 and headers["Retry-After"] == "1"


# ------------------------------------------------------------------------------------------ metrics


def delta(request: metrics_service_pb2.ExportMetricsServiceRequest):
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                m.histogram.aggregation_temporality = 1  # AGGREGATION_TEMPORALITY_DELTA
    return request


async def test_delta_histograms_become_sketches_with_exact_count_and_sum(server, router):
    request = delta(metrics_service_pb2.ExportMetricsServiceRequest.FromString(capture("openai-v2_metrics_1.pb")))
    status, body, _ = await post(server, "/v1/metrics", request.SerializeToString(), PROTOBUF)
    assert status == 200
    assert not metrics_service_pb2.ExportMetricsServiceResponse.FromString(body).HasField("partial_success")
    sketches = {(name, tags): sketch for name, sketch, tags, _ in router.sketches}
    base = "service:chatbot,env:bars,version:2.0,gen_ai.operation.name:chat"
    tokens_in = sketches[("gen_ai.client.token.usage", base + ",gen_ai.request.model:gpt-4o-mini,"
                          "gen_ai.provider.name:openai,gen_ai.response.model:gpt-4o-mini,gen_ai.token.type:input")]
    assert (tokens_in.cnt, tokens_in.sum, tokens_in.min, tokens_in.max) == (5, 345.0, 8.0, 308.0)
    assert sum(tokens_in.bins.values()) == 5  # bucket counts spread over the sketch's keys
    durations = [s for (name, _), s in sketches.items() if name == "gen_ai.client.operation.duration"]
    assert sorted(s.cnt for s in durations) == [1, 5]
    assert all(ts == pytest.approx(1796177680.27, abs=0.01) for *_, ts in router.sketches)


async def test_cumulative_histograms_ship_differences_and_drop_the_first_point(server, router):
    first = metrics_service_pb2.ExportMetricsServiceRequest.FromString(capture("openai-v2_metrics_1.pb"))
    await post(server, "/v1/metrics", first.SerializeToString(), PROTOBUF)
    assert router.sketches == []  # the Agent drops a cumulative histogram's first point
    await post(server, "/v1/metrics", capture("openai-v2_metrics_2.pb"), PROTOBUF)
    assert router.sketches == []  # no new calls in between: nothing to ship
    later = metrics_service_pb2.ExportMetricsServiceRequest.FromString(capture("openai-v2_metrics_2.pb"))
    for m in later.resource_metrics[0].scope_metrics[0].metrics:
        for p in m.histogram.data_points:
            p.time_unix_nano += 10**9
            p.count += 2
            p.sum += 7.0
            p.bucket_counts[0] += 2
    await post(server, "/v1/metrics", later.SerializeToString(), PROTOBUF)
    assert len(router.sketches) == 4 and all(s.cnt == 2 and s.sum == pytest.approx(7.0) for _, s, _, _ in router.sketches)


async def test_sums_and_gauges_become_counts_and_gauges(server, router):

    request = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "chatbot"
    sm = rm.scope_metrics.add()
    now = time.time_ns()
    started = now - 1000  # after the source started: its first cumulative point counts
    m = sm.metrics.add(name="app.requests")
    m.sum.aggregation_temporality, m.sum.is_monotonic = 2, True
    m.sum.data_points.add(start_time_unix_nano=started, time_unix_nano=now, as_int=5)
    m = sm.metrics.add(name="app.delta")
    m.sum.aggregation_temporality = 1
    m.sum.data_points.add(time_unix_nano=now, as_double=2.5).attributes.add(key="k").value.string_value = "v"
    m = sm.metrics.add(name="app.queue")
    m.gauge.data_points.add(time_unix_nano=now, as_int=7)
    m = sm.metrics.add(name="app.nan")
    m.gauge.data_points.add(time_unix_nano=now, as_double=float("nan"))
    m = sm.metrics.add(name="app.summary")
    m.summary.data_points.add(time_unix_nano=now, count=1, sum=1.0)
    status, body, _ = await post(server, "/v1/metrics", request.SerializeToString(), PROTOBUF)
    partial = metrics_service_pb2.ExportMetricsServiceResponse.FromString(body).partial_success
    assert status == 200 and partial.rejected_data_points == 2
    assert [(p[0], p[1], p[2], p[3]) for p in router.points] == [
        ("app.requests", COUNT, 5.0, "service:chatbot"), ("app.delta", COUNT, 2.5, "service:chatbot,k:v"),
        ("app.queue", GAUGE, 7.0, "service:chatbot")]
    m = request.resource_metrics[0].scope_metrics[0].metrics[0]
    m.sum.data_points[0].time_unix_nano += 10**9
    m.sum.data_points[0].as_int = 12
    await post(server, "/v1/metrics", request.SerializeToString(), PROTOBUF)
    assert router.points[3][:3] == ("app.requests", COUNT, 7.0)


# ------------------------------------------------------------------------------------------ logs


async def test_logs_become_datadog_logs_scrubbed(server, router):
    request = logs_service_pb2.ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    for key, value in (("service.name", "chatbot"), ("deployment.environment.name", "bars")):
        rl.resource.attributes.add(key=key).value.string_value = value
    record = rl.scope_logs.add().log_records.add(time_unix_nano=1796177680_123_000_000, severity_number=17,
                                                 trace_id=bytes(range(16)), span_id=bytes(range(8)))
    record.body.string_value = "user alice.bars@example.com failed"
    record.attributes.add(key="attempt").value.int_value = 2
    status, body, _ = await post(server, "/v1/logs", request.SerializeToString(), PROTOBUF)
    assert status == 200 and not logs_service_pb2.ExportLogsServiceResponse.FromString(body).HasField("partial_success")
    [log] = router.logs
    assert log["message"] == "user [REDACTED:email] failed"
    assert (log["status"], log["service"], log["hostname"], log["attempt"]) == ("error", "chatbot", "test-host", 2)
    assert "env:bars" in log["ddtags"] and log["timestamp"] == 1796177680123
    assert log["otel.trace_id"] == bytes(range(16)).hex() and log["dd.trace_id"] == str(int.from_bytes(bytes(range(8, 16)), "big"))


# ------------------------------------------------------------------------------------------ OTLP/gRPC


async def test_grpc_export_with_a_real_grpc_client(router, tmp_path):
    grpc = pytest.importorskip("grpc")
    from harness import free_port

    port = free_port()
    cfg = load_config_text(CONFIG.replace('http = "127.0.0.1:0"', f'grpc = "127.0.0.1:{port}"'))
    source = OTLPSource(cfg, router.emitter(cfg))
    await source.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                         request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
                                         response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(capture("openai-v2_traces_1.pb"))
            response = await export(request, compression=grpc.Compression.Gzip)
            assert not response.HasField("partial_success") and len(router.events) == 6
            router.full.add("traces")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await export(request)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await source.shutdown(deadline=time.monotonic() + 5)


def test_grpc_without_grpcio_is_a_config_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_grpc(name, *args, **kwargs):
        if name == "grpc":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_grpc)
    from llmship.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config_text('[sources.otlp]\ngrpc = "127.0.0.1:4317"\n')
    assert "sources.otlp.grpc: needs grpcio" in str(e.value)
