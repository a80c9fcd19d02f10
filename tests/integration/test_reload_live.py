"""SIGHUP on the running agent: a new flush_interval_secs never ships a bucket twice nor loses counts, and
a new [agent] hostname reaches what the DogStatsD source and the aggregator stamp, a new env reaches the
trace API's /info, its state hash and rate keys, and logs settings reach the logs source and sink."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request

import msgpack
from harness import http_get, rewrite_config, wait_for

RATE = 2




def reload(agent, change: dict) -> None:
    before = agent.log_text().count("config_reloaded")
    rewrite_config(agent, change)
    agent.send_signal(signal.SIGHUP)
    wait_for(lambda: agent.log_text().count("config_reloaded") > before, what="the reload")


def host_of(series: dict) -> str | None:
    return next((r["name"] for r in series.get("resources", []) if r.get("type") == "host"), None)


def test_a_flush_interval_change_by_sighup_keeps_counts_exact(intake, start_agent):
    agent = start_agent("[agent]\nflush_interval_secs = 1\n", intake=intake)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        def send_for(secs: float) -> None:
            nonlocal sent
            end = time.monotonic() + secs
            while time.monotonic() < end:  # a sample in every bucket, old and new
                s.sendto(b"reload.count:1|c|#k:v\nreload.hist:5|h|#k:v", ("127.0.0.1", agent.ports["dsd_port"]))
                sent += 1
                time.sleep(0.05)

        send_for(2.5)
        # Reload early in the 1 s bucket [3k+1, 3k+2): an aggregator switching to the 3 s grid (t - t % 3)
        # at once would put the next samples in a bucket starting at 3k, already shipped as a 1 s bucket.
        while not 1.05 < time.time() % 3 < 1.5:
            s.sendto(b"reload.count:1|c|#k:v\nreload.hist:5|h|#k:v", ("127.0.0.1", agent.ports["dsd_port"]))
            sent += 1
            time.sleep(0.02)
        reload(agent, {"agent": {"flush_interval_secs": 3}})
        send_for(4.0)
        wait_for(lambda: agent.counter("dogstatsd", "received") == 2 * sent, what="every line read")
    assert agent.stop() == 0  # the final flush ships the open bucket

    # What Datadog keeps: one point per series and timestamp, the last one received.
    kept: dict[tuple, float] = {}
    seen: list[tuple] = []
    for record in intake.records("series"):
        data = record["data"]
        if data["metric"] not in ("reload.count", "reload.hist.count"):
            continue
        assert data["type"] == RATE
        for point in data["points"]:
            key = (data["metric"], tuple(data["tags"]), host_of(data), point["timestamp"])
            seen.append(key)
            kept[key] = point["value"] * data["interval"]
    assert len(seen) == len(set(seen)), "a bucket was shipped twice (same series and timestamp)"
    for metric in ("reload.count", "reload.hist.count"):
        total = sum(v for k, v in kept.items() if k[0] == metric)
        assert round(total, 6) == sent, f"{metric}: {total} at the intake, {sent} sent"
    intervals = {r["data"]["interval"] for r in intake.records("series") if r["data"]["metric"] == "reload.count"}
    assert intervals == {1, 3}


def test_a_hostname_change_by_sighup_reaches_the_next_series_events_and_checks(intake, start_agent):
    agent = start_agent("[agent]\nflush_interval_secs = 1\n", intake=intake)
    port = agent.ports["dsd_port"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"host.before:1|c|#k:v", ("127.0.0.1", port))
        intake.wait_records("series", where=lambda r: r["metric"] == "host.before")
        reload(agent, {"agent": {"hostname": "renamed-host"}})
        s.sendto(b"host.before:1|c|#k:v\nhost.after:1|g", ("127.0.0.1", port))  # an existing context, a new one
        s.sendto(b"_e{5,4}:title|text\n_sc|after.check|0", ("127.0.0.1", port))
        for metric in ("host.before", "host.after"):
            intake.wait_records("series", where=lambda r, m=metric: r["metric"] == m and host_of(r) == "renamed-host")
        event = intake.wait_records("events", where=lambda r: r.get("title") == "title")[0]["data"]
        check = intake.wait_records("service_checks", where=lambda r: r.get("check") == "after.check")[0]["data"]
    assert event["host"] == "renamed-host"
    assert check["host_name"] == "renamed-host"


def put_trace(agent, service: str) -> tuple[dict, dict]:
    """PUT one v0.4 trace (a span without env) to the trace API: the answer's headers and rate_by_service."""
    body = msgpack.packb([[{"trace_id": 7, "span_id": 7, "parent_id": 0, "name": "op", "service": service,
                            "resource": "r", "start": time.time_ns(), "duration": 1, "error": 0, "meta": {},
                            "metrics": {}}]])
    request = urllib.request.Request(f"http://127.0.0.1:{agent.ports['trace_port']}/v0.4/traces", data=body,
                                     method="PUT", headers={"Content-Type": "application/msgpack"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return dict(r.headers), json.loads(r.read())["rate_by_service"]


def test_an_env_change_by_sighup_reaches_the_trace_apis_info_state_and_rates(intake, start_agent):
    agent = start_agent('[agent]\nenv = "staging"\n', intake=intake)
    info_url = f"http://127.0.0.1:{agent.ports['trace_port']}/info"
    code, body = http_get(info_url)
    assert code == 200 and json.loads(body)["config"]["default_env"] == "staging"
    headers, rates = put_trace(agent, "svc")
    state_before = headers["Datadog-Agent-State"]
    assert "service:svc,env:staging" in rates

    reload(agent, {"agent": {"env": "prod"}})

    assert json.loads(http_get(info_url)[1])["config"]["default_env"] == "prod"
    headers, rates = put_trace(agent, "svc")
    assert headers["Datadog-Agent-State"] != state_before  # tracers re-read /info when it changes
    assert "service:svc,env:prod" in rates and "service:svc,env:staging" not in rates


def test_logs_settings_change_by_sighup_reach_the_source_and_the_sinks_batch_age(intake, start_agent):
    # flush_interval_secs 10: the logs sink batches for 5 s (BATCH_WAIT_SECS); after the reload, for 1 s.
    agent = start_agent("[agent]\nflush_interval_secs = 10\n", intake=intake)
    reload(agent, {"agent": {"flush_interval_secs": 1}, "sources.logs": {"max_line_bytes": 1000}})
    line = json.dumps({"message": "x" * 4000, "service": "reloaded"}).encode() + b"\n"
    sent_at = time.monotonic()
    with socket.create_connection(("127.0.0.1", agent.ports["logs_tcp_port"])) as s:
        s.sendall(line)
        record = intake.wait_records("logs", timeout=10)[0]["data"]
    took = time.monotonic() - sent_at
    assert record["llmship"] == {"line_bytes": len(line) - 1}  # cut at the new max_line_bytes (default 256 kB)
    assert took < 3.5, f"the log waited {took:.1f} s: the sink still batches for 5 s"
