"""`llmship intake`: serve the stand-in intake, or `--show` what it recorded.

Every flag defaults to its LLMSHIP_INTAKE_<FLAG> environment variable (e.g. LLMSHIP_INTAKE_FAIL_FIRST=3).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from llmship import log
from llmship.intake.decode import KINDS

# The server and its SQLite store are imported by the verb: every `llmship` command builds this parser,
# `llmship run` included, which would otherwise load SQLite for nothing (about 1 MiB).
if TYPE_CHECKING:
    from llmship.intake.server import Faults


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get("LLMSHIP_INTAKE_" + flag.upper().replace("-", "_"), default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # argparse runs `type` over string defaults too, so env values are parsed like flags
    parser.add_argument("--listen", default=_env("listen", "127.0.0.1:8080"),
                        help="host:port to serve on; port 0 picks a free one (env LLMSHIP_INTAKE_LISTEN)")
    parser.add_argument("--db", default=_env("db", "intake.sqlite"),
                        help="SQLite file recording requests and records (env LLMSHIP_INTAKE_DB)")
    parser.add_argument("--show", action="store_true", default=_env("show", "") not in ("", "0", "false"),
                        help="print the recorded items instead of serving (env LLMSHIP_INTAKE_SHOW=1)")
    parser.add_argument("--kind", choices=KINDS, default=_env("kind"),
                        help="with --show, only this kind (env LLMSHIP_INTAKE_KIND)")
    faults = parser.add_argument_group("fault injection (for tests)")
    faults.add_argument("--fail-first", type=int, default=_env("fail-first", "0"), metavar="N",
                        help="answer the first N requests with --fail-status")
    faults.add_argument("--fail-status", type=int, default=_env("fail-status", "503"), metavar="S",
                        help="status of faulted answers (default 503)")
    faults.add_argument("--retry-after", default=_env("retry-after"), metavar="VALUE",
                        help="Retry-After header on faulted answers, as given (seconds or HTTP-date)")
    faults.add_argument("--latency-ms", type=float, default=_env("latency-ms", "0"), metavar="MS",
                        help="delay every response by MS milliseconds")
    faults.add_argument("--fail-kind", choices=KINDS, default=_env("fail-kind"),
                        help="restrict faults (not latency) to one kind")
    faults.add_argument("--max-body-bytes", type=int, default=_env("max-body-bytes"), metavar="N",
                        help="answer 413 to bodies over N bytes on the wire (to test splitting)")
    faults.add_argument("--fail-for-secs", type=float, default=_env("fail-for-secs", "0"), metavar="S",
                        help="fail every request for the first S seconds after start")


def main(args: argparse.Namespace) -> int:
    for name in ("kind", "fail_kind"):  # argparse does not check env defaults against choices
        value = getattr(args, name)
        if value is not None and value not in KINDS:
            print(f"llmship intake: --{name.replace('_', '-')} must be one of {', '.join(KINDS)}", file=sys.stderr)
            return 2
    if args.show:
        return show(Path(args.db), args.kind)
    host, port = _parse_listen(args.listen)
    if port is None:
        print(f"llmship intake: --listen {args.listen!r} is not host:port", file=sys.stderr)
        return 2
    from llmship.intake.server import Faults

    faults = Faults(fail_first=args.fail_first, fail_status=args.fail_status, retry_after=args.retry_after,
                    latency_ms=args.latency_ms, fail_kind=args.fail_kind, max_body_bytes=args.max_body_bytes,
                    fail_for_secs=args.fail_for_secs)
    log.configure()
    try:
        asyncio.run(_serve(Path(args.db), faults, host, port))
    except OSError as e:  # e.g. the port is taken: one clear line, no traceback
        print(f"llmship intake: cannot listen on {args.listen}: {e}", file=sys.stderr)
        return 1
    return 0


async def _serve(db: Path, faults: Faults, host: str, port: int) -> None:
    from llmship.intake.server import IntakeServer
    from llmship.intake.store import IntakeStore

    store = IntakeStore(db)
    server = IntakeServer(store, faults)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await server.start(host, port)
        log.get_logger("intake").info("intake_listening", url=url, db=str(db))
        print(f"listening on {url}", flush=True)  # scripts and tests wait for this line
        await stop.wait()
    finally:
        await server.shutdown()
        store.close()


def _parse_listen(listen: str) -> tuple[str, int | None]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port) if port.isdigit() else None


def show(db: Path, kind: str | None) -> int:
    """One line per record: kind, received time (UTC), the item as compact JSON."""
    if not db.exists():
        print(f"llmship intake: no database at {db}", file=sys.stderr)
        return 1
    from llmship.intake.store import IntakeStore

    with IntakeStore(db) as store:
        for record in store.records(kind):
            received = datetime.fromtimestamp(record["received_at"], UTC).isoformat(timespec="milliseconds")
            print(f"{record['kind']:<14} {received} {orjson.dumps(record['data']).decode()}")
    return 0
