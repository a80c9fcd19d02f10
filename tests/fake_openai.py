"""A local stand-in for the OpenAI API, for integration tests that run the real openai client.

Answers, deterministically:
- ``POST /v1/chat/completions``: the reply is ``"You said: <last message content>"``; with ``"stream": true``
  as server-sent events, ending with a usage chunk only when ``stream_options.include_usage`` is true
  (as OpenAI does);
- ``POST /v1/completions``: the reply is ``"You said: <prompt>"``, plain or streamed the same way;
- ``POST /v1/embeddings``: 8-dimensional vectors, one per input;
- errors chosen by model name: ``rate-limited`` -> 429, ``server-error`` -> 500 (OpenAI's error JSON).

Every answer carries the headers OpenAI sends with each response: ``openai-organization`` (``ORGANIZATION``)
and the ``x-ratelimit-*`` headers (``RATE_LIMIT_HEADERS``), fixed so tests know what a tracer records.

Token usage is the number of whitespace-separated words (prompt: all message contents), so tests can
compute the exact counts. Every request body is recorded in ``requests``.

Run it in-process with ``FakeOpenAI()`` (a background thread; ``.url``, ``.requests``, ``.stop()``) or with
``python tests/fake_openai.py --port 18080``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import threading
import time
from typing import Any

from aiohttp import web

ERROR_MODELS = {
    "rate-limited": (429, "rate_limit_exceeded", "Rate limit reached for rate-limited on requests per min (RPM)."),
    "server-error": (500, "server_error", "The server had an error while processing your request."),
}


# OpenAI API docs, "Rate limits" (rate limits in headers) and "Debugging requests" (openai-organization).
ORGANIZATION = "Acme-Research"
RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "5000",
    "x-ratelimit-limit-tokens": "4000000",
    "x-ratelimit-remaining-requests": "4999",
    "x-ratelimit-remaining-tokens": "3999950",
    "x-ratelimit-reset-requests": "12ms",
    "x-ratelimit-reset-tokens": "0s",
}


def words(text: str) -> int:
    return len(text.split())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class OpenAIHandlers:
    """The endpoints; ``requests`` records every request as {"path", "body"}."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.on_response_prepare.append(_openai_headers)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        return app

    # -------------------------------------------------------------------------------------- endpoints

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.requests.append({"path": request.path, "body": body})
        return body

    @staticmethod
    def _error(model: str) -> web.Response | None:
        if model not in ERROR_MODELS:
            return None
        status, code, message = ERROR_MODELS[model]
        return web.json_response({"error": {"message": message, "type": "requests" if status == 429 else
                                            "server_error", "param": None, "code": code}}, status=status)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        model = body.get("model", "")
        error = self._error(model)
        if error is not None:
            return error
        messages = body.get("messages") or []
        last = _message_text(messages[-1].get("content")) if messages else ""
        reply = f"You said: {last}"
        prompt_tokens = sum(words(_message_text(m.get("content"))) for m in messages)
        created = int(time.time())
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                             "finish_reason": "stop"}],
                "usage": usage(prompt_tokens, words(reply)),
            })
        pieces = [{"role": "assistant", "content": ""}] + [{"content": w} for w in _chunks(reply)]
        events = [{"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in pieces]
        events.append({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                       "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                           "model": model, "choices": [], "usage": usage(prompt_tokens, words(reply))})
        return await _sse(request, events)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        model = body.get("model", "")
        error = self._error(model)
        if error is not None:
            return error
        prompt = body.get("prompt") or ""
        prompt = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        reply = f"You said: {prompt}"
        created = int(time.time())
        if not body.get("stream"):
            return web.json_response({
                "id": "cmpl-fake", "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": reply, "logprobs": None, "finish_reason": "stop"}],
                "usage": usage(words(prompt), words(reply)),
            })
        events = [{"id": "cmpl-fake", "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
                  for piece in _chunks(reply)]
        events[-1]["choices"][0]["finish_reason"] = "stop"
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({"id": "cmpl-fake", "object": "text_completion", "created": created, "model": model,
                           "choices": [], "usage": usage(words(prompt), words(reply))})
        return await _sse(request, events)

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        model = body.get("model", "")
        error = self._error(model)
        if error is not None:
            return error
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = [{"object": "embedding", "index": i, "embedding": [round(0.1 * (j + 1), 3) for j in range(8)]}
                for i in range(len(inputs))]
        prompt_tokens = sum(words(text) for text in inputs if isinstance(text, str))
        return web.json_response({"object": "list", "data": data, "model": model,
                                  "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})


class FakeOpenAI:
    """The fake API on a free port, served from a background thread with its own event loop."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.handlers = OpenAIHandlers()
        self.requests = self.handlers.requests
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(self.handlers.app())
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(host, started), name="fake-openai",
                                        daemon=True)
        self._thread.start()
        self.url = f"http://{host}:{started.result(10)}"

    def _serve(self, host: str, started: concurrent.futures.Future) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, host, 0)
            self._loop.run_until_complete(site.start())
            started.set_result(self._runner.addresses[0][1])
        except Exception as e:  # let the constructor raise it instead of hanging
            started.set_exception(e)
            return
        self._loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _openai_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["openai-organization"] = ORGANIZATION
    response.headers.update(RATE_LIMIT_HEADERS)


def _chunks(text: str) -> list[str]:
    """The text in word-sized pieces that join back to it exactly."""
    parts = text.split(" ")
    return [parts[0]] + [" " + p for p in parts[1:]]


async def _sse(request: web.Request, events: list[dict[str, Any]]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for event in events:
        await response.write(f"data: {json.dumps(event)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args()
    web.run_app(OpenAIHandlers().app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
