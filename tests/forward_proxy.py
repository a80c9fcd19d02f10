"""A tiny HTTP forward proxy for tests: it answers absolute-URI requests (what a client sends to an http
proxy) by making the request itself, and records each one with its Proxy-Authorization header.

Runs its own event loop in a thread, so a synchronous test can start it beside the agent's processes.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from harness import free_port

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass
class Passed:
    method: str
    url: str  # absolute: the target the client asked for
    credentials: str | None  # "user:password" from Proxy-Authorization, if any
    status: int


class ForwardProxy:
    def __init__(self, credentials: str | None = None) -> None:
        """``credentials`` "user:password": requests without them get 407, as a real proxy answers."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.required = credentials
        self.passed: list[Passed] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        target = str(request.url) if request.url.is_absolute() else ""
        header = request.headers.get("Proxy-Authorization", "")
        credentials = base64.b64decode(header[6:]).decode() if header.startswith("Basic ") else None
        if self.required and credentials != self.required:
            self.passed.append(Passed(request.method, target, credentials, 407))
            return web.Response(status=407, headers={"Proxy-Authenticate": 'Basic realm="test"'})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(request.method, target, headers=headers,
                                         data=await request.read()) as upstream:
            body = await upstream.read()
            self.passed.append(Passed(request.method, target, credentials, upstream.status))
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=upstream.status, body=body, headers=out)

    def stop(self) -> None:
        async def close() -> None:
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
