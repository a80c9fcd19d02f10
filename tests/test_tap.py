"""The tap hub: nothing while nobody listens; a subscriber that cannot keep up is skipped, never waited for."""

from __future__ import annotations

from llmship.tap import QUEUE_ITEMS, RelayTap, Tap, _Subscriber


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


def test_a_workers_relay_sends_only_what_the_parents_taps_want_within_their_rate():
    sent = []
    relay = RelayTap(lambda kind, data: sent.append((kind, data)))
    relay.offer("logs", {"message": "m"})
    assert not relay.active and sent == []  # no tap: nothing crosses
    tap = Tap()
    tap._subscribers = {_Subscriber({"logs"}, "", "", rate=3), _Subscriber({"spans"}, "", "", rate=5)}
    relay.demand(*tap.demand())
    assert relay.active and relay.wants("spans") and not relay.wants("metrics")
    for _ in range(10):
        relay.offer("logs", {"message": "m", "service": "chatbot"})
    assert sent == [("logs", {"message": "m", "service": "chatbot"})] * 5  # the highest rate, a second's worth
    relay.demand([], 0.0)
    relay.offer("logs", {"message": "m"})
    assert not relay.active and len(sent) == 5
