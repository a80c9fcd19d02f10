"""Every output of the OTLP trace conversion, for checking that a change leaves them as they were.

    .venv/bin/python bench/otlp_outputs.py /tmp/before.bin      # before the change
    .venv/bin/python bench/otlp_outputs.py /tmp/after.bin       # after it
    cmp /tmp/before.bin /tmp/after.bin

Inputs: every OTLP trace capture (captures/otel-1.45) and synthetic requests exercising what the captures
do not: resource attributes (service, env, version, HTTP ones), HTTP server and client, database, messaging,
RPC, FaaS and GraphQL spans, operation/resource/span type overrides, attribute values of every kind, events
(an exception), links, error status, 128-bit trace ids, invalid ids and spans of several services. Outputs,
per request: the converted chunks (msgspec msgpack of the spans, before processing), the LLM calls (repr),
the result's counts; then the payloads the agent's processing plane makes of all requests (bench/llm_calls.py's
pipeline, its "default" and "scrub" configs), decompressed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from llm_calls import Pipeline  # noqa: E402

from llmship.sources import otlp_map  # noqa: E402
from llmship.sources.otlp import TRACES, decode_request  # noqa: E402

CAPTURES = ROOT / "tests" / "fixtures" / "captures" / "otel-1.45"


def any_value(value) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, bytes):
        return common_pb2.AnyValue(bytes_value=value)
    if isinstance(value, list):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(values=kvs(value)))
    if value is None:
        return common_pb2.AnyValue()
    return common_pb2.AnyValue(string_value=value)


def kvs(attrs: dict) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def span(n: int, attrs: dict, kind: int = 1, parent: int = 0, trace: bytes = b"\x00" * 8 + b"\x01" * 8,
         **fields) -> trace_pb2.Span:
    return trace_pb2.Span(trace_id=trace, span_id=n.to_bytes(8, "big"),
                          parent_span_id=parent.to_bytes(8, "big") if parent else b"", name=f"span-{n}",
                          kind=kind, start_time_unix_nano=1_700_000_000_000_000_000 + n,
                          end_time_unix_nano=1_700_000_000_000_500_000 + n * 7, attributes=kvs(attrs), **fields)


def request(resource: dict, spans: list, scope_attrs: dict | None = None) -> bytes:
    scope = common_pb2.InstrumentationScope(name="synthetic", version="1.2", attributes=kvs(scope_attrs or {}))
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(attributes=kvs(resource)),
        scope_spans=[trace_pb2.ScopeSpans(scope=scope, spans=spans)])]).SerializeToString()


def synthetic() -> list[bytes]:
    high = b"\x12\x34\x56\x78\x9a\xbc\xde\xf0" + b"\x02" * 8
    exception = trace_pb2.Span.Event(name="exception", time_unix_nano=5, attributes=kvs(
        {"exception.message": "boom", "exception.type": "ValueError"}))
    link = trace_pb2.Span.Link(trace_id=high, span_id=b"\x00" * 7 + b"\x09", trace_state="a=b",
                               attributes=kvs({"k": "v", "n": 3}), dropped_attributes_count=2)
    error = trace_pb2.Status(code=2, message="failed")
    chat = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 3, "server.address": "api.openai.com",
            "gen_ai.input.messages": '[{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]'}
    return [
        request({"service.name": "web", "deployment.environment.name": "Prod", "service.version": "1.0",
                 "telemetry.sdk.language": "python", "telemetry.sdk.version": "1.45", "container.id": "abc",
                 "http.request.method": "PUT", "url.full": "http://r", "host.name": "h", "res.int": 4,
                 "http.method": "PATCH", "http.url": "http://u", "res.bytes": b"\x01"}, [
            span(1, {"http.request.method": "GET", "http.route": "/users/{id}", "http.response.status_code": 200,
                     "url.full": "http://x/users/1", "user_agent.original": "curl", "client.address": "1.2.3.4",
                     "http.request.header.x-forwarded-for": ["5.6.7.8"], "sampling.priority": 1}, kind=2),
            span(2, {"http.method": "_OTHER", "network.protocol.version": "1.1", "http.response.status_code": -1},
                 kind=3, parent=1),
            span(3, {"db.system": "Redis", "db.statement": "GET k", "db.query.text": "GET k2"}, kind=3, parent=1),
            span(4, {"db.system.name": "postgresql", "db.query.text": "SELECT 1"}, kind=3, parent=1),
            span(5, {"messaging.system": "Kafka", "messaging.operation.type": "Publish",
                     "messaging.destination.name": "orders"}, kind=4, parent=1),
            span(6, {"messaging.system": "rabbitmq", "messaging.operation": "receive"}, kind=5, parent=1),
            span(7, {"rpc.system": "grpc", "rpc.method": "Get", "rpc.service": "Users"}, kind=3, parent=1),
            span(8, {"rpc.system": "aws-api", "rpc.service": "S3", "rpc.method": "PutObject"}, kind=3, parent=1),
            span(9, {"rpc.system": "aws-api"}, kind=3, parent=1),
            span(10, {"rpc.system": "GRPC", "rpc.method": "List"}, kind=2, parent=1),
            span(11, {"faas.invoked_provider": "AWS", "faas.invoked_name": "Fn"}, kind=3, parent=1),
            span(12, {"faas.trigger": "HTTP"}, kind=2, parent=1),
            span(13, {"graphql.operation.type": "query", "graphql.operation.name": "Q"}, kind=1, parent=1),
            span(14, {"network.protocol.name": "AMQP"}, kind=2, parent=1),
            span(15, {"network.protocol.name": "amqp"}, kind=3, parent=1),
            span(16, {}, kind=3, parent=1),
            span(17, {}, kind=2, parent=1),
            span(18, {}, kind=4, parent=1), span(19, {}, kind=0, parent=1), span(20, {}, kind=9, parent=1),
            span(21, {"operation.name": "My.Op", "resource.name": "my resource", "span.type": "worker",
                      "service.name": "other", "deployment.environment": "Stage", "service.version": 7}, parent=1),
            span(22, {"env": "mine", "version": "v", "error.msg": "kept", "b": True, "d": 1.5, "i": 2,
                      "by": b"\x00\xff", "arr": [1, "a", 2.5, False], "map": {"x": {"y": [b"z"]}}, "none": None,
                      "empty": "", "service.name": "", "http.request.header." + "x" * 130: "h", "y" * 200: 5},
                 parent=21, status=error, events=[exception],
                 links=[link]),
            span(23, {}, status=error, events=[exception], trace=high),
            span(24, {}, status=trace_pb2.Status(code=1, message="fine"), trace=high, parent=23),
            span(25, {"service.name": b"", "deployment.environment.name": 3}, trace=high, parent=24),
            trace_pb2.Span(trace_id=b"\x00" * 16, span_id=b"\x01" * 8, name="invalid"),
            trace_pb2.Span(trace_id=b"\x01" * 15, span_id=b"\x01" * 8, name="invalid"),
        ], scope_attrs={"scope.attr": "s", "scope.n": 1}),
        request({"deployment.environment": "dev", "messaging.system": "sqs", "rpc.system": "grpc",
                 "db.system": "mongodb", "http.method": "POST", "resource.name": "from resource",
                 "operation.name": "Res.Op", "span.type": "res-type", "ml_app": "res-app"}, [
            span(1, {}, kind=3), span(2, {"messaging.operation": "send"}, kind=4, parent=1),
            span(3, {"db.system": "cassandra"}, kind=3, parent=1),
            span(4, dict(chat), kind=3, parent=1, status=error),
            span(5, {**chat, "ml_app": "mine", "gen_ai.prompt." + "p" * 150: "long", "gen_ai." + "t" * 150: "tag"},
                 kind=3, parent=4,
                 events=[trace_pb2.Span.Event(name="gen_ai.user.message", attributes=kvs({"content": "q"})),
                         exception]),
        ]),
        request({}, [span(1, {}, kind=3), span(2, dict(chat), kind=3, parent=1),
                     span(3, {"llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.prompt.1.role": "user",
                              "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "be brief",
                              "gen_ai.prompt.1.content": "hi", "gen_ai.completion.0.role": "assistant",
                              "gen_ai.completion.0.tool_calls.0.name": "f",
                              "gen_ai.completion.0.tool_calls.0.arguments": '{"a": 1}',
                              "gen_ai.usage.prompt_tokens": 5, "llm.usage.total_tokens": 9.0}, parent=1),
                     span(4, {"openinference.span.kind": "LLM", "llm.model_name": "m", "llm.provider": "x",
                              "llm.input_messages.0.message.role": "user",
                              "llm.input_messages.0.message.contents.1.message_content.text": "b",
                              "llm.input_messages.0.message.contents.0.message_content.text": "a",
                              "llm.input_messages.1.other": "skipped", "llm.output_messages.0.message.role": "a",
                              "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "g",
                              "llm.token_count.prompt": 3}, parent=1)]),
    ]


def main() -> int:
    out_path = sys.argv[1]
    bodies = [path.read_bytes() for path in sorted(CAPTURES.glob("*_traces_*.pb"))] + synthetic()
    encoder = msgspec.msgpack.Encoder()
    parts = []
    for body in bodies:
        result = otlp_map.convert_traces(decode_request(TRACES, body, False))
        parts.append(repr((result.spans, result.rejected, result.error)).encode())
        for batch in result.batches:
            parts.append(repr(batch.tracer).encode())
            parts.append(encoder.encode(batch.chunks))
            parts.append(repr(batch.calls).encode())
    for config in ("default", "scrub"):
        pipeline = Pipeline(config)
        for body in bodies:
            for batch in otlp_map.convert_traces(decode_request(TRACES, body, False)).batches:
                pipeline.emitter.submit_otlp(batch.chunks, batch.calls, batch.tracer)
        parts.append(msgspec.json.encode(pipeline.finish()))
    Path(out_path).write_bytes(b"\n--\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
