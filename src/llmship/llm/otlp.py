"""OTLP GenAI spans -> ``LLMCall``: the carrier OpenTelemetry instrumentations use.

Every convention in use is read, because the GenAI conventions are still "Development" and each
instrumentation follows a different revision (PROTOCOLS.md, "OTLP and the OpenTelemetry GenAI conventions"):

- latest GenAI semconv (``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental``, opentelemetry-
  instrumentation-openai-v2 2.x, OpenLLMetry 0.5x+): ``gen_ai.operation.name``, ``gen_ai.provider.name``,
  ``gen_ai.request.model``, ``gen_ai.usage.*``, content as JSON parts in ``gen_ai.input.messages`` /
  ``gen_ai.output.messages`` / ``gen_ai.system_instructions`` or in the event
  ``gen_ai.client.inference.operation.details`` (semantic-conventions docs/gen-ai/gen-ai-spans.md);
- older GenAI semconv: ``gen_ai.system``, ``gen_ai.usage.prompt_tokens``/``completion_tokens``, content in span
  events (``gen_ai.user.message``, ``gen_ai.choice``, ... or ``gen_ai.content.prompt``), and OpenLLMetry's
  indexed ``gen_ai.prompt.<i>.*`` / ``gen_ai.completion.<i>.*`` with ``llm.request.type``;
- OpenInference (Arize, openinference-semantic-conventions): ``openinference.span.kind``, ``llm.model_name``,
  ``llm.provider``/``llm.system``, ``llm.token_count.*``, ``llm.input_messages.<i>.message.*``,
  ``input.value``/``output.value``.

The result is the same ``LLMCall`` the other carriers produce, its ``event`` in the EVP shape ddtrace posts,
built as Datadog maps OTel GenAI spans to LLM Observability (docs "LLM Observability > Instrumentation >
OpenTelemetry"): ``ml_app`` from the root span's ``service.name`` unless the span says otherwise, the span
kind from ``gen_ai.operation.name`` (chat/text_completion -> llm, embeddings -> embedding, execute_tool ->
tool, invoke_agent -> agent, anything else -> workflow), messages from attributes first, then events, and the
``gen_ai.*`` attributes nothing else reads as tags of at most 256 characters. So the policies
(``llm/policies.py``) apply unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from llmship.llm.extract import OPENAI_ENDPOINTS, ROOT_PARENT_ID
from llmship.model import LLMCall, Span, Tokens

Attrs = dict[str, Any]

# gen_ai.operation.name -> LLM Observability span kind (Datadog's mapping, see the module docstring); the
# older values some instrumentations still send (completion, generate_content) are LLM calls too.
_OPERATION_KINDS = {
    "chat": "llm", "text_completion": "llm", "completion": "llm", "generate_content": "llm",
    "embeddings": "embedding", "embedding": "embedding",
    "execute_tool": "tool", "invoke_agent": "agent", "create_agent": "agent",
}
# openinference.span.kind -> LLM Observability span kind (openinference-semantic-conventions SpanKind).
_OPENINFERENCE_KINDS = {
    "LLM": "llm", "EMBEDDING": "embedding", "TOOL": "tool", "AGENT": "agent", "RETRIEVER": "retrieval",
    "CHAIN": "workflow", "RERANKER": "task", "GUARDRAIL": "task", "EVALUATOR": "task",
}
# OpenLLMetry: llm.request.type (older releases) and traceloop.span.kind (its workflow decorators).
_REQUEST_TYPE_KINDS = {"chat": "llm", "completion": "llm", "embedding": "embedding", "rerank": "task"}
_TRACELOOP_KINDS = {"workflow": "workflow", "task": "task", "agent": "agent", "tool": "tool"}
# The operation each kind stands for when the convention names none (OpenInference, older forms): it picks
# the OpenAI endpoint, so a call is tagged alike whichever instrumentation reported it.
_OPENAI_OPERATION_ENDPOINTS = {
    "chat": OPENAI_ENDPOINTS["createChatCompletion"], "text_completion": OPENAI_ENDPOINTS["createCompletion"],
    "completion": OPENAI_ENDPOINTS["createCompletion"], "embeddings": OPENAI_ENDPOINTS["createEmbedding"],
}

# Token counts, first match wins: latest semconv, older semconv, OpenLLMetry's own, OpenInference.
_INPUT_TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens",
                 "llm.token_count.prompt")
_OUTPUT_TOKENS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.usage.completion_tokens",
                  "llm.token_count.completion")
_TOTAL_TOKENS = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total")
# The other token counts, under the names ddtrace gives them in an event's metrics.
_DETAIL_TOKENS = (
    ("cache_read_input_tokens", ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
                                 "llm.token_count.prompt_details.cache_read")),
    ("cache_write_input_tokens", ("gen_ai.usage.cache_creation.input_tokens",
                                  "gen_ai.usage.cache_creation_input_tokens",
                                  "llm.token_count.prompt_details.cache_write")),
    ("reasoning_output_tokens", ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
                                 "llm.token_count.completion_details.reasoning")),
)
_MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name", "llm.response.model",
               "llm.request.model")
_PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")

# Attributes (and prefixes) that hold prompt or completion text. They reach Datadog only inside the LLM
# Observability event, after scrubbing, truncation and sampling: the APM span loses them (sources/otlp_map).
CONTENT_KEYS = frozenset((
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.prompt",
    "gen_ai.completion", "gen_ai.tool.call.arguments", "gen_ai.tool.call.result", "input.value", "output.value",
    "traceloop.entity.input", "traceloop.entity.output",
))
CONTENT_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.",
                    "llm.prompts.", "embedding.embeddings.", "retrieval.documents.", "reranker.")
# Span events that carry content (older semconv; the latest's operation-details event).
CONTENT_EVENT_PREFIX = "gen_ai."
_OPERATION_DETAILS_EVENT = "gen_ai.client.inference.operation.details"
_MAX_TAG_VALUE_CHARS = 256  # Datadog: unmapped gen_ai.* attributes become tags of at most 256 characters
_READ_PREFIXES = ("gen_ai.usage.", "gen_ai.request.", "gen_ai.prompt.", "gen_ai.completion.")
_INDEXED = re.compile(r"(\d+)\.(.+)")
# The indexed message attributes: OpenLLMetry's and OpenInference's, input and output.
_MESSAGE_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.")


def genai_kind(attrs: Attrs) -> str | None:
    """The LLM Observability span kind of a span, or None when it is no GenAI span at all."""
    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str) and operation:
        return _OPERATION_KINDS.get(operation, "workflow")
    kind = attrs.get("openinference.span.kind")
    if isinstance(kind, str) and kind:
        return _OPENINFERENCE_KINDS.get(kind.upper(), "workflow")
    request_type = attrs.get("llm.request.type")
    if isinstance(request_type, str) and request_type:
        return _REQUEST_TYPE_KINDS.get(request_type, "llm")
    kind = attrs.get("traceloop.span.kind")
    if isinstance(kind, str) and kind:
        return _TRACELOOP_KINDS.get(kind, "workflow")
    if "gen_ai.system" in attrs or "gen_ai.provider.name" in attrs or "gen_ai.request.model" in attrs:
        return "llm"  # the oldest GenAI spans name no operation
    return None


def is_content_key(key: str) -> bool:
    return key in CONTENT_KEYS or key.startswith(CONTENT_PREFIXES)


def from_otlp(span: Span, name: str, attrs: Attrs, events: list[tuple[str, int, Attrs]], kind: str, *,
              trace_hex: str, parent_id: str, ml_app: str, status_message: str, language: str) -> LLMCall:
    """The call an OTLP GenAI span is. ``span``: its APM conversion (ids, times, error, service, env, version
    in meta); ``name``: the OTel span name; ``events``: (name, time, attributes); ``parent_id``: the nearest
    ancestor that is an LLM Observability span too (decimal), or "undefined"."""
    meta = span.meta
    call = LLMCall("otlp", kind, span.trace_id, span.span_id, bool(span.error), span.start, span.duration,
                   span.service, meta.get("env", ""), meta.get("version", ""), span=span)
    ev_meta: dict[str, Any] = {"span": {"kind": kind}}
    metrics: dict[str, float] = {}
    operation = _str(attrs.get("gen_ai.operation.name")) or _operation_of(kind, attrs)
    if call.is_call:
        call.model = _first_str(attrs, _MODEL_KEYS) or _invocation_model(attrs)
        call.provider = _first_str(attrs, _PROVIDER_KEYS).lower()
        call.endpoint = (_OPENAI_OPERATION_ENDPOINTS.get(operation, "") if call.provider in ("openai", "azure.ai.openai")
                         else operation)
        if call.model:
            ev_meta["model_name"] = call.model
        if call.provider:
            ev_meta["model_provider"] = call.provider
        tokens = Tokens(_first_number(attrs, _INPUT_TOKENS), _first_number(attrs, _OUTPUT_TOKENS),
                        _first_number(attrs, _TOTAL_TOKENS))
        call.tokens = tokens
        for metric, value in (("input_tokens", tokens.input), ("output_tokens", tokens.output),
                              ("total_tokens", tokens.total)):
            if value is not None:
                metrics[metric] = value
        for metric, keys in _DETAIL_TOKENS:
            value = _first_number(attrs, keys)
            if value is not None:
                metrics[metric] = value
        tokens.cache_read = metrics.get("cache_read_input_tokens")
        tokens.cache_write = metrics.get("cache_write_input_tokens")
        tokens.reasoning = metrics.get("reasoning_output_tokens")
    _content(ev_meta, kind, attrs, events)
    metadata = _metadata(attrs)
    if metadata:
        ev_meta["metadata"] = metadata
    if span.error:
        ev_meta["error"] = _error(attrs, events, status_message)
    tags = [f"ml_app:{ml_app}", "source:otel", f"error:{span.error}"]
    if language:
        tags.append(f"language:{language}")
    if span.error and (error_type := _str(attrs.get("error.type"))):
        tags.append(f"error_type:{error_type}")
    tags.extend(_unmapped_genai_tags(attrs))
    call.event = {
        "trace_id": trace_hex,
        "span_id": str(span.span_id),
        "parent_id": parent_id or ROOT_PARENT_ID,
        "name": name or span.name,
        "start_ns": span.start,
        "duration": span.duration,
        "status": "error" if span.error else "ok",
        "meta": ev_meta,
        "metrics": metrics,
        "tags": tags,
        "_dd": {"span_id": str(span.span_id), "trace_id": trace_hex, "apm_trace_id": trace_hex},
    }
    return call


# ------------------------------------------------------------------------------------------ content


def _content(ev_meta: dict, kind: str, attrs: Attrs, events: list[tuple[str, int, Attrs]]) -> None:
    """input/output of the event: messages for LLM calls, documents for embeddings, values otherwise."""
    if kind == "llm":
        messages_in, messages_out = _messages(attrs, events)
        if messages_in:
            ev_meta["input"] = {"messages": messages_in}
        if messages_out:
            ev_meta["output"] = {"messages": messages_out}
    elif kind == "embedding":
        texts = _indexed_field(attrs, "embedding.embeddings.", "embedding.text") or _texts_of(attrs)
        if texts:
            ev_meta["input"] = {"documents": [{"text": t} for t in texts]}
        count = sum(1 for key in attrs if key.startswith("embedding.embeddings.") and key.endswith(".vector"))
        if count:
            ev_meta["output"] = {"value": f"[{count} embedding(s) returned]"}
    elif kind == "retrieval":
        docs = _indexed_field(attrs, "retrieval.documents.", "document.content")
        if docs:
            ev_meta["output"] = {"documents": [{"text": d} for d in docs]}
    for section, keys in (("input", ("input.value", "gen_ai.tool.call.arguments", "traceloop.entity.input")),
                          ("output", ("output.value", "gen_ai.tool.call.result", "traceloop.entity.output"))):
        if section not in ev_meta:
            value = _first_str(attrs, keys)
            if value:
                ev_meta[section] = {"value": value}


def _messages(attrs: Attrs, events) -> tuple[list[dict], list[dict]]:
    """Input and output messages from whichever form the instrumentation used, attributes first."""
    system = _parts_messages(attrs.get("gen_ai.system_instructions"), "system")
    messages_in = _parts_messages(attrs.get("gen_ai.input.messages"))
    messages_out = _parts_messages(attrs.get("gen_ai.output.messages"))
    if not (messages_in or messages_out):  # the latest semconv's event form
        for name, _, event_attrs in events:
            if name == _OPERATION_DETAILS_EVENT:
                system = system or _parts_messages(event_attrs.get("gen_ai.system_instructions"), "system")
                messages_in = _parts_messages(event_attrs.get("gen_ai.input.messages"))
                messages_out = _parts_messages(event_attrs.get("gen_ai.output.messages"))
    if not (messages_in or messages_out):
        indexed = _by_message_prefix(attrs)
        # OpenLLMetry's indexed attributes
        messages_in = _indexed_messages(indexed, "gen_ai.prompt.")
        messages_out = _indexed_messages(indexed, "gen_ai.completion.")
        if not (messages_in or messages_out):  # OpenInference
            messages_in = _indexed_messages(indexed, "llm.input_messages.", "message.")
            messages_out = _indexed_messages(indexed, "llm.output_messages.", "message.")
    if not (messages_in or messages_out):  # older semconv: one span event per message
        messages_in, messages_out = _event_messages(events)
    return system + messages_in, messages_out


def _parts_messages(value, role: str = "") -> list[dict]:
    """Messages in the latest semconv's shape ``[{role, parts: [{type, content|...}], finish_reason}]``
    (a JSON string, or the same structure as an attribute value); for system instructions, a list of
    parts. Anything unreadable gives no messages (the call still counts)."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return [{"role": role, "content": value}] if role else []
    if not isinstance(value, list) or not value:
        return []
    if role:  # system instructions: parts, not messages
        message = _from_parts(value)
        return [{"role": role, **message}] if message else []
    out = []
    for item in value:
        if isinstance(item, dict):
            message = _from_parts(item.get("parts") if isinstance(item.get("parts"), list) else [])
            if "content" in item and "content" not in message:  # a plain {role, content}
                message["content"] = _text(item["content"])
            out.append({"role": _str(item.get("role")), **message})
    return out


