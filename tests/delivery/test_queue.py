"""The byte-bounded queue and the when-full policies."""

from __future__ import annotations

from llmship.config import load_config_text
from llmship.delivery import Delivery
from llmship.delivery.payload import Payload
from llmship.delivery.queue import ByteQueue, WhenFull
from llmship.delivery.transport import make_transport
from llmship.sinks.intakes import ROUTES
from llmship.telemetry import Telemetry


def payload(size: int, items: int = 1, kind: str = "logs") -> Payload:
    return Payload(kind=kind, route=ROUTES["logs"], body=b"x" * size, content_type="application/json",
                   content_encoding="identity", items=items)


def test_bounded_in_bytes_not_items():
    q = ByteQueue(max_bytes=1000)
    assert q.push(payload(400)) and q.push(payload(400))
    assert q.bytes == 800 and len(q) == 2 and not q.full
    assert q.push(payload(400))  # under budget when pushed: accepted (soft by at most one payload)
    assert q.full and q.bytes == 1200
    assert not q.push(payload(1))
    assert len(q) == 3


def test_fifo_and_push_front_restores_order_over_budget():
    q = ByteQueue(max_bytes=100)
    a, b, c = payload(60), payload(30), payload(50)
    q.push(a)
    q.push(b)
    q.push(c)
    taken = [q.pop(), q.pop()]
    assert taken == [a, b] and q.bytes == 50
    q.push_front(taken)  # always accepted: these were already in memory
    assert [q.pop(), q.pop(), q.pop(), q.pop()] == [a, b, c, None]
    assert q.bytes == 0


def test_take_all_empties():
    q = ByteQueue(max_bytes=100)
    q.push(payload(10))
    q.push(payload(20))
    assert len(q.take_all()) == 2 and q.bytes == 0 and q.peek() is None


def test_policy_defaults_follow_the_spool():
    assert WhenFull.from_config("", "/var/spool/llmship") is WhenFull.SPILL
    assert WhenFull.from_config("", "") is WhenFull.DROP_NEWEST
    assert WhenFull.from_config("drop_newest", "/var/spool/llmship") is WhenFull.DROP_NEWEST


def test_drop_newest_refuses_counts_and_reports_overload(tmp_path):
    cfg = load_config_text(f"""
[agent]
data_dir = "{tmp_path}"
[delivery]
queue_max_bytes = 1000
""")
    tel = Telemetry()
    delivery = Delivery(cfg, tel, make_transport)  # not started: nothing drains the queue
    assert not delivery.overloaded("logs")
    accepted = [delivery.submit(payload(300, items=2)) for _ in range(6)]
    assert accepted == [True, True, True, True, False, False]
    assert delivery.overloaded("logs") and not delivery.overloaded("series")
    comp = tel.component("delivery.logs")
    assert comp.get("discarded", reason="queue_full") == 4
    assert comp.get("received") == 8
    snap = tel.snapshot()["components"]["delivery.logs"]["gauges"]
    assert snap["queue_bytes"] == 1200 and snap["queue_items"] == 4


def test_spill_accepts_past_the_queue_into_a_bounded_spill_buffer(tmp_path):
    cfg = load_config_text(f"""
[delivery]
queue_max_bytes = 1000
spool_dir = "{tmp_path / 'spool'}"
""")
    tel = Telemetry()
    delivery = Delivery(cfg, tel, make_transport)
    results = [delivery.submit(payload(300)) for _ in range(8)]
    # 4 fill the queue (soft bound), 1 fills the spill buffer (a quarter of the budget), the rest are
    # refused until the flusher has written the spill buffer to disk.
    assert results == [True] * 5 + [False] * 3
    assert tel.component("delivery.logs").get("discarded", reason="spill_backlog") == 3
