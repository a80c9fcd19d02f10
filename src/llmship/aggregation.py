"""Metric contexts, flush-interval buckets and their flush to series and sketches, as the Datadog Agent's
DogStatsD time sampler does it (datadog-agent pkg/aggregator/time_sampler.go, pkg/metrics/*.go).

A *context* is (name, type, normalized tags, host). ``add`` is the hot path (once per DogStatsD line): it
looks the raw ``(name, type, tags, host)`` up in a dict and updates the context's running aggregate for
the current bucket; tags are split, normalized and completed with the agent's default tags only the first
time a raw key is seen.

Agent behaviour followed here (sources in datadog-agent unless noted):
- Buckets: a sample lands in the bucket ``t - t % interval`` of its arrival time; ``flush(now)`` ships every
  bucket that ended at or before the start of now's bucket, stamped with the bucket start
  (TimeSampler.calculateBucketStart / isBucketStillOpen / flushSeries).
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
Tags: each raw tag is normalized (llmship.tags.normalize_tag, the backend's rules), duplicates dropped,
the agent's env/service/version/tags added for keys the sample lacks, then sorted. The Agent itself
leaves DogStatsD tags to the backend's normalization; normalizing here gives the same result and lets
"Env:Prod" and "env:prod" share one context.
"""

from __future__ import annotations

import math
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from llmship.log import RateLimited, get_logger
from llmship.sketch import Sketch
from llmship.tags import add_missing, agent_default_tags, split_tags
from llmship.telemetry import Telemetry

# Series types of the public /api/v2/series API: 0 unspecified, 1 count, 2 rate, 3 gauge.
COUNT, RATE, GAUGE = 1, 2, 3

COUNTER_EXPIRY_SECS = 300  # dogstatsd_expiry_seconds: how long an idle counter keeps shipping zeros
CONTEXT_EXPIRY_SECS = 20  # dogstatsd_context_expiry_seconds
HISTOGRAM_PERCENTILES = (95,)  # histogram_percentiles default ["0.95"]
MAX_PENDING_TIMESTAMPED = 100_000  # bound on `T` points waiting for the next flush (ours, not the Agent's)

# Context kinds. Small ints: compared on every sample.
_COUNTER, _GAUGE, _SET, _HISTOGRAM, _DISTRIBUTION = range(5)
_KINDS = {"c": _COUNTER, "g": _GAUGE, "s": _SET, "h": _HISTOGRAM, "ms": _HISTOGRAM, "d": _DISTRIBUTION}


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


@dataclass(slots=True)
class FlushResult:
    series: list[Series] = field(default_factory=list)
    sketches: list[SketchSeries] = field(default_factory=list)


class _Context:
    # One context, and its aggregate for ``bucket``, the start of the latest bucket it was sampled in (which
    # also serves as its "last seen" time); ``n`` samples so far (0: nothing to ship). ``acc`` is the counter
    # sum or the gauge's last value; ``data`` the set members, _Histogram or Sketch (None when idle).
    # A context is its own key in Aggregator._contexts (equal when name, kind, tags and host are), which
    # saves a key tuple per context; slots keep 100k contexts within the memory budget.
    __slots__ = ("name", "host", "tags", "kind", "bucket", "n", "acc", "data")

    def __init__(self, name: str, host: str, tags: tuple[str, ...], kind: int) -> None:
        self.name = name
        self.host = host
        self.tags = tags
        self.kind = kind
        self.bucket = -1
        self.n = 0
        self.acc = 0.0
        self.data: set | _Histogram | Sketch | None = None

    def __hash__(self) -> int:
        return hash((self.name, self.kind, self.tags, self.host))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Context) and (self.name, self.kind, self.tags, self.host) == (
            other.name, other.kind, other.tags, other.host)


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


def _fresh_data(kind: int) -> set | _Histogram | Sketch | None:
    if kind == _SET:
        return set()
    if kind == _HISTOGRAM:
        return _Histogram()
    if kind == _DISTRIBUTION:
        return Sketch()
    return None


