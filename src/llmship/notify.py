"""The systemd notify protocol (sd_notify(3)), without libsystemd.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: a unix datagram socket to which the service sends
newline-separated ``KEY=VALUE`` assignments. The agent sends READY=1 once every listener is bound,
RELOADING=1 while it swaps configuration on SIGHUP (READY=1 again when done), STOPPING=1 when it starts to
drain, STATUS=... for `systemctl status`, and WATCHDOG=1 pings when the unit sets ``WatchdogSec``.

Everything here is a no-op when ``$NOTIFY_SOCKET`` is unset (a terminal, a container, the tests), and a
failure to notify never stops the agent: systemd would time the unit out, which is the right signal.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from llmship.log import RateLimited, get_logger

_log = RateLimited(get_logger("notify"), window_secs=60)


def _address(value: str) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as a socket address: a path, or ``@name`` for the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # sd_notify(3): a leading @ means the abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:..." (systemd 254+ in VMs): not a unix socket, not supported


def notify(message: str) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET``; True when sent, False when unset or it failed."""
    value = os.environ.get("NOTIFY_SOCKET", "")
    if not value:
        return False
    address = _address(value)
    if address is None:
        _log.warning("unsupported_address", "notify_socket_unsupported", address=value)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as e:
        _log.warning("send_failed", "notify_failed", address=value, error=str(e))
        return False
    return True


def ready(status_text: str = "") -> bool:
    """Start-up (or a reload) is complete: every listener is bound."""
    return notify("READY=1" + (f"\nSTATUS={status_text}" if status_text else ""))


def stopping() -> bool:
    """Draining has begun; systemd shows the unit as deactivating."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """A reload has begun; send ``ready()`` when it is done.

    MONOTONIC_USEC (CLOCK_MONOTONIC, microseconds) lets systemd tell this reload from an earlier one:
    systemd.service(5), Type=notify-reload requires it and Type=notify accepts it.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def status(text: str) -> bool:
    """A one-line status shown by `systemctl status`."""
    return notify("STATUS=" + text.replace("\n", " "))


def watchdog_interval_secs() -> float | None:
    """How often to ping: half of ``$WATCHDOG_USEC`` (sd_watchdog_enabled(3) advises half), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or not os.environ.get("NOTIFY_SOCKET"):
        return None
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is meant for another process (e.g. we were started by the service)
    return int(usec) / 1_000_000 / 2


async def watchdog_loop(healthy=None) -> None:
    """Ping WATCHDOG=1 while the event loop runs (and ``healthy()``, when given, is true: with workers,
    every worker is up and reporting); returns at once when no watchdog is asked for.

    The ping comes from the event loop itself on purpose: if the loop is blocked, pings stop and systemd
    restarts the agent, the same thing /health tells a Kubernetes liveness probe.
    """
    interval = watchdog_interval_secs()
    if interval is None:
        return
    while True:
        if healthy is None or healthy():
            notify("WATCHDOG=1")
        await asyncio.sleep(interval)