def _from_parts(parts: list) -> dict:
    """ddtrace's message fields (content, tool_calls, tool_results) from semconv message parts."""
    texts, tool_calls, tool_results = [], [], []
    for part in parts:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "tool_call":
            arguments = part.get("arguments")
            tool_calls.append({"name": _str(part.get("name")), "tool_id": _str(part.get("id")),
                               "type": "function",
                               "arguments": arguments if isinstance(arguments, dict) else _json_or_text(arguments)})
        elif kind == "tool_call_response":
            tool_results.append({"tool_id": _str(part.get("id")), "type": "tool_call_output",
                                 "result": _text(part.get("response", part.get("result")))})
        elif isinstance(part.get("content"), str):  # text, reasoning
            texts.append(part["content"])
    message: dict[str, Any] = {}
    if texts or not (tool_calls or tool_results):
        message["content"] = "\n".join(texts)
    if tool_calls:
        message["tool_calls"] = tool_calls
    if tool_results:
        message["tool_results"] = tool_results
    return message


def _by_message_prefix(attrs: Attrs) -> dict[str, Attrs]:
    """The attributes under each of the _MESSAGE_PREFIXES, by prefix, in their order: one pass over all of
    them for the four prefixes."""
    found: dict[str, Attrs] = {}
    for key, value in attrs.items():
        if key.startswith(_MESSAGE_PREFIXES):
            for prefix in _MESSAGE_PREFIXES:
                if key.startswith(prefix):
                    found.setdefault(prefix, {})[key] = value
                    break
    return found


