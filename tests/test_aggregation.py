from __future__ import annotations

import math
import tracemalloc

import msgspec
import pytest

from llmship.aggregation import COUNT, GAUGE, RATE, Aggregator, FlushResult
from llmship.config import load_config_text
from llmship.sketch import key
from llmship.telemetry import Telemetry

T0 = 1_700_000_000.0  # a bucket start (multiple of 10)


class Clock:
    def __init__(self, now: float = T0 + 1) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(config: str = "", clock: Clock | None = None) -> tuple[Aggregator, Clock, Telemetry]:
    clock = clock or Clock()
    telemetry = Telemetry()
    cfg = load_config_text('[agent]\nhostname = "host-a"\n' + config)
    return Aggregator(cfg, telemetry, clock=clock), clock, telemetry


def by_name(result: FlushResult) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in result.series:
        assert s.metric not in out, f"duplicate series {s.metric}"
        out[s.metric] = s
    return out


def test_counter_is_rate_of_sum_over_interval_with_sample_rates() -> None:
    agg, clock, _ = make()
    agg.add("req", "c", 1, "a:1")
    agg.add("req", "c", 3, "a:1", rate=0.5)  # counts 6
    agg.add("req", "c", 2, "a:1", rate=0.999999)  # counts 2.000002
    clock.now = T0 + 11
    series = by_name(agg.flush(clock.now))["req"]
    assert series.type == RATE and series.interval == 10 and series.host == "host-a"
    assert series.points == [(int(T0), pytest.approx((1 + 6 + 2 / 0.999999) / 10))]


def test_gauge_keeps_last_value_and_ignores_rate() -> None:
    agg, clock, _ = make()
    agg.add("depth", "g", 42, rate=0.1)
    agg.add("depth", "g", 43.5, rate=0.1)
    clock.now = T0 + 10
    series = by_name(agg.flush(clock.now))["depth"]
    assert (series.type, series.points) == (GAUGE, [(int(T0), 43.5)])


def test_set_counts_distinct_members() -> None:
    agg, clock, _ = make()
    for member in ("u1", "u2", "u1", "u3", "u2"):
        agg.add("users", "s", member)
    clock.now = T0 + 10
    assert by_name(agg.flush(clock.now))["users"].points == [(int(T0), 3.0)]


@pytest.mark.parametrize("mtype", ["h", "ms"])
def test_histogram_aggregates_match_the_agent(mtype: str) -> None:
    agg, clock, _ = make()
    for v in (3, 1, 2):
        agg.add("lat", mtype, v)
    agg.add("lat", mtype, 4, rate=0.5)  # weight int(1/0.5) = 2
    for v in range(1, 101):
        agg.add("big", mtype, v)
    clock.now = T0 + 10
    out = by_name(agg.flush(clock.now))
    # weights: 1,2,3 once and 4 twice -> count 5, sum 14
    assert {name: s.points[0][1] for name, s in out.items() if name.startswith("lat.")} == {
        "lat.max": 4,
        "lat.median": 3,  # first value whose cumulative weight exceeds (5-1)//2 = 2
        "lat.avg": 2.8,
        "lat.count": 0.5,  # 5 per 10 s
        "lat.95percentile": 4,  # exceeds (95*5-1)//100 = 4
    }
    assert {n: s.type for n, s in out.items() if n.startswith("lat.")} == {
        "lat.max": GAUGE, "lat.median": GAUGE, "lat.avg": GAUGE, "lat.count": RATE, "lat.95percentile": GAUGE}
    assert out["big.median"].points[0][1] == 50  # target 49: the 50th value
    assert out["big.95percentile"].points[0][1] == 95  # target (9500-1)//100 = 94: the 95th value
    assert out["big.avg"].points[0][1] == 50.5


