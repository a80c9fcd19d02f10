"""The processing plane's listening sockets, bound in one place.

With ``[agent] workers = 1`` each source binds its own listeners when it starts (``bind`` below is not
used). With more workers the parent binds every processing-plane listener once, before any worker
exists, and each worker inherits the same listening sockets and accepts on them, as gunicorn and
uvicorn's ``--workers`` do: a connection goes to whichever worker calls accept() first, which is the one
with the least to do, and a worker that dies leaves the socket (and the connections waiting in its
backlog) to the others. Unix socket files are the parent's: only it removes them (llmship.unixsock).

Keys: ``traces.listen`` (TCP), ``traces.socket`` (unix stream), ``logs.tcp``, ``logs.http``, ``otlp.http`` (TCP).

OTLP/gRPC is the exception: grpc.aio binds its own ports and cannot serve a socket it did not bind, so each
worker binds ``sources.otlp.grpc`` itself with SO_REUSEPORT and the kernel spreads connections over them.
SO_REUSEPORT would also let another process of the same user share the port without a word (say a second
agent, which would then receive part of the data), so the parent first checks that nothing holds it
(``check_free``): the same "cannot listen" at start as for the other listeners.
"""

from __future__ import annotations

import errno
import socket

from aiohttp import web

from llmship import unixsock
from llmship.config import Config, parse_host_port

# The listen() backlog: aiohttp's TCPSite default (128), for every listener, shared by the workers.
BACKLOG = 128
# 0o722: the Agent's permissions on its unix socket, so any local process can connect (api.go listenUnix)
UNIX_SOCKET_MODE = 0o722

Sockets = dict[str, list[socket.socket]]


def bind_tcp(address: str, listen: bool = True) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (every address the host resolves to, as asyncio's
    create_server binds them), non-blocking and inheritable by workers; only bound when not ``listen``."""
    host, port = parse_host_port(address)
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as e:
                raise OSError(e.errno, f"cannot listen on {address}: {e.strerror}") from None
            if listen:
                sock.listen(BACKLOG)
                sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def start_sites(runner: web.AppRunner, sockets: Sockets | None, keys: tuple[str, ...], address: str) -> None:
    """Serve ``runner`` on the listening sockets the parent bound under ``keys`` (in a worker: ``sockets``
    given), else on ``address`` (host:port; "" for none): the HTTP sources' one way to start listening."""
    if sockets is not None:
        for key in keys:
            for sock in sockets.get(key, ()):
                await web.SockSite(runner, sock).start()
    elif address:
        host, port = parse_host_port(address)
        await web.TCPSite(runner, host, port).start()


def check_free(address: str) -> None:
    """Raise unless ``host:port`` can be bound by this process alone: a bind without SO_REUSEPORT fails
    while any socket listens there, one bound with SO_REUSEPORT included. Port 0 is refused: each worker
    would get a port of its own."""
    if parse_host_port(address)[1] == 0:
        raise OSError(errno.EINVAL, f"cannot listen on {address}: workers share a port only when it is given")
    for sock in bind_tcp(address, listen=False):
        sock.close()


def bind_unix(path: str, who: str) -> tuple[socket.socket, unixsock.FileId]:
    """A listening unix stream socket at ``path``: refuses a path another process listens on, replaces a
    stale file (llmship.unixsock). aiohttp's UnixSite would unlink whatever is there without asking."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        file_id = unixsock.bind_unix(sock, path, UNIX_SOCKET_MODE, who)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, file_id


class Listeners:
    """Every processing-plane listener of ``cfg``, bound by the parent for its workers."""

    def __init__(self, cfg: Config) -> None:
        self.sockets: Sockets = {}
        self._unix: list[tuple[str, unixsock.FileId]] = []
        traces, logs, otlp = cfg.sources.traces, cfg.sources.logs, cfg.sources.otlp
        try:
            for key, address in (("traces.listen", traces.listen), ("logs.tcp", logs.tcp),
                                 ("logs.http", logs.http), ("otlp.http", otlp.http)):
                if address:
                    self.sockets[key] = bind_tcp(address)
            if otlp.grpc:
                check_free(otlp.grpc)
            if traces.socket:
                sock, file_id = bind_unix(traces.socket, "traces")
                self.sockets["traces.socket"] = [sock]
                self._unix.append((traces.socket, file_id))
        except BaseException:
            self.close()
            raise

    def fds(self) -> list[tuple[str, int]]:
        return [(key, sock.fileno()) for key, socks in self.sockets.items() for sock in socks]

    def close(self) -> None:
        """Remove our socket files (first, while the sockets are open: see unixsock.remove_if_ours) and
        close the parent's copies; workers that still hold theirs keep accepting until they close them."""
        for path, file_id in self._unix:
            unixsock.remove_if_ours(path, file_id)
        self._unix = []
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.sockets = {}


def from_fds(pairs: list[tuple[str, int]]) -> Sockets:
    """The inherited listeners in a worker: ``key=fd`` pairs as the parent passed them."""
    out: Sockets = {}
    for key, fd in pairs:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        out.setdefault(key, []).append(sock)
    return out