def _indexed_messages(indexed: dict[str, Attrs], prefix: str, inner: str = "") -> list[dict]:
    """``<prefix><i>.<inner>role|content|tool_calls...`` attributes (``indexed``: _by_message_prefix's) as
    messages in index order."""
    fields: dict[int, dict[str, Any]] = {}
    cut = len(prefix)
    for key, value in indexed.get(prefix, {}).items():
        m = _INDEXED.match(key, cut)
        if m is not None:
            field = m.group(2)
            if inner:
                if not field.startswith(inner):
                    continue
                field = field[len(inner):]
            fields.setdefault(int(m.group(1)), {})[field] = value
    out = []
    for _, f in sorted(fields.items()):
        content = f.get("content")
        if content is None:  # OpenInference multimodal: contents.<j>.message_content.text
            content = "".join(_str(v) for k, v in sorted(f.items()) if k.startswith("contents.")
                              and k.endswith("message_content.text"))
        message: dict[str, Any] = {"role": _str(f.get("role")), "content": _text(content)}
        calls = _tool_calls(f)
        if calls:
            message["tool_calls"] = calls
        out.append(message)
    return out


def _tool_calls(fields: dict[str, Any]) -> list[dict]:
    """OpenLLMetry ``tool_calls.<j>.name|arguments|id`` and OpenInference
    ``tool_calls.<j>.tool_call.function.name|arguments`` / ``tool_call.id``."""
    calls: dict[int, dict] = {}
    for key, value in fields.items():
        if key.startswith("tool_calls."):
            m = _INDEXED.match(key, len("tool_calls."))
            if m is not None:
                field = m.group(2).removeprefix("tool_call.").removeprefix("function.")
                calls.setdefault(int(m.group(1)), {})[field] = value
    return [{"name": _str(c.get("name")), "tool_id": _str(c.get("id")), "type": "function",
             "arguments": _json_or_text(c.get("arguments"))} for _, c in sorted(calls.items())]


