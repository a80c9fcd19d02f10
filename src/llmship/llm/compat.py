"""Compatibility metrics: the metric names older tracer integrations sent through DogStatsD, rebuilt from
the spans current tracers still send, for the dashboards and monitors built on them (``[llm]
compat_metrics``; off by default, since every metric name is billed).

``openai``: what ddtrace's OpenAI integration emitted up to 2.21 (2.21.12 is the last release that did;
3.0.0 removed them, DataDog/dd-trace-py#12211), read from ddtrace v2.21.12:
- ``llmobs/_integrations/base.py`` ``metric()``: a DogStatsd client with namespace ``openai``; "dist" ->
  distribution, "incr" -> count (increment), "gauge" -> gauge;
- ``llmobs/_integrations/openai.py`` ``_metrics_tags()``: version, env, service, openai.request.model,
  model (the request model again), openai.request.endpoint, openai.request.method, openai.organization.id,
  openai.organization.name, openai.user.api_key, error (0/1), and error_type when the span has one;
- ``contrib/internal/openai/patch.py``: ``request.duration`` (distribution of the span's duration in
  *nanoseconds*, every request), ``request.error`` (count 1 when the request raised), and in
  ``patched_convert`` the gauges ``ratelimit.requests``, ``ratelimit.tokens``, ``ratelimit.remaining.requests``,
  ``ratelimit.remaining.tokens`` from the x-ratelimit-* headers, sent while the request was still running
  (so tagged error:0);
- ``tokens.prompt``, ``tokens.completion``, ``tokens.total`` (distributions): non-streamed responses in
  ``record_usage`` (tag openai.estimated:false, zero counts skipped), streamed ones in ``utils.py``
  ``_set_token_metrics`` (all three, tagged openai.estimated:true only when estimated).

Tags whose value is unknown are left out, where the integration sent the key with an empty value (an empty
``env:`` would also keep the agent's default env off the series).
"""

from __future__ import annotations

from llmship.llm.policies import bounded_put
from llmship.model import LLMCall, MetricSample
from llmship.tags import format_tags

# The client names ddtrace's OpenAI integration gives its LLM Observability spans ("<client>.<operation>"):
# ddtrace 4.16 llmobs/_integrations/openai.py _set_base_span_tags (openai.request.provider).
OPENAI_CLIENTS = frozenset(("OpenAI", "AzureOpenAI", "Deepseek"))
# LLMCall.rate_limits key -> the integration's gauge
_RATE_LIMIT_GAUGES = (
    ("requests.limit", "openai.ratelimit.requests"),
    ("tokens.limit", "openai.ratelimit.tokens"),
    ("requests.remaining", "openai.ratelimit.remaining.requests"),
    ("tokens.remaining", "openai.ratelimit.remaining.tokens"),
)


def from_openai_client(call: LLMCall) -> bool:
    """Was the call made with the openai package, which the old integration traced (whatever the base URL:
    OpenAI, Azure, or any compatible server)?"""
    if call.span is not None:
        return call.span.meta.get("component") == "openai"
    name = call.event.get("name") if call.event is not None else None
    return isinstance(name, str) and name.partition(".")[0] in OPENAI_CLIENTS


class OpenAICompat:
    """The ``openai.*`` samples of one call made with the openai package."""

    def __init__(self) -> None:
        self._tags: dict[tuple, tuple[str, str]] = {}  # raw tag values -> (tags, tags as of the answer)

    def samples(self, call: LLMCall) -> list[MetricSample]:
        tags, answered = self._tag_strings(call)
        samples: list[MetricSample] = [("openai.request.duration", "d", call.duration_ns, tags)]
        if call.error:
            samples.append(("openai.request.error", "c", 1, tags))
        if call.rate_limits:
            samples += [(gauge, "g", call.rate_limits[key], answered)
                        for key, gauge in _RATE_LIMIT_GAUGES if key in call.rate_limits]
        tokens = call.tokens
        if tokens.known:
            streamed = _streamed(call)
            if streamed:
                token_tags = f"{tags},openai.estimated:true" if call.tokens_estimated else tags
            else:
                token_tags = f"{tags},openai.estimated:false"
            for name, count in (("prompt", tokens.input), ("completion", tokens.output), ("total", tokens.total)):
                # record_usage skipped zero and missing counts (an embedding has no completion); streams sent all
                if count is not None and (count or streamed):
                    samples.append((f"openai.tokens.{name}", "d", count, token_tags))
        return samples

    def _tag_strings(self, call: LLMCall) -> tuple[str, str]:
        meta = call.span.meta if call.span is not None else {}
        endpoint = meta.get("openai.request.endpoint") or call.endpoint
        key = (call.service, call.env, call.version, meta.get("openai.request.model") or call.model, endpoint,
               # every endpoint an LLM call goes to is a POST; events on the EVP path do not say
               meta.get("openai.request.method") or ("POST" if endpoint else ""),
               meta.get("openai.organization.id"), meta.get("openai.organization.name"),
               meta.get("openai.user.api_key"), call.error, _error_type(call, meta))
        found = self._tags.get(key)
        if found is None:
            service, env, version, model, endpoint, method, org_id, org_name, api_key, error, error_type = key
            common = {"version": version, "env": env, "service": service, "openai.request.model": model,
                      "model": model, "openai.request.endpoint": endpoint, "openai.request.method": method,
                      "openai.organization.id": org_id, "openai.organization.name": org_name,
                      "openai.user.api_key": api_key}
            tags = format_tags({**common, "error": int(error), "error_type": error_type})
            found = bounded_put(self._tags, key, (tags, format_tags({**common, "error": 0})))
        return found


def _streamed(call: LLMCall) -> bool:
    ev_meta = call.event.get("meta") if call.event is not None else None
    metadata = ev_meta.get("metadata") if isinstance(ev_meta, dict) else None
    return isinstance(metadata, dict) and bool(metadata.get("stream"))


def _error_type(call: LLMCall, meta: dict) -> str:
    if not call.error:
        return ""
    if meta.get("error.type"):
        return meta["error.type"]
    ev_meta = call.event.get("meta") if call.event is not None else None
    error = ev_meta.get("error") if isinstance(ev_meta, dict) else None
    error_type = error.get("type") if isinstance(error, dict) else None
    return error_type if isinstance(error_type, str) else ""
