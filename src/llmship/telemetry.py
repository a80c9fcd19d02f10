"""The agent's own counters: events and bytes received/sent/dropped per component, retries, depths.

Every component gets a ``Component`` handle and increments plain counters on it. Counters are keyed by
(name, labels); a snapshot feeds `llmship status`, the status endpoint and OpenMetrics. Increments are
dict updates with no locking: everything runs on the one event loop thread.

Conventional names (the status table and /metrics rely on them):
  events_received, bytes_received, events_sent, bytes_sent, requests_sent, retries,
  dropped{reason=...}, errors{reason=...}
and gauges registered as callables: queue_bytes, queue_items, spool_bytes, spool_files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

LabelKey = tuple[tuple[str, str], ...]


class Component:
    __slots__ = ("name", "counters", "gauges", "info")

    def __init__(self, name: str) -> None:
        self.name = name
        self.counters: dict[tuple[str, LabelKey], float] = {}
        self.gauges: dict[str, Callable[[], float]] = {}
        self.info: dict[str, Any] = {}  # free-form state: last_error, effective sample rates, ...

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())) if labels else ())
        self.counters[key] = self.counters.get(key, 0) + n

    def get(self, name: str, **labels: str) -> float:
        """A counter's value; with no labels given, the sum over all its label sets."""
        if labels:
            return self.counters.get((name, tuple(sorted(labels.items()))), 0)
        return sum(v for (n, _), v in self.counters.items() if n == name)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self.gauges[name] = read

    def set_info(self, key: str, value: Any) -> None:
        self.info[key] = value

    def error(self, reason: str, detail: str) -> None:
        """Count an error and remember it as the component's last error (shown by `llmship status`)."""
        self.inc("errors", reason=reason)
        self.info["last_error"] = {"reason": reason, "detail": detail[:500], "at": time.time()}


class Telemetry:
    def __init__(self) -> None:
        self.components: dict[str, Component] = {}
        self.started = time.time()

    def component(self, name: str) -> Component:
        comp = self.components.get(name)
        if comp is None:
            comp = self.components[name] = Component(name)
        return comp

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view: {"uptime_secs", "components": {name: {"counters": [...], "gauges", "info"}}}."""
        out: dict[str, Any] = {"uptime_secs": round(time.time() - self.started, 3), "components": {}}
        for name, comp in sorted(self.components.items()):
            gauges = {}
            gauge_errors = {}
            for gname, read in comp.gauges.items():
                try:
                    gauges[gname] = read()
                except Exception as e:  # a gauge must never break the status endpoint, nor fail unseen
                    gauges[gname] = None
                    gauge_errors[gname] = f"{type(e).__name__}: {e}"[:500]
            out["components"][name] = {
                "counters": [
                    {"name": n, "labels": dict(labels), "value": v}
                    for (n, labels), v in sorted(comp.counters.items())
                ],
                "gauges": gauges,
                # None above says "unknown"; gauge_errors says why (a gauge that recovers drops out of it)
                "info": {**comp.info, "gauge_errors": gauge_errors} if gauge_errors else comp.info,
            }
        return out
