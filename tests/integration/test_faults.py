"""Issue 5's fault tests against the whole agent: outages, error storms, 413s, kill -9, SIGTERM, floods.

Every test runs the real `llmship run` and the real `llmship intake` as processes on loopback, sends logs
through the agent's HTTP logs source (a 202 there is the agent's acknowledgement: "accepted"), and checks
what reached the intake. Windows are short parameters so the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import string
import threading
import time
import urllib.error
import urllib.request

import msgpack
import pytest

from harness import TEST_API_KEY, Intake, free_port, wait_for

MiB = 1024 * 1024


def spool_config(port: int, **delivery) -> str:
    """The agent pointed at ``port`` (where an intake may or may not listen), with a spool."""
    settings = {"spool_dir": "{tmp}/spool", "spool_flush_secs": 0.5, "retry_initial_secs": 0.1,
                "retry_max_secs": 0.5, **delivery}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return f"""
[sinks.datadog]
url = "http://127.0.0.1:{port}"
api_key = "{TEST_API_KEY}"
[delivery]
{lines}
"""


@pytest.fixture
def intake_on(tmp_path):
    """Start `llmship intake` on a given port: the agent was configured for it while nothing listened."""
    started: list[Intake] = []

    def start(port: int, *flags: str) -> Intake:
        server = Intake(tmp_path, *flags, port=port)
        server.port, server.url = port, f"http://127.0.0.1:{port}"
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def noise(n: int) -> str:
    """Incompressible text that no default scrub rule touches (random hex grows card-number-like runs)."""
    return "".join(random.choices(string.ascii_letters, k=n))


def status_of(request: urllib.request.Request, timeout: float) -> int:
    """The HTTP status the agent answers ``request`` with (0: no connection)."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def post_logs(agent, messages: list[str], timeout: float = 10.0) -> int:
    """POST one JSON array of logs to the agent's HTTP logs source; the HTTP status."""
    body = json.dumps([{"message": m, "service": "faults"} for m in messages]).encode()
    return status_of(urllib.request.Request(f"http://127.0.0.1:{agent.ports['logs_http_port']}/api/v2/logs",
                                            data=body, headers={"Content-Type": "application/json"},
                                            method="POST"), timeout)


def send(agent, prefix: str, n: int, per_request: int = 50) -> list[str]:
    """Send ``n`` logs; all must be accepted (202). Returns their messages."""
    messages = [f"{prefix}-{i}-{noise(24)}" for i in range(n)]
    for i in range(0, n, per_request):
        assert post_logs(agent, messages[i:i + per_request]) == 202
    return messages


def messages_at(intake: Intake) -> list[str]:
    return [r["data"]["message"] for r in intake.records("logs")]


def wait_for_all(intake: Intake, expected: list[str], timeout: float) -> list[str]:
    want = set(expected)
    return wait_for(lambda: want <= set(got := messages_at(intake)) and got, timeout=timeout,
                    what=f"{len(want)} logs at the intake")


def post_spans(agent, messages: list[str], timeout: float = 10.0) -> int:
    """PUT one v0.4 payload with a one-span trace per message (in its meta) to the trace API, asking for
    real HTTP statuses as ddtrace does; the HTTP status."""
    now = time.time_ns()
    traces = [[{"trace_id": random.getrandbits(63), "span_id": random.getrandbits(63), "parent_id": 0,
                "name": "flood", "service": "faults", "resource": "flood", "start": now, "duration": 1000,
                "error": 0, "meta": {"message": m}, "metrics": {"_sampling_priority_v1": 1}}] for m in messages]
    request = urllib.request.Request(
        f"http://127.0.0.1:{agent.ports['trace_port']}/v0.4/traces", data=msgpack.packb(traces), method="PUT",
        headers={"Content-Type": "application/msgpack", "X-Datadog-Trace-Count": str(len(traces)),
                 "Datadog-Send-Real-Http-Status": "true"})
    return status_of(request, timeout)


