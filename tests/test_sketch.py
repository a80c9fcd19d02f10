from __future__ import annotations

import math
import random

from llmship import sketch
from llmship.sketch import BIAS, GAMMA, INF_KEY, MAX_BIN_WIDTH, MAX_KEY, NORM_MIN, Sketch, key, lower_bound, quantile


def test_agent_default_parameters() -> None:
    # pkg/quantile/config.go: eps 1/128, min 1e-9, 4096 bins; key 1 is the first power of gamma <= 1e-9
    assert GAMMA == 1 + 2 / 128
    assert sketch.EMIN == -1337 and BIAS == 1338
    assert sketch.BIN_LIMIT == 4096
    assert NORM_MIN <= 1e-9 < NORM_MIN * GAMMA


def test_keys_match_the_agents_tests() -> None:
    # config_test.go "norm/key" cases
    assert key(0.0) == 0 and key(-0.0) == 0
    assert key(math.nextafter(NORM_MIN, 0)) == 0
    assert key(NORM_MIN) == 1
    assert key(math.nextafter(NORM_MIN, math.inf)) == 1
    assert key(NORM_MIN * GAMMA) == 2
    assert key(lower_bound(MAX_KEY)) == MAX_KEY
    assert lower_bound(INF_KEY) == math.inf and lower_bound(-INF_KEY) == -math.inf
    # keys visible in agent_test.go TestAgentInterpolation: 10 -> 1487, -10 -> -1487, 1e3 -> 1784
    assert key(10.0) == 1487 and key(-10.0) == -1487 and key(1e3) == 1784
    assert key(1e250) == INF_KEY and key(-1e250) == -INF_KEY


def test_key_of_a_keys_lower_bound_is_that_key() -> None:
    # config_test.go "key(f64(k)) == k": log() is inexact near 1, where a neighbour key is tolerated
    for k in range(-MAX_KEY, MAX_KEY + 1):
        v = lower_bound(k)
        if key(v) == k:
            continue
        knext, kprev = key(math.nextafter(v, math.inf)), key(math.nextafter(v, -math.inf))
        assert knext - kprev == 1 and 0.5 <= abs(v) <= 2, (k, v)


def test_every_value_is_within_relative_accuracy_of_its_bin() -> None:
    rng = random.Random(7)
    for _ in range(20000):
        v = math.exp(rng.uniform(-20, 40)) * rng.choice((1, -1))
        assert abs(lower_bound(key(v)) - v) <= abs(v) / 128


def test_quantiles_within_one_128th_of_exact() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(3, 2) for _ in range(5000)]
    sk = Sketch()
    for v in values:
        sk.insert(v)
    keys, counts = sk.cols()
    exact = sorted(values)
    for q in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99):
        rank = round(q * (len(values) - 1))
        seen = 0
        for k, n in zip(keys, counts):
            seen += n
            if seen > rank:
                break
        assert abs(lower_bound(k) - exact[rank]) <= exact[rank] / 128, q


def test_agent_quantile_cases() -> None:
    # sparse_test.go TestQuantile on arange(101) and TestMerge's symmetric -50..50
    sk = Sketch()
    for v in range(101):
        sk.insert(float(v))
    keys, counts = sk.cols()
    assert quantile(keys, counts, 0, sk.min, sk.max) == 0
    assert quantile(keys, counts, 0.01, sk.min, sk.max) == lower_bound(key(1))
    assert quantile(keys, counts, 0.98, sk.min, sk.max) == lower_bound(key(98))
    sym = Sketch()
    for v in range(-50, 51):
        sym.insert(float(v))
    keys, counts = sym.cols()
    assert quantile(keys, counts, 0.5, sym.min, sym.max) == 0
    assert quantile(keys, counts, 0.99, sym.min, sym.max) == -quantile(keys, counts, 0.01, sym.min, sym.max)


def test_summary_and_sample_rate_weighting() -> None:
    sk = Sketch()
    assert sk.insert(10.0, 0.25)  # counts int(1/0.25) = 4 times, as quantile.Agent.Insert
    assert sk.insert(2.0)
    assert sk.insert(30.0, 0.3)  # 1/0.3 = 3.33: counts 3, sums 3.33 * 30
    assert not sk.insert(math.nan) and not sk.insert(math.inf)  # ignored like the Agent's sketchMap
    assert sk.insert(5.0, 7.0)  # a rate outside (0, 1] counts once
    assert sk.cnt == 4 + 1 + 3 + 1
    assert math.isclose(sk.sum, 40 + 2 + 30 / 0.3 + 5)
    assert (sk.min, sk.max) == (2.0, 30.0)
    keys, counts = sk.cols()
    assert dict(zip(keys, counts)) == {key(2.0): 1, key(5.0): 1, key(10.0): 4, key(30.0): 3}
    assert keys == sorted(keys)


def test_counts_over_uint16_are_split_like_append_safe() -> None:
    sk = Sketch()
    for _ in range(2 * MAX_BIN_WIDTH + 10):
        sk.insert(3.0)
    assert sk.cols() == ([key(3.0)] * 3, [10, MAX_BIN_WIDTH, MAX_BIN_WIDTH])


def test_bin_limit_collapses_the_lowest_bins() -> None:
    sk = Sketch()
    values = [GAMMA ** (i - 1000) for i in range(5000)]  # 5000 distinct keys
    for v in values:
        sk.insert(v)
    keys, counts = sk.cols()
    assert len(keys) == 4096
    assert sum(counts) == 5000
    assert keys[-1] == key(values[-1])
    assert counts[0] == 5000 - 4095  # everything below the 4096 highest keys landed in the lowest kept bin


def test_plain_data_makes_the_same_sketch_in_another_process() -> None:
    """What a worker hands the shipping plane (workers.py, frame code 11): msgpack-able, and the sketch
    made from it ships what the original would."""
    import msgspec

    original = Sketch()
    for v in [0.5, 3.0, 3.0, -2.0, 1e6, *range(600)]:  # more than the 512 buffered keys, and a few bins
        original.insert(v)
    original.insert_interpolate(10.0, 100.0, 40)
    plain = msgspec.msgpack.decode(msgspec.msgpack.encode(original.to_plain()))
    copy = Sketch.from_plain(*plain)
    assert (copy.cnt, copy.min, copy.max, copy.sum, copy.avg) == (original.cnt, original.min, original.max,
                                                                   original.sum, original.avg)
    assert copy.cols() == original.cols() and sum(copy.cols()[1]) == original.cnt == 645


def test_insert_gives_what_key_and_the_summary_give_across_the_whole_range():
    """``insert`` writes ``key`` and the summary's arithmetic out for speed: the same bins and summary."""
    rnd = random.Random(3)
    values = [0.0, -0.0, 1e-12, -1e-12, 1e-9, 5e300, -5e300, 1.0, 2.5, -7.25, 3]
    values += [rnd.choice([-1, 1]) * 10 ** rnd.uniform(-12, 12) for _ in range(5000)]
    fast, reference = Sketch(), Sketch()
    for v in values:
        assert fast.insert(v)
        reference._merge_summary(v, 1, v)
        reference.buf.append(key(v))
        if len(reference.buf) >= 512:
            reference._merge_buffer()
    fast._merge_buffer()
    reference._merge_buffer()
    assert fast.bins == reference.bins
    assert (fast.cnt, fast.min, fast.max, fast.sum, fast.avg) == (reference.cnt, reference.min, reference.max,
                                                                  reference.sum, reference.avg)
    assert not fast.insert(float("nan")) and not fast.insert(float("inf")) and fast.cnt == len(values)
