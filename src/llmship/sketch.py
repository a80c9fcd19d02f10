"""The Datadog Agent's distribution sketch (DDSketch as in its ``quantile`` package), so that the keys we ship
in a SketchPayload mean to the intake exactly what the Agent's keys mean.

Parameters are the Agent's defaults (datadog-agent pkg/quantile/config.go, now
DataDog/opentelemetry-mapping-go pkg/quantile):
  relative accuracy eps = 1/128, so gamma = 1 + 2*eps and ln(gamma) = log1p(2*eps);
  minimum value 1e-9: emin = floor(log_gamma(1e-9)) = -1337 and bias = 1 - emin = 1338, so the smallest
  representable positive value has key 1 and |v| < that value has key 0;
  key(v) = round_half_even(ln(v) / ln(gamma)) + bias for v > 0, key(-v) = -key(v);
  keys are int16-ranged: above 32766 is the +inf key 32767;
  at most 4096 bins (the lowest bins collapse into the 4097th-lowest when over);
  a bin holds at most 65535 (uint16): larger counts are written as several bins with the same key.
Sample rates follow the Agent's ``quantile.Agent.Insert``: a value sampled at rate r counts int(1/r) times
(rates outside (0, 1] count as 1) and the summary adds it with weight 1/r.
"""

from __future__ import annotations

import math
from array import array
from math import log as _log

RELATIVE_ACCURACY = 1.0 / 128.0  # defaultEps
BIN_LIMIT = 4096  # defaultBinLimit
MIN_VALUE = 1e-9  # defaultMin
MAX_BIN_WIDTH = 65535  # bin.n is a uint16 in the Agent's default sketch (pkg/quantile/bin.go)

GAMMA = 1.0 + 2.0 * RELATIVE_ACCURACY
LN_GAMMA = math.log1p(2.0 * RELATIVE_ACCURACY)
EMIN = math.floor(math.log(MIN_VALUE) / LN_GAMMA)  # -1337
BIAS = 1 - EMIN  # 1338
INF_KEY = (1 << 15) - 1  # uvinf in pkg/quantile/key.go
MAX_KEY = INF_KEY - 1
NORM_MIN = GAMMA ** (1 - BIAS)  # the value of key 1: f64(1)

_AGENT_BUF_CAP = 512  # agentBufCap: keys buffered before they are merged into the bins (agent.go)


def key(v: float) -> int:
    """The Agent's key for v: gamma**(k - bias) <= |v| is the bin lower bound (config.go ``key``)."""
    if v < 0:
        return -key(-v)
    if v < NORM_MIN:  # includes 0
        return 0
    k = round(math.log(v) / LN_GAMMA) + BIAS  # round() is round-half-even, like Go's math.RoundToEven
    if k > MAX_KEY:
        return INF_KEY
    return max(k, 1)


def lower_bound(k: int) -> float:
    """The value a key stands for (config.go ``f64``): gamma**(k - bias), signed, 0 for key 0."""
    if k < 0:
        return -lower_bound(-k)
    if k == INF_KEY:
        return math.inf
    if k == 0:
        return 0.0
    return GAMMA ** (k - BIAS)


