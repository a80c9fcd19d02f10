"""The sd_notify protocol against a real unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import uuid

import pytest

from llmship import notify


@pytest.fixture
def notify_socket(monkeypatch):
    """A bound datagram socket at a short path (sun_path is limited to 108 bytes), set as NOTIFY_SOCKET."""
    directory = tempfile.mkdtemp(prefix="llmship-notify-", dir="/tmp")
    path = os.path.join(directory, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)  # a receive waits at most this long for a message that should already be there
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    yield sock
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def test_ready_stopping_and_status_arrive_as_datagrams(notify_socket):
    assert notify.ready("listening on 5 sockets")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=listening on 5 sockets"
    assert notify.ready()
    assert notify_socket.recv(4096) == b"READY=1"
    assert notify.status("draining\n3 payloads left")
    assert notify_socket.recv(4096) == b"STATUS=draining 3 payloads left"  # one line: systemd reads one
    assert notify.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_reloading_carries_the_monotonic_clock(notify_socket):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = notify_socket.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_abstract_namespace_address(monkeypatch):
    name = f"llmship-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.ready()
        assert sock.recv(4096) == b"READY=1"


def test_unset_is_a_quiet_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    assert notify.stopping() is False


@pytest.mark.parametrize("address", ["/nonexistent/llmship/notify.sock", "vsock:2:1234"])
def test_an_unreachable_or_unsupported_socket_never_raises(monkeypatch, address):
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert notify.ready() is False


async def test_watchdog_pings_at_half_the_interval(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: pings every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval_secs() == pytest.approx(0.1)
    notify_socket.setblocking(False)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(notify.watchdog_loop())
    try:
        pings = [await asyncio.wait_for(loop.sock_recv(notify_socket, 4096), 5) for _ in range(3)]
    finally:
        task.cancel()
    assert pings == [b"WATCHDOG=1"] * 3


@pytest.mark.parametrize("env", [
    {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"},  # meant for another process
    {"WATCHDOG_USEC": "0"},
    {},
])
async def test_watchdog_loop_returns_when_not_asked_for(notify_socket, monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    await asyncio.wait_for(notify.watchdog_loop(), 1)  # returns at once instead of looping
    notify_socket.setblocking(False)
    with pytest.raises(BlockingIOError):
        notify_socket.recv(4096)  # and sent nothing
