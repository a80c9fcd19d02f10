"""POST /flush and `llmship flush` against the real agent and `llmship intake`: the answer comes only once
what was accepted is delivered (or spooled), says which with counts, and comes at the deadline, with what
is still held, when the intake is down."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

from harness import PYTHON, UNENDING_BUCKET_SECS, counted, http_get

# A bucket that does not end while a test runs (see UNENDING_BUCKET_SECS): only a flush on demand ships these
# counts, so each test knows how many payloads there are.
LONG_BUCKET = f"""
[agent]
flush_interval_secs = {UNENDING_BUCKET_SECS}
"""
COUNTS = 3


def post_flush(agent, timeout: float | None = None, path: str = "/flush") -> tuple[int, dict, float]:
    url = agent.status_url + path + (f"?timeout={timeout:g}" if timeout is not None else "")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=60) as r:
            code, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        code, body = e.code, e.read()
    return code, json.loads(body), time.monotonic() - started


def send_counts(agent, n: int = COUNTS, metric: str = "jobs.done") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(n):
            s.sendto(f"{metric}:1|c|#step:eval".encode(), ("127.0.0.1", agent.ports["dsd_port"]))


def send_log(agent, message: str = "batch finished") -> None:
    body = json.dumps([{"message": message, "service": "batch"}]).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{agent.ports['logs_http_port']}/api/v2/logs", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status in (200, 202)




def test_flush_answers_once_everything_is_at_the_intake(tmp_path, start_intake, start_agent):
    intake = start_intake("--latency-ms", "800")  # every delivery takes 0.8 s to be acknowledged
    agent = start_agent(LONG_BUCKET, intake=intake)
    send_counts(agent)
    send_log(agent)
    # No sleep: the datagrams may still be in the kernel's buffer when the flush starts; it reads them.
    result = {}
    flusher = threading.Thread(target=lambda: result.update(answer=post_flush(agent, timeout=20)))
    flusher.start()
    # While the flush waits for the slow intake, the agent keeps answering (the flush is not blocking).
    health_started = time.monotonic()
    code, _ = http_get(agent.status_url + "/health")
    assert code == 200 and time.monotonic() - health_started < 0.5
    flusher.join(30)
    code, answer, elapsed = result["answer"]
    # Read the intake right after the answer: everything must already be there.
    assert counted(intake, "jobs.done") == COUNTS
    assert [r["data"]["message"] for r in intake.records("logs")] == ["batch finished"]
    assert code == 200 and answer["status"] == "delivered", answer
    assert answer["pending"] == 0 and answer["delivered"] >= 2 and answer["dropped"] == 0
    assert elapsed >= 0.8  # it waited for the intake's answer
    # The Datadog Lambda extension's path does the same; with nothing new it answers at once.
    code, answer, _ = post_flush(agent, path="/lambda/flush")
    assert code == 200 and answer["status"] == "delivered" and answer["pending"] == 0
    assert http_get(agent.status_url + "/lambda/hello")[0] == 200


def test_flush_cli_prints_the_outcome_and_exits_by_it(tmp_path, start_intake, start_agent):
    intake = start_intake()
    agent = start_agent(LONG_BUCKET, intake=intake)
    send_counts(agent, metric="cli.done")
    done = subprocess.run([PYTHON, "-m", "llmship", "flush", "--url", agent.status_url, "--timeout", "10"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("delivered: 1 events delivered, 0 spooled, 0 dropped, 0 still in memory")
    assert counted(intake, "cli.done") == COUNTS
    gone = subprocess.run([PYTHON, "-m", "llmship", "flush", "--url", "http://127.0.0.1:9", "--timeout", "1"],
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1 and "cannot reach the agent" in gone.stderr


def test_flush_with_the_intake_down_answers_at_the_deadline_and_keeps_the_data(tmp_path, start_intake,
                                                                                start_agent):
    intake = start_intake("--fail-for-secs", "600")
    agent = start_agent(LONG_BUCKET + "[delivery]\ndrain_timeout_secs = 1\n", intake=intake)
    send_counts(agent)
    send_log(agent)
    code, answer, elapsed = post_flush(agent, timeout=1.5)
    assert code == 504 and answer["status"] == "timeout", answer
    assert answer["pending"] == 2 and answer["delivered"] == 0 and answer["spooled"] == 0  # a series, a log
    assert 1.5 <= elapsed < 5
    assert agent.counter("delivery.series", "discarded", intentional="false") == 0  # kept, retried
    cli = subprocess.run([PYTHON, "-m", "llmship", "flush", "--url", agent.status_url, "--timeout", "0.5",
                          "--json"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 3 and json.loads(cli.stdout)["pending"] == 2


def test_flush_with_the_intake_down_and_a_spool_answers_once_spooled(tmp_path, start_intake, start_agent):
    intake = start_intake("--fail-for-secs", "600")
    agent = start_agent(LONG_BUCKET + f'[delivery]\nspool_dir = "{tmp_path}/spool"\nspool_flush_secs = 0.5\n'
                        "drain_timeout_secs = 1\n", intake=intake)
    send_counts(agent)
    send_log(agent)
    code, answer, elapsed = post_flush(agent, timeout=20)
    assert code == 200 and answer["status"] == "spooled", answer
    assert answer["spooled"] == 2 and answer["pending"] == 0 and answer["delivered"] == 0
    assert elapsed < 10  # well before the deadline: on disk is settled
    assert agent.counter("delivery.series", "spooled") == 1 and agent.counter("delivery.logs", "spooled") == 1
    code, answer, _ = post_flush(agent, timeout=0)  # a bad timeout is refused, not a flush
    assert code == 400
