"""The router between sources and sinks: what a source hands its events to.

Sources call the submit_* methods (synchronous, never blocking); transforms run inline (they do no I/O);
sinks batch and hand payloads to delivery. A transform that raises on some odd input must not take the
source down with it: the batch is counted as an error and the source carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from llmship.events import LLMObsEvent, LogRecord, Span, TracerInfo
from llmship.log import RateLimited, get_logger
from llmship.telemetry import Telemetry

_log = RateLimited(get_logger("pipeline"))


class Pipeline:
    def __init__(self, *, telemetry: Telemetry, aggregator, delivery, metrics_sink, llm, log_processor,
                 trace_sink, llmobs_sink, logs_sink) -> None:
        self.telemetry = telemetry
        self.aggregator = aggregator
        self.delivery = delivery
        self.metrics_sink = metrics_sink
        self.llm = llm
        self.log_processor = log_processor
        self.trace_sink = trace_sink
        self.llmobs_sink = llmobs_sink
        self.logs_sink = logs_sink
        self._tel = telemetry.component("pipeline")

    def submit_spans(self, chunks: list[list[Span]], tracer: TracerInfo) -> None:
        for spans in chunks:
            result = self._guard("spans", self.llm.process_chunk, spans)
            if result is None:
                continue
            apm_spans, events, sample_logs = result
            if apm_spans:
                self.trace_sink.add_chunk(apm_spans, tracer)
            self._route(events, self.llmobs_sink.add)
            self._route(sample_logs, self.logs_sink.add)

    def submit_llmobs_events(self, events: list[LLMObsEvent]) -> None:
        result = self._guard("llmobs", self.llm.process_llmobs_events, events)
        if result is not None:
            processed, sample_logs = result
            self._route(processed, self.llmobs_sink.add)
            self._route(sample_logs, self.logs_sink.add)

    def submit_logs(self, records: list[LogRecord]) -> None:
        for record in records:
            processed = self._guard("logs", self.log_processor.process, record)
            if processed is not None:
                self.logs_sink.add(processed)

    def submit_dsd_event(self, event: dict) -> None:
        self._guard("dsd_event", self.metrics_sink.send_event, event)

    def submit_service_check(self, check: dict) -> None:
        self._guard("service_check", self.metrics_sink.send_service_check, check)

    def overloaded(self, kind: str) -> bool:
        return self.delivery.overloaded(kind)

    @staticmethod
    def _route(items: Iterable, add: Callable) -> None:
        for item in items:
            add(item)

    def _guard(self, what: str, fn: Callable, arg):
        try:
            return fn(arg)
        except Exception as e:  # a bug or an input we did not foresee: count it, keep the agent up
            self._tel.inc("dropped", reason=f"{what}_processing_error")
            self._tel.error(f"{what}_processing_error", f"{type(e).__name__}: {e}")
            _log.error(f"{what}_processing_error", "processing_error", kind=what,
                       error=f"{type(e).__name__}: {e}", exc_info=True)
            return None
