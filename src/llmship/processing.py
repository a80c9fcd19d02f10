"""The processing plane: what sources hand their decoded events to (the *emitter*), and the processing
between decode and the shipping plane's router: the LLM stage for spans and EVP events, the log processor
for received logs, and each sink's per-item encoding. What it hands the router is bytes and plain tuples.

Sources see only this interface (submit, ``handed_over`` before answering, and an ``overloaded`` signal for
every lane their data fans into, and for the process itself when it runs late: llmship.overload), never the
router. With workers the router is a ``workers.RemoteRouter`` that frames what it is given for the shipping
plane's process; the emitter does not know the difference. Submitting is synchronous and never blocks; processing does no I/O. A processor that
raises on some odd input must not take the source down with it: the batch is counted as an error and the
source carries on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from llmship.log import RateLimited, get_logger
from llmship.model import LLMCall, LLMObsEvent, LogRecord, Span, TracerInfo
from llmship.sinks.otlp import call_attributes, dropped_by_tracer
from llmship.sinks.spanenc import transcode_v04 as _transcode_v04
from llmship.telemetry import Telemetry
from llmship.transforms.privacy import SPAN_SCAN_SKIP_KEYS, SPAN_SCAN_SKIP_PREFIX, scrub_chunks, span_key_skip

_log = RateLimited(get_logger("processing"))

# The shipping plane's lanes each kind of submission fans into: a source answers "overloaded" (429, or a
# pause in reading) when any of them is full.
LANES = {
    "spans": ("traces", "llmobs", "logs", "otlp_spans", "otlp_logs"),
    "llmobs": ("llmobs", "logs", "otlp_spans", "otlp_logs"),
    "logs": ("logs", "otlp_logs"),
    "metrics": ("series", "sketches"),  # OTLP metrics (DogStatsD has no answer to give)
}


class Emitter:
    def __init__(self, *, telemetry: Telemetry, router, llm, log_processor, trace_sink, llmobs_sink,
                 logs_sink, otlp_sink=None, scrubber=None, shed: Callable[[], bool] | None = None) -> None:
        self.telemetry = telemetry
        self.add_metric = router.add_metric  # DogStatsD: straight into the aggregator, no object per line
        self.add_metrics = router.add_metrics
        # OTLP metric points and histogram sketches, aggregated by their sender: shipped as they are; cumulative
        # points are the shipping plane's to difference (otlp_map.Cumulative)
        self.add_point = router.add_point
        self.add_sketch = router.add_sketch
        self.add_cumulative_sum = router.add_cumulative_sum
        self.add_cumulative_histogram = router.add_cumulative_histogram
        self.submit_dsd_event = router.dsd_event
        self.submit_service_check = router.service_check
        self._router = router
        self._shed = shed  # True while this process runs too late to take more (overload.LoopLag)
        self.handed_over = router.handed_over  # None: nothing to await (one process; Router.handed_over)
        self._llm = llm
        self._log_processor = log_processor
        self._encode_chunks = trace_sink.encode_chunks
        # What the transcoder writes spans with: the trace sink's encoder's arguments (None: a stand-in sink
        # that takes Span objects only, as tests use; then every chunk is decoded)
        self._encoder_args = getattr(trace_sink, "encoder_args", None)
        self._encode_event = llmobs_sink.encode
        self._encode_log = logs_sink.encode
        self._encode_logs = logs_sink.encode_many
        # [sinks.otlp]: each item is encoded once more, for it (sinks/otlp.py); ``otlp.enabled`` and
        # ``otlp.datadog`` (the Datadog sinks run) are read per call, so a reload reaches them.
        self._otlp = otlp_sink
        self._scrubber = scrubber
        self._tel = telemetry.component("processing")

    def transcode_v04(self, body: bytes, language: str) -> list | None:
        """A v0.4 msgpack body's chunks for ``submit_spans``: in chunks of four spans or more, the plain spans
        (no LLM call, nothing the scrub would judge) already encoded for the trace intake and never Span
        objects, the others decoded (``sinks/_spanenc.pyx transcode_v04``: an ``EncodedChunk`` each); the
        other chunks decoded. None when the body is not one the compiled decoder takes, or when the fast
        path cannot serve now (no compiled extension, the OTLP sink runs, span field policies, scrub rules
        that need every string looked at): the caller then decodes it."""
        args = self._transcode_args(language)
        if args is None:
            return None
        try:
            return _transcode_v04(body, *args, SPAN_SCAN_SKIP_PREFIX, SPAN_SCAN_SKIP_KEYS, span_key_skip, args)
        except Exception as e:  # a bug on the fast path: the body is decoded as before, nothing is lost
            self._tel.error("transcode_error", f"{type(e).__name__}: {e}")
            _log.error("transcode_error", "transcode_failed", error=f"{type(e).__name__}: {e}", exc_info=True)
            return None

    def _transcode_args(self, language: str) -> tuple | None:
        """What the transcoder writes with (the encoder's arguments, the scrubber's joined scan), or None."""
        otlp, scrubber = self._otlp, self._scrubber
        if (_transcode_v04 is None or self._encoder_args is None
                or (otlp is not None and (otlp.enabled or not otlp.datadog))):
            return None
        fallback_service, meta_defaults = self._encoder_args(language)
        if scrubber is None:
            return fallback_service, meta_defaults, None, None
        if scrubber.fields.by_kind["spans"] or (joined := scrubber.joined_scan()) is None:
            return None
        return fallback_service, meta_defaults, *joined

    def submit_spans(self, chunks: list, tracer: TracerInfo) -> None:
        """Chunks of Span, or (from ``transcode_v04``) EncodedChunks among them: their plain spans already
        scanned and encoded, their ``objects`` going the whole way; one made before a reload changed what it
        was made with is decoded here and goes the whole way."""
        outputs = []
        args = None
        straight = 0
        for i, spans in enumerate(chunks):
            if type(spans) is not list:
                if args is None:
                    args = self._transcode_args(tracer.language) or ()
                if spans.maker != args:
                    chunks[i] = spans = spans.decode()
                else:
                    straight += len(spans) - len(spans.objects)
                    if not spans.objects:
                        continue
                    spans = spans.objects  # those that carry calls (for the LLM stage) or a scan candidate
            found = self._guard("spans", self._llm.process_chunk, spans)
            if found:
                outputs += found
        if straight:
            self._tel.inc("spans_written_straight", straight)
        self._ship(chunks, outputs, tracer)

    def _ship(self, chunks: list[list[Span]], outputs: list, tracer: TracerInfo) -> None:
        """The calls the chunks carried, then the chunks themselves."""
        in_chunks = self._otlp_calls(outputs, chunks)
        if outputs:
            self._router.calls(self._encode_calls(outputs, in_chunks))
        self._ship_spans(chunks, tracer, in_chunks)

    def _ship_spans(self, chunks: list[list[Span]], tracer: TracerInfo, calls: dict | None = None) -> None:
        """After the LLM stage (it tags the spans that carry calls with their model, provider and endpoint):
        scrubbed, encoded, handed over (to each sink that runs)."""
        chunks = self._scrub_spans(chunks)
        otlp = self._otlp
        if otlp is None or otlp.datadog:
            items = self._guard("spans", lambda c: self._encode_chunks(c, tracer), chunks)
            if items:
                self._router.trace_items(items, tracer.language)
        if otlp is not None and otlp.enabled:
            items = self._guard("spans", lambda c: otlp.encode_chunks(c, tracer, calls), chunks)
            if items:
                self._router.otlp_items("spans", items)

    def _otlp_calls(self, outputs: list, chunks: list[list[Span]]) -> dict | None:
        """span id -> GenAI attributes, for the calls whose span is in the chunks (encoded with them), from
        each call and its event after the text policy (scrubbed, truncated, sampled). Calls in chunks the
        tracer dropped (priority <= 0, not shipped) are left out: they get a span of their own, as EVP
        events do."""
        otlp = self._otlp
        if otlp is None or not otlp.enabled or not outputs:
            return None
        dropped = {s.span_id for c in chunks if c and dropped_by_tracer(c) for s in c}
        calls = {}
        for out in outputs:
            if out.span_id is not None and out.span_id not in dropped:
                try:
                    calls[out.span_id] = call_attributes(out.event if isinstance(out.event, dict) else None,
                                                         out.genai)
                except Exception as e:  # an event shape not foreseen: the span still goes, without them
                    self._tel.error("otlp_call_attributes", f"{type(e).__name__}: {e}")
        return calls

    def submit_otlp(self, chunks: list[list[Span]], calls: list[list[LLMCall]], tracer: TracerInfo) -> None:
        """OTLP traces: chunks of APM spans converted from OTLP, and aligned with them (``calls[i]`` belongs
        to ``chunks[i]``) the LLM calls their GenAI spans are.

        Why the calls come ready-made rather than found in the chunk as ``submit_spans`` finds them: an OTLP
        GenAI span carries its call in attributes of several conventions that the APM span must not keep
        (the prompt text), so the source extracts each call while it still has the attributes
        (``llm/otlp.py``), and the LLM stage only applies the policies (``LLMStage.process_calls``). One
        way in for OTLP, and ``submit_spans`` stays as it was for tracers."""
        outputs = []
        for spans, chunk_calls in zip(chunks, calls):
            if chunk_calls:
                found = self._guard("spans", functools.partial(self._llm.process_calls, spans), chunk_calls)
                if found:
                    outputs += found
        self._ship(chunks, outputs, tracer)

    def submit_llmobs_events(self, events: list[LLMObsEvent]) -> None:
        outputs = self._guard("llmobs", self._llm.process_events, events)
        if outputs:
            self._router.calls(self._encode_calls(outputs))

    def submit_logs(self, records: list[LogRecord]) -> None:
        processed = self._guard("logs", self._log_processor.process_many, records)
        if not processed:
            return
        otlp = self._otlp
        if otlp is not None and otlp.enabled:
            items = [data for record in processed if (data := otlp.encode_log(record)) is not None]
            if items:
                self._router.otlp_items("logs", items)
        if otlp is None or otlp.datadog:
            self._router.log_items(self._encode_logs(processed))

    def _scrub_spans(self, chunks: list[list[Span]]) -> list[list[Span]]:
        """Every meta value and resource scrubbed (transforms/privacy.py); a request whose scrubbing raised
        is dropped and counted, never shipped raw."""
        if self._scrubber is None:
            return chunks
        try:
            scrub_chunks(self._scrubber, [c if type(c) is list else c.objects for c in chunks])
        except Exception as e:
            spans = sum(len(c) for c in chunks)
            self._tel.discard("scrub_failed", spans)
            self._scrubber.telemetry.inc("scrub_failed", spans, kind="spans")
            self._tel.error("spans_scrub_failed", f"{type(e).__name__}: {e}")
            _log.error("spans_scrub_failed", "spans_dropped", spans=spans, error=f"{type(e).__name__}: {e}")
            return []
        return chunks

    def _encode_calls(self, outputs: list, in_chunks: dict | None = None) -> list:
        """Each call's event and sample log encoded for each sink that runs. ``in_chunks``: the calls whose
        span the OTLP sink encodes with its chunk (the others, EVP events, get an OTLP span of their own)."""
        otlp = self._otlp
        to_otlp = otlp is not None and otlp.enabled
        to_datadog = otlp is None or otlp.datadog
        for out in outputs:
            if to_otlp:
                if in_chunks is not None and out.span_id in in_chunks:
                    out.otlp_span = b""  # shipped with its chunk; the router remembers its span id
                elif isinstance(out.event, dict):
                    try:
                        out.otlp_span = otlp.encode_event_span(out.event, call_attributes(out.event, out.genai))
                    except Exception as e:
                        self._tel.error("otlp_call_attributes", f"{type(e).__name__}: {e}")
                if isinstance(out.log, dict):
                    out.otlp_log = otlp.encode_log(dict(out.log))
            else:
                out.genai = None
            if out.event is not None:
                out.event = self._encode_event(out.event) if to_datadog else None
            if out.log is not None:
                out.log = self._encode_log(out.log) if to_datadog else None
        return outputs

    def overloaded(self, kind: str) -> bool:
        """True while this process runs too late, or any lane ``kind`` fans into is full."""
        if self._shed is not None and self._shed():
            return True
        lane_full = self._router.overloaded
        for lane in LANES.get(kind, (kind,)):
            if lane_full(lane):
                return True
        return False

    def _guard(self, what: str, fn: Callable, arg):
        try:
            return fn(arg)
        except Exception as e:  # a bug or an input we did not foresee: count it, keep the agent up
            self._tel.error(f"{what}_processing_error", f"{type(e).__name__}: {e}")
            _log.error(f"{what}_processing_error", "processing_error", kind=what,
                       error=f"{type(e).__name__}: {e}", exc_info=True)
            return None
