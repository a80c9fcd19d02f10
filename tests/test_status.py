"""The status server on a real socket, the OpenMetrics text, `llmship status` rendering and self-metrics."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time

import aiohttp
import pytest

from harness import TEST_API_KEY
from llmship import __version__
from llmship.config import load_config_text
from llmship.status import (
    OPENMETRICS_CONTENT_TYPE,
    StatusServer,
    StatusUnavailable,
    fetch_status,
    render_openmetrics,
    render_table,
    self_metrics,
    status_main,
    status_url,
    url_for_listen,
)
from llmship.telemetry import Telemetry

CONFIG = f"""
[agent]
hostname = "web-1"
[status]
listen = "127.0.0.1:0"
[sinks.datadog]
api_key = "{TEST_API_KEY}"
[llm.sampling]
span_text_rate = 0.5
prompt_log_rate = 0.25
[[llm.sampling.rules]]
service = "chat"
prompt_log_rate = 1.0
"""


def busy_telemetry() -> Telemetry:
    telemetry = Telemetry()
    dsd = telemetry.component("dogstatsd")
    dsd.inc("received", 1204)
    dsd.inc("received_bytes", 90211)
    dsd.discard("parse_error", 3)
    dsd.discard('we"ird\\reason\nx', 1)
    dsd.error("parse_error", "bad line 'x:1|q'")
    logs = telemetry.component("delivery.logs")
    logs.inc("sent", 1000)
    logs.inc("sent_bytes", 1_300_000)
    telemetry.component("traces_sink").discard("sampling_priority", 7, intentional=True)
    logs.inc("retries", 2)
    logs.gauge("queue_items", lambda: 3)
    logs.gauge("queue_bytes", lambda: 10240)
    logs.gauge("spool_files", lambda: 1)
    logs.gauge("spool_bytes", lambda: 1 / 0)  # a broken gauge must not break anything
    return telemetry


class Running:
    def __init__(self, server: StatusServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.url = f"http://127.0.0.1:{server.address[1]}"

    async def get(self, path: str) -> tuple[int, str, str]:
        async with self.session.get(self.url + path) as response:
            return response.status, response.headers["Content-Type"], await response.text()


@pytest.fixture
async def start_server():
    started: list[StatusServer] = []
    session = aiohttp.ClientSession()

    async def start(telemetry: Telemetry | None = None, config: str = CONFIG, **kwargs) -> Running:
        server = StatusServer(load_config_text(config, path="/etc/llmship/llmship.toml"),
                              telemetry or busy_telemetry(), **kwargs)
        await server.start()
        started.append(server)
        return Running(server, session)

    yield start
    await session.close()
    for server in started:
        await server.shutdown(time.monotonic() + 5)


async def test_health_answers_while_the_loop_runs(start_server):
    running = await start_server()
    status, _, body = await running.get("/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}


async def test_ready_follows_the_readiness_callable(start_server):
    state = {"ready": False}
    running = await start_server(readiness=lambda: state["ready"])
    assert (await running.get("/ready"))[0] == 503  # listeners not bound yet
    state["ready"] = True
    assert (await running.get("/ready"))[0] == 200
    state["ready"] = False  # draining started
    assert (await running.get("/ready"))[0] == 503


async def test_ready_is_503_with_a_reason_when_the_check_raises(start_server):
    def broken() -> bool:
        raise RuntimeError("listener table missing")

    running = await start_server(readiness=broken)
    status, _, body = await running.get("/ready")
    assert status == 503 and "listener table missing" in json.loads(body)["error"]


async def test_status_is_the_snapshot_plus_what_the_agent_runs_with(start_server):
    running = await start_server()
    status, content_type, body = await running.get("/status")
    assert status == 200 and content_type.startswith("application/json")
    doc = json.loads(body)
    assert doc["version"] == __version__
    assert doc["hostname"] == "web-1"
    assert doc["config_path"] == "/etc/llmship/llmship.toml"
    assert doc["sample_rates"]["span_text_rate"] == 0.5
    # the rule sets no span_text_rate: it inherits the default, and that is what status shows
    assert doc["sample_rates"]["rules"] == [{"service": "chat", "model": "*", "endpoint": "*",
                                             "span_text_rate": 0.5, "prompt_log_rate": 1.0}]
    counters = {(c["name"], c["labels"].get("reason")): c["value"]
                for c in doc["components"]["dogstatsd"]["counters"]}
    assert counters[("received", None)] == 1204
    assert counters[("discarded", "parse_error")] == 3
    assert doc["components"]["delivery.logs"]["gauges"]["spool_bytes"] is None
    assert doc["uptime_secs"] >= 0


async def test_info_provider_overrides_and_a_broken_one_still_answers(start_server):
    running = await start_server(info_provider=lambda: {"config_path": "/tmp/reloaded.toml"})
    assert json.loads((await running.get("/status"))[2])["config_path"] == "/tmp/reloaded.toml"

    def broken() -> dict:
        raise KeyError("sampler")

    running = await start_server(info_provider=broken)
    status, _, body = await running.get("/status")
    assert status == 200 and "KeyError" in json.loads(body)["info_error"]


async def test_metrics_is_openmetrics(start_server):
    running = await start_server()
    status, content_type, body = await running.get("/metrics")
    assert status == 200
    assert content_type == OPENMETRICS_CONTENT_TYPE
    assert body.endswith("# EOF\n")
    lines = body.splitlines()
    assert 'llmship_component_received_events_total{component="dogstatsd"} 1204' in lines
    assert 'llmship_component_received_bytes_total{component="dogstatsd"} 90211' in lines
    assert 'llmship_component_sent_events_total{component="delivery.logs"} 1000' in lines
    assert ('llmship_component_discarded_events_total{component="dogstatsd",intentional="false",'
            'reason="parse_error"} 3') in lines
    assert ('llmship_component_discarded_events_total{component="dogstatsd",intentional="false",'
            'reason="we\\"ird\\\\reason\\nx"} 1') in lines
    assert ('llmship_component_discarded_events_total{component="traces_sink",intentional="true",'
            'reason="sampling_priority"} 7') in lines
    assert ('llmship_component_errors_total{component="dogstatsd",error_type="parse_error",stage="processing"} 1'
            in lines)
    assert 'llmship_queue_bytes{component="delivery.logs"} 10240' in lines
    assert "# TYPE llmship_component_received_events counter" in lines
    assert "# TYPE llmship_queue_bytes gauge" in lines
    assert any(line.startswith("# HELP llmship_component_discarded_events ") for line in lines)
    assert not any(line.startswith("llmship_spool_bytes") for line in lines)  # its reader failed
    assert sum(line.startswith("# TYPE llmship_component_discarded_events ") for line in lines) == 1  # once
    assert not any(line.startswith(("llmship_dropped", "llmship_events_")) for line in lines)  # old names gone


def test_metrics_parse_with_a_strict_openmetrics_parser():
    parser = pytest.importorskip("prometheus_client.openmetrics.parser",
                                 reason="prometheus-client (test dependency) is not installed")
    telemetry = busy_telemetry()
    telemetry.component("sources.traces").inc("errors", error_type="bad msgpack", component="clash")
    doc = {**telemetry.snapshot(), "version": "0.1.0", "hostname": "web-1"}
    families = {f.name: f for f in parser.text_string_to_metric_families(render_openmetrics(doc))}
    assert families["llmship_component_received_events"].type == "counter"
    assert families["llmship_queue_items"].type == "gauge"
    assert families["llmship_build"].type == "info"
    reasons = {s.labels["reason"] for s in families["llmship_component_discarded_events"].samples
               if s.labels["intentional"] == "false"}
    assert reasons == {"parse_error", 'we"ird\\reason\nx'}  # escaped on the wire, exact when parsed
    error = families["llmship_component_errors"].samples[-1]
    assert error.labels["component"] == "sources.traces" and error.labels["exported_component"] == "clash"


async def test_the_api_key_is_redacted_from_every_answer(start_server):
    telemetry = busy_telemetry()
    leaky = telemetry.component("delivery.series")
    leaky.error("http_403", f"intake said: invalid key {TEST_API_KEY}")
    leaky.set_info("endpoint", f"https://api.datadoghq.com/api/v2/series?api_key={TEST_API_KEY}")
    leaky.discard(f"key_{TEST_API_KEY}")
    running = await start_server(telemetry)
    for path in ("/status", "/metrics", "/health", "/ready"):
        status, _, body = await running.get(path)
        assert status == 200
        assert TEST_API_KEY not in body, path
    assert "[REDACTED]" in (await running.get("/status"))[2]


async def test_shutdown_is_idempotent_and_closes_the_port(start_server):
    running = await start_server()
    port = running.server.address[1]
    await running.server.shutdown(time.monotonic() + 5)
    await running.server.shutdown(time.monotonic() + 5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# -------------------------------------------------------------------------------------- llmship status


def test_render_table_shows_what_an_operator_asks_first():
    doc = {**busy_telemetry().snapshot(), "version": "0.1.0", "hostname": "web-1",
           "config_path": "/etc/llmship/llmship.toml",
           "sample_rates": {"span_text_rate": 1.0, "prompt_log_rate": 0.1,
                            "rules": [{"service": "chat", "model": "gpt-4*", "endpoint": "*",
                                       "span_text_rate": None, "prompt_log_rate": 0.5}]}}
    doc["components"]["idle.component"] = {"counters": [], "gauges": {}, "info": {}}
    doc["components"]["dogstatsd"]["info"]["last_error"]["at"] = 1000.0
    table = render_table(doc, now=1090.0)
    lines = table.splitlines()
    assert lines[0].startswith("llmship 0.1.0  host=web-1  config=/etc/llmship/llmship.toml")
    header = next(line for line in lines if line.startswith("COMPONENT"))
    for column in ("RECEIVED", "SENT", "LOST", "DISCARDED", "ERRORS", "RETRIES", "QUEUE", "SPOOL"):
        assert column in header
    dsd = next(line for line in lines if line.startswith("dogstatsd "))
    assert "1,204 / 88.1 KiB" in dsd and " 4 " in dsd  # 3 + 1 lost
    sink = next(line for line in lines if line.startswith("traces_sink "))
    assert sink.split()[3:6] == ["-", "7", "-"]  # nothing lost, 7 discarded by design, no errors
    logs = next(line for line in lines if line.startswith("delivery.logs "))
    assert "1,000 / 1.2 MiB" in logs and "3 / 10.0 KiB" in logs
    assert "parse_error=3" in table and "sampling_priority=7 (intended)" in table
    error_line = next(line for line in lines if "parse_error: bad line" in line)
    assert "90s ago" in error_line
    assert "span_text_rate=1  prompt_log_rate=0.1" in table
    # the rule sets no span_text_rate: it inherits the default's 1
    assert "service=chat model=gpt-4* endpoint=*  span_text_rate=1  prompt_log_rate=0.5" in table
    assert not any(line.startswith("idle.component") for line in lines)
    assert "(nothing counted yet: idle.component)" in lines
    assert all("\n" not in line for line in lines)


def test_render_table_shows_the_privacy_audit():
    telemetry = Telemetry()
    scrub = telemetry.component("scrub")
    scrub.inc("scrub_matches", 3, rule="email", action="redact", kind="llmobs")
    scrub.inc("scrub_matches", 2, rule="email", action="redact", kind="logs")
    scrub.inc("scrub_matches", 1, rule="user_id", action="hash", kind="spans")
    scrub.inc("scrub_fields", 4, field="meta.input.messages.0.content", action="drop", kind="llmobs")
    scrub.inc("scrub_failed", 1, kind="logs")
    scrub.inc("databases_built", 1, source="child")
    scrub.inc("databases_built", 2, source="cache")
    lines = render_table(telemetry.snapshot()).splitlines()
    section = lines[lines.index("Scrubbed (component scrub), by kind:") + 1:]
    rows = {" ".join(line.split()) for line in section[:5]}
    assert rows == {"email redact: llmobs=3 logs=2", "user_id hash: spans=1",
                    "field meta.input.messages.0.content drop: llmobs=4", "scrubbing raised dropped: logs=1",
                    "hyperscan databases built: cache=2 child=1"}
    assert not any("nothing counted yet" in line and "scrub" in line for line in lines)


def test_render_table_with_nothing_reported_yet():
    assert "no components have reported yet" in render_table({"components": {}})


@pytest.mark.parametrize("given,expected", [
    ("127.0.0.1:5012", "http://127.0.0.1:5012/status"),
    ("http://127.0.0.1:5012", "http://127.0.0.1:5012/status"),
    ("http://127.0.0.1:5012/", "http://127.0.0.1:5012/status"),
    ("http://agent:5012/status", "http://agent:5012/status"),
])
def test_status_url(given, expected):
    assert status_url(given) == expected


@pytest.mark.parametrize("listen,expected", [
    ("0.0.0.0:5012", "http://127.0.0.1:5012/status"),
    ("[::]:5012", "http://[::1]:5012/status"),
    ("[::1]:5012", "http://[::1]:5012/status"),
    ("10.0.0.7:5012", "http://10.0.0.7:5012/status"),
])
def test_url_for_listen(listen, expected):
    assert url_for_listen(listen) == expected


async def test_status_main_prints_the_table_or_json(start_server, capsys):
    running = await start_server()
    code = await asyncio.to_thread(status_main, argparse.Namespace(url=running.url, json=False, config=None))
    out = capsys.readouterr().out
    assert code == 0 and "dogstatsd" in out and "COMPONENT" in out and TEST_API_KEY not in out
    code = await asyncio.to_thread(status_main, argparse.Namespace(url=running.url, json=True, config=None))
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["hostname"] == "web-1"


def test_status_main_reports_an_unreachable_agent_in_one_line(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed on leaving: nothing listens there
    code = status_main(argparse.Namespace(url=f"127.0.0.1:{port}", json=False, config=None))
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "cannot reach the agent" in err and "Traceback" not in err


async def test_fetch_status_rejects_something_that_is_not_the_agent(start_server):
    running = await start_server()
    with pytest.raises(StatusUnavailable, match="HTTP 404"):
        await asyncio.to_thread(fetch_status, running.url + "/nope")
    with pytest.raises(StatusUnavailable, match="JSON"):
        await asyncio.to_thread(fetch_status, running.url + "/metrics")


# ----------------------------------------------------------------------------------------- self-metrics


def test_self_metrics_ship_increases_as_counts_and_gauges_as_is():
    telemetry = busy_telemetry()
    first = {(name, tags): (mtype, value) for name, mtype, value, tags in self_metrics(telemetry)}
    assert first[("llmship.component_received_events", "llmship:self,component:dogstatsd")] == ("c", 1204)
    discarded = ("llmship.component_discarded_events",
                 "llmship:self,component:dogstatsd,intentional:false,reason:parse_error")
    assert first[discarded] == ("c", 3)
    assert first[("llmship.queue_bytes", "llmship:self,component:delivery.logs")] == ("g", 10240)
    assert not any(name == "llmship.spool_bytes" for name, _ in first)  # its reader failed
    # tag separators in a label value would split the tag string the aggregator parses
    assert all(tags.count(",") == tags.count(":") - 1 for _, tags in first)

    telemetry.component("dogstatsd").inc("received", 6)
    second = {(name, tags): (mtype, value) for name, mtype, value, tags in self_metrics(telemetry)}
    assert second[("llmship.component_received_events", "llmship:self,component:dogstatsd")] == ("c", 6)
    assert second[discarded] == ("c", 0)


def test_a_failing_gauge_is_reported_with_its_error_not_silently_none():
    telemetry = Telemetry()
    comp = telemetry.component("delivery.logs")
    comp.inc("received", 3)
    comp.gauge("queue_items", lambda: 1)
    comp.gauge("spool_bytes", lambda: 1 / 0)
    doc = telemetry.snapshot()
    data = doc["components"]["delivery.logs"]
    assert data["gauges"] == {"queue_items": 1, "spool_bytes": None}
    assert data["info"]["gauge_errors"] == {"spool_bytes": "ZeroDivisionError: division by zero"}
    assert comp.info.get("gauge_errors") is None  # the snapshot says it; the component keeps no stale copy
    table = render_table(doc)
    assert "Gauges not read:" in table
    assert "delivery.logs  spool_bytes: unavailable: ZeroDivisionError: division by zero" in table
