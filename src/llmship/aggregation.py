"""Metric contexts, flush-interval buckets and their flush to series and sketches, as the Datadog Agent's
DogStatsD time sampler does it (datadog-agent pkg/aggregator/time_sampler.go, pkg/metrics/*.go).

A *context* is (name, type, normalized tags, host). ``add`` is the hot path (once per DogStatsD line): it
looks the raw ``(name, type, tags, host)`` up in a dict and updates the context's running aggregate for
the current bucket; tags are split, normalized and completed with the agent's default tags only the first
time a raw key is seen.

Agent behaviour followed here (sources in datadog-agent unless noted):
- Buckets: a sample lands in the bucket ``t - t % interval`` of its arrival time; ``flush(now)`` ships every
  bucket that ended at or before the start of now's bucket, stamped with the bucket start
  (TimeSampler.calculateBucketStart / isBucketStillOpen / flushSeries). ``next_flush_at(now)`` is when
  now's bucket closes: the agent's flush loop wakes then, so a bucket ships as soon as it closes.
- ``flush(now, final=True)`` ships the open bucket too (the Agent's forceFlushAll): on shutdown, and on
  demand (POST /flush, the end of a Lambda invocation). The open bucket keeps aggregating afterwards and
  ships again, whole, when it closes: the intake keeps the last point per series and timestamp, so the
  whole bucket replaces the part shipped early, where shipping only what came after would replace the
  early counts with the later ones. Distributions are the exception: sketches of one timestamp merge at
  the intake, so a distribution ships only what came since.
- A new ``flush_interval_secs`` (SIGHUP) takes effect where the bucket open at the reload ends: buckets
  never overlap, so no bucket start (a point's timestamp) is shipped twice for a series (the intake keeps
  one point per series and timestamp: a repeat would replace counts, not add to them). Until a restart,
  the new buckets are aligned on that switch time rather than on ``t - t % interval``; each point ships
  with the length of its own bucket as ``interval``, so value x interval stays the count.
- Cardinality cap (ours; the Agent has none): past ``[agent] max_metric_contexts`` live contexts, a
  sample that would create a context is dropped (discarded{reason=context_limit}); existing contexts keep
  aggregating. Checked only when a context is created, never on the per-sample path.
- Counter (``c``): sum of value/rate, shipped as RATE = sum / interval with ``interval`` set (counter.go).
- Gauge (``g``): last value, rate ignored (gauge.go). Set (``s``): number of distinct values, as a gauge
  (set.go).
- Histogram (``h``, ``ms``): each sample weighs int(1/rate); ships the default ``histogram_aggregates``
  max, median, avg, count and ``histogram_percentiles`` 0.95 (config defaults): ``.max .median .avg
  .95percentile`` as gauges and ``.count`` = total weight / interval as a RATE. Median is the first sorted
  value whose cumulative weight exceeds (count-1)/2 (integer division), the p-th percentile the first
  whose cumulative weight exceeds (p*count-1)/100 (histogram.go).
- Distribution (``d``): a DDSketch per context and bucket (llmship.sketch), NaN/Inf ignored (sketch_map.go).
- Counters keep shipping 0 for every flushed bucket while last sample + dogstatsd_expiry_seconds (300)
  is after the bucket start; with nothing else to flush, a bucket ending at the cutoff is made for those
  zeros (countersSampleZeroValue). Contexts expire when unseen for dogstatsd_context_expiry_seconds (20);
  counter contexts for 20 + 300 s (context_resolver.go expireContexts).
- Samples with a timestamp (DogStatsD ``|T``) skip aggregation, as in the Agent's no-aggregation pipeline
  (no_aggregation_stream_worker.go): a gauge ships as is, a count as a RATE of value / interval; other
  types are not supported there and are dropped (counted).
Where we differ: sample rates outside (0, 1] are treated as 1 (the Agent divides by them as given); a
context is keyed by its type as well, so ``x:1|c`` and ``x:1|g`` with the same tags are two contexts
(the Agent drops the second type within a bucket); non-finite aggregates are dropped at flush (counted);
a context's "last seen" is the start of the latest bucket it was sampled in (no clock store per sample),
and expiry counts from that bucket's end, so a context never expires before the Agent would expire it
(at most one interval later).
A raw ``(name, type, tags, host)`` as received is found by its 64-bit hash alone, as the Agent finds a
context by its 64-bit ckey.ContextKey (pkg/aggregator/ckey/key.go): the raw tag string is not kept. Two raw
keys with the same hash (odds about n^2 / 2^65: 3e-10 for 100,000 contexts) would share a context, as there.
Tags: each raw tag is normalized (llmship.tags.normalize_tag, the backend's rules), duplicates dropped,
the agent's env/service/version/tags added for keys the sample lacks, then sorted. The Agent itself
leaves DogStatsD tags to the backend's normalization; normalizing here gives the same result and lets
"Env:Prod" and "env:prod" share one context.

Memory (issue 2: 100,000 contexts within an agent under 100 MB): a context is one slotted object (its kind
is its class), its tags tuple, and an entry in each of two dicts; a histogram, distribution or set holds
its first sample as a plain value and gets a buffer only with a second one (a high-cardinality context
typically sees one sample per interval). ``flush`` only takes the ready aggregates (three entries each in
one flat list: no object per context) and decides the counters' zeros; the series and sketches are built
one at a time as the sink drains the ``FlushResult``, so a flush never holds a list of every series, and
the loop is free between slices.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from llmship.log import RateLimited, get_logger
from llmship.sketch import Sketch
from llmship.tags import add_missing, agent_default_tags, split_tags
from llmship.telemetry import Telemetry

# Series types of the public /api/v2/series API: 0 unspecified, 1 count, 2 rate, 3 gauge.
COUNT, RATE, GAUGE = 1, 2, 3

COUNTER_EXPIRY_SECS = 300  # dogstatsd_expiry_seconds: how long an idle counter keeps shipping zeros
_FIRST_EPOCH = -(1 << 62)  # the start of the first interval "epoch": before any bucket
CONTEXT_EXPIRY_SECS = 20  # dogstatsd_context_expiry_seconds
HISTOGRAM_PERCENTILES = (95,)  # histogram_percentiles default ["0.95"]
MAX_PENDING_TIMESTAMPED = 100_000  # bound on `T` points waiting for the next flush (ours, not the Agent's)

# Context kinds. Small ints: compared on every sample.
_COUNTER, _GAUGE, _SET, _HISTOGRAM, _DISTRIBUTION = range(5)


@dataclass(slots=True)
class Series:
    """One /api/v2/series entry: points are (unix seconds, value)."""

    metric: str
    type: int  # COUNT, RATE or GAUGE
    interval: int
    points: list[tuple[int, float]]
    tags: tuple[str, ...]
    host: str


@dataclass(slots=True)
class SketchSeries:
    """One SketchPayload.Sketch: one Dogsketch per flushed bucket (unix seconds, sketch)."""

    metric: str
    host: str
    tags: tuple[str, ...]
    points: list[tuple[int, Sketch]]


class FlushResult:
    """What one flush ships: ``series`` and ``sketches``.

    From the aggregator, they are built lazily: ``drain()`` hands them over one at a time and keeps none
    (what a sink uses: no list of every series, and each aggregate is released once rendered), while the
    ``series`` and ``sketches`` lists are built on first access (tests, callers that want them all).
    A result is drained once: what ``drain`` handed over is gone from it.
    """

    __slots__ = ("_series", "_sketches", "_pending")

    def __init__(self, series: list[Series] | None = None, sketches: list[SketchSeries] | None = None,
                 pending: Iterator[Series | SketchSeries] | None = None) -> None:
        self._series = [] if series is None else series
        self._sketches = [] if sketches is None else sketches
        self._pending = pending

    @property
    def series(self) -> list[Series]:
        self._build()
        return self._series

    @property
    def sketches(self) -> list[SketchSeries]:
        self._build()
        return self._sketches

    def drain(self) -> Iterator[Series | SketchSeries]:
        """Every series and sketch still held, then every one still to be built, each once."""
        while self._series or self._sketches or self._pending is not None:
            series, sketches, self._series, self._sketches = self._series, self._sketches, [], []
            yield from series
            del series
            yield from sketches
            del sketches
            pending, self._pending = self._pending, None
            if pending is not None:
                yield from pending

    def _build(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            for item in pending:
                (self._sketches if type(item) is SketchSeries else self._series).append(item)


class _Context:
    # One context, and its aggregate for ``bucket``: the start of the latest bucket it was sampled in (which
    # also serves as its "last seen" time), ``n`` samples so far (0: nothing to ship) and ``acc``: the
    # counter's sum, the gauge's last value, or for sets, histograms and distributions the first sample
    # as is, then a set, _Histogram or Sketch from the second sample on (see _add_to_buffer).
    # A context is its own key in Aggregator._contexts (equal when name, kind, tags and host are), which
    # saves a key tuple per context; its kind is its class, which saves a slot: slots keep 100k contexts
    # within the memory budget.
    __slots__ = ("name", "host", "tags", "bucket", "n", "acc")
    kind = -1

    def __init__(self, name: str, host: str, tags: tuple[str, ...]) -> None:
        self.name = name
        self.host = host
        self.tags = tags
        self.bucket = -1
        self.n = 0
        self.acc: float | str | set | _Histogram | Sketch = 0.0

    def __hash__(self) -> int:
        return hash((self.name, self.kind, self.tags, self.host))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Context) and (self.name, self.kind, self.tags, self.host) == (
            other.name, other.kind, other.tags, other.host)


class _CounterContext(_Context):
    __slots__ = ()
    kind = _COUNTER


class _GaugeContext(_Context):
    __slots__ = ()
    kind = _GAUGE


class _SetContext(_Context):
    __slots__ = ()
    kind = _SET


class _HistogramContext(_Context):
    __slots__ = ()
    kind = _HISTOGRAM


class _DistributionContext(_Context):
    __slots__ = ()
    kind = _DISTRIBUTION


_CONTEXT_TYPES: dict[str, type[_Context]] = {
    "c": _CounterContext, "g": _GaugeContext, "s": _SetContext, "h": _HistogramContext, "ms": _HistogramContext,
    "d": _DistributionContext,
}


class _Histogram:
    # Values in a compact array; weights only once a sample was rate-sampled (None: every weight is 1).
    __slots__ = ("values", "weights")

    def __init__(self) -> None:
        self.values = array("d")
        self.weights: array | None = None

    def add(self, value: float, weight: int) -> None:
        self.values.append(value)
        if self.weights is None:
            if weight == 1:
                return
            self.weights = array("q", [1]) * (len(self.values) - 1)
        self.weights.append(weight)


_Row = tuple[int, _Context, int, object]  # a detached aggregate: bucket, context, samples, acc

# The series a context of each kind ships: name suffixes and series types (a distribution ships a sketch).
_SERIES_SHAPES: dict[int, tuple[tuple[str, ...], tuple[int, ...]]] = {
    _COUNTER: (("",), (RATE,)),
    _GAUGE: (("",), (GAUGE,)),
    _SET: (("",), (GAUGE,)),
    _HISTOGRAM: ((".max", ".median", ".avg", ".count", *(f".{p}percentile" for p in HISTOGRAM_PERCENTILES)),
                 (GAUGE, GAUGE, GAUGE, RATE, *(GAUGE for _ in HISTOGRAM_PERCENTILES))),
}


class Aggregator:
    def __init__(self, cfg, telemetry: Telemetry, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tel = telemetry.component("aggregator")
        self._rl = RateLimited(get_logger("aggregator"))
        self._by_raw: dict[int, _Context] = {}  # hash((name, mtype, raw tags, host)) as received -> context
        self._contexts: dict[_Context, _Context] = {}  # every live context, by (name, kind, tags, host)
        self._bucket = 0  # start of the current bucket (by arrival time), and its end
        self._bucket_end = -math.inf
        self._closed: list[_Row] = []  # aggregates of buckets that ended before their flush
        self._timestamped: list[Series] = []
        self._timestamped_sketches: list[SketchSeries] = []
        self._last_cutoff = 0
        self._samples = 0
        # (id(context), bucket) -> samples of an open bucket already counted by a final flush, which left them
        # in the context to ship again with the rest of the bucket (see flush)
        self._counted_early: dict[tuple[int, int], int] = {}
        # Bucket grid: start = t - (t - phase) % interval. phase is 0 until a reload changes the interval;
        # _pending is (switch time, new interval) until the bucket open at that reload has ended;
        # _epochs lists (from, interval) so a bucket's length is known after a change.
        interval = _interval_of(cfg)
        self.interval, self._phase = interval, 0
        self._pending: tuple[int, int] | None = None
        self._epochs: list[tuple[int, int]] = [(_FIRST_EPOCH, interval)]
        self._hostname = None
        self._default_tags = None
        # Tag values scrubbed where tags are made (a context's first sample, a timestamped point): set by
        # agent.build to transforms.privacy.MetricScrubber.tags; None leaves them as they came.
        self.scrub_tags: Callable[[list[str]], list[str]] | None = None
        self.reload(cfg)
        self._tel.gauge("contexts", lambda: len(self._contexts))
        # samples accepted; those of the open bucket are counted when it is flushed (no cost per sample)
        self._tel.gauge("samples", lambda: self._samples)

    def reload(self, cfg) -> None:
        """Take new agent settings: interval (from the end of the open bucket), context cap, hostname and
        default tags (for the samples received from now on)."""
        agent = cfg.agent
        self._max_contexts = agent.max_metric_contexts
        self._tel.set_info("max_metric_contexts", self._max_contexts)
        default_tags = agent_default_tags(agent)
        if self._hostname is not None and (agent.hostname, default_tags) != (self._hostname, self._default_tags):
            # Raw keys resolve again, to contexts with the new host and tags; the old contexts ship what
            # they hold and expire as idle contexts do.
            self._by_raw = {}
        self._hostname = agent.hostname
        self._default_tags = default_tags
        self._change_interval(_interval_of(cfg))

    def _change_interval(self, interval: int) -> None:
        now = int(self._clock())
        self._switch_if_due(now)
        if self._pending is not None:
            switch_at = self._pending[0]  # a second reload before the first took effect: same switch time
        elif interval == self.interval:
            return
        else:
            switch_at = now - (now - self._phase) % self.interval + self.interval  # end of the open bucket
        self._pending = None if interval == self.interval else (switch_at, interval)

    def _switch_if_due(self, now: int) -> None:
        if self._pending is not None and now >= self._pending[0]:
            switch_at, interval = self._pending
            self._pending = None
            self.interval, self._phase = interval, switch_at % interval
            self._epochs.append((switch_at, interval))

    def next_flush_at(self, now: float) -> int:
        """When the bucket holding ``now`` ends: the first time ``flush`` has it to ship."""
        t = int(now)
        if self._pending is not None and t >= self._pending[0]:
            switch_at, interval = self._pending
            phase = switch_at % interval
        else:
            interval, phase = self.interval, self._phase
        return t - (t - phase) % interval + interval

    def _length_of(self) -> Callable[[int], int]:
        """bucket start -> its length, for what one flush renders (a snapshot: later reloads don't count)."""
        epochs = tuple(self._epochs)
        if len(epochs) == 1:
            interval = epochs[0][1]
            return lambda bucket: interval

        def length(bucket: int) -> int:
            for start, interval in reversed(epochs):
                if bucket >= start:
                    return interval
            return epochs[0][1]

        return length

    def __len__(self) -> int:
        return len(self._contexts)

    # ------------------------------------------------------------------------------------------ hot path

    def add(
        self,
        name: str,
        mtype: str,
        value: float | str,
        tags: str = "",
        rate: float = 1.0,
        host: str | None = None,
        timestamp: float | None = None,
    ) -> None:
        if timestamp is not None:
            self._add_timestamped(name, mtype, value, tags, host, timestamp)
        else:
            self.add_many(((name, mtype, value, tags, rate, host),))

    def add_many(self, samples: Iterable[tuple[str, str, float | str, str, float, str | None]]) -> None:
        """Samples that arrived together (the lines of one datagram), each (name, mtype, value, tags, rate,
        host): one clock read and one bucket check for all of them, the loop's lookups made once (DogStatsD's
        per-line cost, about 8% less than a call of ``add`` a line)."""
        bucket = self._current_bucket()
        by_raw = self._by_raw
        for name, mtype, value, tags, rate, host in samples:
            raw_key = hash((name, mtype, tags, host))
            ctx = by_raw.get(raw_key)
            if ctx is None:
                ctx = self._new_context(raw_key, name, mtype, tags, host)
                if ctx is None:
                    continue
            if ctx.bucket != bucket:
                self._enter_bucket(ctx)
            kind = ctx.kind
            try:
                if kind == _COUNTER:
                    ctx.acc += value if rate == 1.0 or not 0.0 < rate < 1.0 else value / rate
                elif kind == _GAUGE:
                    ctx.acc = value + 0.0  # + 0.0 rejects a str here rather than at flush
                elif not self._add_to_buffer(ctx, kind, value, rate):
                    self._tel.discard("non_finite")
                    continue
            except (TypeError, ValueError):
                self._bad_value(name, mtype)
                continue
            ctx.n += 1

    def add_calls(self, samples: Iterable[Sequence]) -> None:
        """The LLM stage's samples as ``Router.calls`` gathers them, (name, mtype, value, tags) each: tuples, or
        lists from a worker (msgpack). What ``add_many`` does with them at rate 1 from the agent's host, without
        a 6-tuple made for each (about 9 samples a call), so its loop without the rate: the same raw keys,
        contexts and aggregates. The loop is written twice on purpose: one loop for both, choosing the unpacking
        per sample, cost DogStatsD 99 more instructions a line (12,536 against 12,437, callgrind)."""
        bucket = self._current_bucket()
        by_raw = self._by_raw
        for name, mtype, value, tags in samples:
            raw_key = hash((name, mtype, tags, None))
            ctx = by_raw.get(raw_key)
            if ctx is None:
                ctx = self._new_context(raw_key, name, mtype, tags, None)
                if ctx is None:
                    continue
            if ctx.bucket != bucket:
                self._enter_bucket(ctx)
            kind = ctx.kind
            try:
                if kind == _COUNTER:
                    ctx.acc += value
                elif kind == _GAUGE:
                    ctx.acc = value + 0.0
                elif not self._add_to_buffer(ctx, kind, value, 1.0):
                    self._tel.discard("non_finite")
                    continue
            except (TypeError, ValueError):
                self._bad_value(name, mtype)
                continue
            ctx.n += 1

    def _current_bucket(self) -> int:
        """The start of the bucket samples arriving now land in (one clock read for a batch of them)."""
        now = self._clock()
        if now >= self._bucket_end:
            self._advance(now)  # a clock stepping back keeps the later bucket: harmless
        return self._bucket

    def _bad_value(self, name: str, mtype: str) -> None:
        self._tel.discard("bad_value")
        self._rl.warning("bad_value", "metric_value_rejected", metric=name[:200], type=mtype[:10])

    @staticmethod
    def _add_to_buffer(ctx: _Context, kind: int, value: float | str, rate: float) -> bool:
        """A sample of a set, histogram or distribution. The first one is kept as is (a float or the set
        member) while it needs no weight; a buffer is made for the second. False: dropped as non-finite."""
        acc, first = ctx.acc, ctx.n == 0
        unweighted = rate == 1.0 or not 0.0 < rate < 1.0
        if kind == _HISTOGRAM:
            if type(acc) is not _Histogram:
                if first and unweighted:
                    ctx.acc = value + 0.0
                    return True
                hist = _Histogram()
                if not first:
                    hist.add(acc, 1)
                hist.add(value, 1 if unweighted else int(1.0 / rate))  # the Agent's int64(1 / rate)
                ctx.acc = hist
                return True
            acc.add(value, 1 if unweighted else int(1.0 / rate))
        elif kind == _DISTRIBUTION:
            if type(acc) is not Sketch:
                if first and unweighted:
                    value += 0.0
                    if value - value != 0.0:  # NaN or infinite: the Agent ignores it (sketch_map.go)
                        return False
                    ctx.acc = value
                    return True
                sketch = Sketch()
                if not first:
                    sketch.insert(acc)
                if not sketch.insert(value, rate):
                    return False
                ctx.acc = sketch
                return True
            return acc.insert(value, rate)
        elif type(acc) is set:
            acc.add(value)
        else:
            ctx.acc = value if first else {acc, value}
        return True

    def _advance(self, now: float) -> None:
        t = int(now)
        self._switch_if_due(t)
        start = t - (t - self._phase) % self.interval
        self._bucket, self._bucket_end = start, start + self.interval

    def _enter_bucket(self, ctx: _Context) -> None:
        if ctx.n:
            self._closed.append((ctx.bucket, ctx, ctx.n, ctx.acc))
        ctx.bucket, ctx.n, ctx.acc = self._bucket, 0, 0.0

    def _new_context(self, raw_key: int, name: str, mtype: str, raw_tags: str, host: str | None) -> _Context | None:
        cls = _CONTEXT_TYPES.get(mtype)
        if cls is None or not name:
            self._tel.discard("bad_type" if name else "no_name")
            self._rl.warning("bad_sample", "metric_sample_rejected", metric=name[:200], type=str(mtype)[:10])
            return None
        # Names and hosts repeat across contexts: interned, each is stored once.
        tags = self._canonical_tags(raw_tags)
        if tags is None:
            return None
        host = self._hostname if host is None else sys.intern(host)
        candidate = cls(sys.intern(name), host, tags)
        if len(self._contexts) >= self._max_contexts:  # here only: a raw key seen before never gets here
            ctx = self._contexts.get(candidate)  # the same context under another tag order is no new one
            if ctx is None:
                self._tel.discard("context_limit")
                self._rl.warning("context_limit", "metric_context_limit_reached", metric=name[:200],
                                 max_metric_contexts=self._max_contexts,
                                 hint="a tag with unbounded values (ids)? or raise agent.max_metric_contexts")
                return None
        else:
            ctx = self._contexts.setdefault(candidate, candidate)  # the same context under another tag order
        self._by_raw[raw_key] = ctx
        return ctx

    def _canonical_tags(self, raw_tags: str) -> tuple[str, ...] | None:
        """Tags with their values scrubbed (as they came: normalizing first would hide an e-mail's "@"),
        normalized, plus the agent's defaults for keys they lack, sorted and de-duplicated (the Agent's
        context key ignores tag order and duplicates). None: scrubbing raised, the sample is dropped and
        counted (never shipped raw)."""
        if raw_tags and self.scrub_tags is not None:
            try:
                raw_tags = ",".join(self.scrub_tags(raw_tags.split(",")))
            except Exception as e:
                self._tel.discard("scrub_failed")
                self._rl.error("scrub_failed", "metric_tags_scrub_failed", error=f"{type(e).__name__}: {e}")
                return None
        return tuple(sorted(add_missing(split_tags(raw_tags) if raw_tags else [], self._default_tags)))

    def _add_timestamped(
        self, name: str, mtype: str, value: float | str, raw_tags: str, host: str | None, timestamp: float
    ) -> None:
        if mtype not in ("g", "c"):
            self._tel.discard("timestamp_unsupported_type")
            return
        if len(self._timestamped) >= MAX_PENDING_TIMESTAMPED:
            self._tel.discard("timestamped_queue_full")
            return
        if not name:
            self._tel.discard("no_name")
            return
        try:
            value = float(value)
            ts = int(timestamp)
        except (TypeError, ValueError, OverflowError):
            self._tel.discard("bad_value")
            return
        # Not a context: nothing to aggregate, and no zeros to ship after it.
        tags = self._canonical_tags(raw_tags)
        if tags is None:
            return
        self._samples += 1
        resolved_host = self._hostname if host is None else host
        if mtype == "c":
            series = Series(name, RATE, self.interval, [(ts, value / self.interval)], tags, resolved_host)
        else:
            series = Series(name, GAUGE, self.interval, [(ts, value)], tags, resolved_host)
        self._timestamped.append(series)

    def add_point(self, name: str, series_type: int, value: float, tags: str, timestamp: float,
                  host: str | None = None) -> None:
        """A point its sender aggregated already (OTLP): shipped as is, with its own timestamp and series type
        (COUNT or GAUGE), as the Agent's OTLP pipeline sends its series without aggregating them
        (opentelemetry-mapping-go pkg/otlp/metrics ``ConsumeTimeSeries``)."""
        if len(self._timestamped) >= MAX_PENDING_TIMESTAMPED:
            self._tel.inc("dropped", reason="timestamped_queue_full")
            return
        if not name or value - value != 0.0:  # no name, NaN or infinite: the Agent skips those (isSkippable)
            self._tel.inc("dropped", reason="no_name" if not name else "non_finite")
            return
        canonical = self._canonical_tags(tags)
        if canonical is None:
            return
        self._samples += 1
        self._timestamped.append(Series(name, series_type, self.interval, [(int(timestamp), float(value))],
                                        canonical, self._hostname if host is None else host))

    def add_sketch(self, name: str, sketch: Sketch, tags: str, timestamp: float, host: str | None = None) -> None:
        """A distribution its sender aggregated (an OTLP histogram point mapped to a sketch), shipped as is."""
        if len(self._timestamped_sketches) >= MAX_PENDING_TIMESTAMPED:
            self._tel.inc("dropped", reason="timestamped_queue_full")
            return
        if not name:
            self._tel.inc("dropped", reason="no_name")
            return
        canonical = self._canonical_tags(tags)
        if canonical is None:
            return
        self._samples += 1
        self._timestamped_sketches.append(SketchSeries(name, self._hostname if host is None else host,
                                                       canonical, [(int(timestamp), sketch)]))

    # ------------------------------------------------------------------------------------------ flush

    def flush(self, now: float, final: bool = False) -> FlushResult:
        """Everything from buckets that ended by the start of now's bucket; then expire idle contexts.
        ``final`` (on shutdown) ships the open buckets too, like the Agent's forceFlushAll.

        This only takes the ready aggregates, decides the counters' zeros and expires contexts, in one pass
        over the contexts (about 1 us each); the series and sketches are built as the result is drained
        (see FlushResult), while samples arriving meanwhile go to the new bucket."""
        t = int(now)
        self._switch_if_due(t)
        interval = self.interval
        cutoff = t - (t - self._phase) % interval
        length_of = self._length_of()
        # A bucket is ready once it ended by the limit. Buckets never straddle a grid boundary (an interval
        # change takes effect at one), so a bucket starting before the cutoff has ended by it.
        limit = math.inf if final else cutoff
        closed = [row for row in self._closed if row[0] < limit]
        if closed:
            self._closed = [row for row in self._closed if row[0] >= limit]
        early = self._counted_early
        samples = sum(row[2] - early.pop((id(row[1]), row[0]), 0) for row in closed)
        # What is rendered: one flat list, three entries a row (bucket, context, acc). A tuple a row cost a
        # flush of 100,000 contexts 8 MiB of small objects at its peak, in pools that pymalloc keeps after.
        rows: list = []
        for bucket, ctx, _, acc in closed:
            rows += (bucket, ctx, acc)
        idle_counters: list[_Context] = []  # counters with no aggregate taken in this pass
        expired: list[_Context] = []
        # Expiry counts from the end of a context's latest bucket: no context expires earlier than the
        # Agent would expire it (its last sample is at most one interval after the bucket start).
        seen_before = now - interval
        for ctx in self._contexts:
            bucket, n = ctx.bucket, ctx.n
            if n and bucket < limit:
                if bucket >= cutoff and ctx.kind != _DISTRIBUTION:  # open (final): shipped now and again later
                    shipped = early.get((id(ctx), bucket), 0)
                    if n > shipped:  # else nothing new since the last final flush: no need to repeat it
                        rows += (bucket, ctx, _copy(ctx.acc))
                        samples += n - shipped
                        early[(id(ctx), bucket)] = n
                    continue
                rows += (bucket, ctx, ctx.acc)
                ctx.n, ctx.acc = 0, 0.0  # detached: no buffer until sampled again
                samples += n - (early.pop((id(ctx), bucket), 0) if early else 0)
            elif ctx.kind == _COUNTER:
                idle_counters.append(ctx)
            if bucket + (CONTEXT_EXPIRY_SECS + COUNTER_EXPIRY_SECS if ctx.kind == _COUNTER
                         else CONTEXT_EXPIRY_SECS) < seen_before:
                expired.append(ctx)
        self._samples += samples
        buckets = sorted(set(itertools.islice(rows, 0, None, 3)))
        if not buckets and self._last_cutoff < cutoff:
            buckets = [cutoff - length_of(cutoff - 1)]  # nothing sampled: still ship the counters' zeros
        self._last_cutoff = cutoff
        while len(self._epochs) > 1 and self._epochs[1][0] <= cutoff:
            del self._epochs[0]  # every bucket of that epoch ended by the cutoff: shipped (or in this result)
        zeros: list[_Context] = []  # counters that get a zero for the only bucket (see below)
        if len(buckets) == 1:
            sampled = {id(row[1]) for row in closed}
            zeros = [ctx for ctx in idle_counters
                     if ctx.bucket + COUNTER_EXPIRY_SECS >= buckets[0] and id(ctx) not in sampled]
        elif buckets:  # a late flush: a counter may lack some buckets, and has one series for them all
            table = [rows[i:i + 3] for i in range(0, len(rows), 3)]
            table += _counter_zeros(table, [c for c in self._contexts if c.kind == _COUNTER], buckets)
            table.sort(key=lambda row: (id(row[1]), row[0]))  # a context's rows together, in time order
            rows = [entry for row in table for entry in row]
        pending = self._render(rows, zeros, buckets[0] if zeros else 0, length_of) if rows or zeros else None
        result = FlushResult(series=self._timestamped, sketches=self._timestamped_sketches, pending=pending)
        self._timestamped = []
        self._timestamped_sketches = []
        if expired:
            self._forget(expired)
        return result

    def _render(self, rows: list, zeros: list[_Context], zeros_bucket: int,
                length_of: Callable[[int], int]) -> Iterator[Series | SketchSeries]:
        """Series and sketches from ``rows`` (flat: bucket, context, acc; a context's rows are consecutive,
        in time order), releasing each row once rendered; then a zero at ``zeros_bucket`` for each of the
        ``zeros`` counters. A series holds buckets of one length (its ``interval``): after an interval
        change, a context's buckets of each length make a series each."""
        rows.reverse()  # popped from the end, in order: the first row is now its last three entries, reversed
        pop = rows.pop
        while rows:
            bucket, ctx, acc = pop(), pop(), pop()
            group = [(bucket, acc)]
            interval = length_of(bucket)
            # the same context in a later bucket of the same length (a late flush)
            while rows and rows[-2] is ctx and length_of(rows[-1]) == interval:
                later, _, later_acc = pop(), pop(), pop()
                group.append((later, later_acc))
            if ctx.kind == _DISTRIBUTION:
                yield SketchSeries(ctx.name, ctx.host, ctx.tags, [(b, _as_sketch(a)) for b, a in group])
                continue
            names, types = _SERIES_SHAPES[ctx.kind]
            columns: list[list[tuple[int, float]]] = [[] for _ in names]
            for bucket, acc in group:
                values = self._values(ctx.kind, acc, interval)
                for points, value in zip(columns, values):
                    if value - value == 0.0:  # finite
                        points.append((bucket, value))
                    else:
                        self._tel.discard("non_finite")
            for suffix, mtype, points in zip(names, types, columns):
                if points:
                    yield Series(ctx.name + suffix if suffix else ctx.name, mtype, interval, points, ctx.tags,
                                 ctx.host)
        for ctx in zeros:
            yield Series(ctx.name, RATE, length_of(zeros_bucket), [(zeros_bucket, 0.0)], ctx.tags, ctx.host)

    def _values(self, kind: int, acc: object, interval: int) -> tuple[float, ...]:
        """One bucket's values of a context's series, in _SERIES_SHAPES order."""
        if kind == _COUNTER:
            return (acc / interval,)
        if kind == _GAUGE:
            return (acc,)
        if kind == _SET:
            return (float(len(acc)) if type(acc) is set else 1.0,)
        if type(acc) is not _Histogram:  # its only sample
            return (acc, acc, acc, 1 / interval, *(acc for _ in HISTOGRAM_PERCENTILES))
        # max, median, avg, count (a rate) and the percentiles, as histogram.go computes them
        weights = acc.weights if acc.weights is not None else [1] * len(acc.values)
        samples = sorted((v, w) for v, w in zip(acc.values, weights) if math.isfinite(v))
        if len(samples) < len(acc.values):
            self._tel.discard("non_finite", len(acc.values) - len(samples))
        if not samples:
            return ()
        count = sum(w for _, w in samples)
        total = sum(v * w for v, w in samples)
        return (samples[-1][0], _weighted_rank(samples, (count - 1) // 2), total / count, count / interval,
                *(_weighted_rank(samples, (p * count - 1) // 100) for p in HISTOGRAM_PERCENTILES))

    def _forget(self, expired: list[_Context]) -> None:
        for ctx in expired:
            del self._contexts[ctx]
        dead = {id(ctx) for ctx in expired}
        self._by_raw = {raw: ctx for raw, ctx in self._by_raw.items() if id(ctx) not in dead}
        self._tel.inc("contexts_expired", len(dead))


def _counter_zeros(rows: list, counters: list[_Context], buckets: list[int]) -> Iterator[tuple]:
    """Rows (bucket, context, acc) of a zero for each counter and flushed bucket it was not sampled in while
    the Agent would still ship one: lastSeen + dogstatsd_expiry_seconds > bucket. Any last-seen time inside
    the context's latest bucket (after its start) gives this same set of buckets (flush() applies the same
    rule when there is one bucket)."""
    sampled = {(row[0], id(row[1])) for row in rows if row[1].kind == _COUNTER}
    for ctx in counters:
        for bucket in buckets:
            if ctx.bucket + COUNTER_EXPIRY_SECS >= bucket and (bucket, id(ctx)) not in sampled:
                yield (bucket, ctx, 0.0)


def _copy(acc: object) -> object:
    """A snapshot of an open bucket's aggregate, for a row rendered while the bucket keeps aggregating."""
    if type(acc) is set:
        return set(acc)
    if type(acc) is _Histogram:
        copy = _Histogram()
        copy.values = array("d", acc.values)
        copy.weights = None if acc.weights is None else array("q", acc.weights)
        return copy
    return acc  # a float or a single set member: immutable


def _as_sketch(acc: float | Sketch) -> Sketch:
    if type(acc) is Sketch:
        return acc
    sketch = Sketch()  # a distribution's only sample
    sketch.insert(acc)
    return sketch


def _weighted_rank(samples: list[tuple[float, int]], target: int) -> float:
    """The first value whose cumulative weight exceeds target (histogram.go median and percentiles)."""
    seen = 0
    for value, weight in samples:
        seen += weight
        if seen > target:
            return value
    return samples[-1][0]


def _interval_of(cfg) -> int:
    return max(1, int(round(cfg.agent.flush_interval_secs)))
