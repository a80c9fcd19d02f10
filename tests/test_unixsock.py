"""llmship.unixsock: probe before unlinking, remove only our own file."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import pytest

from llmship import unixsock


@pytest.fixture
def sock_dir():
    path = tempfile.mkdtemp(prefix="llmship-us-", dir="/tmp")  # sun_path holds 108 bytes at most
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_a_live_socket_is_never_taken(sock_dir, kind):
    path = os.path.join(sock_dir, "s")
    owner = socket.socket(socket.AF_UNIX, kind)
    owner.bind(path)
    if kind == socket.SOCK_STREAM:
        owner.listen(1)
    second = socket.socket(socket.AF_UNIX, kind)
    try:
        with pytest.raises(unixsock.SocketInUse, match="in use by another process"):
            unixsock.bind_unix(second, path, 0o722, "test")
        assert os.path.exists(path)
    finally:
        owner.close()
        second.close()


def test_a_stale_file_is_replaced_and_only_our_file_is_removed(sock_dir):
    path = os.path.join(sock_dir, "s")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # left behind, as after a crash
    ours = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    file_id = unixsock.bind_unix(ours, path, 0o722, "test")
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o722)
    # someone else replaced the file meanwhile: it is theirs, and stays
    os.unlink(path)
    theirs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.bind(path)
    try:
        assert unixsock.remove_if_ours(path, file_id) is False  # called while ours is open, as documented
        assert os.path.exists(path)
    finally:
        theirs.close()
        ours.close()
    assert unixsock.remove_if_ours(path, (os.lstat(path).st_dev, os.lstat(path).st_ino)) is True
    assert not os.path.exists(path)


def test_a_file_that_is_not_a_socket_is_left_alone(sock_dir):
    path = os.path.join(sock_dir, "s")
    with open(path, "w") as f:
        f.write("data")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError, match="not a socket"):
            unixsock.bind_unix(sock, path, 0o722, "test")
    finally:
        sock.close()
    assert open(path).read() == "data"
