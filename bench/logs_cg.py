"""The logs path in one process under callgrind: instructions a record from the TCP source's ``data_received``
to the compressed payloads, without the event loop, sockets or delivery; and the payloads it made, to compare
before and after a change byte for byte.

    .venv/bin/python bench/logs_cg.py                       # 4,000 records: instructions a record
    .venv/bin/python bench/logs_cg.py --dump /tmp/a.bin     # also write the payloads (compare with cmp)
    .venv/bin/python bench/logs_cg.py --annotate 25         # and the 25 functions that cost the most (inclusive)

What it does: builds the processing plane as `llmship run` does (agent.build_processing around a real Router,
bench/instructions.py's config: zstd, hostname bench-host, env bench), a LogsSource and one of its TCP
connections (``_TcpConnection``, with a transport that only records pause_reading), and bench/logs.py's 3.1 kB
prompt/completion lines (the same ones bench/instructions.py --only logs sends). It feeds the first 200 lines
and flushes (warm-up: the scrubber's memo, the tag cache, the codecs), then switches callgrind's
instrumentation on (a client request, CALLGRIND_START_INSTRUMENTATION, from a small C helper compiled here;
``callgrind_control -i on`` where no compiler or valgrind header is found), feeds every line in reads of
``--read`` bytes (asyncio's selector transport reads up to 256 KiB at a time), flushes the logs packer, and
switches it off. The figure is the instrumented instructions divided by the records.

``--dump`` writes, for each payload submitted after the warm-up, a header line (items, encoding, body length,
the item lengths in hex) and the body as sent (compressed), so two runs that make the same payloads write the
same file. The records are built with a fixed seed and PYTHONHASHSEED=0, as bench/instructions.py's agent.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import logs  # bench/logs.py
from common import SRC, clean_env  # bench/common.py

WARM_UP_LINES = 200  # bench/instructions.py's warm-up
_HELPER_C = """
#include <valgrind/callgrind.h>
void llmship_cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void llmship_cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""


# ------------------------------------------------------------------------------------------- the child

def _switch(work_dir: Path):
    """(on, off): callgrind's instrumentation switched from inside this process."""
    helper = work_dir / "cg_helper.so"
    if helper.exists():
        lib = ctypes.CDLL(str(helper))
        return lib.llmship_cg_start, lib.llmship_cg_stop
    pid = str(os.getpid())

    def control(state: str):
        return lambda: subprocess.run(["callgrind_control", "-i", state, pid], check=True, capture_output=True)
    return control("on"), control("off")


class _Transport:
    """What _TcpConnection asks of its transport here: only pausing, which the load must never need."""

    paused = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def close(self) -> None:
        pass


class _Delivery:
    def overloaded(self, lane: str) -> bool:
        return False


def child(args) -> None:
    sys.path.insert(0, str(SRC))
    from llmship.agent import build_processing
    from llmship.aggregation import Aggregator
    from llmship.config import load_config_text
    from llmship.shipping.router import Router
    from llmship.sources.logs import LogsSource, _TcpConnection
    from llmship.telemetry import Telemetry

    cfg = load_config_text('[agent]\nhostname = "bench-host"\nenv = "bench"\n[sinks.datadog]\ncompression = "zstd"\n'
                           '[sources.logs]\ntcp = "127.0.0.1:0"\nhttp = ""\n')
    telemetry = Telemetry()
    payloads = []
    router = Router(telemetry=telemetry, aggregator=Aggregator(cfg, telemetry), delivery=_Delivery(),
                    metrics_sink=None, trace_sink=None, llmobs_sink=None, logs_sink=None)
    p = build_processing(cfg, telemetry, router, submit=payloads.append)
    router.attach_sinks(*p.sinks)
    logs_sink = p.sinks[2]
    source = next(s for s in p.sources if isinstance(s, LogsSource))
    conn = _TcpConnection(source)
    transport = _Transport()
    conn.connection_made(transport)

    lines = logs.build_lines(args.records)
    warm = b"".join(lines[:WARM_UP_LINES])
    block = b"".join(lines)
    reads = [block[i:i + args.read] for i in range(0, len(block), args.read)]
    conn.data_received(warm)
    logs_sink.flush()
    warm_payloads = len(payloads)
    on, off = _switch(Path(args.work_dir))
    on()
    for data in reads:
        conn.data_received(data)
    logs_sink.flush()
    off()
    shipped = payloads[warm_payloads:]
    items = sum(p.items for p in shipped)
    if items != len(lines) or transport.paused:
        raise SystemExit(f"shipped {items} records of {len(lines)} (paused {transport.paused} times)")
    if args.dump:
        with open(args.dump, "wb") as f:
            for payload in shipped:
                f.write(f"payload items={payload.items} encoding={payload.content_encoding} bytes={len(payload.body)} "
                        f"lengths={payload.lengths.hex()}\n".encode())
                f.write(payload.body)
                f.write(b"\n")
    print(f"records {items} payloads {len(shipped)}", flush=True)


# ------------------------------------------------------------------------------------------- the parent

def build_helper(work_dir: Path) -> bool:
    """The client-request helper, if a C compiler and valgrind's header are here."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not Path("/usr/include/valgrind/callgrind.h").exists():
        return False
    source = work_dir / "cg_helper.c"
    source.write_text(_HELPER_C)
    done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(work_dir / "cg_helper.so"), str(source)],
                          capture_output=True)
    return done.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=4000, help="log lines (default 4,000, as bench/instructions.py)")
    parser.add_argument("--read", type=int, default=256 * 1024, help="bytes a data_received call (default 256 KiB)")
    parser.add_argument("--dump", metavar="PATH", help="write the payloads to PATH")
    parser.add_argument("--annotate", type=int, metavar="N", default=0, help="show the N costliest functions")
    parser.add_argument("--keep", action="store_true", help="keep the callgrind file and say where")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    if not shutil.which("valgrind"):
        print("bench/logs_cg.py needs valgrind (apt install valgrind)", file=sys.stderr)
        return 2
    work_dir = Path(tempfile.mkdtemp(prefix="llmship-logs-cg-"))
    out = work_dir / "callgrind.out"
    if not build_helper(work_dir) and not shutil.which("callgrind_control"):
        print("bench/logs_cg.py needs a C compiler or callgrind_control", file=sys.stderr)
        return 2
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
               sys.executable, __file__, "--child", "--work-dir", str(work_dir), "--records", str(args.records),
               "--read", str(args.read)] + (["--dump", str(Path(args.dump).resolve())] if args.dump else [])
    done = subprocess.run(command, env=clean_env() | {"PYTHONHASHSEED": "0"}, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout, done.stderr, file=sys.stderr)
        return 1
    # "summary:" is 0 when instrumentation starts by a client request; "totals:" counts what it measured
    total = next(int(line.split()[1]) for line in open(out) if line.startswith("totals:"))
    print(f"{args.records:,} records, reads of {args.read:,} bytes: {total / args.records:,.0f} instructions a record "
          f"({done.stdout.strip()})")
    if args.annotate:
        annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(out)], capture_output=True,
                                   text=True).stdout.splitlines()
        start = next((i for i, line in enumerate(annotated) if "file:function" in line), 0)
        print("\n".join(annotated[start:start + args.annotate + 2]))
    if args.keep:
        print(f"callgrind file: {out}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