def test_distribution_is_a_sketch_per_bucket() -> None:
    agg, clock, _ = make()
    for v in (1.0, 2.0, 2.0, 1000.0):
        agg.add("llm.request.duration", "d", v, "service:x,env:y,model:gpt-4o")
    agg.add("llm.request.duration", "d", math.nan, "service:x,env:y,model:gpt-4o")
    clock.now = T0 + 10
    result = agg.flush(clock.now)
    assert result.series == []
    [ss] = result.sketches
    assert (ss.metric, ss.host, ss.tags) == ("llm.request.duration", "host-a", ("env:y", "model:gpt-4o", "service:x"))
    [(ts, sk)] = ss.points
    assert ts == int(T0) and (sk.cnt, sk.min, sk.max, sk.sum) == (4, 1.0, 1000.0, 1005.0)
    assert sk.cols() == ([key(1.0), key(2.0), key(1000.0)], [1, 2, 1])


def test_tag_order_and_duplicates_make_one_context() -> None:
    agg, clock, _ = make()
    agg.add("m", "c", 1, "b:2,a:1")
    agg.add("m", "c", 1, "a:1,b:2,a:1")
    agg.add("m", "c", 1, "A:1,B:2")
    assert len(agg) == 1
    clock.now = T0 + 10
    [series] = agg.flush(clock.now).series
    assert series.tags == ("a:1", "b:2") and series.points[0][1] == pytest.approx(0.3)


def test_default_tags_are_added_when_missing() -> None:
    agg, clock, _ = make('env = "prod"\nservice = "svc"\nversion = "1.0"\ntags = ["team:llm", "region:eu"]\n')
    agg.add("a", "g", 1, "")
    agg.add("b", "g", 1, "env:staging,team:core")
    agg.add("c", "g", 1, "", host="other-host")
    clock.now = T0 + 10
    out = by_name(agg.flush(clock.now))
    assert out["a"].tags == ("env:prod", "region:eu", "service:svc", "team:llm", "version:1.0")
    assert out["b"].tags == ("env:staging", "region:eu", "service:svc", "team:core", "version:1.0")
    assert (out["a"].host, out["c"].host) == ("host-a", "other-host")


def test_buckets_follow_arrival_time_and_flush_only_closed_ones() -> None:
    agg, clock, _ = make()
    agg.add("g", "g", 1)
    clock.now = T0 + 13
    agg.add("g", "g", 2)
    clock.now = T0 + 15
    assert by_name(agg.flush(clock.now))["g"].points == [(int(T0), 1.0)]  # bucket T0+10 still open
    clock.now = T0 + 25
    agg.add("g", "g", 3)  # lands in T0+20, flushed later
    clock.now = T0 + 26
    assert by_name(agg.flush(clock.now))["g"].points == [(int(T0) + 10, 2.0)]
    clock.now = T0 + 31
    assert by_name(agg.flush(clock.now))["g"].points == [(int(T0) + 20, 3.0)]


def test_late_flush_ships_every_closed_bucket_in_one_series() -> None:
    agg, clock, _ = make()
    agg.add("c", "c", 10)
    clock.now = T0 + 12
    agg.add("c", "c", 20)
    clock.now = T0 + 35
    # like the Agent, zeros go only into buckets that exist (T0+20 had no sample at all)
    assert by_name(agg.flush(clock.now))["c"].points == [(int(T0), 1.0), (int(T0) + 10, 2.0)]


def test_counters_ship_zeros_for_300s_then_expire() -> None:
    agg, clock, _ = make()
    agg.add("c", "c", 5)
    agg.add("g", "g", 5)
    shipped = {}
    for step in range(1, 36):
        clock.now = T0 + 10 * step + 1
        for s in agg.flush(clock.now).series:
            for ts, value in s.points:
                shipped[(s.metric, ts - int(T0))] = value
        if step == 4:
            assert len(agg) == 1  # the gauge context expired (20 s unseen), the counter lives on
    counter_buckets = sorted(b for (name, b) in shipped if name == "c")
    assert counter_buckets == list(range(0, 301, 10))  # zeros while last seen + 300 s > bucket start
    assert shipped[("c", 0)] == 0.5 and all(shipped[("c", b)] == 0.0 for b in range(10, 301, 10))
    assert [b for (name, b) in shipped if name == "g"] == [0]
    assert len(agg) == 0  # counter contexts expire after 20 + 300 s unseen