_Entry = tuple[int, _Context, int, float, object]  # a detached aggregate: bucket, context, n, acc, data


class Aggregator:
    def __init__(self, cfg, telemetry: Telemetry, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tel = telemetry.component("aggregator")
        self._rl = RateLimited(get_logger("aggregator"))
        self._by_raw: dict[tuple, _Context] = {}  # (name, mtype, raw tags, host) as received -> context
        self._contexts: dict[_Context, _Context] = {}  # every live context, by (name, kind, tags, host)
        self._bucket = 0  # start of the current bucket (by arrival time), and its end
        self._bucket_end = -math.inf
        self._touched: list[_Context] = []  # contexts sampled in the current bucket
        self._touched_by_bucket: dict[int, list[_Context]] = {}
        self._closed: list[_Entry] = []  # aggregates of buckets that ended before their flush
        self._timestamped: list[Series] = []
        self._last_cutoff = 0
        self._samples = 0
        self.reload(cfg)
        self._tel.gauge("contexts", lambda: len(self._contexts))
        # samples accepted; those of the open bucket are counted when it is flushed (no cost per sample)
        self._tel.gauge("samples", lambda: self._samples)

    def reload(self, cfg) -> None:
        """Take new agent settings (hostname, default tags, interval). Known contexts keep their tags."""
        agent = cfg.agent
        self.interval = max(1, int(round(agent.flush_interval_secs)))
        self._hostname = agent.hostname
        self._default_tags = agent_default_tags(agent)

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
            return
        ctx = self._by_raw.get((name, mtype, tags, host))
        if ctx is None:
            ctx = self._new_context(name, mtype, tags, host)
            if ctx is None:
                return
        now = self._clock()
        if now >= self._bucket_end:
            self._advance(now)  # a clock stepping back keeps the later bucket: harmless
        if ctx.bucket != self._bucket:
            self._enter_bucket(ctx)
        kind = ctx.kind
        try:
            if kind == _COUNTER:
                ctx.acc += value if rate == 1.0 or not 0.0 < rate < 1.0 else value / rate
            elif kind == _GAUGE:
                ctx.acc = value + 0.0  # + 0.0 rejects a str here rather than at flush
            elif kind == _DISTRIBUTION:
                if not ctx.data.insert(value, rate):
                    self._tel.inc("dropped", reason="non_finite")
                    return
            elif kind == _HISTOGRAM:
                weight = int(1.0 / rate) if 0.0 < rate < 1.0 else 1  # the Agent's int64(1 / rate)
                ctx.data.add(value, weight)
            else:
                ctx.data.add(value)
        except (TypeError, ValueError):
            self._tel.inc("dropped", reason="bad_value")
            self._rl.warning("bad_value", "metric_value_rejected", metric=name[:200], type=mtype[:10])
            return
        ctx.n += 1

    def _advance(self, now: float) -> None:
        start = int(now) - int(now) % self.interval
        self._bucket, self._bucket_end = start, start + self.interval
        self._touched = self._touched_by_bucket.setdefault(start, [])

    def _enter_bucket(self, ctx: _Context) -> None:
        if ctx.n:
            self._closed.append(_detach(ctx))
        ctx.bucket = self._bucket
        ctx.data = _fresh_data(ctx.kind)
        self._touched.append(ctx)

    def _new_context(self, name: str, mtype: str, raw_tags: str, host: str | None) -> _Context | None:
        kind = _KINDS.get(mtype)
        if kind is None or not name:
            self._tel.inc("dropped", reason="bad_type" if name else "no_name")
            self._rl.warning("bad_sample", "metric_sample_rejected", metric=name[:200], type=str(mtype)[:10])
            return None
        # Names, types and hosts repeat across contexts: interned, each is stored once.
        name, mtype = sys.intern(name), sys.intern(mtype)
        host = None if host is None else sys.intern(host)
        candidate = _Context(name, self._hostname if host is None else host, self._canonical_tags(raw_tags), kind)
        ctx = self._contexts.setdefault(candidate, candidate)  # the same context under another tag order
        self._by_raw[(name, mtype, raw_tags, host)] = ctx
        return ctx

    def _canonical_tags(self, raw_tags: str) -> tuple[str, ...]:
        """Normalized tags plus the agent's defaults for keys they lack, sorted and de-duplicated (the
        Agent's context key ignores tag order and duplicates)."""
        return tuple(sorted(add_missing(split_tags(raw_tags) if raw_tags else [], self._default_tags)))

    def _add_timestamped(
        self, name: str, mtype: str, value: float | str, raw_tags: str, host: str | None, timestamp: float
    ) -> None:
        if mtype not in ("g", "c"):
            self._tel.inc("dropped", reason="timestamp_unsupported_type")
            return
        if len(self._timestamped) >= MAX_PENDING_TIMESTAMPED:
            self._tel.inc("dropped", reason="timestamped_queue_full")
            return
        if not name:
            self._tel.inc("dropped", reason="no_name")
            return
        try:
            value = float(value)
            ts = int(timestamp)
        except (TypeError, ValueError, OverflowError):
            self._tel.inc("dropped", reason="bad_value")
            return
        self._samples += 1
        # Not a context: nothing to aggregate, and no zeros to ship after it.
        tags = self._canonical_tags(raw_tags)
        resolved_host = self._hostname if host is None else host
        if mtype == "c":
            series = Series(name, RATE, self.interval, [(ts, value / self.interval)], tags, resolved_host)
        else:
            series = Series(name, GAUGE, self.interval, [(ts, value)], tags, resolved_host)
        self._timestamped.append(series)

    # ------------------------------------------------------------------------------------------ flush

    def flush(self, now: float, final: bool = False) -> FlushResult:
        """Everything from buckets that ended by the start of now's bucket; then expire idle contexts.
        ``final`` (on shutdown) ships the open buckets too, like the Agent's forceFlushAll."""
        interval = self.interval
        cutoff = int(now) - int(now) % interval
        limit = math.inf if final else cutoff  # a bucket is ready once bucket + interval <= limit
        ready = [entry for entry in self._closed if entry[0] + interval <= limit]
        self._closed = [entry for entry in self._closed if entry[0] + interval > limit]
        for bucket in [b for b in self._touched_by_bucket if b + interval <= limit]:
            contexts = self._touched_by_bucket.pop(bucket)
            current = bucket == self._bucket
            for ctx in contexts:
                if ctx.bucket == bucket and ctx.n:
                    ready.append(_detach(ctx))
                    if current:  # final, or `now` ahead of our clock: it may still be sampled here
                        ctx.data = _fresh_data(ctx.kind)
            if current:
                self._touched = self._touched_by_bucket[bucket] = contexts
        self._samples += sum(entry[2] for entry in ready)
        buckets = {entry[0] for entry in ready}
        if not buckets and self._last_cutoff + interval <= cutoff:
            buckets = {cutoff - interval}  # nothing sampled: still ship the counters' zeros
        self._last_cutoff = cutoff

        result = FlushResult(series=self._timestamped)
        self._timestamped = []
        series_by_key: dict[tuple[int, str], Series] = {}  # (id(context), name suffix) -> series
        sketches_by_ctx: dict[int, SketchSeries] = {}
        sampled_counters: set[tuple[int, int]] = set()  # (bucket, id(context))
        for bucket, ctx, _, acc, data in sorted(ready, key=lambda e: e[0]):
            kind = ctx.kind
            if kind == _DISTRIBUTION:
                ss = sketches_by_ctx.get(id(ctx))
                if ss is None:
                    ss = sketches_by_ctx[id(ctx)] = SketchSeries(ctx.name, ctx.host, ctx.tags, [])
                ss.points.append((bucket, data))
            elif kind == _COUNTER:
                sampled_counters.add((bucket, id(ctx)))
                self._point(series_by_key, ctx, "", RATE, bucket, acc / interval)
            elif kind == _GAUGE:
                self._point(series_by_key, ctx, "", GAUGE, bucket, acc)
            elif kind == _SET:
                self._point(series_by_key, ctx, "", GAUGE, bucket, float(len(data)))
            else:
                self._histogram_points(series_by_key, ctx, bucket, data)
        if buckets:
            counters = [c for c in self._contexts if c.kind == _COUNTER]
            for bucket in sorted(buckets):
                for ctx in counters:
                    # The Agent: lastSeen + dogstatsd_expiry_seconds > bucket. Any last-seen time inside
                    # the context's latest bucket (after its start) gives this same set of buckets.
                    if ctx.bucket + COUNTER_EXPIRY_SECS >= bucket and (bucket, id(ctx)) not in sampled_counters:
                        self._point(series_by_key, ctx, "", RATE, bucket, 0.0)
        result.series.extend(series_by_key.values())
        result.sketches.extend(sketches_by_ctx.values())
        self._expire(now)
        return result

    def _point(self, out: dict, ctx: _Context, suffix: str, mtype: int, bucket: int, value: float) -> None:
        if not math.isfinite(value):
            self._tel.inc("dropped", reason="non_finite")
            return
        series = out.get((id(ctx), suffix))
        if series is None:
            series = out[(id(ctx), suffix)] = Series(ctx.name + suffix, mtype, self.interval, [], ctx.tags, ctx.host)
        series.points.append((bucket, value))

    def _histogram_points(self, out: dict, ctx: _Context, bucket: int, hist: _Histogram) -> None:
        weights = hist.weights if hist.weights is not None else [1] * len(hist.values)
        samples = sorted((v, w) for v, w in zip(hist.values, weights) if math.isfinite(v))
        if len(samples) < len(hist.values):
            self._tel.inc("dropped", len(hist.values) - len(samples), reason="non_finite")
        if not samples:
            return
        count = sum(w for _, w in samples)
        total = sum(v * w for v, w in samples)
        self._point(out, ctx, ".max", GAUGE, bucket, samples[-1][0])
        self._point(out, ctx, ".median", GAUGE, bucket, _weighted_rank(samples, (count - 1) // 2))
        self._point(out, ctx, ".avg", GAUGE, bucket, total / count)
        self._point(out, ctx, ".count", RATE, bucket, count / self.interval)
        for p in HISTOGRAM_PERCENTILES:
            self._point(out, ctx, f".{p}percentile", GAUGE, bucket, _weighted_rank(samples, (p * count - 1) // 100))

    def _expire(self, now: float) -> None:
        """Forget contexts unseen for the Agent's expiry (counters: plus the time they ship zeros). A
        context's last sample is at most one interval after its bucket start: count from the bucket end,
        so no context expires earlier than the Agent would expire it."""
        seen_before = now - self.interval
        expired = [
            ctx for ctx in self._contexts
            if ctx.bucket + (CONTEXT_EXPIRY_SECS + COUNTER_EXPIRY_SECS if ctx.kind == _COUNTER
                             else CONTEXT_EXPIRY_SECS) < seen_before
        ]
        if not expired:
            return
        for ctx in expired:
            del self._contexts[ctx]
        dead = {id(ctx) for ctx in expired}
        self._by_raw = {raw: ctx for raw, ctx in self._by_raw.items() if id(ctx) not in dead}
        self._tel.inc("contexts_expired", len(dead))


def _detach(ctx: _Context) -> _Entry:
    """Take the context's aggregate out to ship it; the context holds no buffer until sampled again."""
    entry = (ctx.bucket, ctx, ctx.n, ctx.acc, ctx.data)
    ctx.n, ctx.acc, ctx.data = 0, 0.0, None
    return entry


def _weighted_rank(samples: list[tuple[float, int]], target: int) -> float:
    """The first value whose cumulative weight exceeds target (histogram.go median and percentiles)."""
    seen = 0
    for value, weight in samples:
        seen += weight
        if seen > target:
            return value
    return samples[-1][0]
