"""What the bench scripts share: cores, ports, CPU time of a process, waiting on a condition."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from pathlib import Path

# The cores this run may use, read before anything is pinned (pinned children inherit a single core).
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def pin(pid: int, cpu: int) -> None:
    """Pin ``pid`` (0: this process) to the ``cpu``-th usable core, when there are two or more."""
    if len(CPUS) >= 2:
        os.sched_setaffinity(pid, {CPUS[cpu % len(CPUS)]})


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_cpu_secs(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (finished ones included), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something true (returned), with a deadline. A process not up
    yet (connection refused, no database file) counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, sqlite3.Error):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
