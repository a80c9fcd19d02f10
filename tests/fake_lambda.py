"""A local stand-in for the AWS Lambda service, as one external extension sees it.

It serves the Extensions API (2020-01-01: register, event/next, init/error, exit/error) and the Telemetry
API subscription (2022-07-01), and the test plays the platform with it:

- ``invoke(request_id)`` / ``shutdown(deadline_secs)`` queue the event the extension's blocked
  ``GET /event/next`` returns;
- ``runtime_done(request_id)`` POSTs a ``platform.runtimeDone`` batch to the subscribed destination, as
  the platform does when the function's handler returned;
- every ``GET /event/next`` is counted in ``next_requests`` and calls ``on_next(n)`` *before* it blocks, in
  the server's thread: what the callback sees (the intake, say) is what had arrived when the extension
  said it was done with the previous event.

Served from a background thread with its own event loop, on a free port (``.runtime_api``: host:port,
what Lambda puts in AWS_LAMBDA_RUNTIME_API).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

EXTENSIONS = "/2020-01-01/extension"
ID_HEADER = "Lambda-Extension-Identifier"


class FakeLambda:
    def __init__(self, *, refuse_subscription: bool = False) -> None:
        self.refuse_subscription = refuse_subscription
        self.registrations: list[dict[str, Any]] = []
        self.subscriptions: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.next_requests = 0
        self.next_at: list[float] = []  # time.time() of each GET /event/next
        self.on_next: Callable[[int], Any] | None = None
        self.seen: dict[int, Any] = {}  # n -> what on_next returned for the n-th GET /event/next
        self.extension_id = ""
        self._loop = asyncio.new_event_loop()
        self._events: asyncio.Queue | None = None
        # A GET /event/next may still be blocked at stop (an extension that never exited): cut it short.
        self._runner = web.AppRunner(self._app(), shutdown_timeout=0.5)
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(started,), name="fake-lambda", daemon=True)
        self._thread.start()
        self.runtime_api = f"127.0.0.1:{started.result(10)}"

    # ------------------------------------------------------------------------------------------ the platform

    def invoke(self, request_id: str, timeout_secs: float = 30.0) -> None:
        self._push({"eventType": "INVOKE", "requestId": request_id,
                    "deadlineMs": int((time.time() + timeout_secs) * 1000),
                    "invokedFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:fn",
                    "tracing": {"type": "X-Amzn-Trace-Id", "value": "Root=1-00000000-000000000000000000000000"}})

    def shutdown(self, deadline_secs: float = 2.0, reason: str = "spindown") -> None:
        self._push({"eventType": "SHUTDOWN", "shutdownReason": reason,
                    "deadlineMs": int((time.time() + deadline_secs) * 1000)})

    def runtime_done(self, request_id: str, status: str = "success") -> None:
        """Deliver a telemetry batch holding this request's platform.runtimeDone to the subscriber."""
        destination = self.subscriptions[-1]["destination"]["URI"]
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        batch = [
            {"time": now, "type": "platform.start", "record": {"requestId": request_id, "version": "$LATEST"}},
            {"time": now, "type": "platform.runtimeDone",
             "record": {"requestId": request_id, "status": status, "metrics": {"durationMs": 12.5}}},
        ]
        request = urllib.request.Request(destination, data=json.dumps(batch).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 200

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _push(self, event: dict[str, Any]) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    # ------------------------------------------------------------------------------------------ the APIs

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"{EXTENSIONS}/register", self._register)
        app.router.add_get(f"{EXTENSIONS}/event/next", self._next)
        app.router.add_post(f"{EXTENSIONS}/init/error", self._error)
        app.router.add_post(f"{EXTENSIONS}/exit/error", self._error)
        app.router.add_put("/2022-07-01/telemetry", self._subscribe)
        return app

    def _serve(self, started: concurrent.futures.Future) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._events = asyncio.Queue()
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", 0).start())
            started.set_result(self._runner.addresses[0][1])
        except Exception as e:
            started.set_exception(e)
            return
        self._loop.run_forever()

    def _known(self, request: web.Request) -> bool:
        return bool(self.extension_id) and request.headers.get(ID_HEADER) == self.extension_id

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.registrations.append({"name": request.headers.get("Lambda-Extension-Name"), "events": body["events"]})
        self.extension_id = str(uuid.uuid4())
        return web.json_response({"functionName": "fn", "functionVersion": "$LATEST", "handler": "app.handler"},
                                 headers={ID_HEADER: self.extension_id})

    async def _subscribe(self, request: web.Request) -> web.Response:
        if not self._known(request):
            return web.json_response({"errorType": "Extension.Unknown"}, status=403)
        if self.refuse_subscription:
            return web.json_response({"errorType": "ValidationError", "errorMessage": "refused by the test"},
                                     status=400)
        self.subscriptions.append(await request.json())
        return web.Response(text="OK")

    async def _next(self, request: web.Request) -> web.Response:
        if not self._known(request):
            return web.json_response({"errorType": "Extension.Unknown"}, status=403)
        self.next_requests += 1
        self.next_at.append(time.time())
        if self.on_next is not None:
            self.seen[self.next_requests] = self.on_next(self.next_requests)
        event = await self._events.get()
        return web.json_response(event, headers={"Lambda-Extension-Event-Identifier": str(uuid.uuid4())})

    async def _error(self, request: web.Request) -> web.Response:
        self.errors.append({"path": request.path, "type": request.headers.get("Lambda-Extension-Function-Error-Type"),
                            "body": await request.json()})
        return web.json_response({"status": "OK"}, status=202)
