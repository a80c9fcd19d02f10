"""Instructions a span of the trace path in this process (callgrind), by stage, on v0.4 bodies of 100 spans
with fresh ids each (bench/common.py TracePayloads); no shipping (the Datadog destination is never
contacted: bench/common.py in_process_topology). A quicker and steadier figure than bench/instructions.py's
live agent for work on one part of the path.

    .venv/bin/python bench/spans_instructions.py                       # web mix, processing plane: ~10 s
    .venv/bin/python bench/spans_instructions.py --mix llm --stage decode

Stages: ``decode`` (``decode_v04``); ``all``, the processing plane (``Emitter.transcode_v04``, or where it
declines ``decode_v04``, then ``Emitter.submit_spans``: LLM stage, scrub, encode); ``request``, a whole trace request: the trace source's aiohttp server
(TraceSource, the processing plane behind it) answering the bodies that a raw keep-alive socket on the same
event loop sends; ``http``, the same with ``Emitter.submit_spans`` doing nothing, for the cost of the request
around the processing (the sending socket's share, a few thousand instructions a request, included).

Runs itself under callgrind (bench/callgrind.py), warms up on a few bodies, counts while it handles
``--bodies`` more, and divides. The mix repeats its tag values from span to span (and its service names,
meta keys and most meta values are the same in every body): caches keyed by value are flattered by it.
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
WARMUP_BODIES = 5
STAGES = ("decode", "all", "request", "http")


def child(args) -> int:
    """The spans a body, after counting ``args.bodies`` bodies through ``args.stage``."""
    if args.stage in ("request", "http"):
        import uvloop

        return uvloop.run(_serve(args))
    emitter = in_process_topology().emitter
    from llmship.model import TracerInfo
    from llmship.sources.traces import decode_v04

    payloads = TracePayloads(mixes.traces(args.mix, TRACES_PER_BODY), 0)
    bodies = [payloads.body(seq) for seq in range(1, WARMUP_BODIES + args.bodies + 1)]
    tracer = TracerInfo(language="python")
    def processed(body: bytes) -> None:  # as the trace source hands a body over
        chunks = emitter.transcode_v04(body, tracer.language)
        emitter.submit_spans(decode_v04(body) if chunks is None else chunks, tracer)

    stages = {"decode": lambda body: decode_v04(body), "all": processed}
    run = stages[args.stage]
    for body in bodies[:WARMUP_BODIES]:
        run(body)
    with callgrind.measured():
        for body in bodies[WARMUP_BODIES:]:
            run(body)
    return payloads.spans


async def _serve(args) -> int:
    from llmship.config import load_config_text
    from llmship.sources.traces import TraceSource

    port = free_port()
    emitter = in_process_topology().emitter
    if args.stage == "http":
        emitter.submit_spans = lambda chunks, tracer: None
    cfg = load_config_text(f'[sinks.datadog]\napi_key = "x"\nurl = "http://127.0.0.1:9"\n'
                           f'[sources.traces]\nlisten = "127.0.0.1:{port}"\n')
    source = TraceSource(cfg, emitter)
    await source.start()
    payloads = TracePayloads(mixes.traces(args.mix, TRACES_PER_BODY), port)
    requests = [payloads.head + payloads.body(seq) for seq in range(1, WARMUP_BODIES + args.bodies + 1)]
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    try:
        for request in requests[:WARMUP_BODIES]:
            assert (await _exchange(loop, sock, request)).endswith(b" 200 OK"), "the warm-up was refused"
        with callgrind.measured():
            for request in requests[WARMUP_BODIES:]:
                await _exchange(loop, sock, request)
    finally:
        sock.close()
        await source.shutdown(loop.time() + 5)
    return payloads.spans


async def _exchange(loop, sock: socket.socket, request: bytes) -> bytes:
    """Send one request, read its whole response (headers, then Content-Length bytes); its status line."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mix", choices=mixes.MIXES, default="web")
    parser.add_argument("--stage", choices=STAGES, default="all")
    parser.add_argument("--bodies", type=int, default=20)
    parser.add_argument("--keep", metavar="FILE", help="copy the callgrind dump there (for callgrind_annotate)")
    args = parser.parse_args()
    if callgrind.in_child():
        print(child(args))
        return
    counted = callgrind.run(["--mix", args.mix, "--stage", args.stage, "--bodies", str(args.bodies)])
    if args.keep:
        shutil.copy(counted.out, args.keep)
    counted.cleanup()
    spans = int(counted.stdout.split()[-1])
    print(f"{args.mix} mix, {args.stage}: {counted.instructions / (spans * args.bodies):,.0f} instructions a span "
          f"({args.bodies} bodies of {spans} spans)")


if __name__ == "__main__":
    main()
