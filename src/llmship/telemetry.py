"""The agent's own counters: events and bytes received/sent/discarded per component, errors, depths.

Every component gets a ``Component`` handle and increments plain counters on it. Counters are keyed by
(name, labels); a snapshot feeds `llmship status`, the status endpoint and OpenMetrics. Increments are
dict updates with no locking: everything runs on the one event loop thread.

The canonical counters are Vector's component metrics (vectordotdev/vector docs/specs/component.md), one
unit per name; /metrics names them as Vector does (OPENMETRICS_NAMES):
  received        events the component took in      llmship_component_received_events_total
  received_bytes  bytes it took in                  llmship_component_received_bytes_total
  sent            events it handed on / delivered   llmship_component_sent_events_total
  sent_bytes      bytes it sent                     llmship_component_sent_bytes_total
  discarded{reason, intentional}                    llmship_component_discarded_events_total
                  events it will not pass on; intentional="true" for what it is meant to drop (sampling,
                  duplicates), "false" for loss
  errors{error_type, stage}                         llmship_component_errors_total
                  stage: receiving, processing or sending (an error that loses events also counts them in
                  discarded)
Components add counters of their own (retries, requests_sent, spooled, splits, ...), and gauges registered
as callables: queue_bytes, queue_items, spool_bytes, spool_files.
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

    def discard(self, reason: str, n: float = 1, *, intentional: bool = False) -> None:
        """Count ``n`` events not passed on: by design (sampling, duplicates) or lost."""
        self.inc("discarded", n, reason=reason, intentional="true" if intentional else "false")

    def get(self, name: str, **labels: str) -> float:
        """A counter's value summed over the label sets that include ``labels`` (all of them if none)."""
        wanted = labels.items()
        return sum(v for (n, key), v in self.counters.items() if n == name and wanted <= set(key))

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self.gauges[name] = read

    def set_info(self, key: str, value: Any) -> None:
        self.info[key] = value

    def error(self, error_type: str, detail: str, stage: str = "processing") -> None:
        """Count an error and remember it as the component's last error (shown by `llmship status`)."""
        self.inc("errors", error_type=error_type, stage=stage)
        self.info["last_error"] = {"reason": error_type, "detail": detail[:500], "at": time.time()}


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
