"""The tap hub: nothing while nobody listens; a subscriber that cannot keep up is skipped, never waited for."""

from __future__ import annotations

from llmship.tap import QUEUE_ITEMS, Tap, _Subscriber


def test_items_beyond_the_rate_or_the_queue_are_skipped_and_counted():
    tap = Tap()
    assert not tap.active and not tap.wants("logs")
    sub = _Subscriber({"logs"}, "chat*", "", rate=1e9)
    tap._subscribers.add(sub)
    tap.active = True
    for i in range(QUEUE_ITEMS + 5):
        tap.offer("logs", {"message": str(i), "service": "chatbot"})
    tap.offer("logs", {"message": "x", "service": "other"})  # filtered out: neither sent nor skipped
    tap.offer("spans", ([], None))  # a kind it did not ask for
    assert sub.queue.qsize() == QUEUE_ITEMS and sub.skipped == 5

    slow = _Subscriber({"logs"}, "", "", rate=2)
    tap._subscribers = {slow}
    for _ in range(10):
        tap.offer("logs", {"message": "m"})
    assert slow.queue.qsize() == 2 and slow.skipped == 8  # the bucket holds a second's worth
