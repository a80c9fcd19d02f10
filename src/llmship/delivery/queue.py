"""A FIFO of payloads bounded in bytes, and what to do when it is full.

Bytes, not items: one payload may carry 1,000 log records or a single span, so an item count bounds
nothing. The bound is soft by at most one payload: a push is accepted while the queue is under its
budget, so a payload larger than the whole budget still gets through an empty queue instead of being
rejected forever.
"""

from __future__ import annotations

import enum
from collections import deque

from llmship.delivery.payload import Payload


class WhenFull(enum.Enum):
    SPILL = "spill"  # write the newest payloads to the disk spool (needs [delivery] spool_dir)
    DROP_NEWEST = "drop_newest"  # refuse the newest payload and count it

    @classmethod
    def from_config(cls, when_full: str, spool_dir: str) -> WhenFull:
        """"" means spill when a spool is configured, else drop newest (config.py validates the rest)."""
        if when_full:
            return cls(when_full)
        return cls.SPILL if spool_dir else cls.DROP_NEWEST


class ByteQueue:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: deque[Payload] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)

    @property
    def full(self) -> bool:
        return self.bytes >= self.max_bytes

    def push(self, payload: Payload) -> bool:
        """Append unless full; False means the caller applies its WhenFull policy."""
        if self.full:
            return False
        self._items.append(payload)
        self.bytes += len(payload.body)
        return True

    def push_front(self, payloads: list[Payload]) -> None:
        """Put back payloads taken from the head (in their order), whatever the budget: they were
        already accounted for in memory, and refusing them now would lose them."""
        for payload in reversed(payloads):
            self._items.appendleft(payload)
            self.bytes += len(payload.body)

    def peek(self) -> Payload | None:
        return self._items[0] if self._items else None

    def pop(self) -> Payload | None:
        if not self._items:
            return None
        payload = self._items.popleft()
        self.bytes -= len(payload.body)
        return payload

    def take_all(self) -> list[Payload]:
        items = list(self._items)
        self._items.clear()
        self.bytes = 0
        return items
