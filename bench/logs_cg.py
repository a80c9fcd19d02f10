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
and flushes (warm-up: the scrubber's memo, the tag cache, the codecs), then counts (bench/callgrind.py) while
it feeds every line in reads of ``--read`` bytes (asyncio's selector transport reads up to 256 KiB at a time)
and flushes the logs packer. The figure is the instructions counted divided by the records.

``--dump`` writes, for each payload submitted after the warm-up, a header line (items, encoding, body length,
the item lengths in hex) and the body as sent (compressed), so two runs that make the same payloads write the
same file. The records are built with a fixed seed and PYTHONHASHSEED=0, as bench/instructions.py's agent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import callgrind  # bench/callgrind.py
import logs  # bench/logs.py
from common import SRC  # bench/common.py

WARM_UP_LINES = 200  # bench/instructions.py's warm-up


# ------------------------------------------------------------------------------------------- the child

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
    with callgrind.measured():
        for data in reads:
            conn.data_received(data)
        logs_sink.flush()
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

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=4000, help="log lines (default 4,000, as bench/instructions.py)")
    parser.add_argument("--read", type=int, default=256 * 1024, help="bytes a data_received call (default 256 KiB)")
    parser.add_argument("--dump", metavar="PATH", help="write the payloads to PATH")
    parser.add_argument("--annotate", type=int, metavar="N", default=0, help="show the N costliest functions")
    parser.add_argument("--keep", action="store_true", help="keep the callgrind file and say where")
    args = parser.parse_args()
    if callgrind.in_child():
        child(args)
        return 0
    counted = callgrind.run(["--records", str(args.records), "--read", str(args.read)]
                            + (["--dump", str(Path(args.dump).resolve())] if args.dump else []))
    print(f"{args.records:,} records, reads of {args.read:,} bytes: {counted.instructions / args.records:,.0f} "
          f"instructions a record ({counted.stdout.strip()})")
    if args.annotate:
        print(callgrind.annotate(counted, args.annotate))
    if args.keep:
        print(f"callgrind file: {counted.out}")
    else:
        counted.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