def test_zero_for_a_counter_when_nothing_else_was_sampled() -> None:
    agg, clock, _ = make()
    agg.add("c", "c", 5)
    clock.now = T0 + 11
    agg.flush(clock.now)
    clock.now = T0 + 21  # no sample at all: the Agent still makes the bucket ending at the cutoff
    assert by_name(agg.flush(clock.now))["c"].points == [(int(T0) + 10, 0.0)]
    assert agg.flush(clock.now).series == []  # not twice for the same cutoff


def test_context_comes_back_after_expiry() -> None:
    agg, clock, _ = make()
    agg.add("g", "g", 1, "k:v")
    clock.now = T0 + 100
    agg.flush(clock.now)
    assert len(agg) == 0
    agg.add("g", "g", 2, "k:v")
    clock.now = T0 + 111
    assert by_name(agg.flush(clock.now))["g"].points == [(int(T0) + 100, 2.0)]


def test_timestamped_samples_skip_aggregation() -> None:
    agg, clock, telemetry = make()
    agg.add("g", "g", 1, "k:v", timestamp=T0 - 300)
    agg.add("g", "g", 2, "k:v", timestamp=T0 - 290)
    agg.add("c", "c", 50, timestamp=T0 - 300.7)
    agg.add("h", "h", 1, timestamp=T0 - 300)
    assert len(agg) == 0
    result = agg.flush(clock.now)  # shipped at the next flush whatever its buckets
    got = sorted((s.metric, s.type, s.points[0]) for s in result.series)
    assert got == [("c", RATE, (int(T0) - 301, 5.0)), ("g", GAUGE, (int(T0) - 300, 1.0)),
                   ("g", GAUGE, (int(T0) - 290, 2.0))]
    assert telemetry.component("aggregator").get("discarded", reason="timestamp_unsupported_type") == 1
    clock.now = T0 + 40
    assert agg.flush(clock.now).series == []  # no zeros after a timestamped count


def test_bad_input_is_counted_not_raised() -> None:
    agg, clock, telemetry = make()
    agg.add("c", "c", "not-a-number")
    agg.add("g", "g", "nope")
    agg.add("x", "zz", 1)
    agg.add("", "c", 1)
    agg.add("g2", "g", math.inf)
    agg.add("h", "h", math.nan)
    agg.add("h", "h", 2)
    clock.now = T0 + 10
    out = by_name(agg.flush(clock.now))
    comp = telemetry.component("aggregator")
    assert comp.get("discarded", reason="bad_value") == 2
    assert comp.get("discarded", reason="bad_type") == 1 and comp.get("discarded", reason="no_name") == 1
    assert comp.get("discarded", reason="non_finite") == 2  # the gauge's point and the histogram's NaN
    assert "g2" not in out and out["h.max"].points[0][1] == 2


def test_samples_added_together_aggregate_as_one_by_one() -> None:
    """``add_many`` (a DogStatsD datagram's lines, one clock read) and ``add`` of each sample: the same
    series, sketches and drops, a bad sample in the middle costing only itself."""
    samples = [("req", "c", 1.0, "a:1", 1.0, None), ("req", "c", 3.0, "a:1", 0.5, None),
               ("depth", "g", 4.0, "", 1.0, "h2"), ("depth", "g", "nope", "", 1.0, "h2"),
               ("depth", "g", 5.0, "", 1.0, "h2"), ("x", "zz", 1.0, "", 1.0, None), ("", "c", 1.0, "", 1.0, None),
               ("users", "s", "u1", "", 1.0, None), ("users", "s", "u2", "", 1.0, None),
               ("lat", "h", 2.0, "m:a", 1.0, None), ("lat", "h", 4.0, "m:a", 0.25, None),
               ("lat", "h", math.nan, "m:a", 1.0, None), ("tok", "d", 10.0, "", 1.0, None), ("tok", "d", 12.0, "", 0.5, None)]
    one_by_one, clock_a, tel_a = make()
    together, clock_b, tel_b = make()
    for sample in samples:
        one_by_one.add(*sample)
    together.add_many(samples)
    clock_a.now = clock_b.now = T0 + 10
    a, b = one_by_one.flush(clock_a.now), together.flush(clock_b.now)
    assert sorted(map(repr, a.series)) == sorted(map(repr, b.series)) and len(a.series) == 8
    assert [(s.metric, s.points[0][1].to_plain()) for s in a.sketches] == \
        [(s.metric, s.points[0][1].to_plain()) for s in b.sketches]
    assert tel_a.component("aggregator").counters == tel_b.component("aggregator").counters
    assert by_name(b)["depth"].points == [(int(T0), 5.0)]


