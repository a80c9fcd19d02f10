"""Unix socket files for listeners: bind without taking over another agent's socket, and on shutdown
remove only the file this process created.

Every unix listener (DogStatsD datagram and stream, the trace API, and any later one) binds through
``bind_unix`` and removes its file with ``remove_if_ours``:

- Before binding, a file already at the path is probed: connecting to it succeeds only if some process
  still listens there. Then binding fails with ``SocketInUse`` and the file is left alone; a second
  ``llmship run`` with the same path must not steal the first one's clients (unlinking a live socket
  file silently detaches it: the first process keeps an open socket nobody can reach). A socket file
  nobody answers on is a leftover of a process that is gone, and is removed. Anything that is not a
  socket is never removed. The Datadog Agent does the same probe for its dsd socket
  (comp/dogstatsd/listeners/uds_common.go: "the socket is already in use" when a dial succeeds).
- The file's identity (st_dev, st_ino) is recorded at bind; on shutdown it is removed only if the file
  at the path is still that one. A process that lost the path to another (after an operator removed
  the file, say) must not delete the newcomer's socket.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

FileId = tuple[int, int]  # (st_dev, st_ino) of the socket file we created


class SocketInUse(OSError):
    """Another process listens on the socket file we were asked to bind."""


def remove_stale(path: str, kind: int, who: str) -> None:
    """Remove ``path`` if it is a socket file nobody listens on; raise OSError if anything else is there.

    ``kind`` is the socket type to probe with (SOCK_DGRAM or SOCK_STREAM): connecting with the wrong
    type fails (EPROTOTYPE) even while the owner listens, which would read as "stale"."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{who}: {path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):  # nobody listens any more (or it just went)
        pass
    except OSError as e:
        # EPROTOTYPE: a socket of the other type lives there, so someone owns it; EACCES and others:
        # we cannot tell, and removing a live socket is the one thing this must never do.
        raise SocketInUse(e.errno, f"{who}: {path} cannot be probed ({e.strerror}); not removing it") from None
    else:
        raise SocketInUse(f"{who}: {path} is in use by another process (is another llmship running?)")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def bind_unix(sock: socket.socket, path: str, mode: int, who: str) -> FileId:
    """Bind ``sock`` to ``path`` (creating its directory), chmod it to ``mode``; return the file's id
    for ``remove_if_ours``. Raises OSError with a message naming ``who`` and the path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path, sock.type, who)
    try:
        sock.bind(path)
    except OSError as e:
        raise OSError(e.errno, f"{who}: cannot listen on {path}: {e.strerror}") from None
    st = os.lstat(path)
    os.chmod(path, mode)
    return st.st_dev, st.st_ino


def remove_if_ours(path: str, file_id: FileId) -> bool:
    """Remove ``path`` if it is still the socket file we bound; True when it was removed.

    Call it before closing the socket: while our socket is open its inode stays allocated, so a file
    another process created at the path cannot carry the same (st_dev, st_ino); once closed (and
    unlinked by someone), the file system may hand that inode number to the newcomer."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) != file_id:
            return False  # replaced since we bound it: someone else's now
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
