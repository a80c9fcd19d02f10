"""The lifecycle every component shares (DESIGN.md, "Contracts"): the agent starts them, reloads them on
SIGHUP and shuts them down on SIGTERM through these methods only, so adding a component is adding it to
the topology. ``shutdown(deadline)`` is idempotent; ``reload(cfg)`` applies what can change live and says
(logs) what needs a restart."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from llmship.config import Config


@runtime_checkable
class Component(Protocol):
    async def start(self) -> None: ...

    async def shutdown(self, deadline: float) -> None: ...

    def reload(self, cfg: Config) -> None: ...


@runtime_checkable
class Source(Component, Protocol):
    """A listener and a wire decoder; it hands typed events to the emitter it was built with."""


@runtime_checkable
class Sink(Component, Protocol):
    """Encodes items for one destination and packs them (``flush`` submits what waits)."""

    def flush(self) -> None: ...