def test_call_samples_aggregate_as_add_many() -> None:
    """``add_calls`` (the LLM stage's (name, mtype, value, tags) samples, as tuples or as the lists a worker's
    msgpack frame makes of them) and ``add_many`` of the same at rate 1 from the agent's host: the same
    series, sketches and drops."""
    tags = "service:chat,model:gpt-4o,env:prod"
    calls = [("llm.requests", "c", 1, tags), ("llm.errors", "c", 1, tags), ("llm.request.duration", "d", 0.25, tags),
             ("llm.ratelimit.requests.remaining", "g", 499.0, tags), ("llm.tokens.input", "c", 18, tags),
             ("llm.tokens.total", "c", "25", tags), ("llm.request.duration", "d", math.nan, tags),
             ("llm.requests", "c", 1, "service:chat"), ("llm.request.duration", "d", 1.5, tags),
             ("llm.cost.usd", "c", 0.00012, tags), ("llm.ratelimit.requests.remaining", "g", 498.0, tags),
             ("", "c", 1, tags), ("llm.x", "zz", 1, tags)]
    as_lists = msgspec.msgpack.decode(msgspec.msgpack.encode(calls))
    assert isinstance(as_lists[0], list)
    results = []
    for added in (lambda agg: agg.add_many([(*sample, 1.0, None) for sample in calls]),
                  lambda agg: agg.add_calls(calls), lambda agg: agg.add_calls(as_lists)):
        agg, clock, telemetry = make()
        added(agg)
        clock.now = T0 + 10
        out = agg.flush(clock.now)
        results.append((sorted(map(repr, out.series)),
                        [(s.metric, s.tags, s.points[0][1].to_plain()) for s in out.sketches],
                        telemetry.component("aggregator").counters))
    assert results[0] == results[1] == results[2]
    series, sketches, counters = results[0]
    # 7: the bad "25" still made its counter context, which ships a zero as an idle counter does
    assert len(series) == 7 and len(sketches) == 1 and sketches[0][2][0] == 2  # two finite durations
    discarded = {dict(labels)["reason"]: n for (name, labels), n in counters.items() if name == "discarded"}
    assert discarded == {"bad_value": 1, "no_name": 1, "bad_type": 1, "non_finite": 1}


def test_telemetry_gauges() -> None:
    agg, clock, telemetry = make()
    for i in range(5):
        agg.add(f"m{i}", "c", 1)
    agg.add("m0", "c", 1)
    clock.now = T0 + 10
    agg.flush(clock.now)
    gauges = telemetry.snapshot()["components"]["aggregator"]["gauges"]
    assert gauges == {"contexts": 5, "samples": 6}


def test_no_series_type_count_is_produced_by_dogstatsd() -> None:
    agg, clock, _ = make()
    for mtype in ("c", "g", "s", "h", "ms"):
        agg.add("m" + mtype, mtype, 1 if mtype != "s" else "x")
    clock.now = T0 + 10
    assert COUNT not in {s.type for s in agg.flush(clock.now).series}


