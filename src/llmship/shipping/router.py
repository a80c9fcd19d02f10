"""The shipping plane's entry: routes what the processing plane produced (encoded items, metric samples) to
the aggregator and the sinks' packers. Everything it takes is bytes and plain tuples, so the processing plane
can run in other processes (workers) and hand it over as it is.

It owns the LLM Observability de-duplication: ddtrace may send one call both in a v0.4 span's
``meta_struct["_llmobs"]`` and to the EVP proxy, seconds apart. Span ids seen lately are remembered, so a
call's event is shipped once and its metrics and sample log are counted once, whichever copy came first.
A duplicate is an intended discard, not a loss (``component_discarded_events_total{intentional="true"}``).
"""

from __future__ import annotations

from llmship.log import RateLimited, get_logger
from llmship.telemetry import Telemetry

_log = RateLimited(get_logger("router"))

# Span ids remembered to count and ship each call once across both paths. ddtrace flushes traces and EVP
# events every second, so the two copies of one event arrive seconds apart; at least the last 25,000 LLM
# spans are remembered (25 s at 1,000 calls/s), for about 5 MB per set when full (measured).
RECENT_IDS = 50_000


class RecentIds:
    """A bounded "seen lately" set: two generations, the older dropped when the newer fills up."""

    def __init__(self, capacity: int = RECENT_IDS) -> None:
        self._half = capacity // 2
        self._current: set[int] = set()
        self._previous: set[int] = set()

    def add(self, span_id: int) -> bool:
        """Remember ``span_id``; True when it was not seen lately."""
        if span_id in self._current or span_id in self._previous:
            return False
        if len(self._current) >= self._half:
            self._previous = self._current
            self._current = set()
        self._current.add(span_id)
        return True


class Router:
    def __init__(self, *, telemetry: Telemetry, aggregator, delivery, metrics_sink, trace_sink, llmobs_sink,
                 logs_sink) -> None:
        self.telemetry = telemetry
        self.add_metric = aggregator.add
        self.add_point = aggregator.add_point
        self.add_sketch = aggregator.add_sketch
        self._delivery = delivery
        self._metrics_sink = metrics_sink
        self.attach_sinks(trace_sink, llmobs_sink, logs_sink)
        self._tel = telemetry.component("llm")  # its calls and duplicates are reported with the LLM stage's
        self._counted = RecentIds()  # calls whose metrics (and sample log) were produced
        self._shipped = RecentIds()  # events passed on to the LLM Observability sink

    def attach_sinks(self, trace_sink, llmobs_sink, logs_sink) -> None:
        """The packing sinks (built with the processing plane, whose encoders they also are)."""
        self._trace_sink = trace_sink
        self._llmobs_sink = llmobs_sink
        self._logs_sink = logs_sink

    def trace_items(self, items: list[tuple[bytes, int]], language: str) -> None:
        """Encoded TracerPayloads with their span counts, from one tracer request."""
        self._trace_sink.add_items(items, language)

    def calls(self, outputs) -> None:
        """Each call's encoded event once per span id, its metric samples and encoded sample log once per
        span id (``CallOutput``s whose event and log the processing plane encoded)."""
        add_metric = self.add_metric
        for out in outputs:
            span_id = out.span_id
            if out.samples or out.log is not None:
                if span_id is None or self._counted.add(span_id):
                    if out.samples:
                        self._tel.inc("llm_calls")
                    for sample in out.samples:
                        add_metric(*sample)
                    if out.log is not None:
                        self._logs_sink.add_item(out.log)
            if out.event is not None:
                if span_id is None or self._shipped.add(span_id):
                    self._llmobs_sink.add_item(out.event)
                else:
                    self._tel.discard("duplicate_event", intentional=True)

    def log_item(self, data: bytes) -> None:
        self._logs_sink.add_item(data)

    def dsd_event(self, event: dict) -> None:
        self._metrics_sink.send_event(event)

    def service_check(self, check: dict) -> None:
        self._metrics_sink.send_service_check(check)

    def overloaded(self, lane: str) -> bool:
        return self._delivery.overloaded(lane)

    async def handed_over(self) -> None:
        """Everything given so far is the shipping plane's: in one process, as soon as it was given."""
