"""A stand-in for the OpenAI API, so the example runs with no account: answers chat completions.

It returns a fixed reply with a plausible `usage` block, which is what ddtrace's OpenAI integration reads
to report token counts. Point the OpenAI client at it with OPENAI_BASE_URL=http://<host>:<port>/v1.
"""

from __future__ import annotations

import argparse
import time
import uuid

from aiohttp import web


async def chat_completions(request: web.Request) -> web.Response:
    body = await request.json()
    prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
    reply = f"(fake) You said {len(prompt.split())} words."
    prompt_tokens, completion_tokens = max(1, len(prompt) // 4), max(1, len(reply) // 4)
    return web.json_response({
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "gpt-4o-mini"),
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": reply}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    web.run_app(app, host=args.host, port=args.port, print=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
    main()
