"""`llmship tap`: what the agent is about to send, streamed as newline-delimited JSON (as `vector tap`).

The sinks offer each item once it is final (after tagging, scrubbing, truncation and sampling): span
chunks that passed the priority sampler, LLM Observability events, log records, and series and sketches
at flush. ``Tap.offer`` costs one attribute test while nobody listens (``tap.active``). A subscriber gets
what matches its kinds and its service/model globs, within its rate (a token bucket) and its queue (a
bounded ``asyncio.Queue``): past either, the item is skipped and counted, never waited for, so a slow or
greedy tap cannot slow the agent. Items are serialized when admitted, so the stream shows them as sent.

With ``[agent] workers`` > 1 the spans, events and logs are encoded in the workers: the parent tells them
which kinds a tap wants and at what rate (``Tap.demand``), and each worker's ``RelayTap`` sends those items,
as plain data, to the parent's Tap, which filters and serves them as its own.

Served by the status listener (GET /tap?kind=spans&kind=logs&service=...&model=...&rate=N), so it is
reachable where /status is and nowhere else. Each line is {"kind": ..., "data": ...}; once a second, and
last, a line {"_tap": {"sent": n, "skipped": m}} tells the client what it missed.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
from aiohttp import web

from llmship.aggregation import Series
from llmship.model import LLMOBS_STRUCT_KEY
from llmship.telemetry import Telemetry

KINDS = ("spans", "llmobs", "logs", "metrics")
DEFAULT_RATE = 100.0  # items per second per tap: enough to read, far below what costs the agent anything
MAX_RATE = 10_000.0
QUEUE_ITEMS = 1_000  # per tap: a second or more of output at DEFAULT_RATE while the client catches up
HEARTBEAT_SECS = 1.0
_END = b""  # queued by close(): the stream ends (no item serializes to an empty line)


class _Bucket:
    """A token bucket: ``rate`` takes a second, up to ``rate`` at once."""

    __slots__ = ("rate", "tokens", "refilled")

    def __init__(self, rate: float) -> None:
        self.rate = self.tokens = rate
        self.refilled = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _Subscriber:
    def __init__(self, kinds: set[str], service: str, model: str, rate: float) -> None:
        self.kinds = kinds
        self.service = service
        self.model = model
        self.rate = rate
        self.bucket = _Bucket(rate)
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_ITEMS)
        self.sent = 0
        self.skipped = 0

    def admit(self) -> bool:
        if self.queue.full() or not self.bucket.take():
            self.skipped += 1
            return False
        return True

    def matches(self, kind: str, item: Any) -> bool:
        if kind not in self.kinds:
            return False
        if not (self.service or self.model):
            return True
        services, models = _identity(kind, item)
        return ((not self.service or any(fnmatch.fnmatchcase(s, self.service) for s in services))
                and (not self.model or any(fnmatch.fnmatchcase(m, self.model) for m in models)))


class Tap:
    def __init__(self, telemetry: Telemetry | None = None) -> None:
        self.active = False  # the sinks' one test per item while nobody listens
        self._subscribers: set[_Subscriber] = set()
        self.redact: Callable[[bytes], bytes] = lambda line: line  # the status server sets the API key's
        self._tel = telemetry.component("tap") if telemetry is not None else None
        if self._tel is not None:
            self._tel.gauge("subscribers", lambda: len(self._subscribers))

    def wants(self, kind: str) -> bool:
        return self.active and any(kind in s.kinds for s in self._subscribers)

    def demand(self) -> tuple[list[str], float]:
        """The kinds some tap wants and the highest rate among the taps: what workers relay."""
        kinds = sorted({k for s in self._subscribers for k in s.kinds})
        return kinds, max((s.rate for s in self._subscribers), default=0.0)

    def offer(self, kind: str, item: Any) -> None:
        """``item`` is about to be sent: pass it to every matching subscriber that has room."""
        line = None
        for sub in self._subscribers:
            if sub.matches(kind, item) and sub.admit():
                if line is None:
                    line = self.redact(orjson.dumps({"kind": kind, "data": _builtins(kind, item)},
                                                     default=_default, option=orjson.OPT_APPEND_NEWLINE
                                                     | orjson.OPT_NON_STR_KEYS))
                sub.queue.put_nowait(line)

    def close(self) -> None:
        """End every stream (the agent is stopping)."""
        for sub in self._subscribers:
            while sub.queue.full():
                sub.queue.get_nowait()
            sub.queue.put_nowait(_END)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /tap: stream until the client leaves or the agent stops."""
        query = request.query
        kinds = set(query.getall("kind", [])) or set(KINDS)
        try:
            rate = min(MAX_RATE, float(query.get("rate", DEFAULT_RATE)))
            if not kinds <= set(KINDS) or not rate > 0:
                raise ValueError
        except ValueError:
            return web.json_response({"error": f"kind must be among {', '.join(KINDS)}; rate a number > 0"},
                                     status=400)
        sub = _Subscriber(kinds, query.get("service", ""), query.get("model", ""), rate)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        self._subscribers.add(sub)
        self.active = True
        try:
            while True:
                try:
                    line = await asyncio.wait_for(sub.queue.get(), HEARTBEAT_SECS)
                except TimeoutError:
                    await response.write(self._progress(sub))  # also finds a client that left
                    continue
                if line == _END:
                    break
                sub.sent += 1
                await response.write(line)
            await response.write(self._progress(sub))
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client left (or the server is closing): nothing to tell anyone
        finally:
            self._subscribers.discard(sub)
            self.active = bool(self._subscribers)
            if self._tel is not None:
                self._tel.inc("sent", sub.sent)
                if sub.skipped:
                    self._tel.discard("tap_skipped", sub.skipped, intentional=True)
        return response

    @staticmethod
    def _progress(sub: _Subscriber) -> bytes:
        return orjson.dumps({"_tap": {"sent": sub.sent, "skipped": sub.skipped}}, option=orjson.OPT_APPEND_NEWLINE)