class Sketch:
    """One distribution over one flush interval: the Agent's summary (cnt, min, max, sum, avg) plus bins.

    Like the Agent's ``quantile.Agent``, unweighted keys are buffered (here in a 2-byte array) and merged
    into the bins every 512 inserts, which keeps a sketch of a few samples small.
    """

    __slots__ = ("cnt", "min", "max", "sum", "avg", "bins", "buf")

    def __init__(self) -> None:
        self.cnt = 0
        self.min = 0.0
        self.max = 0.0
        self.sum = 0.0
        self.avg = 0.0
        self.bins: dict[int, int] | None = None
        self.buf = array("h")  # keys are int16 (pkg/quantile/key.go)

    def insert(self, v: float, rate: float = 1.0) -> bool:
        """Add v sampled at ``rate``; False (and nothing added) when v is NaN or infinite, as the Agent does."""
        if v - v != 0.0:  # NaN or infinite (NaN for both)
            return False
        # key(v) and _merge_summary(v, 1, v) written out for the common case (a DogStatsD distribution's
        # every sample): the same arithmetic, without two calls
        if v >= NORM_MIN:
            k = round(_log(v) / LN_GAMMA) + BIAS
            k = INF_KEY if k > MAX_KEY else k if k > 1 else 1
        else:
            k = key(v)
        if rate == 1.0 or not 0.0 < rate < 1.0:  # rates outside (0, 1] count as 1 (quantile.Agent.Insert)
            cnt = self.cnt
            if cnt == 0:
                self.cnt, self.min, self.max, self.sum, self.avg = 1, v, v, v, v
            else:
                if v > self.max:
                    self.max = v
                if v < self.min:
                    self.min = v
                self.cnt = cnt = cnt + 1
                self.sum += v
                self.avg += (v - self.avg) / cnt
            buf = self.buf
            buf.append(k)
            if len(buf) >= _AGENT_BUF_CAP:
                self._merge_buffer()
            return True
        weight = 1.0 / rate
        n = int(weight)  # "truncated 1 / sampleRate as count to match histograms"
        self._merge_summary(v, n, weight * v)
        bins = self._bins()
        bins[k] = bins.get(k, 0) + n
        if len(bins) > BIN_LIMIT:  # the Agent merges rate-sampled counts at once, and trims then
            self._trim()
        return True

    def insert_interpolate(self, lower: float, upper: float, count: int) -> None:
        """Spread ``count`` values over the keys from ``lower`` to ``upper`` in proportion to each key's
        width, as the Agent does for a histogram bucket (pkg/quantile/agent.go ``InsertInterpolate``, used by
        the OTLP metrics mapping, opentelemetry-mapping-go pkg/otlp/metrics/metrics_translator.go
        ``getSketchBuckets``). Each share is summarized at its key's lower bound."""
        start, end = key(lower), key(upper)
        start = MAX_KEY if start == INF_KEY else -MAX_KEY if start == -INF_KEY else start
        end = MAX_KEY if end == INF_KEY else -MAX_KEY if end == -INF_KEY else end
        if end < start or count <= 0:
            return
        left, distance, remainder = count, upper - lower, 0.0
        start_key, low = start, lower_bound(start)
        bins = self._bins()
        for k in range(start + 1, end + 1):
            if left <= 0:
                break
            high = lower_bound(k)
            share = (high - low) / distance * count
            if share > 1:  # only shares above 1 carry a remainder (no run of empty bins)
                remainder += share - int(share)
            n = int(share)
            if remainder > 1:
                n += 1
                remainder -= 1
            if n > 0:
                n = min(n, left)
                self._merge_summary(low, n, low * n)
                bins[start_key] = bins.get(start_key, 0) + n
                left -= n
                start_key, low = k, high
        if left > 0:
            self._merge_summary(lower_bound(start_key), left, lower_bound(start_key) * left)
            bins[start_key] = bins.get(start_key, 0) + left
        if len(bins) > BIN_LIMIT:
            self._trim()

    def _bins(self) -> dict[int, int]:
        if self.bins is None:
            self.bins = {}
        return self.bins

    def _merge_buffer(self) -> None:
        bins = self._bins()
        for k in self.buf:
            bins[k] = bins.get(k, 0) + 1
        self.buf = array("h")
        if len(bins) > BIN_LIMIT:
            self._trim()

    def _merge_summary(self, v: float, n: int, weighted_sum: float) -> None:
        # summary.Summary.Insert (n == 1) and InsertN/Merge (n > 1)
        if self.cnt == 0:
            self.cnt, self.min, self.max, self.sum, self.avg = n, v, v, weighted_sum, v
            return
        if v > self.max:
            self.max = v
        if v < self.min:
            self.min = v
        self.cnt += n
        self.sum += weighted_sum
        self.avg += (v - self.avg) * n / self.cnt

    def _trim(self) -> None:
        """Collapse the lowest bins into the lowest kept one until BIN_LIMIT keys remain (store.go trimLeft)."""
        bins = self._bins()
        keys = sorted(bins)
        remove = len(keys) - BIN_LIMIT
        if remove <= 0:
            return
        moved = sum(bins.pop(k) for k in keys[:remove])
        bins[keys[remove]] += moved

    def to_plain(self) -> tuple:
        """The sketch as plain data, for another process (``from_plain`` makes it again): the summary, then
        the keys and counts of its bins (the buffer merged into them)."""
        self._merge_buffer()
        bins = self._bins()
        return self.cnt, self.min, self.max, self.sum, self.avg, list(bins), list(bins.values())

    @classmethod
    def from_plain(cls, cnt: int, vmin: float, vmax: float, total: float, avg: float, keys: list[int],
                   counts: list[int]) -> Sketch:
        sketch = cls()
        sketch.cnt, sketch.min, sketch.max, sketch.sum, sketch.avg = cnt, vmin, vmax, total, avg
        sketch.bins = dict(zip(keys, counts))
        return sketch

    def cols(self) -> tuple[list[int], list[int]]:
        """Keys and counts as shipped (Dogsketch k and n): sorted by key, counts split at 65535 like
        the Agent's appendSafe (the remainder first, then full bins)."""
        self._merge_buffer()
        self._trim()
        ks: list[int] = []
        ns: list[int] = []
        for k, n in sorted(self._bins().items()):
            if n <= MAX_BIN_WIDTH:
                ks.append(k)
                ns.append(n)
                continue
            full, rest = divmod(n, MAX_BIN_WIDTH)
            if rest:
                ks.append(k)
                ns.append(rest)
            ks.extend([k] * full)
            ns.extend([MAX_BIN_WIDTH] * full)
        return ks, ns


def quantile(keys: list[int], counts: list[int], q: float, vmin: float, vmax: float) -> float:
    """The Agent's Sketch.Quantile over shipped bins (sparse.go): interpolates inside the bin holding
    rank round_half_even(q * (count - 1)), using the summary min for the first bin."""
    total = sum(counts)
    if total == 0:
        return 0.0
    if q <= 0:
        return vmin
    if q >= 1:
        return vmax
    want = round(q * (total - 1))
    seen = 0.0
    for i, (k, n) in enumerate(zip(keys, counts)):
        seen += n
        if seen <= want:
            continue
        weight = (seen - want) / n
        low = lower_bound(k)
        high = low * GAMMA
        if i == 0:
            low = vmin
        return low * weight + high * (1 - weight)
    return math.nan
