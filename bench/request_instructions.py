"""Instructions a span of the trace request path (callgrind), in this process: the trace source's aiohttp
server (TraceSource, the processing plane of ``agent.build`` behind it) answering v0.4 requests of 100 spans
that a raw socket on the same event loop sends, one keep-alive connection. No shipping: the Datadog
destination is never contacted (bench/common.py in_process_topology). With ``--stage http`` the processing
plane is left out (``Emitter.submit_spans`` does nothing), for the cost of the request around it.

    .venv/bin/python bench/request_instructions.py                 # web mix: about a minute
    .venv/bin/python bench/request_instructions.py --stage http

The figure minus bench/spans_instructions.py's (decode and processing) is what HTTP, the handler and the
event loop cost a span; the client's sends and reads are in it too (a few thousand instructions a request).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket

import callgrind  # bench/callgrind.py
import mixes  # bench/mixes.py
from common import TracePayloads, free_port, in_process_topology  # bench/common.py

TRACES_PER_BODY = 10  # of 10 spans each in the web mix
WARMUP_REQUESTS = 5


async def _exchange(loop, sock: socket.socket, request: bytes) -> bytes:
    """Send one request, read its whole response (headers, then Content-Length bytes)."""
    await loop.sock_sendall(sock, request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += await loop.sock_recv(sock, 65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += await loop.sock_recv(sock, 65536)
    return head.split(b"\r\n", 1)[0]


async def _serve(args) -> int:
    from llmship.config import load_config_text
    from llmship.sources.traces import TraceSource

    port = free_port()
    topology = in_process_topology()
    emitter = topology.emitter
    if args.stage == "http":
        emitter.submit_spans = lambda chunks, tracer: None
    cfg = load_config_text(f'[sinks.datadog]\napi_key = "x"\nurl = "http://127.0.0.1:9"\n'
                           f'[sources.traces]\nlisten = "127.0.0.1:{port}"\n')
    source = TraceSource(cfg, emitter)
    await source.start()
    payloads = TracePayloads(mixes.traces(args.mix, TRACES_PER_BODY), port)
    requests = [payloads.head + payloads.body(seq) for seq in range(1, WARMUP_REQUESTS + args.requests + 1)]
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    try:
        for request in requests[:WARMUP_REQUESTS]:
            assert (await _exchange(loop, sock, request)).endswith(b" 200 OK"), "the warm-up was refused"
        with callgrind.measured():
            for request in requests[WARMUP_REQUESTS:]:
                await _exchange(loop, sock, request)
    finally:
        sock.close()
        await source.shutdown(loop.time() + 5)
    return payloads.spans


def child(args) -> None:
    import uvloop

    print(uvloop.run(_serve(args)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mix", choices=mixes.MIXES, default="web")
    parser.add_argument("--stage", choices=("all", "http"), default="all")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--keep", metavar="FILE", help="copy the callgrind dump there (for callgrind_annotate)")
    args = parser.parse_args()
    if callgrind.in_child():
        return child(args)
    counted = callgrind.run(["--mix", args.mix, "--stage", args.stage, "--requests", str(args.requests)])
    if args.keep:
        shutil.copy(counted.out, args.keep)
    counted.cleanup()
    spans = int(counted.stdout.split()[-1])
    print(f"{args.mix} mix, {args.stage}: {counted.instructions / (spans * args.requests):,.0f} instructions a span "
          f"({args.requests} requests of {spans} spans)")


if __name__ == "__main__":
    main()
