"""GenAI spans of the conventions no installed client emits any more (OpenLLMetry's indexed attributes,
content in span events, OpenInference tool calls), built with the opentelemetry-proto classes and read by
the same conversion as real exports; and the sketch interpolation the OTLP histogram mapping uses."""

from __future__ import annotations

import math

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from llmship.sketch import Sketch, key, lower_bound
from llmship.sources import otlp_map


def export(attrs: dict, events: list[tuple[str, dict]] = (), kind: int = 3):
    request = trace_service_pb2.ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    span = rs.scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="op", kind=kind,
                                          start_time_unix_nano=10, end_time_unix_nano=30)
    for k, v in attrs.items():
        _set(span.attributes.add(key=k).value, v)
    for name, event_attrs in events:
        event = span.events.add(name=name)
        for k, v in event_attrs.items():
            _set(event.attributes.add(key=k).value, v)
    [batch] = otlp_map.convert_traces(request).batches
    [[span]], [[call]] = batch.chunks, batch.calls
    return span, call


def _set(value, v):
    if isinstance(v, bool):
        value.bool_value = v
    elif isinstance(v, int):
        value.int_value = v
    elif isinstance(v, str):
        value.string_value = v


def test_openllmetry_indexed_attributes():
    span, call = export({
        "llm.request.type": "chat", "gen_ai.system": "OpenAI", "gen_ai.request.model": "gpt-4o",
        "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "Be brief.",
        "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "Hi",
        "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "Hello",
        "gen_ai.completion.0.tool_calls.0.name": "lookup", "gen_ai.completion.0.tool_calls.0.arguments": '{"q": 1}',
        "gen_ai.usage.prompt_tokens": 5, "gen_ai.usage.completion_tokens": 2, "llm.usage.total_tokens": 7,
        "gen_ai.usage.cache_read_input_tokens": 3})
    assert (call.kind, call.model, call.provider, call.endpoint) == ("llm", "gpt-4o", "openai", "/v1/chat/completions")
    meta = call.event["meta"]
    assert meta["input"]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert meta["output"]["messages"] == [{"role": "assistant", "content": "Hello", "tool_calls": [
        {"name": "lookup", "tool_id": "", "type": "function", "arguments": {"q": 1}}]}]
    assert call.event["metrics"] == {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7,
                                     "cache_read_input_tokens": 3}
    assert not any(k.startswith(("gen_ai.prompt", "gen_ai.completion")) for k in span.meta)


def test_older_semconv_content_in_span_events_and_latest_token_details():
    span, call = export(
        {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "o3",
         "gen_ai.usage.input_tokens": 4, "gen_ai.usage.output_tokens": 9,
         "gen_ai.usage.reasoning.output_tokens": 6, "gen_ai.usage.cache_creation.input_tokens": 1},
        [("gen_ai.system.message", {"content": "Be brief."}), ("gen_ai.user.message", {"content": "Hi"}),
         ("gen_ai.choice", {"index": 0, "finish_reason": "stop"}), ("other", {"x": "y"})])
    assert call.event["meta"]["input"]["messages"] == [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Hi"}]
    assert call.event["metrics"]["reasoning_output_tokens"] == 6
    assert call.event["metrics"]["cache_write_input_tokens"] == 1
    assert '"name":"other"' in span.meta["events"] and "gen_ai.user.message" not in span.meta["events"]


def test_latest_semconv_system_instructions_tool_calls_and_kinds():
    _, call = export({
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude",
        "gen_ai.system_instructions": '[{"type": "text", "content": "Be brief."}]',
        "gen_ai.input.messages": '[{"role": "user", "parts": [{"type": "text", "content": "Weather?"}]},'
                                 '{"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "sunny"}]}]',
        "gen_ai.output.messages": '[{"role": "assistant", "parts": [{"type": "tool_call", "id": "c2", "name": "f",'
                                  ' "arguments": {"a": 1}}], "finish_reason": "tool_call"}]'})
    assert call.endpoint == "chat"  # not OpenAI: the operation name
    messages = call.event["meta"]["input"]["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[2]["tool_results"] == [{"tool_id": "c1", "type": "tool_call_output", "result": "sunny"}]
    assert call.event["meta"]["output"]["messages"][0]["tool_calls"][0]["arguments"] == {"a": 1}
    for operation, kind in (("embeddings", "embedding"), ("execute_tool", "tool"), ("invoke_agent", "agent"),
                            ("something_else", "workflow")):
        assert export({"gen_ai.operation.name": operation})[1].kind == kind


def test_openinference_tool_calls_and_chain_values():
    _, call = export({"openinference.span.kind": "LLM", "llm.provider": "openai", "llm.model_name": "gpt-4o",
                      "llm.output_messages.0.message.role": "assistant",
                      "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "f",
                      "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": "{}",
                      "llm.input_messages.0.message.role": "user",
                      "llm.input_messages.0.message.content": "Hi"}, kind=1)
    assert call.event["meta"]["output"]["messages"][0]["tool_calls"][0]["name"] == "f"
    _, chain = export({"openinference.span.kind": "CHAIN", "input.value": "q", "output.value": "a"}, kind=1)
    assert chain.kind == "workflow" and not chain.is_call
    assert chain.event["meta"]["input"] == {"value": "q"} and chain.event["meta"]["output"] == {"value": "a"}


def test_insert_interpolate_spreads_a_bucket_over_its_keys():
    sketch = Sketch()
    sketch.insert_interpolate(1.0, 4.0, 100)
    assert sum(sketch.bins.values()) == 100 and sketch.cnt == 100
    assert min(sketch.bins) == key(1.0) and max(sketch.bins) <= key(4.0)
    assert lower_bound(min(sketch.bins)) <= 1.0 and math.isclose(sketch.min, lower_bound(key(1.0)))
    one = Sketch()
    one.insert_interpolate(5.0, 5.0, 3)  # an open-ended bucket: its finite bound stands for both
    assert one.bins == {key(5.0): 3}
