"""`llmship top` through the CLI against the running agent."""

from __future__ import annotations

import socket
import subprocess
import time

from harness import PYTHON, _subprocess_env


def llmship(*args: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "llmship", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_subprocess_env(None))


def test_top_prints_rates_per_component_without_escape_codes_off_a_terminal(intake, start_agent):
    agent = start_agent(intake=intake)
    top = llmship("top", "--url", agent.status_url, "--interval", "1", "--iterations", "2")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            s.sendto(b"top.requests:1|c", ("127.0.0.1", agent.ports["dsd_port"]))
            time.sleep(0.01)
    out, err = top.communicate(timeout=30)
    assert top.returncode == 0, err
    assert "\x1b[" not in out  # not a terminal: frames one after another
    frames = out.split("llmship top ")[1:]
    assert len(frames) == 2
    header = next(line for line in frames[0].splitlines() if line.startswith("COMPONENT"))
    for column in ("IN ev/s", "OUT ev/s", "LOST/s", "DISCARD/s", "RETRY/s", "INFLIGHT", "QUEUE", "SPOOL"):
        assert column in header
    dsd = next(line for line in frames[1].splitlines() if line.startswith("dogstatsd "))
    assert 20 <= float(dsd.split()[1].replace(",", "")) <= 200  # ~100 lines a second


def test_top_once_against_no_agent_says_so_in_one_line():
    top = llmship("top", "--url", "http://127.0.0.1:9", "--once", "--interval", "0.1")
    _, err = top.communicate(timeout=30)
    assert top.returncode == 1 and "cannot reach the agent" in err and len(err.strip().splitlines()) == 1
