"""The processing plane: what sources hand their decoded events to (the *emitter*), and the processing
between decode and the shipping plane's router: the LLM stage for spans and EVP events, the log processor
for received logs.

Sources see only this interface (submit, and an ``overloaded`` signal for every lane their data fans into),
never the router. Submitting is synchronous and never blocks; processing does no I/O. A processor that
raises on some odd input must not take the source down with it: the batch is counted as an error and the
source carries on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from llmship.log import RateLimited, get_logger
from llmship.model import LLMCall, LLMObsEvent, LogRecord, Span, TracerInfo
from llmship.telemetry import Telemetry

_log = RateLimited(get_logger("processing"))

# The shipping plane's lanes each kind of submission fans into: a source answers "overloaded" (429, or a
# pause in reading) when any of them is full.
LANES = {
    "spans": ("traces", "llmobs", "logs"),
    "llmobs": ("llmobs", "logs"),
    "logs": ("logs",),
}


class Emitter:
    def __init__(self, *, telemetry: Telemetry, router, llm, log_processor) -> None:
        self.telemetry = telemetry
        self.add_metric = router.add_metric  # DogStatsD: straight into the aggregator, no object per line
        # OTLP metric points and histogram sketches, aggregated by their sender: shipped as they are
        self.add_point = router.add_point
        self.add_sketch = router.add_sketch
        self.submit_dsd_event = router.dsd_event
        self.submit_service_check = router.service_check
        self._router = router
        self._llm = llm
        self._log_processor = log_processor
        self._tel = telemetry.component("processing")

    def submit_spans(self, chunks: list[list[Span]], tracer: TracerInfo) -> None:
        router = self._router
        for spans in chunks:
            outputs = self._guard("spans", self._llm.process_chunk, spans)
            if outputs:
                router.calls(outputs)
            router.spans(spans, tracer)

    def submit_otlp(self, chunks: list[list[Span]], calls: list[list[LLMCall]], tracer: TracerInfo) -> None:
        """OTLP traces: chunks of APM spans converted from OTLP, and aligned with them (``calls[i]`` belongs
        to ``chunks[i]``) the LLM calls their GenAI spans are.

        Why the calls come ready-made rather than found in the chunk as ``submit_spans`` finds them: an OTLP
        GenAI span carries its call in attributes of several conventions that the APM span must not keep
        (the prompt text), so the source extracts each call while it still has the attributes
        (``llm/otlp.py``), and the LLM stage only applies the policies (``LLMStage.process_calls``). One
        way in for OTLP, and ``submit_spans`` stays as it was for tracers."""
        router = self._router
        for spans, chunk_calls in zip(chunks, calls):
            if chunk_calls:
                outputs = self._guard("spans", functools.partial(self._llm.process_calls, spans), chunk_calls)
                if outputs:
                    router.calls(outputs)
            router.spans(spans, tracer)

    def submit_llmobs_events(self, events: list[LLMObsEvent]) -> None:
        outputs = self._guard("llmobs", self._llm.process_events, events)
        if outputs:
            self._router.calls(outputs)

    def submit_logs(self, records: list[LogRecord]) -> None:
        for record in records:
            processed = self._guard("logs", self._log_processor.process, record)
            if processed is not None:
                self._router.log(processed)

    def overloaded(self, kind: str) -> bool:
        """True while any lane ``kind`` fans into is full."""
        return any(self._router.overloaded(lane) for lane in LANES.get(kind, (kind,)))

    def _guard(self, what: str, fn: Callable, arg):
        try:
            return fn(arg)
        except Exception as e:  # a bug or an input we did not foresee: count it, keep the agent up
            self._tel.error(f"{what}_processing_error", f"{type(e).__name__}: {e}")
            _log.error(f"{what}_processing_error", "processing_error", kind=what,
                       error=f"{type(e).__name__}: {e}", exc_info=True)
            return None
