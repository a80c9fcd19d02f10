"""Hyperscan databases compiled in a child process and loaded here serialized.

Why: compiling touches Hyperscan's compiler, about 5 MiB of its library's code and 2 MiB of heap that stay in
the process's RSS for good (the agent's and every worker's); loading a serialized database touches neither
(measured: 7.1 MiB of RSS for the default rules compiled here, none loaded). The child is this module run as
a script: a msgpack list of databases on stdin, each (patterns, flags), and on stdout each one serialized, or
None where it does not compile. Where no child can be started (no interpreter to start, a sandbox that
forbids it) or it fails, the databases are compiled here: the same databases, at that memory cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hyperscan
import msgpack

CHILD_TIMEOUT_SECS = 120  # compiling the defaults takes a quarter of a second; a user rule may take longer
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # where the child finds llmship, as this process did

Database = tuple[list[bytes], list[int]]  # patterns and their flags: ids are their indexes


def compile_databases(databases: list[Database]) -> list[object | None]:
    """Block-mode databases of ``databases`` (None for one that does not compile), loaded from what a child
    process compiled; compiled here when the child cannot do it."""
    serialized = _in_child(databases)
    if serialized is None:
        serialized = serialize(databases)
    return [None if s is None else hyperscan.loadb(s, hyperscan.HS_MODE_BLOCK) for s in serialized]


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


def _in_child(databases: list[Database]) -> list[bytes | None] | None:
    path = os.environ.get("PYTHONPATH")
    env = os.environ | {"PYTHONPATH": _PACKAGE_ROOT + (os.pathsep + path if path else "")}
    try:
        done = subprocess.run([sys.executable, "-m", __name__], input=msgpack.packb(databases), env=env,
                              capture_output=True, timeout=CHILD_TIMEOUT_SECS, check=False)
        if done.returncode == 0:
            serialized = msgpack.unpackb(done.stdout)
            if isinstance(serialized, list) and len(serialized) == len(databases):
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
