"""The agent's flush loop wakes as each bucket closes (the aggregator's bucket ends), so a closed bucket
ships at once instead of waiting up to a flush interval for a tick; it follows a reload's new interval."""

from __future__ import annotations

import asyncio

from llmship.agent import _FLUSH_AFTER_BUCKET_END_SECS, Agent
from llmship.config import load_config_text

T0 = 1_700_000_000  # a multiple of 10, 15 and 3


def config(interval: int) -> str:
    return (f'[agent]\nhostname = "h"\nflush_interval_secs = {interval}\n'
            '[sources.dogstatsd]\nudp = ""\n[sources.traces]\nlisten = ""\n'
            '[sources.logs]\ntcp = ""\nhttp = ""\n[status]\nlisten = ""\n')


async def test_the_flush_loop_wakes_at_each_bucket_end_and_each_bucket_ships_once():
    agent = Agent(load_config_text(config(10)))
    aggregator = agent.topology.aggregator
    now = [T0 + 3.7]  # started mid-bucket, as an agent does
    clock = lambda: now[0]  # noqa: E731
    agent._clock = aggregator._clock = clock
    wakes, shipped = [], []
    real_sleep = asyncio.sleep

    async def sleep(secs: float) -> None:
        now[0] += secs
        await real_sleep(0)

    async def flush_metrics(final: bool = False) -> None:
        wakes.append(round(now[0], 3))
        shipped.extend((s.metric, ts) for s in aggregator.flush(clock()).series for ts, _ in s.points)
        aggregator.add("req", "c", 1.0)  # a sample in every bucket
        if len(wakes) == 2:  # a reload to 15 s, mid-bucket [T0+20, T0+30)
            now[0] += 2
            aggregator.reload(load_config_text(config(15)))

    agent._sleep = sleep
    agent._flush_metrics = flush_metrics
    aggregator.add("req", "c", 1.0)
    task = asyncio.create_task(agent._flush_loop())
    while len(wakes) < 6:
        await real_sleep(0)
    task.cancel()
    m = _FLUSH_AFTER_BUCKET_END_SECS
    # 10 s buckets until the end of the one open at the reload (T0+30), then 15 s buckets from there
    assert wakes == [T0 + 10 + m, T0 + 20 + m, T0 + 30 + m, T0 + 45 + m, T0 + 60 + m, T0 + 75 + m]
    assert shipped == [("req", T0 + b) for b in (0, 10, 20, 30, 45, 60)]