class Sender(threading.Thread):
    """Posts batches (``post``: logs by default) until stopped or the agent stops answering; remembers what
    was accepted."""

    def __init__(self, agent, prefix: str, per_request: int = 20, body_padding: int = 0, post=post_logs) -> None:
        super().__init__(daemon=True)
        self.agent, self.prefix, self.per_request, self.post = agent, prefix, per_request, post
        # 64 kB of distinct noise, more than gzip's 32 kB window: padded payloads stay incompressible
        self.pads = [noise(body_padding) for _ in range(64 * 1024 // body_padding)] if body_padding else [""]
        self.bytes_offered = 0
        self.accepted: list[str] = []
        self.statuses: dict[int, int] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            batch = [f"{self.prefix}-{n + i}-{random.choice(self.pads)}" for i in range(self.per_request)]
            n += self.per_request
            self.bytes_offered += sum(len(m) for m in batch)
            status = self.post(self.agent, batch, timeout=30)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status in (200, 202):
                self.accepted.extend(batch)
            elif status == 0:
                return  # the agent stopped listening

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def gauges(agent, component: str = "delivery.logs") -> dict:
    """A delivery lane's gauges; {} until its first payload (lanes are created on first use)."""
    return agent.status()["components"].get(component, {}).get("gauges", {})


# ------------------------------------------------------------------------------------------------ tests


def send_counters(agent, metric: str, n: int, per_datagram: int = 25) -> None:
    """``n`` increments of one DogStatsD counter over UDP, client-side buffered as DogStatsd does it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(0, n, per_datagram):
            lines = "\n".join(f"{metric}:1|c|#source:faults" for _ in range(min(per_datagram, n - i)))
            s.sendto(lines.encode(), ("127.0.0.1", agent.ports["dsd_port"]))


def post_traces(agent, first_trace_id: int, n_traces: int) -> int:
    """``n_traces`` two-span traces as ddtrace sends them (v0.4 msgpack); the agent's HTTP status."""
    now = time.time_ns()
    traces = []
    for trace_id in range(first_trace_id, first_trace_id + n_traces):
        root = {"trace_id": trace_id, "span_id": trace_id * 10 + 1, "parent_id": 0, "name": "faults.request",
                "service": "faults", "resource": "GET /faults", "type": "web", "start": now, "duration": 2000,
                "error": 0, "meta": {"env": "test"}, "metrics": {"_sampling_priority_v1": 1}}
        child = {**root, "span_id": trace_id * 10 + 2, "parent_id": trace_id * 10 + 1, "name": "faults.db",
                 "metrics": {}}
        traces.append([root, child])
    request = urllib.request.Request(
        f"http://127.0.0.1:{agent.ports['trace_port']}/v0.4/traces", data=msgpack.packb(traces), method="PUT",
        headers={"Content-Type": "application/msgpack", "X-Datadog-Trace-Count": str(n_traces)})
    return status_of(request, 10)


def counter_total(intake: Intake, metric: str) -> float:
    """What a counter's series add up to: each point is a rate per second over its interval."""
    return sum(point["value"] * r["data"]["interval"]
               for r in intake.records("series") if r["data"]["metric"] == metric for point in r["data"]["points"])


def delivered_payload_ids(intake: Intake, kind: str) -> list[str]:
    return [r["payload_id"] for r in intake.requests(kind) if 200 <= r["status"] < 300]


@pytest.mark.parametrize("outage_secs", [2.0])
def test_intake_down_then_up_delivers_every_series_log_and_span_once(start_agent, intake_on, outage_secs):
    port = free_port()
    agent = start_agent(spool_config(port))
    sent_logs = send(agent, "outage", 300)
    send_counters(agent, "faults.outage.requests", 500)
    span_ids = set()
    for batch in range(5):  # 5 x 20 traces of 2 spans
        first = 1_000 + batch * 20
        assert post_traces(agent, first, 20) == 200
        span_ids |= {t * 10 + k for t in range(first, first + 20) for k in (1, 2)}
    wait_for(lambda: agent.counter("dogstatsd", "received") >= 500, timeout=10, what="500 counter lines")
    # Down (connection refused): accepted data of every kind reaches the spool.
    for lane, at_least in (("delivery.logs", 300), ("delivery.traces", 200), ("delivery.series", 1)):
        wait_for(lambda: agent.counter(lane, "spooled") >= at_least, timeout=15, what=f"{lane} spooled")
    assert agent.counter("delivery.logs", "errors", error_type="connection") >= 1
    # Up, but answering 503 for outage_secs, then healthy.
    intake = intake_on(port, "--fail-for-secs", str(outage_secs))
    got = wait_for_all(intake, sent_logs, timeout=outage_secs + 20)
    assert sorted(got) == sorted(sent_logs)  # every log once
    spans = wait_for(lambda: (s := intake.records("traces")) and {r["data"]["span_id"] for r in s} >= span_ids
                     and s, timeout=20, what="every span at the intake")
    assert sorted(r["data"]["span_id"] for r in spans) == sorted(span_ids)  # every span once
    wait_for(lambda: counter_total(intake, "faults.outage.requests") >= 500, timeout=20, what="the counter's series")
    assert counter_total(intake, "faults.outage.requests") == pytest.approx(500)  # every increment once
    assert any(r["fault"] == "fail_for_secs" for r in intake.requests())
    for kind in ("logs", "traces", "series"):
        ids = delivered_payload_ids(intake, kind)
        assert ids and len(ids) == len(set(ids)), kind  # exactly once per payload id
        assert agent.counter(f"delivery.{kind}", "discarded") == 0
    wait_for(lambda: all(gauges(agent, f"delivery.{kind}")["spool_files"] == 0 for kind in ("logs", "traces", "series")),
             timeout=10, what="the spool emptied")


@pytest.mark.parametrize("status, retry_after", [(503, None), (429, "1")])
def test_an_error_storm_gets_no_retry_storm(start_intake, start_agent, status, retry_after):
    flags = ["--fail-first", "1000000", "--fail-status", str(status)]
    if retry_after:
        flags += ["--retry-after", retry_after]
    intake = start_intake(*flags)
    agent = start_agent("[delivery]\nmax_concurrency = 4\nretry_initial_secs = 0.1\nretry_max_secs = 1.0\n"
                        "drain_timeout_secs = 1.0\n",
                        intake=intake)
    sender = Sender(agent, f"storm{status}")
    sender.start()
    wait_for(lambda: intake.requests("logs"), timeout=10, what="the first request")
    first_at = intake.requests("logs")[0]["at"]
    time.sleep(2.5)  # the measurement window (not a synchronization): let the intake fail for a while
    sender.stop()
    requests = [r for r in intake.requests("logs") if r["at"] >= first_at]
    elapsed = requests[-1]["at"] - first_at
    assert sender.accepted and agent.counter("delivery.logs", "received") > 0
    # At most max_concurrency (4) requests per backoff window. With Retry-After: 1 every window lasts at
    # least a second. Without it the window is full jitter under a ceiling that doubles from 0.1 s to the
    # 1 s cap but is at most half the outage so far: about 16 windows, 64 requests, in this window (96 at
    # the 99.9th percentile of a simulation), where a retry loop without backoff would make thousands.
    bound = 4 * (elapsed + 1) if retry_after else 120
    assert 4 <= len(requests) <= bound, (len(requests), elapsed)
    assert agent.counter("delivery.logs", "retries") >= 3
    assert agent.counter("delivery.logs", "discarded") == 0  # kept in memory, within the queue's budget


def test_413_splits_and_everything_arrives(start_intake, start_agent):
    intake = start_intake("--max-body-bytes", "3000", "--fail-kind", "logs")
    agent = start_agent("", intake=intake)
    # Random text does not compress: 200 logs make a payload of about 12 kB, four times the limit.
    sent = [f"split-{i}-{noise(48)}" for i in range(200)]
    assert post_logs(agent, sent) == 202
    got = wait_for_all(intake, sent, timeout=20)
    assert sorted(got) == sorted(sent)
    statuses = {r["status"] for r in intake.requests("logs")}
    assert statuses == {413, 202}
    assert agent.counter("delivery.logs", "splits") >= 2
    assert agent.counter("delivery.logs", "discarded") == 0


def test_kill_9_with_a_spool_then_restart_delivers_the_spooled_data(start_agent, intake_on):
    port = free_port()
    agent = start_agent(spool_config(port))
    sent = send(agent, "killed", 300)
    wait_for(lambda: agent.counter("delivery.logs", "spooled") >= 300, timeout=10, what="300 logs spooled")
    agent.stop(signal.SIGKILL)
    assert agent.proc.returncode == -signal.SIGKILL
    intake = intake_on(port)
    agent.start()  # same config, same spool directory
    got = wait_for_all(intake, sent, timeout=20)
    assert sorted(got) == sorted(sent)  # the intake was down: nothing was sent twice


def test_sigterm_during_load_exits_within_the_drain_timeout_and_loses_nothing_accepted(start_agent, intake_on):
    port = free_port()
    drain_secs = 3.0
    agent = start_agent(spool_config(port, drain_timeout_secs=drain_secs))
    sender = Sender(agent, "term")
    sender.start()
    wait_for(lambda: len(sender.accepted) >= 200, timeout=10, what="load accepted")
    stop_requested = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    returncode = agent.proc.wait(drain_secs + 10)
    took = time.monotonic() - stop_requested
    sender.stop()
    assert returncode == 0
    assert took <= drain_secs + 2, took
    accepted = list(sender.accepted)
    # Restart against a working intake: what the agent accepted before SIGTERM was spooled, so it arrives.
    intake = intake_on(port)
    agent.start()
    got = wait_for_all(intake, accepted, timeout=30)
    assert set(accepted) <= set(got)


def test_sigterm_with_a_slow_intake_delivers_everything_before_exiting(start_intake, start_agent):
    intake = start_intake("--latency-ms", "200")
    agent = start_agent("[delivery]\ndrain_timeout_secs = 10\n", intake=intake)
    sent = send(agent, "slow", 400, per_request=20)
    agent.send_signal(signal.SIGTERM)
    assert agent.proc.wait(15) == 0
    assert sorted(messages_at(intake)) == sorted(sent)  # all of it, before the process exited


@pytest.mark.parametrize("source, post, refusals", [("logs", post_logs, ("logs_http", "refused")),
                                                    ("traces", post_spans, ("traces", "refused"))])
def test_memory_stays_bounded_under_a_flood_with_a_slow_intake(start_intake, start_agent, source, post, refusals):
    intake = start_intake("--latency-ms", "1000")
    queue_max = 2 * MiB
    agent = start_agent(f"[delivery]\nqueue_max_bytes = {queue_max}\nmax_concurrency = 2\n"
                        "drain_timeout_secs = 1\n", intake=intake)
    baseline = rss_bytes(agent.proc.pid)
    senders = [Sender(agent, f"flood{i}", per_request=500, body_padding=1000, post=post) for i in range(4)]
    for s in senders:
        s.start()
    target = 100 * MiB  # offered load, 50 times the queue budget
    flood_deadline = time.monotonic() + 20
    peak_rss, peak_queue = baseline, 0
    while sum(s.bytes_offered for s in senders) < target and time.monotonic() < flood_deadline:
        peak_rss = max(peak_rss, rss_bytes(agent.proc.pid))  # sampled while the flood runs
        peak_queue = max(peak_queue, gauges(agent, f"delivery.{source}").get("queue_bytes", 0))
        time.sleep(0.1)
    for s in senders:
        s.stop()
    assert sum(s.bytes_offered for s in senders) >= target
    assert sum(s.statuses.get(429, 0) for s in senders) > 0  # the source pushed back once the queue was full
    assert agent.counter(*refusals) > 0  # and counted what it refused
    # The queue stays within its budget plus one payload (the intakes cap one at 5 MB).
    assert peak_queue <= queue_max + 5_000_000
    # Memory follows the budgets (queue, open batches, requests being read), not the load: measured
    # growth is about 16 MiB for 100 MiB of logs offered.
    assert peak_rss - baseline < 64 * MiB, peak_rss - baseline


def test_memory_stays_bounded_under_a_dogstatsd_flood(start_intake, start_agent):
    """UDP has no back-pressure: what the agent cannot read, the kernel drops (counted as kernel_drops).
    A flood of a bounded set of contexts must not grow memory with the number of lines."""
    intake = start_intake("--latency-ms", "1000")
    agent = start_agent("", intake=intake)
    baseline = rss_bytes(agent.proc.pid)
    lines = [f"flood.metric.{i % 20}:{i}|{'cdhg'[i % 4]}|#model:m{i % 50},endpoint:/v1/chat" for i in range(1000)]
    datagrams = ["\n".join(lines[i:i + 25]).encode() for i in range(0, len(lines), 25)]
    sent = 0
    peak_rss = baseline
    flood_deadline = time.monotonic() + 10
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while sent < 2_000_000 and time.monotonic() < flood_deadline:
            for datagram in datagrams:
                s.sendto(datagram, ("127.0.0.1", agent.ports["dsd_port"]))
            sent += len(lines)
            if sent % 100_000 == 0:
                peak_rss = max(peak_rss, rss_bytes(agent.proc.pid))
    assert sent >= 100_000
    distinct = len({line.split(":")[0] + line.split("|", 1)[1] for line in lines})
    wait_for(lambda: agent.status()["components"]["aggregator"]["gauges"]["contexts"] == distinct,
             what="one context per distinct name, type and tags")
    assert agent.counter("dogstatsd", "received") > 0
    assert peak_rss - baseline < 64 * MiB, peak_rss - baseline


# Issue 13, defect 7: replay after an outage. The agent runs with the default backoff (1 s doubling to 60 s)
# and four workers per lane, which used to reach the 60 s cap within one outage: spooled data then waited
# 28 s and more after the intake recovered.
DEFAULT_BACKOFF = {"retry_initial_secs": 1.0, "retry_max_secs": 60.0}


def spool_during_outage(agent, prefix: str) -> list[str]:
    """4,500 logs at once: five payloads (the logs sink closes one at 1,000 entries), so that the lane's four
    workers all fail in the first backoff window; every one spooled."""
    sent = send(agent, prefix, 4500, per_request=500)
    wait_for(lambda: agent.counter("delivery.logs", "spooled") >= len(sent), timeout=15, what="the logs spooled")
    return sent


def test_spooled_data_arrives_within_seconds_of_the_intakes_recovery(start_agent, intake_on):
    outage_secs = 12.0
    port = free_port()
    intake = intake_on(port, "--fail-for-secs", str(outage_secs))
    recovered_at = time.time() + outage_secs  # the intake fails for outage_secs from its start
    agent = start_agent(spool_config(port, **DEFAULT_BACKOFF))
    sent = spool_during_outage(agent, "replay")
    wait_for_all(intake, sent, timeout=outage_secs + 70)
    last_arrival = max(r["received_at"] for r in intake.records("logs"))
    lag = last_arrival - recovered_at
    # The last failed window is at most half the outage so far (< 6 s) long; the replay itself is quick.
    assert lag < 8.0, f"the spool was replayed {lag:.1f} s after the intake recovered"
    assert agent.counter("delivery.logs", "discarded") == 0


def test_sigterm_right_after_recovery_delivers_the_spool_before_exiting(start_agent, intake_on):
    port = free_port()
    agent = start_agent(spool_config(port, drain_timeout_secs=10.0, **DEFAULT_BACKOFF))
    sent = spool_during_outage(agent, "term-replay")
    time.sleep(4)  # the outage goes on (connection refused): the backoff window grows
    intake = intake_on(port)
    stop_requested = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    assert agent.proc.wait(20) == 0
    took = time.monotonic() - stop_requested
    assert sorted(messages_at(intake)) == sorted(sent)  # all of it, before the process exited
    assert took < 10.0 + 2, took