IDLE = Tap()  # what a sink holds until the agent gives it the live one: never active


class RelayTap:
    """A worker's tap: while the parent's Tap wants a kind, what the worker's sinks offer of it goes to the
    parent as plain data (``send(kind, data)``), at most the taps' highest rate a second from this worker
    (the parent's taps then apply their own filters and rates)."""

    def __init__(self, send: Callable[[str, Any], None]) -> None:
        self._send = send
        self.active = False
        self._kinds: frozenset[str] = frozenset()
        self._bucket = _Bucket(0.0)

    def demand(self, kinds: list[str], rate: float) -> None:
        self._kinds = frozenset(kinds)
        self.active = bool(self._kinds) and rate > 0
        self._bucket = _Bucket(rate)

    def wants(self, kind: str) -> bool:
        return self.active and kind in self._kinds

    def offer(self, kind: str, item: Any) -> None:
        if kind in self._kinds and self._bucket.take():
            self._send(kind, _builtins(kind, item))


# ------------------------------------------------------------------------------------------ item shapes


_MODEL_TAGS = ("model:", "model_name:")


def _identity(kind: str, item: Any) -> tuple[list[str], list[str]]:
    """(services, models) an item belongs to, for the --service and --model filters."""
    if kind == "spans":
        if isinstance(item, dict):  # relayed by a worker: plain already
            spans = item["spans"]
            return [s.get("service", "") for s in spans], [s["meta"]["model"] for s in spans
                                                           if "model" in s.get("meta", {})]
        spans = item[0]
        return [s.service for s in spans], [s.meta["model"] for s in spans if "model" in s.meta]
    if kind == "logs":
        return [str(item.get("service", ""))], [str(item.get("model", ""))]
    if kind == "llmobs":
        tags = item.get("tags") if isinstance(item.get("tags"), list) else []
        meta = item.get("meta") if isinstance(item.get("meta"), dict) else {}
        services = [t[8:] for t in tags if isinstance(t, str) and t.startswith("service:")]
        models = [t.partition(":")[2] for t in tags if isinstance(t, str) and t.startswith(_MODEL_TAGS)]
        return services, models + [str(meta.get("model_name", ""))]
    tags = item.tags  # metrics
    return ([t[8:] for t in tags if t.startswith("service:")],
            [t.partition(":")[2] for t in tags if t.startswith(_MODEL_TAGS)])


def _builtins(kind: str, item: Any) -> Any:
    if kind == "spans" and not isinstance(item, dict):  # a dict: plain already (relayed by a worker)
        chunk, tracer = item
        spans = []
        for span in chunk:
            data = msgspec.to_builtins(span)
            data.get("meta_struct", {}).pop(LLMOBS_STRUCT_KEY, None)  # read by the agent, never shipped
            spans.append(data)
        return {"tracer": msgspec.to_builtins(tracer), "spans": spans}
    if kind == "metrics":
        if type(item) is Series:
            return {"metric": item.metric, "type": item.type, "interval": item.interval, "points": item.points,
                    "tags": item.tags, "host": item.host}
        return {"metric": item.metric, "host": item.host, "tags": item.tags, "sketch": [
            [ts, {"count": s.cnt, "min": s.min, "max": s.max, "sum": s.sum, "avg": s.avg}] for ts, s in item.points]}
    return item


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


# ------------------------------------------------------------------------------------------ the CLI verb


def tap_url(status: str, args: argparse.Namespace) -> str:
    """The /tap URL next to a status URL, with the filters as its query."""
    parts = urllib.parse.urlsplit(status)
    query = [("kind", k) for k in args.kind or ()] + [("rate", str(args.rate))]
    query += [(k, v) for k, v in (("service", args.service), ("model", args.model)) if v]
    return urllib.parse.urlunsplit(parts._replace(path="/tap", query=urllib.parse.urlencode(query)))


def tap_main(args: argparse.Namespace, status: str) -> int:
    """Print the stream's items on stdout, one JSON object a line; on exit, what was skipped on stderr.
    Stops after --limit items or --duration seconds, or on Ctrl-C, or when the agent stops."""
    url = tap_url(status, args)
    shown, progress = 0, {"sent": 0, "skipped": 0}
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        with urllib.request.urlopen(url, timeout=HEARTBEAT_SECS * 5) as stream:
            for line in stream:
                doc = json.loads(line)
                if "_tap" in doc:
                    progress = doc["_tap"]
                else:
                    sys.stdout.write(line.decode())
                    sys.stdout.flush()
                    shown += 1
                if (args.limit and shown >= args.limit) or (deadline and time.monotonic() >= deadline):
                    break
    except KeyboardInterrupt:
        pass
    except urllib.error.HTTPError as e:
        print(f"llmship tap: the agent at {url} answered HTTP {e.code}: {e.read().decode()[:200]}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"llmship tap: cannot read {url}: {getattr(e, 'reason', e)} (is `llmship run` running?)",
              file=sys.stderr)
        return 1
    print(f"llmship tap: {shown} shown, {progress['skipped']} skipped (over --rate {args.rate:g}/s or "
          "behind the agent)", file=sys.stderr)
    return 0
