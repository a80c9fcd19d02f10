"""`llmship tap` through the CLI against the running agent."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import msgpack
from harness import PYTHON, _subprocess_env, wait_for


def llmship(*args: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "llmship", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_subprocess_env(None))


def tapping(agent, n: int = 1) -> None:
    wait_for(lambda: agent.status()["components"].get("tap", {}).get("gauges", {}).get("subscribers") == n,
             what=f"{n} tap(s) connected")


def post_logs(agent, records: list[dict]) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{agent.ports['logs_http_port']}/api/v2/logs",
                                     data=json.dumps(records).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


def put_traces(agent, traces: list[list[dict]]) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{agent.ports['trace_port']}/v0.4/traces",
                                     data=msgpack.packb(traces), method="PUT",
                                     headers={"Content-Type": "application/msgpack"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def span(trace_id: int, service: str, priority: int) -> dict:
    return {"trace_id": trace_id, "span_id": trace_id, "parent_id": 0, "name": "op", "service": service,
            "resource": "r", "start": time.time_ns(), "duration": 1000, "error": 0, "meta": {},
            "metrics": {"_sampling_priority_v1": priority}}


def test_tap_streams_what_is_about_to_be_sent_filtered_by_kind_and_service(intake, start_agent):
    agent = start_agent(intake=intake)
    tap = llmship("tap", "--url", agent.status_url, "--kind", "logs", "--kind", "metrics", "--service", "svc-a",
                  "--limit", "2")
    tapping(agent)
    post_logs(agent, [{"message": "reach me at bob@example.com", "service": "svc-a"},
                      {"message": "other service", "service": "svc-b"}])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"tap.requests:1|c|#service:svc-a\ntap.other:1|c|#service:svc-b",
                 ("127.0.0.1", agent.ports["dsd_port"]))
    out, err = tap.communicate(timeout=30)
    assert tap.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    by_kind = {line["kind"]: line["data"] for line in lines}
    assert set(by_kind) == {"logs", "metrics"}
    # after scrubbing and tagging: what the logs intake gets
    assert by_kind["logs"]["message"] == "reach me at [REDACTED:email]"
    assert by_kind["logs"]["hostname"] == "test-host"
    assert by_kind["metrics"]["metric"] == "tap.requests" and "service:svc-a" in by_kind["metrics"]["tags"]
    assert "2 shown, 0 skipped" in err
    intake.wait_records("logs", n=2)  # tapping took nothing away


def test_tap_shows_spans_after_priority_sampling(intake, start_agent):
    agent = start_agent(intake=intake)
    tap = llmship("tap", "--url", agent.status_url, "--kind", "spans", "--limit", "1")
    tapping(agent)
    put_traces(agent, [[span(1, "dropped-by-sampling", 0)], [span(2, "kept", 1)]])
    out, _ = tap.communicate(timeout=30)
    chunk = json.loads(out.splitlines()[0])["data"]
    assert [s["service"] for s in chunk["spans"]] == ["kept"]  # priority 0: not sent, not tapped


def test_a_tap_is_rate_bounded_and_says_what_it_skipped_while_everything_is_delivered(intake, start_agent):
    agent = start_agent(intake=intake)
    tap = llmship("tap", "--url", agent.status_url, "--kind", "logs", "--rate", "5", "--duration", "3")
    tapping(agent)
    for batch in range(10):
        post_logs(agent, [{"message": f"flood {batch}-{i}", "service": "flood"} for i in range(50)])
    out, err = tap.communicate(timeout=30)
    shown = len(out.splitlines())
    assert 1 <= shown <= 5 + 3 * 5 + 1  # the bucket's burst, then 5 a second
    skipped = int(err.split(" shown, ")[1].split(" skipped")[0])
    assert skipped >= 500 - shown - 25, err  # the rest was skipped and counted (a heartbeat may lag)
    intake.wait_records("logs", n=500)
    wait_for(lambda: agent.counter("tap", "discarded", reason="tap_skipped", intentional="true") >= skipped,
             what="the tap's skips in the agent's counters")
    assert agent.counter("delivery.logs", "discarded") == 0


def test_tap_with_workers_shows_the_spans_and_logs_the_workers_encode(intake, start_agent):
    """With workers the parent tells them what a tap wants; they relay it. The parent learns of a tap at
    once, the workers within a check (50 ms): the test sends until each tap has what it waits for."""
    agent = start_agent("[agent]\nworkers = 2\n", intake=intake)
    taps = {kind: llmship("tap", "--url", agent.status_url, "--kind", kind, "--service", "svc-a", "--limit", "1")
            for kind in ("logs", "spans")}
    tapping(agent, 2)
    sent = iter(range(1, 1000))

    def send_until_tapped() -> bool:
        n = next(sent)
        post_logs(agent, [{"message": "reach me at bob@example.com", "service": "svc-a"},
                          {"message": "other service", "service": "svc-b"}])
        put_traces(agent, [[span(n, "svc-a", 1)], [span(10_000 + n, "svc-b", 1)]])
        return all(tap.poll() is not None for tap in taps.values())

    wait_for(send_until_tapped, timeout=30, interval=0.1, what="both taps' items")
    shown = {}
    for kind, tap in taps.items():
        out, err = tap.communicate(timeout=30)
        assert tap.returncode == 0 and "1 shown" in err, err
        doc = json.loads(out.splitlines()[0])
        assert doc["kind"] == kind
        shown[kind] = doc["data"]
    assert shown["logs"]["message"] == "reach me at [REDACTED:email]"  # as a worker encoded it
    assert [s["service"] for s in shown["spans"]["spans"]] == ["svc-a"]  # the parent's --service filter
