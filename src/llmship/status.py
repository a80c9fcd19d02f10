"""The status endpoint, OpenMetrics, `llmship status`, and the agent's self-metrics.

``StatusServer`` serves, on ``cfg.status.listen``:
  GET /status   JSON: ``telemetry.snapshot()`` plus version, hostname, config_path and the effective
                sample rates (from ``info_provider``)
  GET /health   liveness: 200 while the event loop runs (an answer at all proves that)
  GET /ready    readiness: 200 once every listener is bound and until draining starts, else 503
  GET /metrics  OpenMetrics text of every counter and gauge, names prefixed ``llmship_``
  POST /flush   (and /lambda/flush, GET /lambda/hello) added by the agent: llmship.flush
  GET /tap      what the agent is about to send, streamed as NDJSON (llmship.tap), when given a Tap

The API key must never leave through here: nothing here reads it except to redact it, and every body is
redacted once more on the way out, in case a component put it in an error detail (an intake echoing a
request, say).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

import llmship
from llmship.config import Config, ConfigError, load_config, parse_host_port
from llmship.log import get_logger
from llmship.tap import Tap
from llmship.telemetry import Telemetry

OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
REDACTED = "[REDACTED]"
# Datadog API keys are 32 hex characters; anything much shorter is a test value or a typo, and redacting
# a 1-character "key" everywhere would make the output unreadable.
_MIN_REDACTABLE_KEY_CHARS = 8

_log = get_logger("status")

InfoProvider = Callable[[], dict[str, Any]]
Readiness = Callable[[], bool]


def describe_config(cfg: Config) -> dict[str, Any]:
    """What /status reports about the running configuration (never the API key)."""
    sampling = cfg.llm.sampling
    rules = [
        {
            "service": rule.service,
            "model": rule.model,
            "endpoint": rule.endpoint,
            # A rule without a rate inherits the default: show the rate that actually applies.
            "span_text_rate": sampling.span_text_rate if rule.span_text_rate is None else rule.span_text_rate,
            "prompt_log_rate": sampling.prompt_log_rate if rule.prompt_log_rate is None else rule.prompt_log_rate,
        }
        for rule in sampling.rules
    ]
    return {
        "version": llmship.__version__,
        "hostname": cfg.agent.hostname,
        "config_path": cfg.path,
        "sample_rates": {
            "span_text_rate": sampling.span_text_rate,
            "prompt_log_rate": sampling.prompt_log_rate,
            "rules": rules,
        },
    }


def redact(text: str, api_key: str) -> str:
    if len(api_key) >= _MIN_REDACTABLE_KEY_CHARS:
        return text.replace(api_key, REDACTED)
    return text


# ------------------------------------------------------------------------------------------------- server


class StatusServer:
    """The agent's HTTP status listener. ``readiness`` None means "ready while started"."""

    def __init__(self, cfg: Config, telemetry: Telemetry, info_provider: InfoProvider | None = None,
                 readiness: Readiness | None = None, tap: Tap | None = None) -> None:
        self._cfg = cfg
        self._telemetry = telemetry
        self._info_provider = info_provider
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self._started = False
        self.address: tuple[str, int] | None = None  # the bound (host, port), once started
        self.app = web.Application()
        self.app.router.add_get("/status", self._status)
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/ready", self._ready)
        self.app.router.add_get("/metrics", self._metrics)
        self._tap = tap
        if tap is not None:
            tap.redact = lambda line: redact(line.decode(), self._cfg.sinks.datadog.api_key).encode()
            self.app.router.add_get("/tap", tap.handle)

    def reload(self, cfg: Config) -> None:
        """Take a new config for the default info and redaction; a new listen address needs a restart."""
        if cfg.status.listen != self._cfg.status.listen:
            _log.warning("status_listen_unchanged", reason="a new status.listen takes effect on restart",
                         listen=self._cfg.status.listen)
        self._cfg = cfg

    async def start(self) -> None:
        if not self._cfg.status.listen:
            return  # "" disables the status listener, like every other listener
        host, port = parse_host_port(self._cfg.status.listen)
        # Status answers are small and quick: two seconds is plenty to finish one in flight at shutdown.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.address = (bound[0], bound[1])
        self._started = True
        _log.info("listener_bound", address=f"{host}:{self.address[1]}", endpoints="/status /health /ready /metrics")

    async def shutdown(self, deadline: float) -> None:
        """Stop listening; idempotent. Call it last, so probes keep answering while the rest drains."""
        self._started = False
        if self._tap is not None:
            self._tap.close()  # taps streaming would hold the shutdown for its whole timeout
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            await asyncio.wait_for(runner.cleanup(), timeout=max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            _log.warning("status_shutdown_timeout")

    # -- handlers

    def info(self) -> dict[str, Any]:
        base = describe_config(self._cfg)
        if self._info_provider is not None:
            try:
                base.update(self._info_provider())
            except Exception as e:  # the status page must answer even if the agent's info is broken
                base["info_error"] = f"{type(e).__name__}: {e}"
        return base

    def status_document(self) -> dict[str, Any]:
        return {**self._telemetry.snapshot(), **self.info()}

    def _respond(self, body: str, content_type: str, status: int = 200) -> web.Response:
        body = redact(body, self._cfg.sinks.datadog.api_key)
        return web.Response(body=body.encode(), status=status, headers={"Content-Type": content_type})

    async def _status(self, request: web.Request) -> web.Response:
        # default=str: a component's info may hold a value JSON has no type for; show it, do not fail
        body = orjson.dumps(self.status_document(), default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return self._respond(body, "application/json")

    async def _health(self, request: web.Request) -> web.Response:
        return self._respond('{"status":"ok"}', "application/json")

    async def _ready(self, request: web.Request) -> web.Response:
        try:
            ready = self._started and (self._readiness is None or bool(self._readiness()))
        except Exception as e:  # a broken readiness check means "not ready", and says why
            return self._respond(json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}"}),
                                 "application/json", 503)
        return self._respond(json.dumps({"ready": ready}), "application/json", 200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return self._respond(render_openmetrics(self.status_document()), OPENMETRICS_CONTENT_TYPE)


# ------------------------------------------------------------------------------------------- OpenMetrics

# The canonical counters (telemetry.py) under the names Vector gives its component metrics; other counters
# keep their own name. /metrics adds the llmship_ prefix and _total.
OPENMETRICS_NAMES = {
    "received": "component_received_events",
    "received_bytes": "component_received_bytes",
    "sent": "component_sent_events",
    "sent_bytes": "component_sent_bytes",
    "discarded": "component_discarded_events",
    "errors": "component_errors",
}

_HELP = {
    "component_received_events": "Events a component took in (metric lines, spans, LLM Observability events, "
                                 "log records, payload items).",
    "component_received_bytes": "Bytes a component took in (on the wire for sources, payload bytes for "
                                "delivery).",
    "component_sent_events": "Events delivered to the intake (or the file sink).",
    "component_sent_bytes": "Bytes sent to the intake, after compression.",
    "component_discarded_events": "Events not passed on, by reason; intentional=\"true\" for sampling and "
                                  "duplicates, \"false\" for loss.",
    "component_errors": "Errors, by error_type and stage (receiving, processing, sending).",
    "requests_sent": "Requests sent to the intake.",
    "retries": "Delivery attempts retried after a retryable failure.",
    "refused": "Requests refused, by reason (their events were never received).",
    "queue_bytes": "Bytes waiting in the in-memory delivery queue.",
    "queue_items": "Payloads waiting in the in-memory delivery queue.",
    "spool_bytes": "Bytes in the disk spool.",
    "spool_files": "Files in the disk spool (a file may hold several payloads).",
    "splits": "Payloads split in two after the intake answered 413.",
    "spooled": "Payloads written to the disk spool.",
    "inflight_payloads": "Payloads being sent or retried right now.",
    "worker_requests": "Requests (and logs TCP connections) a worker process took.",
    "worker_items": "Spans, LLM Observability events, log records and OTLP metric points a worker process "
                    "received.",
    "worker_errors": "Errors a worker process counted.",
    "worker_restarts": "Times this worker was started again after it exited.",
    "worker_up": "1 while the worker process serves.",
    "worker_loop_lag_ms": "The worker's largest event-loop lateness in its last report, ms.",
    "worker_shed_share": "The share of requests the worker refuses while its loop has no idle moment (0 to 0.8).",
}
_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(name: str) -> str:
    return "llmship_" + _BAD_NAME_CHARS.sub("_", name)


def _label_name(name: str) -> str:
    name = _BAD_NAME_CHARS.sub("_", name) or "_"
    # Our own "component" label wins; Prometheus renames a clashing label the same way (exported_).
    return "exported_" + name if name == "component" or name[0].isdigit() else name


def _escape_label_value(value: str) -> str:
    # OpenMetrics ABNF: label values escape backslash, double quote and line feed.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _labels(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape_label_value(str(v))}"' for k, v in pairs) + "}"


def render_openmetrics(status_json: dict[str, Any]) -> str:
    """Every counter and gauge of a /status document as OpenMetrics text, ending with ``# EOF``."""
    # family name -> (type, help, [sample lines]); a family's samples must be contiguous.
    families: dict[str, tuple[str, str, list[str]]] = {}

    def sample(kind: str, name: str, suffix: str, labels: list[tuple[str, str]], value: float) -> None:
        family = _metric_name(name)
        existing = families.get(family)
        if existing is None:
            existing = families[family] = (kind, _HELP.get(name, f"llmship {kind} {name}."), [])
        elif existing[0] != kind:
            return  # one name used as both counter and gauge is a component bug: the first type wins
        existing[2].append(f"{family}{suffix}{_labels(labels)} {_number(value)}")

    for component, data in sorted(status_json.get("components", {}).items()):
        for counter in data.get("counters", []):
            labels = [("component", component)] + sorted(
                (_label_name(k), v) for k, v in counter.get("labels", {}).items())
            name = OPENMETRICS_NAMES.get(counter["name"], counter["name"])
            sample("counter", name, "_total", labels, counter["value"])
        for name, value in sorted(data.get("gauges", {}).items()):
            if isinstance(value, (int, float)):  # None: the gauge's reader failed; show nothing for it
                sample("gauge", name, "", [("component", component)], value)

    for worker in status_json.get("workers") or ():  # [agent] workers > 1: a line per worker process
        labels = [("worker", str(worker.get("index"))), ("pid", str(worker.get("pid")))]
        for name in ("requests", "items", "errors", "restarts"):
            if isinstance(worker.get(name), (int, float)):
                sample("counter", f"worker_{name}", "_total", labels, worker[name])
        sample("gauge", "worker_up", "", labels, 1 if worker.get("state") in ("ready", "draining") else 0)
        for name in ("loop_lag_ms", "shed_share"):
            if isinstance(worker.get(name), (int, float)):
                sample("gauge", f"worker_{name}", "", labels, worker[name])

    lines = []
    for family, (kind, help_text, samples) in families.items():
        lines += [f"# TYPE {family} {kind}", f"# HELP {family} {_escape_help(help_text)}", *samples]
    if "uptime_secs" in status_json:
        lines += ["# TYPE llmship_uptime_seconds gauge", "# HELP llmship_uptime_seconds Seconds since start.",
                  f"llmship_uptime_seconds {_number(status_json['uptime_secs'])}"]
    build = [(k, str(status_json[k])) for k in ("version", "hostname") if k in status_json]
    if build:
        lines += ["# TYPE llmship_build info", "# HELP llmship_build The agent's version and hostname.",
                  f"llmship_build_info{_labels(build)} 1"]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ self-metrics

# The counter values last shipped, per Telemetry, so each call ships only the increase since the previous
# one: telemetry counters are cumulative, while DogStatsD "c" points are per flush interval.
_last_shipped: weakref.WeakKeyDictionary[Telemetry, dict[tuple, float]] = weakref.WeakKeyDictionary()
_TAG_SEPARATORS = re.compile(r"[,|#\s]")  # they would split the DogStatsD-style tag string


def _tag(key: str, value: str) -> str:
    return f"{_TAG_SEPARATORS.sub('_', key)}:{_TAG_SEPARATORS.sub('_', str(value))}"


def self_metrics(telemetry: Telemetry) -> list[tuple[str, str, float, str]]:
    """The agent's own counters and gauges as (name, mtype, value, tags) for ``Aggregator.add``.

    Counters come out as "c" with the increase since the previous call for the same Telemetry; gauges as
    "g". Names are prefixed ``llmship.``; tags carry ``llmship:self``, the component and the labels.
    """
    last = _last_shipped.setdefault(telemetry, {})
    out: list[tuple[str, str, float, str]] = []
    for comp_name, comp in sorted(telemetry.merged().items()):  # with workers: summed over them
        base_tags = ["llmship:self", _tag("component", comp_name)]
        for key, value in sorted(comp.counters.items()):
            name, labels = key
            delta = value - last.get((comp_name, key), 0)
            last[(comp_name, key)] = value
            tags = ",".join(base_tags + [_tag(k, v) for k, v in labels])
            out.append((f"llmship.{OPENMETRICS_NAMES.get(name, name)}", "c", delta, tags))
        for name, read in sorted(comp.gauges.items()):
            try:
                value = float(read())
            except Exception:  # a broken gauge must not break the flush loop: skip it this time
                continue
            out.append((f"llmship.{name}", "g", value, ",".join(base_tags)))
    return out


# ------------------------------------------------------------------------------------------ the table


_MAX_DETAIL_CHARS = 160  # keeps a row readable on a terminal; /status has the whole detail


def _counter(data: dict, name: str, **labels: str) -> float | None:
    values = [c["value"] for c in data.get("counters", [])
              if c["name"] == name and labels.items() <= c.get("labels", {}).items()]
    return sum(values) if values else None


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _one_line(text: object) -> str:
    text = " ".join(str(text).split())
    return text[:_MAX_DETAIL_CHARS] + "..." if len(text) > _MAX_DETAIL_CHARS else text


def _count(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


def _pair(count: float | None, size: float | None) -> str:
    """'1,204 / 88.1 KiB', or '-' when the component has neither."""
    if count is None and size is None:
        return "-"
    return f"{_count(count)} / {'-' if size is None else _human_bytes(size)}"


def _ago(at: float | None, now: float) -> str:
    if not isinstance(at, (int, float)):
        return ""
    secs = max(0, int(now - at))
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


def _duration(secs: float) -> str:
    secs = int(secs)
    days, rest = divmod(secs, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s"


def _scrubbed(data: Any) -> list[tuple[str, str]]:
    """The privacy audit: matches per rule and action (``scrub_matches``), field policy hits per field and
    action (``scrub_fields``) and records dropped because scrubbing raised (``scrub_failed``), each by kind;
    and where the scrub rules' Hyperscan databases came from (``databases_built``)."""
    if not isinstance(data, dict):
        return []
    lines: dict[tuple[str, str], list[str]] = {}  # (what, action) -> "kind=count" (databases: "source=count")
    for c in data.get("counters", []):
        labels, value = c.get("labels", {}), c.get("value")
        if not value:
            continue
        part = "kind"
        if c["name"] == "scrub_matches":
            key = (_one_line(labels.get("rule", "?")), _one_line(labels.get("action", "?")))
        elif c["name"] == "scrub_fields":
            key = (f"field {_one_line(labels.get('field', '?'))}", _one_line(labels.get("action", "?")))
        elif c["name"] == "scrub_failed":
            key = ("scrubbing raised", "dropped")
        elif c["name"] == "databases_built":
            key, part = ("hyperscan databases", "built"), "source"
        else:
            continue
        lines.setdefault(key, []).append(f"{_one_line(labels.get(part, '?'))}={_count(value)}")
    return [(name, f"{action}: {'  '.join(parts)}") for (name, action), parts in lines.items()]


def _rate(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _inherited(rule: dict, defaults: dict, key: str) -> Any:
    """A rule without a rate inherits the default one: the rate that applies."""
    value = rule.get(key)
    return defaults.get(key) if value is None else value


def render_table(status_json: dict[str, Any], now: float | None = None) -> str:
    """The readable view `llmship status` prints, from a /status document."""
    now = time.time() if now is None else now
    head = [f"llmship {status_json.get('version', '?')}",
            f"host={status_json.get('hostname', '?')}",
            f"config={status_json.get('config_path') or '(embedded default)'}"]
    if "uptime_secs" in status_json:
        head.append(f"uptime={_duration(status_json['uptime_secs'])}")
    out = ["  ".join(head), ""]

    components = sorted(status_json.get("components", {}).items())
    header = ("COMPONENT", "RECEIVED (ev / bytes)", "SENT (ev / bytes)", "LOST", "DISCARDED", "ERRORS",
              "RETRIES", "QUEUE (items / bytes)", "SPOOL (files / bytes)")
    rows = [header]
    drops, errors, gauge_errors, idle = [], [], [], []
    scrubbed = _scrubbed(status_json.get("components", {}).get("scrub"))
    for name, data in components:
        gauges = data.get("gauges", {})
        cells = (
            _pair(_counter(data, "received"), _counter(data, "received_bytes")),
            _pair(_counter(data, "sent"), _counter(data, "sent_bytes")),
            _count(_counter(data, "discarded", intentional="false")),  # loss
            _count(_counter(data, "discarded", intentional="true")),  # by design: sampling, duplicates
            _count(_counter(data, "errors")),
            _count(_counter(data, "retries")),
            _pair(gauges.get("queue_items"), gauges.get("queue_bytes")),
            _pair(gauges.get("spool_files"), gauges.get("spool_bytes")),
        )
        if all(cell == "-" for cell in cells):
            if not (name == "scrub" and scrubbed):  # the scrubber's counts have a section of their own
                idle.append(name)  # registered but nothing to show: a row of dashes would hide the busy ones
        else:
            rows.append((name, *cells))
        reasons = [f"{_one_line(c['labels'].get('reason', '?'))}={_count(c['value'])}"
                   + (" (intended)" if c["labels"].get("intentional") == "true" else "")
                   for c in data.get("counters", []) if c["name"] == "discarded" and c["value"]]
        if reasons:
            drops.append((name, "  ".join(reasons)))
        last = data.get("info", {}).get("last_error")
        if isinstance(last, dict):
            detail = " ".join(str(last.get("detail", "")).split())  # one line per component
            if len(detail) > _MAX_DETAIL_CHARS:
                detail = detail[:_MAX_DETAIL_CHARS] + "..."
            when = _ago(last.get("at"), now)
            errors.append((name, f"{last.get('reason', '?')}: {detail}  "
                                 f"({when + ', ' if when else ''}errors: {_count(_counter(data, 'errors'))})"))
        failed = data.get("info", {}).get("gauge_errors")  # telemetry.snapshot: gauges that could not be read
        if isinstance(failed, dict):
            for gauge, error in sorted(failed.items()):
                gauge_errors.append((name, f"{gauge}: unavailable: {_one_line(error)}"))
    if len(rows) == 1:
        out.append("no components have reported yet")
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
            out.append("  ".join(cells).rstrip())
    if idle:
        out.append(f"(nothing counted yet: {', '.join(idle)})")

    workers = status_json.get("workers")
    if isinstance(workers, list) and workers:
        out += ["", "Workers (the counters above are their sums):"]
        head = ("WORKER", "PID", "STATE", "REQUESTS", "ITEMS", "ERRORS", "RESTARTS", "LAG", "LAST ERROR")
        rows = [head]
        for w in workers:
            last = w.get("last_error")
            error = (f"{last.get('reason', '?')}: {_one_line(last.get('detail', ''))} ({_ago(last.get('at'), now)})"
                     if isinstance(last, dict) else "-")
            rows.append((str(w.get("index", "?")), str(w.get("pid", "-")), str(w.get("state", "?")),
                         _count(w.get("requests")), _count(w.get("items")), _count(w.get("errors")),
                         _count(w.get("restarts")), f"{w.get('loop_lag_ms', 0):.0f} ms", error))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
        for row in rows:
            out.append("  " + "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                                        for i, (cell, w) in enumerate(zip(row, widths))) + "  " + row[-1])

    for title, entries in (("Discarded, by reason:", drops), ("Scrubbed (component scrub), by kind:", scrubbed),
                           ("Last error:", errors), ("Gauges not read:", gauge_errors)):
        if entries:
            width = max(len(name) for name, _ in entries)
            out += ["", title] + [f"  {name.ljust(width)}  {text}" for name, text in entries]

    rates = status_json.get("sample_rates")
    if isinstance(rates, dict):
        out += ["", "Sample rates:",
                f"  default  span_text_rate={_rate(rates.get('span_text_rate'))}"
                f"  prompt_log_rate={_rate(rates.get('prompt_log_rate'))}"]
        for rule in rates.get("rules", []):
            match = " ".join(f"{k}={rule.get(k, '*')}" for k in ("service", "model", "endpoint"))
            out.append(f"  {match}  span_text_rate={_rate(_inherited(rule, rates, 'span_text_rate'))}"
                       f"  prompt_log_rate={_rate(_inherited(rule, rates, 'prompt_log_rate'))}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------ the CLI verb


class StatusUnavailable(Exception):
    """The agent could not be asked; the message is one line, fit to print."""


def status_url(url: str) -> str:
    """Accept "host:port", "http://host:port" or a full ".../status" URL."""
    if "://" not in url:
        url = "http://" + url
    parsed = urllib.parse.urlsplit(url)
    if parsed.path in ("", "/"):
        url = urllib.parse.urlunsplit(parsed._replace(path="/status"))
    return url


def url_for_listen(listen: str) -> str:
    """The URL a local client uses to reach a ``status.listen`` address (wildcards mean loopback)."""
    host, port = parse_host_port(listen)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/status"


def fetch_status(url: str, timeout_secs: float = 5.0) -> dict[str, Any]:
    """GET the agent's /status; raises StatusUnavailable with a one-line reason."""
    url = status_url(url)
    try:
        with urllib.request.urlopen(url, timeout=timeout_secs) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        raise StatusUnavailable(f"the agent at {url} answered HTTP {e.code}") from None
    except urllib.error.URLError as e:
        reason = getattr(e.reason, "strerror", None) or str(e.reason)
        raise StatusUnavailable(f"cannot reach the agent at {url}: {reason} (is `llmship run` running?)") from None
    except (OSError, ValueError) as e:  # timeouts, resets, a malformed URL
        raise StatusUnavailable(f"cannot reach the agent at {url}: {e or type(e).__name__}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise StatusUnavailable(f"{url} did not answer with JSON: is that the llmship status address?") from None
    if not isinstance(document, dict):
        raise StatusUnavailable(f"{url} did not answer with a status document")
    return document


def status_main(args: argparse.Namespace) -> int:
    """`llmship status [--url URL] [--json]`: 0 when the agent answered, 1 otherwise (one line on stderr)."""
    url = args.url
    if not url:
        try:
            url = url_for_listen(load_config(getattr(args, "config", None)).status.listen)
        except (ConfigError, ValueError) as e:
            print(f"llmship status: {e} (pass --url)", file=sys.stderr)
            return 1
    try:
        document = fetch_status(url)
    except StatusUnavailable as e:
        print(f"llmship status: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(render_table(document), end="")
    return 0
