"""`llmship top`: every component's rates, refreshed in place, for an operator watching an incident (as
`vector top`). `llmship status` stays the one-shot table of totals.

Rates are the difference of two /status documents over the time between them, so the agent does nothing
for it but answer /status. On a terminal each frame replaces the last (ANSI home + clear: no curses, works
in any terminal and over ssh); otherwise frames are printed one after another, so `--once` or
`--iterations N` can be piped, logged or tested.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from llmship.status import (
    StatusUnavailable,
    _counter,
    _duration,
    _human_bytes,
    fetch_status,
)

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen


def _per_sec(prev: dict, cur: dict, secs: float, name: str, **labels: str) -> float | None:
    now = _counter(cur, name, **labels)
    if now is None:
        return None
    return max(0.0, now - (_counter(prev, name, **labels) or 0)) / secs


def _rate(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "B":
        return _human_bytes(value) + "/s"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _depth(gauges: dict, items: str, size: str) -> str:
    if gauges.get(items) is None and gauges.get(size) is None:
        return "-"
    count = "-" if gauges.get(items) is None else f"{gauges[items]:,.0f}"
    return f"{count} / {'-' if gauges.get(size) is None else _human_bytes(gauges[size])}"


def render_top(prev: dict[str, Any], cur: dict[str, Any], secs: float) -> str:
    """One frame: per component, rates between two /status documents ``secs`` apart, and current depths."""
    secs = max(secs, 1e-6)
    head = (f"llmship top  {cur.get('version', '?')}  host={cur.get('hostname', '?')}"
            f"  uptime={_duration(cur.get('uptime_secs', 0))}  rates over {secs:.1f}s")
    header = ("COMPONENT", "IN ev/s", "IN B/s", "OUT ev/s", "OUT B/s", "LOST/s", "DISCARD/s", "ERR/s",
              "RETRY/s", "INFLIGHT", "QUEUE (items / bytes)", "SPOOL (files / bytes)")
    rows, reasons = [header], []
    previous = prev.get("components", {})
    for name, data in sorted(cur.get("components", {}).items()):
        before = previous.get(name, {"counters": []})
        gauges = data.get("gauges", {})
        cells = (_rate(_per_sec(before, data, secs, "received")),
                 _rate(_per_sec(before, data, secs, "received_bytes"), "B"),
                 _rate(_per_sec(before, data, secs, "sent")),
                 _rate(_per_sec(before, data, secs, "sent_bytes"), "B"),
                 _rate(_per_sec(before, data, secs, "discarded", intentional="false")),
                 _rate(_per_sec(before, data, secs, "discarded", intentional="true")),
                 _rate(_per_sec(before, data, secs, "errors")),
                 _rate(_per_sec(before, data, secs, "retries")),
                 "-" if gauges.get("inflight_payloads") is None else f"{gauges['inflight_payloads']:,.0f}",
                 _depth(gauges, "queue_items", "queue_bytes"),
                 _depth(gauges, "spool_files", "spool_bytes"))
        if any(cell != "-" for cell in cells):
            rows.append((name, *cells))
        for c in data.get("counters", []):
            if c["name"] == "discarded":
                rate = _per_sec(before, data, secs, "discarded", **c["labels"])
                if rate:
                    kind = " (intended)" if c["labels"].get("intentional") == "true" else ""
                    reasons.append(f"  {name}  {c['labels'].get('reason', '?')}{kind}  {_rate(rate)}/s")
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [head, ""] + ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])
                          .rstrip() for row in rows]
    if reasons:
        lines += ["", "Discarded, by reason:"] + sorted(reasons)
    return "\n".join(lines) + "\n"


def top_main(args: argparse.Namespace, url: str) -> int:
    """Refresh every --interval seconds until Ctrl-C, or --iterations frames (--once: one)."""
    frames = 1 if args.once else args.iterations
    tty = sys.stdout.isatty()
    try:
        prev, prev_at = fetch_status(url), time.monotonic()
        shown = 0
        while frames is None or shown < frames:
            time.sleep(args.interval)
            cur, cur_at = fetch_status(url), time.monotonic()
            frame = render_top(prev, cur, cur_at - prev_at)
            sys.stdout.write(CLEAR + frame if tty else ("\n" if shown else "") + frame)
            sys.stdout.flush()
            prev, prev_at = cur, cur_at
            shown += 1
    except KeyboardInterrupt:
        pass
    except StatusUnavailable as e:
        print(f"llmship top: {e}", file=sys.stderr)
        return 1
    return 0