def _event_messages(events) -> tuple[list[dict], list[dict]]:
    """Older semconv: ``gen_ai.<role>.message`` events with ``content`` and ``gen_ai.choice`` events with
    ``message``; older still, ``gen_ai.content.prompt``/``completion`` events holding the JSON in
    ``gen_ai.prompt``/``gen_ai.completion``."""
    messages_in: list[dict] = []
    messages_out: list[dict] = []
    for name, _, attrs in events:
        if name == "gen_ai.content.prompt":
            messages_in += _parts_messages(attrs.get("gen_ai.prompt"))
        elif name == "gen_ai.content.completion":
            messages_out += _parts_messages(attrs.get("gen_ai.completion"))
        elif name == "gen_ai.choice":
            message = attrs.get("message")
            if isinstance(message, str):
                message = _json_or_text(message)
            if isinstance(message, dict):
                messages_out.append({"role": _str(message.get("role")) or "assistant",
                                     "content": _text(message.get("content"))})
            elif message is not None:
                messages_out.append({"role": "assistant", "content": _text(message)})
        elif name.startswith("gen_ai.") and name.endswith(".message"):
            role = _str(attrs.get("gen_ai.message.role")) or name[len("gen_ai."):-len(".message")]
            messages_in.append({"role": role, "content": _text(attrs.get("content"))})
    return messages_in, messages_out


