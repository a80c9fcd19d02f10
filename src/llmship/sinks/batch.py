"""Batching of pre-encoded items into payloads within a destination's limits.

A sink serializes each item once (``add(item_bytes)``), and the batcher cuts a payload when the next
item would cross ``max_items`` or ``max_bytes`` (uncompressed), or when the oldest item has waited
``max_age_secs``. ``encode(items)`` turns a list of serialized items into a Payload (framing + compression).
An item larger than ``max_bytes`` on its own must be reduced by the sink before ``add``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from llmship.delivery.payload import Payload
from llmship.telemetry import Component


class Batcher:
    def __init__(
        self,
        encode: Callable[[list[bytes]], Payload],
        submit: Callable[[Payload], object],
        *,
        max_items: int,
        max_bytes: int,
        max_age_secs: float,
        telemetry: Component,
        framing_bytes: int = 2,  # "[" and "]" for a JSON array; per-item separators are counted below
    ) -> None:
        self._encode = encode
        self._submit = submit
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.max_age_secs = max_age_secs
        self._framing = framing_bytes
        self._tel = telemetry
        self._items: list[bytes] = []
        self._bytes = framing_bytes
        self._oldest = 0.0
        self._task: asyncio.Task | None = None
        telemetry.gauge("batch_items", lambda: len(self._items))

    def add(self, item: bytes) -> None:
        size = len(item) + 1  # the separator
        if size + self._framing > self.max_bytes:
            # The sink's job is to reduce items first; never send what the intake will reject.
            self._tel.inc("dropped", reason="item_too_large")
            return
        if self._items and (len(self._items) >= self.max_items or self._bytes + size > self.max_bytes):
            self.flush()
        if not self._items:
            self._oldest = time.monotonic()
        self._items.append(item)
        self._bytes += size

    def __len__(self) -> int:
        return len(self._items)

    def flush(self) -> None:
        if not self._items:
            return
        items, self._items, self._bytes = self._items, [], self._framing
        self._submit(self._encode(items))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="batcher")

    async def _run(self) -> None:
        tick = min(0.25, self.max_age_secs / 4)
        while True:
            await asyncio.sleep(tick)
            if self._items and time.monotonic() - self._oldest >= self.max_age_secs:
                self.flush()

    async def shutdown(self, deadline: float | None = None) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.flush()


class BatchedSink:
    """The lifecycle of a sink whose items all go through one Batcher, ``self._batcher``."""

    _batcher: Batcher

    async def start(self) -> None:
        self._batcher.start()

    async def shutdown(self, deadline: float) -> None:
        await self._batcher.shutdown(deadline)

    def flush(self) -> None:
        self._batcher.flush()
