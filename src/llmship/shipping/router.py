"""The shipping plane's entry: routes what the processing plane produced (encoded items, metric samples) to
the aggregator and the sinks' packers. Everything it takes is bytes and plain tuples, so the processing plane
can run in other processes (workers) and hand it over as it is.

It owns the LLM Observability de-duplication: ddtrace may send one call both in a v0.4 span's
``meta_struct["_llmobs"]`` and to the EVP proxy, seconds apart. Span ids seen lately are remembered, so a
call's event is shipped once and its metrics and sample log are counted once, whichever copy came first.
A duplicate is an intended discard, not a loss (``component_discarded_events_total{intentional="true"}``).
"""

from __future__ import annotations

import time

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
                 logs_sink, otlp_sink=None) -> None:
        self.telemetry = telemetry
        self.add_metric = aggregator.add
        self.add_metrics = aggregator.add_many
        self._add_calls = aggregator.add_calls
        self.add_point = aggregator.add_point
        self.add_sketch = aggregator.add_sketch
        self._cumulative = None  # OTLP's cumulative series: made with the first (see _cumulative_series)
        self._started_ns = time.time_ns()  # a series that started later counts its first point as is
        self._delivery = delivery
        self._metrics_sink = metrics_sink
        self.attach_sinks(trace_sink, llmobs_sink, logs_sink, otlp_sink)
        self._tel = telemetry.component("llm")  # its calls and duplicates are reported with the LLM stage's
        self._counted = RecentIds()  # calls whose metrics (and sample log) were produced
        self._shipped = RecentIds()  # events passed on to the LLM Observability sink
        self._otlp_spans = RecentIds()  # calls whose OTLP span was shipped (in its chunk, or on its own)

    def add_cumulative_sum(self, *args) -> None:
        self._cumulative_series().add_sum(*args)

    def add_cumulative_histogram(self, *args) -> None:
        self._cumulative_series().add_histogram(*args)

    def _cumulative_series(self):
        """Cumulative OTLP series become differences here, where every point of a series arrives; the OTLP
        mapping is imported with the first, as the OTLP source is only when configured."""
        if self._cumulative is None:
            from llmship.sources.otlp_map import Cumulative

            self._cumulative = Cumulative(self.add_point, self.add_sketch, started_ns=self._started_ns)
        return self._cumulative

    def attach_sinks(self, trace_sink, llmobs_sink, logs_sink, otlp_sink=None) -> None:
        """The packing sinks (built with the processing plane, whose encoders they also are)."""
        self._trace_sink = trace_sink
        self._llmobs_sink = llmobs_sink
        self._logs_sink = logs_sink
        self._otlp_sink = otlp_sink

    def otlp_items(self, kind: str, items: list) -> None:
        """Items the processing plane encoded for the OTLP sink: "spans" ([(ResourceSpans item, spans)]) or
        "logs" ([ResourceLogs item])."""
        if self._otlp_sink is None:
            return
        if kind == "spans":
            # a call's span is an item of its own, (item, 1, span id): shipped unless its EVP copy's span went
            kept = [item[:2] for item in items if len(item) == 2 or self._otlp_spans.add(item[2])]
            if len(kept) < len(items):
                self._tel.discard("duplicate_otlp_span", len(items) - len(kept), intentional=True)
            self._otlp_sink.add_span_items(kept)
        else:
            for item in items:
                self._otlp_sink.add_log_item(item)

    def trace_items(self, items: list[tuple[bytes, int]], language: str) -> None:
        """Encoded TracerPayloads with their span counts, from one tracer request."""
        self._trace_sink.add_items(items, language)

    def calls(self, outputs) -> None:
        """Each call's encoded event once per span id, its metric samples and encoded sample log once per
        span id (``CallOutput``s whose event and log the processing plane encoded)."""
        samples = []  # every call's, added together: one clock read
        counted = 0  # calls whose samples are added: counted together too
        otlp = self._otlp_sink
        for out in outputs:
            span_id = out.span_id
            if out.samples or out.log is not None or out.genai or out.otlp_log:
                if span_id is None or self._counted.add(span_id):
                    if out.samples:
                        counted += 1
                        samples += out.samples
                    if out.log is not None:
                        self._logs_sink.add_item(out.log)
                    if otlp is not None:
                        if out.genai:
                            otlp.record_call(out.genai)
                        if out.otlp_log:
                            otlp.add_log_item(out.otlp_log)
            if out.otlp_span is not None and otlp is not None:
                # b"": the span goes with its chunk, whose item remembers its id (``otlp_items``)
                if out.otlp_span and (span_id is None or self._otlp_spans.add(span_id)):
                    otlp.add_span_items([(out.otlp_span, 1)])
            if out.event is not None:
                if span_id is None or self._shipped.add(span_id):
                    self._llmobs_sink.add_item(out.event)
                else:
                    self._tel.discard("duplicate_event", intentional=True)
        if samples:
            self._tel.inc("llm_calls", counted)
            self._add_calls(samples)

    def log_items(self, items: list[bytes]) -> None:
        """Encoded log records, in order."""
        self._logs_sink.add_items(items)

    def dsd_event(self, event: dict) -> None:
        if self._otlp_sink is None or self._otlp_sink.datadog:  # no OTLP form: Datadog (or files) only
            self._metrics_sink.send_event(event)
        else:
            self.telemetry.component("otlp_sink").discard("dogstatsd_event_without_destination", intentional=True)

    def service_check(self, check: dict) -> None:
        if self._otlp_sink is None or self._otlp_sink.datadog:
            self._metrics_sink.send_service_check(check)
        else:
            self.telemetry.component("otlp_sink").discard("service_check_without_destination", intentional=True)

    def overloaded(self, lane: str) -> bool:
        return self._delivery.overloaded(lane)

    # Everything given so far is the shipping plane's: in one process, as soon as it was given. None tells
    # the sources there is nothing to await before answering (a coroutine a request saved; a RemoteRouter
    # has one: workers.py).
    handed_over = None