def _indexed_field(attrs: Attrs, prefix: str, field: str) -> list[str]:
    found = {}
    for key, value in attrs.items():
        if key.startswith(prefix) and key.endswith(field):
            m = _INDEXED.match(key, len(prefix))
            if m is not None and m.group(2) == field:
                found[int(m.group(1))] = _text(value)
    return [v for _, v in sorted(found.items())]


def _texts_of(attrs: Attrs) -> list[str]:
    """Embedding inputs from the latest semconv's input messages (OpenLLMetry puts them there)."""
    return [m.get("content", "") for m in _parts_messages(attrs.get("gen_ai.input.messages")) if m.get("content")]


# ------------------------------------------------------------------------------------------ the rest


def _operation_of(kind: str, attrs: Attrs) -> str:
    if kind == "embedding":
        return "embeddings"
    if kind != "llm":
        return ""
    request_type = _str(attrs.get("llm.request.type"))
    if request_type == "completion":
        return "text_completion"
    if request_type == "chat" or any(k.startswith(("llm.input_messages.", "gen_ai.prompt.")) for k in attrs):
        return "chat"
    return ""


def _invocation_model(attrs: Attrs) -> str:
    """OpenInference leaves llm.model_name unset when the call failed; the request parameters name it."""
    params = _json_or_text(attrs.get("llm.invocation_parameters"))
    return _str(params.get("model")) if isinstance(params, dict) else ""


def _metadata(attrs: Attrs) -> dict:
    """Request parameters: ``gen_ai.request.*`` but the model, and OpenInference's invocation parameters."""
    metadata: dict[str, Any] = {}
    params = attrs.get("llm.invocation_parameters")
    if isinstance(params, str):
        parsed = _json_or_text(params)
        if isinstance(parsed, dict):
            metadata.update((k, v) for k, v in parsed.items() if k not in ("model", "messages"))
    for key, value in attrs.items():
        if key.startswith("gen_ai.request.") and key != "gen_ai.request.model":
            metadata[key[len("gen_ai.request."):]] = value
    if attrs.get("llm.is_streaming") is True:
        metadata["stream"] = True
    return metadata


def _error(attrs: Attrs, events, status_message: str) -> dict:
    """ddtrace's error fields from the status and the semconv ``exception`` event."""
    error: dict[str, str] = {}
    for name, _, event_attrs in events:
        if name == "exception":
            error = {"type": _str(event_attrs.get("exception.type")),
                     "message": _str(event_attrs.get("exception.message")),
                     "stack": _str(event_attrs.get("exception.stacktrace"))}
            break
    error["message"] = error.get("message") or status_message
    error["type"] = error.get("type") or _str(attrs.get("error.type"))
    return {k: v for k, v in error.items() if v}


def _unmapped_genai_tags(attrs: Attrs) -> list[str]:
    tags = []
    for key, value in attrs.items():
        if (key.startswith("gen_ai.") and not key.startswith(_READ_PREFIXES) and not is_content_key(key)
                and key not in ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.system",
                                "gen_ai.response.model")):
            text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
            tags.append(f"{key}:{text[:_MAX_TAG_VALUE_CHARS]}")
    return tags


def _first_str(attrs: Attrs, keys) -> str:
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _first_number(attrs: Attrs, keys) -> float | None:
    for key in keys:
        value = attrs.get(key)
        if value is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def _str(value) -> str:
    return value if isinstance(value, str) else ""


def _text(value) -> str:
    """Message content as text: strings as they are, structures as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


def _json_or_text(value):
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value if value is not None else {}
