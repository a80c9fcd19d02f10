"""Instructions counted by callgrind around the measured part of an in-process bench: the one way the
in-process benches (bench/spans_instructions.py, bench/llm_calls.py, bench/logs_cg.py) count. Instruction
counts do not depend on the machine's speed, which on a shared machine drifts by a third within a minute.

A bench calls ``run(argv)`` in its parent: the script runs again, under ``valgrind --tool=callgrind
--instr-atstart=no`` with PYTHONHASHSEED=0 (the same dict layouts, so two runs agree to a few
instructions), and the child (``in_child()`` is true there) wraps what it measures in ``with measured():``,
which switches instrumentation on and off with callgrind's client requests (a five-line C helper compiled
on first use; ``callgrind_control`` where no compiler or valgrind header is found, which starts counting a
little late). ``run`` returns the instructions counted inside ``measured()`` and the child's output.
bench/instructions.py counts a live agent the same way from outside (``callgrind_control``)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import clean_env  # bench/common.py

_CHILD = "LLMSHIP_CALLGRIND_DIR"  # set in the child: where its helper and output are
_HELPER_C = """
#include <valgrind/callgrind.h>
void llmship_cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void llmship_cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""


@dataclass
class Counted:
    instructions: int  # inside measured()
    stdout: str  # the child's
    out: Path  # callgrind's file (for callgrind_annotate), in a folder run's caller may remove: ``cleanup``

    def cleanup(self) -> None:
        shutil.rmtree(self.out.parent, ignore_errors=True)


def in_child() -> bool:
    return _CHILD in os.environ


def run(argv: list[str], script: str | None = None) -> Counted:
    """Run ``script`` (the calling bench: sys.argv[0]) with ``argv`` under callgrind; SystemExit with its
    output if it fails or if neither way of switching instrumentation is here."""
    if not shutil.which("valgrind"):
        raise SystemExit("this bench needs valgrind (apt install valgrind)")
    work_dir = Path(tempfile.mkdtemp(prefix="llmship-callgrind-"))
    if not _build_helper(work_dir) and not shutil.which("callgrind_control"):
        raise SystemExit("this bench needs a C compiler with valgrind's header, or callgrind_control")
    out = work_dir / "callgrind.out"
    done = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                           sys.executable, script or sys.argv[0], *argv],
                          env=clean_env() | {"PYTHONHASHSEED": "0", _CHILD: str(work_dir)},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the bench failed under callgrind:\n{done.stdout}\n{done.stderr}")
    # "totals:" counts what was instrumented ("summary:" is 0 when a client request started it)
    total = next(int(line.split()[1]) for line in open(out) if line.startswith("totals:"))
    return Counted(total, done.stdout, out)


@contextlib.contextmanager
def measured():
    """In the child: count what runs inside (outside ``run``'s child, count nothing)."""
    if not in_child():
        yield
        return
    on, off = switches()
    on()
    try:
        yield
    finally:
        off()


@functools.cache
def switches():
    """In the child: the functions that switch counting on and off (for a caller that switches often:
    ``measured()`` costs a generator on top)."""
    helper = Path(os.environ[_CHILD]) / "cg_helper.so"
    if helper.exists():
        lib = ctypes.CDLL(str(helper))
        return lib.llmship_cg_start, lib.llmship_cg_stop

    def control(state: str):
        return lambda: subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True,
                                      capture_output=True)
    return control("on"), control("off")


def annotate(counted: Counted, lines: int) -> str:
    """The ``lines`` costliest functions, inclusive (callgrind_annotate)."""
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(counted.out)], capture_output=True,
                               text=True).stdout.splitlines()
    start = next((i for i, line in enumerate(annotated) if "file:function" in line), 0)
    return "\n".join(annotated[start:start + lines + 2])


def _build_helper(work_dir: Path) -> bool:
    """The client-request helper, if a C compiler and valgrind's header are here."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not Path("/usr/include/valgrind/callgrind.h").exists():
        return False
    source = work_dir / "cg_helper.c"
    source.write_text(_HELPER_C)
    done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(work_dir / "cg_helper.so"), str(source)],
                          capture_output=True)
    return done.returncode == 0
