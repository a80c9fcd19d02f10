"""Hyperscan databases compiled in a child process and loaded here serialized.

Why: compiling touches Hyperscan's compiler, about 5 MiB of its library's code and 2 MiB of heap that stay in
the process's RSS for good (the agent's and every worker's); loading a serialized database touches neither
(measured: 7.1 MiB of RSS for the default rules compiled here, none loaded). The child is this module run as
a script: a msgpack list of databases on stdin, each (patterns, flags), and on stdout each one serialized, or
None where it does not compile. Where no child can be started (no interpreter to start, a sandbox that
forbids it) or it fails, the databases are compiled here: the same databases, at that memory cost.

With workers (``[agent] workers`` > 1), the parent names a private directory in ``LLMSHIP_HS_CACHE`` before
it builds anything, and its workers inherit it: the parent compiles (one child), stores what the child gave
there, and every worker, a restarted one, and every worker's reload after the parent validated the new rules
load it instead of starting a compiler of their own (with ``workers = "auto"`` on a large host, N children of
a quarter of a second and tens of MiB each, all at once). A file is named by a hash of what was compiled and
of the Hyperscan version, so it is only ever read for the same input; one that cannot be read or loaded is
compiled again.
"""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import hyperscan
import msgpack

CHILD_TIMEOUT_SECS = 120  # compiling the defaults takes a quarter of a second; a user rule may take longer
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # where the child finds llmship, as this process did

CACHE_ENV = "LLMSHIP_HS_CACHE"  # the directory of databases one process compiled for the others (workers)

Database = tuple[list[bytes], list[int]]  # patterns and their flags: ids are their indexes

# How the databases this process loaded were built, per compile_databases call: "child", "cache" (another
# process's child) or "in_process". Scrubber.reload counts what its build added (scrub databases_built).
BUILT: collections.Counter = collections.Counter()


def compile_databases(databases: list[Database]) -> list[object | None]:
    """Block-mode databases of ``databases`` (None for one that does not compile), loaded from what a child
    process compiled (or another process's child: ``LLMSHIP_HS_CACHE``); compiled here when the child cannot
    do it."""
    request = msgpack.packb(databases)
    path = _cache_path(request)
    cached = _read_cache(path, len(databases)) if path is not None else None
    if cached is not None:
        try:
            loaded = _load(cached)
            BUILT["cache"] += 1
            return loaded
        except hyperscan.error:  # a damaged file: compiled again, and the file replaced
            pass
    serialized = _in_child(request, len(databases))
    BUILT["child" if serialized is not None else "in_process"] += 1
    if serialized is None:
        serialized = serialize(databases)
    if path is not None:
        _write_cache(path, serialized)
    return _load(serialized)


def _load(serialized: list[bytes | None]) -> list[object | None]:
    return [None if s is None else hyperscan.loadb(s, hyperscan.HS_MODE_BLOCK) for s in serialized]


def _cache_path(request: bytes) -> Path | None:
    directory = os.environ.get(CACHE_ENV)
    if not directory:
        return None
    key = hashlib.sha256(f"hyperscan {hyperscan.__version__}\n".encode() + request).hexdigest()
    return Path(directory) / f"{key}.hsdb"


def _read_cache(path: Path, count: int) -> list[bytes | None] | None:
    try:
        return _serialized(msgpack.unpackb(path.read_bytes()), count)
    except (OSError, ValueError, msgpack.UnpackException):  # not there yet, or not readable: compile
        return None


def _serialized(value, count: int) -> list[bytes | None] | None:
    """``value`` if it is what the child writes for ``count`` databases (each serialized or None), else None."""
    if isinstance(value, list) and len(value) == count and all(s is None or isinstance(s, bytes) for s in value):
        return value
    return None


def _write_cache(path: Path, serialized: list[bytes | None]) -> None:
    """Whole or not at all (a temporary file renamed over): a process reading at the same time sees the old
    file, the new one or none. Best effort: a cache that cannot be written costs the others a compile each."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".writing-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(msgpack.packb(serialized))
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError:
        pass


def serialize(databases: list[Database]) -> list[bytes | None]:
    """Each database compiled and serialized, None for one Hyperscan refuses (the child's work)."""
    out: list[bytes | None] = []
    for patterns, flags in databases:
        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        try:
            db.compile(expressions=patterns, ids=list(range(len(patterns))), flags=flags)
        except hyperscan.error:
            out.append(None)
            continue
        out.append(hyperscan.dumpb(db))
    return out


def _in_child(request: bytes, count: int) -> list[bytes | None] | None:
    """What the child made of ``request`` (the msgpack of ``count`` databases); None when it failed."""
    path = os.environ.get("PYTHONPATH")
    env = os.environ | {"PYTHONPATH": _PACKAGE_ROOT + (os.pathsep + path if path else "")}
    try:
        done = subprocess.run([sys.executable, "-m", __name__], input=request, env=env,
                              capture_output=True, timeout=CHILD_TIMEOUT_SECS, check=False)
        if done.returncode == 0 and (serialized := _serialized(msgpack.unpackb(done.stdout), count)) is not None:
            return serialized
        reason = f"exit code {done.returncode}: {done.stderr.decode(errors='replace')[-500:]}"
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        reason = f"{type(e).__name__}: {e}"
    from llmship.log import get_logger  # here: the child, which never logs, does not import structlog

    get_logger("scrub").warning("hyperscan_compiled_in_process", reason=reason,
                                hint="the child process that compiles the scrub database failed; compiled here "
                                     "instead, which keeps Hyperscan's compiler in memory (~4 MiB of RSS)")
    return None


if __name__ == "__main__":
    sys.stdout.buffer.write(msgpack.packb(serialize(msgpack.unpackb(sys.stdin.buffer.read()))))
