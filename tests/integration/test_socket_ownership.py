"""Two agents configured with the same unix socket path: the second must not take the first one's socket
(llmship.unixsock), and stopping it must not delete the first one's file."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import tempfile

import pytest

from harness import wait_for


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self._path)


def info_over(path: str) -> int:
    conn = _UnixHTTPConnection(path)
    try:
        conn.request("GET", "/info")
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture
def short_dir():
    path = tempfile.mkdtemp(prefix="llmship-sock-", dir="/tmp")  # sun_path holds 108 bytes at most
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_second_agent_cannot_take_the_first_ones_trace_socket(start_agent, short_dir):
    path = os.path.join(short_dir, "apm.socket")
    first = start_agent(f'[sources.traces]\nsocket = "{path}"\n')
    assert info_over(path) == 200
    inode = os.lstat(path).st_ino

    with pytest.raises(RuntimeError) as failed:
        start_agent(f'[sources.traces]\nsocket = "{path}"\n')
    message = str(failed.value)
    assert "llmship: traces:" in message and path in message and "in use by another process" in message

    # the first agent still owns and serves its socket, and the file is the one it created
    assert first.proc.poll() is None
    assert os.lstat(path).st_ino == inode
    assert info_over(path) == 200

    # and its own shutdown removes it
    assert first.stop() == 0
    wait_for(lambda: not os.path.exists(path), timeout=5, what="the first agent to remove its socket")
