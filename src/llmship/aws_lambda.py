"""AWS Lambda extension mode: `llmship run --lambda`, or on its own when AWS_LAMBDA_RUNTIME_API is set.

A Lambda sandbox is frozen between invocations and may be thrown away at any time after one, so nothing
may wait in memory once an invocation is over. As an external extension (AWS Lambda Extensions API,
2020-01-01; Telemetry API, 2022-07-01), llmship:

1. registers for INVOKE and SHUTDOWN (``POST /2020-01-01/extension/register``, named like its file in
   /opt/extensions, as Lambda requires), then starts a small HTTP listener and subscribes it to the
   ``platform`` telemetry stream (``PUT /2022-07-01/telemetry``), which reports ``platform.runtimeDone``
   when the function's handler has returned (or failed, or timed out) for a request id;
2. asks for the next event (``GET /2020-01-01/extension/event/next``; Lambda freezes the sandbox while
   every extension waits there). On INVOKE it waits for that request's runtimeDone, then flushes
   everything (``Agent.flush``: open metric buckets, every batch, delivery) for at most
   ``[aws_lambda] flush_timeout_secs``, and only then asks for the next event. Whatever could not be
   delivered in time stays in memory and is retried during the next invocation;
3. on SHUTDOWN, drains (the agent's SIGTERM path) until the event's ``deadlineMs`` less a margin, and exits.

Registration or subscription failures are reported with ``/extension/init/error`` and end the process
(Lambda then fails the init phase, and the reason is in the function's logs); a failure later with
``/extension/exit/error``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from llmship.config import AwsLambdaConfig, ConfigError, parse_host_port
from llmship.log import get_logger

log = get_logger("aws_lambda")

EXTENSION_NAME = "llmship"  # the launcher's file name: /opt/extensions/llmship
EXTENSIONS_API = "2020-01-01/extension"
TELEMETRY_API = "2022-07-01/telemetry"
TELEMETRY_SCHEMA = "2022-12-13"
# The smallest buffering the Telemetry API allows (timeoutMs 25-30,000, maxBytes 262,144-1,048,576,
# maxItems 1,000-10,000): runtimeDone reaches us at most 25 ms after the platform emits it.
TELEMETRY_BUFFERING = {"timeoutMs": 25, "maxBytes": 262_144, "maxItems": 1_000}
# After an invocation's deadline, how long runtimeDone may still take to arrive (platform and buffering);
# past it the invocation is taken as done, so a lost event cannot hang the extension.
RUNTIME_DONE_GRACE_SECS = 2.0
# Taken off SHUTDOWN's deadline: the process must have exited, not just stopped delivering, by then.
SHUTDOWN_MARGIN_SECS = 0.2
_SEEN_REQUEST_IDS = 64  # runtimeDone events that came before we waited for them (a bounded memory)


def lambda_mode_requested(flag: bool, env: Mapping[str, str]) -> bool:
    return flag or bool(env.get("AWS_LAMBDA_RUNTIME_API"))


def api_key_from_environment(env: Mapping[str, str]) -> str:
    """DD_API_KEY, else the plain-text secret named by DD_API_KEY_SECRET_ARN (as the Datadog extension and
    datadog-lambda libraries read it), fetched with boto3 when it is importable. DD_KMS_API_KEY and
    DD_API_KEY_SSM_NAME are not supported."""
    if env.get("DD_API_KEY"):
        return env["DD_API_KEY"]
    arn = env.get("DD_API_KEY_SECRET_ARN", "")
    if not arn:
        return ""
    try:
        import boto3  # not a dependency: Lambda's Python runtimes ship it, and the layer build can add it
    except ImportError:
        raise ConfigError([("sinks.datadog.api_key: DD_API_KEY_SECRET_ARN is set but boto3 is not installed "
                            "(build the layer with --with-boto3, or set DD_API_KEY)")]) from None
    region = arn.split(":")[3] if arn.count(":") >= 6 else None  # arn:aws:secretsmanager:<region>:...
    try:
        return boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=arn)["SecretString"]
    except Exception as e:  # botocore's errors: access denied, no such secret, no network
        raise ConfigError([f"sinks.datadog.api_key: cannot read DD_API_KEY_SECRET_ARN: {type(e).__name__}"]) from None


class LambdaExtension:
    """Drives one sandbox's lifecycle. ``flush(timeout_secs)`` is ``Agent.flush``; ``stop(deadline)`` starts
    the agent's drain with a time.monotonic() deadline."""

    def __init__(self, runtime_api: str, cfg: AwsLambdaConfig, flush: Callable[[float], Awaitable[dict]],
                 stop: Callable[[float], None]) -> None:
        self._base = f"http://{runtime_api}"
        self._cfg = cfg
        self._flush = flush
        self._stop = stop
        self._id = ""
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._done_early: collections.deque[str] = collections.deque(maxlen=_SEEN_REQUEST_IDS)
        self.invocations = 0

    async def run(self) -> None:
        """Register, subscribe, and serve events until SHUTDOWN (then ``stop``) or a failure (raised)."""
        # No total timeout: /event/next blocks for as long as the sandbox stays frozen.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        try:
            await self._register()
            try:
                await self._subscribe()
            except Exception as e:
                await self._report("init/error", "Extension.TelemetrySubscriptionFailed", e)
                raise
            try:
                await self._serve_events()
            except Exception as e:
                await self._report("exit/error", "Extension.Failed", e)
                raise
        finally:
            if self._runner is not None:
                await self._runner.cleanup()
            await self._session.close()

    # ------------------------------------------------------------------------------------------ API calls

    async def _register(self) -> None:
        async with self._session.post(f"{self._base}/{EXTENSIONS_API}/register",
                                      headers={"Lambda-Extension-Name": EXTENSION_NAME},
                                      json={"events": ["INVOKE", "SHUTDOWN"]}) as r:
            if r.status != 200:
                raise RuntimeError(f"register answered HTTP {r.status}: {(await r.text())[:200]}")
            self._id = r.headers["Lambda-Extension-Identifier"]
        log.info("lambda_extension_registered", runtime_api=self._base)

    async def _subscribe(self) -> None:
        host, port = parse_host_port(self._cfg.telemetry_listen)
        app = web.Application()
        app.router.add_post("/", self._telemetry)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        port = self._runner.addresses[0][1]  # the bound one (port 0 in tests)
        body = {"schemaVersion": TELEMETRY_SCHEMA, "types": ["platform"], "buffering": TELEMETRY_BUFFERING,
                "destination": {"protocol": "HTTP", "URI": f"http://{host}:{port}"}}
        async with self._session.put(f"{self._base}/{TELEMETRY_API}", json=body,
                                     headers={"Lambda-Extension-Identifier": self._id}) as r:
            if r.status != 200:
                raise RuntimeError(f"telemetry subscription answered HTTP {r.status}: {(await r.text())[:200]}")
        log.info("lambda_telemetry_subscribed", destination=body["destination"]["URI"])

    async def _report(self, path: str, error_type: str, error: Exception) -> None:
        try:
            async with self._session.post(f"{self._base}/{EXTENSIONS_API}/{path}",
                                          headers={"Lambda-Extension-Identifier": self._id,
                                                   "Lambda-Extension-Function-Error-Type": error_type},
                                          json={"errorMessage": str(error)[:500], "errorType": error_type}):
                pass
        except aiohttp.ClientError:
            pass  # the failure itself is what gets logged
        log.error("lambda_extension_failed", error=f"{type(error).__name__}: {error}", reported=path)

    async def _next_event(self) -> dict[str, Any]:
        async with self._session.get(f"{self._base}/{EXTENSIONS_API}/event/next",
                                     headers={"Lambda-Extension-Identifier": self._id}) as r:
            if r.status != 200:
                raise RuntimeError(f"event/next answered HTTP {r.status}: {(await r.text())[:200]}")
            return await r.json(content_type=None)

    # ------------------------------------------------------------------------------------------ lifecycle

    async def _serve_events(self) -> None:
        while True:
            event = await self._next_event()
            kind = event.get("eventType")
            if kind == "SHUTDOWN":
                left = event.get("deadlineMs", 0) / 1000 - time.time() - SHUTDOWN_MARGIN_SECS
                log.info("lambda_shutdown", reason=event.get("shutdownReason"), drain_secs=round(left, 3))
                self._stop(time.monotonic() + max(0.0, left))
                return
            if kind != "INVOKE":
                continue
            self.invocations += 1
            request_id = str(event.get("requestId", ""))
            await self._runtime_done(request_id, event.get("deadlineMs"))
            answer = await self._flush(self._cfg.flush_timeout_secs)
            log.info("lambda_invocation_flushed", request_id=request_id, **answer)

    async def _runtime_done(self, request_id: str, deadline_ms: Any) -> None:
        if request_id in self._done_early:
            return
        future = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        wait = RUNTIME_DONE_GRACE_SECS
        if isinstance(deadline_ms, (int, float)):
            wait += max(0.0, deadline_ms / 1000 - time.time())
        try:
            await asyncio.wait_for(future, wait)
        except TimeoutError:
            log.warning("lambda_runtime_done_not_seen", request_id=request_id, waited_secs=round(wait, 3))
        finally:
            self._waiting.pop(request_id, None)

    async def _telemetry(self, request: web.Request) -> web.Response:
        try:
            events = await request.json()
        except ValueError:
            return web.Response(status=400)
        for event in events if isinstance(events, list) else []:
            if not isinstance(event, dict) or event.get("type") != "platform.runtimeDone":
                continue
            record = event.get("record")
            request_id = str(record.get("requestId", "")) if isinstance(record, dict) else ""
            future = self._waiting.get(request_id)
            if future is not None and not future.done():
                future.set_result(None)
            else:  # before INVOKE reached us: remembered for _runtime_done
                self._done_early.append(request_id)
        return web.Response(status=200)
