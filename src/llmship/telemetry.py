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

With workers, each worker process counts into a ``RecordingTelemetry`` whose increments are also kept as
deltas that travel to the shipping plane with the data they describe (llmship.workers); the parent adds
them into one ``Telemetry`` per worker slot (kept across restarts, so nothing a dead worker counted is
lost) and lists those as ``children``: a snapshot sums every component over the process and its children.
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


class RecordingComponent(Component):
    """A component that also keeps each increment in ``pending`` (shared by the process's components),
    keyed by (component, name, labels), until the worker hands the deltas over."""

    __slots__ = ("pending",)

    def __init__(self, name: str, pending: dict) -> None:
        super().__init__(name)
        self.pending = pending

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        labels_key = tuple(sorted(labels.items())) if labels else ()
        key = (name, labels_key)
        self.counters[key] = self.counters.get(key, 0) + n
        pending_key = (self.name, name, labels_key)
        self.pending[pending_key] = self.pending.get(pending_key, 0) + n


class Telemetry:
    def __init__(self) -> None:
        self.components: dict[str, Component] = {}
        self.started = time.time()
        self.children: list[Telemetry] = []  # worker slots whose counters the snapshot adds in

    def component(self, name: str) -> Component:
        comp = self.components.get(name)
        if comp is None:
            comp = self.components[name] = Component(name)
        return comp

    def add_deltas(self, deltas) -> None:
        """Add counter increments [(component, name, [[label, value], ...], delta), ...] from a worker."""
        for comp_name, name, labels, delta in deltas:
            comp = self.component(comp_name)
            key = (name, tuple(tuple(pair) for pair in labels))
            comp.counters[key] = comp.counters.get(key, 0) + delta

    def merged(self) -> dict[str, Component]:
        """Every component of this process and its children, counters and numeric gauges summed; info
        is this process's, with the latest last_error of any of them."""
        if not self.children:
            return self.components
        out: dict[str, Component] = {}
        for telemetry in (self, *self.children):
            for name, comp in telemetry.components.items():
                into = out.get(name)
                if into is None:
                    into = out[name] = Component(name)
                for key, value in comp.counters.items():
                    into.counters[key] = into.counters.get(key, 0) + value
                for gname, read in comp.gauges.items():
                    into.gauges[gname] = _summed(into.gauges.get(gname), read)
                for key, value in comp.info.items():
                    if key != "last_error":
                        into.info.setdefault(key, value)
                        continue
                    current = into.info.get(key)
                    if not (isinstance(current, dict) and isinstance(value, dict)
                            and value.get("at", 0) < current.get("at", 0)):
                        into.info[key] = value
        return out

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view: {"uptime_secs", "components": {name: {"counters": [...], "gauges", "info"}}}."""
        out: dict[str, Any] = {"uptime_secs": round(time.time() - self.started, 3), "components": {}}
        for name, comp in sorted(self.merged().items()):
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


class RecordingTelemetry(Telemetry):
    """A worker's telemetry: its components record deltas (``take_deltas``) as well as totals."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[tuple[str, str, LabelKey], float] = {}

    def component(self, name: str) -> Component:
        comp = self.components.get(name)
        if comp is None:
            comp = self.components[name] = RecordingComponent(name, self.pending)
        return comp

    def take_deltas(self) -> list[tuple[str, str, LabelKey, float]]:
        """The increments since the last call, as plain tuples for the hand-over."""
        if not self.pending:
            return []
        out = [(comp, name, labels, delta) for (comp, name, labels), delta in self.pending.items()]
        self.pending.clear()  # the one dict every component records into
        return out


def _summed(first: Callable[[], float] | None, second: Callable[[], float]) -> Callable[[], float]:
    if first is None:
        return second

    def read() -> float:
        a, b = first(), second()
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return a + b
        return a if b is None else b
    return read