def test_memory_per_context_stays_small() -> None:
    """100k counter contexts (the budget is RSS < 100 MB for the whole agent): bound the bytes per context,
    including the names and tag strings the caller hands over, so a regression in the layout fails."""
    agg, _, _ = make('env = "prod"\nservice = "svc"\n')
    names = [f"llm.tokens.{i % 200}" for i in range(200)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            agg.add(names[i % 200], "c", 1.0, f"env:staging,service:chatbot,model:gpt-4o-mini,user:u{i}")
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(agg) == 100_000
    assert used / 100_000 < 650, f"{used / 100_000:.0f} bytes per context"


def test_final_flush_ships_the_open_bucket() -> None:
    agg, clock, _ = make()
    agg.add("g", "g", 1)
    agg.add("d", "d", 1.0)
    clock.now = T0 + 5
    assert agg.flush(clock.now).series == []
    result = agg.flush(clock.now, final=True)
    assert by_name(result)["g"].points == [(int(T0), 1.0)] and len(result.sketches) == 1
    agg.add("g", "g", 2)  # still in the same bucket: kept and shipped by the next flush
    clock.now = T0 + 10
    assert by_name(agg.flush(clock.now))["g"].points == [(int(T0), 2.0)]


def _counts_at_an_intake(shipped: list) -> dict[tuple, float]:
    """What an intake keeps: one point per (metric, tags, host, timestamp), the last one sent; and the
    count each point stands for (a RATE point is value x interval)."""
    kept: dict[tuple, float] = {}
    for s in shipped:
        for ts, value in s.points:
            kept[(s.metric, s.tags, s.host, ts)] = value * s.interval if s.type == RATE else value
    return kept


@pytest.mark.parametrize(("old", "new"), [(10, 15), (10, 3), (1, 3), (3, 10), (7, 10)])
def test_an_interval_change_by_reload_never_ships_a_bucket_twice_nor_loses_counts(old, new) -> None:
    """Counters sampled every second across a reload that changes flush_interval_secs; flushed when the
    aggregator says each bucket closes (as the agent's flush loop does)."""
    agg, clock, _ = make(f"flush_interval_secs = {old}\n")
    clock.now = T0 + 0.5
    shipped, sent, flushes = [], 0, set()
    next_flush = agg.next_flush_at(clock.now)
    for step in range(80):
        if step == 23:  # mid-bucket for every pair above
            agg.reload(load_config_text(f'[agent]\nhostname = "host-a"\nflush_interval_secs = {new}\n'))
            next_flush = min(next_flush, agg.next_flush_at(clock.now))
        agg.add("req", "c", 1.0, "a:1")
        agg.add("hist", "h", 2.0)
        sent += 1
        clock.now += 1.0
        if clock.now >= next_flush:
            result = agg.flush(clock.now)
            shipped += result.series
            flushes.add(int(clock.now))
            next_flush = agg.next_flush_at(clock.now)
    shipped += agg.flush(clock.now, final=True).series
    points = [(s.metric, ts) for s in shipped for ts, _ in s.points]
    assert len(points) == len(set(points)), "a bucket start was shipped twice for one series"
    kept = _counts_at_an_intake(shipped)
    assert sum(v for k, v in kept.items() if k[0] == "req") == pytest.approx(sent)
    assert sum(v for k, v in kept.items() if k[0] == "hist.count") == pytest.approx(sent)
    # after the change, points are `new` seconds apart and carry interval = new
    late = sorted(ts for s in shipped if s.metric == "req" for ts, _ in s.points if ts > T0 + 40)
    assert {b - a for a, b in zip(late, late[1:])} == {new}
    assert {s.interval for s in shipped if s.metric == "req" and s.points[0][0] > T0 + 40} == {new}


def test_next_flush_at_is_the_end_of_the_open_bucket() -> None:
    agg, clock, _ = make()
    assert agg.next_flush_at(T0 + 0.2) == T0 + 10
    assert agg.next_flush_at(T0 + 9.99) == T0 + 10
    assert agg.next_flush_at(T0 + 10) == T0 + 20
    agg.add("c", "c", 1)
    clock.now = agg.next_flush_at(clock.now) + 0.05  # where the flush loop wakes: exactly the closed bucket
    assert by_name(agg.flush(clock.now))["c"].points == [(int(T0), 0.1)]


def test_context_cap_drops_new_contexts_and_keeps_existing_ones_exact() -> None:
    agg, clock, telemetry = make("max_metric_contexts = 3\n")
    for i in range(3):
        agg.add(f"m{i}", "c", 1, "a:1,k:v")
    for _ in range(4):
        agg.add("m0", "c", 2, "a:1,k:v")  # existing: aggregated as ever
        agg.add("m1", "c", 1, "k:v,a:1")  # a new raw key for an existing context (tag order): aggregated
        agg.add("over", "c", 5, "k:v")  # would be a fourth context: dropped
        agg.add("m2", "g", 7, "k:v")  # a new type is a new context: dropped too
    agg.add("ts", "c", 1, "k:v", timestamp=T0)  # timestamped samples are no contexts: not capped
    assert len(agg) == 3
    comp = telemetry.component("aggregator")
    assert comp.get("discarded", reason="context_limit") == 8
    assert comp.info["max_metric_contexts"] == 3
    clock.now = T0 + 10
    out = by_name(agg.flush(clock.now))
    assert out["m0"].points == [(int(T0), (1 + 4 * 2) / 10)]
    assert out["m1"].points == [(int(T0), (1 + 4) / 10)]
    assert set(out) == {"m0", "m1", "m2", "ts"}
    # the cap is on live contexts: once some expire, new ones are taken again
    clock.now = T0 + 400
    agg.flush(clock.now)
    agg.add("over", "c", 5, "k:v")
    assert len(agg) == 1


def test_final_flushes_mid_bucket_keep_every_count_at_an_intake() -> None:
    """On-demand flushes (the end of each Lambda invocation) ship the open bucket so far; what an intake
    keeps (the last point per series and timestamp) must still add up to every sample, for each type."""
    agg, clock, tel = make()
    shipped, sketches = [], []
    for step in range(25):  # 2.5 buckets, a final flush after every 3 samples
        agg.add("req", "c", 1.0, "a:1")
        agg.add("lat", "h", float(step))
        agg.add("users", "s", f"u{step % 4}")
        agg.add("dist", "d", 1.0)
        clock.now += 0.4
        if step % 3 == 2:
            result = agg.flush(clock.now, final=True)
            shipped += result.series
            sketches += result.sketches
        if clock.now >= agg.next_flush_at(clock.now - 0.4):
            result = agg.flush(clock.now)
            shipped += result.series
            sketches += result.sketches
    clock.now += 20
    result = agg.flush(clock.now)
    shipped += result.series
    sketches += result.sketches
    kept = _counts_at_an_intake(shipped)
    assert sum(v for k, v in kept.items() if k[0] == "req") == pytest.approx(25)
    assert sum(v for k, v in kept.items() if k[0] == "lat.count") == pytest.approx(25)
    # the last value kept for a bucket is the whole bucket's: max over all of its samples
    maxima = {k[3]: v for k, v in kept.items() if k[0] == "lat.max"}
    assert maxima == {int(T0): 22.0, int(T0) + 10: 24.0}  # samples at T0 + 1 + 0.4 * step
    # distributions ship deltas (sketches merge at the intake): every sample once
    assert sum(sketch.cnt for s in sketches for _, sketch in s.points) == 25
    assert tel.component("aggregator").gauges["samples"]() == 100  # each sample counted once


def test_a_final_flush_repeats_an_open_bucket_only_when_it_changed() -> None:
    agg, clock, _ = make()
    agg.add("req", "c", 2.0)
    assert by_name(agg.flush(clock.now, final=True))["req"].points == [(int(T0), 0.2)]
    assert agg.flush(clock.now, final=True).series == []  # nothing new: an intake already has it
    agg.add("req", "c", 1.0)
    assert by_name(agg.flush(clock.now, final=True))["req"].points == [(int(T0), pytest.approx(0.3))]
