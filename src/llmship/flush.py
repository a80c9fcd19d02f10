"""Flush on demand: ``POST /flush`` on the status listener and `llmship flush`.

For apps that live seconds (a Lambda invocation, a Kubernetes Job, a batch script): their data would
otherwise wait in the open metric bucket (``flush_interval_secs``) and in batches (up to 5 s) when the app
ends. A flush closes the open metric buckets (``Aggregator.flush(final=True)``: the bucket ships again,
whole, when it closes), hands every open batch to delivery, and answers once everything accepted before
the request is *settled*: delivered (the intake answered 2xx, or the file sink wrote it), written to the
disk spool, or dropped and counted (a permanent 4xx) - or once the deadline passes. The answer says which:

    {"status": "delivered" | "spooled" | "timeout", "delivered": events, "spooled": events,
     "dropped": events, "pending": events, "pending_payloads": n, "secs": elapsed}

``delivered``/``spooled``/``dropped`` are the events that reached that state while the flush ran (other
traffic meanwhile included); ``pending`` the events accepted before the flush still only in memory at the
answer (kept and retried: no spool, and the intake failing). HTTP 200 when nothing is pending, 504 on the
deadline, 503 while the agent drains.

Datadog's Lambda extension serves its flush as ``POST /lambda/flush`` (and ``GET /lambda/hello``) on port
8124 (DataDog/datadog-agent cmd/serverless, datadog-lambda-* ``extension`` modules): both paths are
served too, so those client libraries work unchanged when the status listener is on 127.0.0.1:8124 (the
Lambda default, llmship/data/lambda.toml).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Flusher = Callable[[float], Awaitable[dict[str, Any]]]

MAX_TIMEOUT_SECS = 300.0  # a bound on how long one request may hold a connection and a flush open
EXIT_TIMEOUT = 3  # `llmship flush`: the deadline passed with data still in memory (1: agent unreachable)


def add_routes(app: web.Application, flusher: Flusher, default_timeout: Callable[[], float]) -> None:
    """Serve the flush on ``app`` (the status listener's); ``default_timeout`` is read per request."""

    async def flush(request: web.Request) -> web.Response:
        raw = request.query.get("timeout")
        try:
            timeout = default_timeout() if raw is None else float(raw)
            if not 0 < timeout <= MAX_TIMEOUT_SECS:
                raise ValueError
        except ValueError:
            return web.json_response({"error": f"timeout must be seconds in (0, {MAX_TIMEOUT_SECS:g}]"},
                                     status=400)
        answer = await flusher(timeout)
        code = {"timeout": 504, "draining": 503}.get(answer["status"], 200)
        return web.json_response(answer, status=code)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({})  # datadog-lambda libraries only check that it answers

    for path in ("/flush", "/lambda/flush"):
        app.router.add_post(path, flush)
    app.router.add_get("/lambda/hello", hello)


# ------------------------------------------------------------------------------------------ the CLI verb


def add_arguments(p: argparse.ArgumentParser, env_default: Callable[..., Any]) -> None:
    p.add_argument("--url", default=env_default("URL"),
                   help="status endpoint, e.g. http://127.0.0.1:5012 (env LLMSHIP_URL); "
                        "default: [status] listen from the config")
    p.add_argument("--timeout", type=float, default=env_default("TIMEOUT"),
                   help="seconds to wait for delivery (env LLMSHIP_TIMEOUT); default: the agent's "
                        "[delivery] drain_timeout_secs")
    p.add_argument("--json", action="store_true", default=env_default("JSON", "") not in ("", "0"),
                   help="print the answer as JSON (env LLMSHIP_JSON=1)")


def flush_url(url: str, timeout: float | None) -> str:
    """"host:port", "http://host:port" or ".../status" -> the agent's /flush URL."""
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.urlencode({"timeout": f"{timeout:g}"}) if timeout is not None else ""
    return urllib.parse.urlunsplit(parts._replace(path="/flush", query=query))


def flush_main(args: argparse.Namespace, url: str) -> int:
    """0: everything delivered or spooled; 3: the deadline passed with data still in memory (kept by the
    agent and retried); 1: the agent could not be asked (one line on stderr)."""
    target = flush_url(url, args.timeout)
    # The agent answers by its own deadline; the client waits a little longer so it hears the answer.
    client_timeout = (args.timeout if args.timeout is not None else MAX_TIMEOUT_SECS) + 5
    request = urllib.request.Request(target, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=client_timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        if e.code not in (503, 504):
            print(f"llmship flush: the agent at {target} answered HTTP {e.code}: {body[:200]!r}", file=sys.stderr)
            return 1
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(getattr(e, "reason", None), "strerror", None) or getattr(e, "reason", None) or e
        print(f"llmship flush: cannot reach the agent at {target}: {reason}", file=sys.stderr)
        return 1
    try:
        answer = json.loads(body)
        status = answer["status"]
    except (ValueError, KeyError, TypeError):
        print(f"llmship flush: {target} did not answer like an llmship agent", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, sort_keys=True))
    else:
        print(f"{status}: {answer.get('delivered', 0):g} events delivered, {answer.get('spooled', 0):g} spooled, "
              f"{answer.get('dropped', 0):g} dropped, {answer.get('pending', 0):g} still in memory "
              f"({answer.get('secs', 0):.2f} s)")
    return 0 if status in ("delivered", "spooled") else EXIT_TIMEOUT if status == "timeout" else 1
