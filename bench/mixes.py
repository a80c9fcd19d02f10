"""The trace mixes bench/traces.py sends, as lists of v0.4 traces (lists of span dicts), built from what
ddtrace 4.16 really sent (tests/fixtures/captures/ddtrace-4.16). Ids are only unique within a trace: the
bench gives every request fresh ones.

  llm: the LLM-heavy mix, the captured traces as they are: an `openai.request` span of type llm with its
       LLM Observability event in ``meta_struct["_llmobs"]`` and its `http.request` child; one call in six
       is an error.
  web: a web app that calls an LLM, 10 spans a trace: the `django.request` root (type web), 3 PostgreSQL
       queries (sql), 2 Redis commands (redis), 2 HTTP client calls (http), and a captured LLM call with its
       `http.request` child, each span with 10 to 30 tags as ddtrace's integrations set them. The tags
       ddtrace puts on a chunk's root only (_dd.p.*, sampling priority, process tags, runtime-id) move
       from the captured LLM span to the web root, which fails (500) when the LLM call does.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import msgpack

CAPTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "captures" / "ddtrace-4.16"
TRACES_CAPTURE = CAPTURES / "v04_traces_llmobs_default.msgpack"

MIXES = ("llm", "web")
ROOT_ONLY_META = ("_dd.tags.process", "runtime-id", "language")
ROOT_ONLY_METRICS = ("_sampling_priority_v1", "process_id", "_dd.tracer_kr", "_dd.top_level")
ENV, VERSION, SERVICE = "staging", "1.2.3", "chatbot"


def captured_traces() -> list[list[dict]]:
    return msgpack.unpackb(TRACES_CAPTURE.read_bytes(), raw=False, strict_map_key=False)


def traces(mix: str, count: int) -> list[list[dict]]:
    return llm_traces(count) if mix == "llm" else web_traces(count)


def llm_traces(count: int) -> list[list[dict]]:
    captured = captured_traces()
    return [copy.deepcopy(captured[i % len(captured)]) for i in range(count)]


# ---------------------------------------------------------------------------------------------- web mix

ROUTES = [("POST", "/api/chat/<str:conversation_id>", "chat.views.ChatView"),
          ("POST", "/api/summaries/", "summaries.views.SummaryCreate"),
          ("POST", "/api/assist/<int:ticket_id>/reply", "support.views.AssistReply")]
QUERIES = [
    "SELECT c.id, c.user_id, c.title, c.created_at FROM conversations c WHERE c.id = %s AND c.user_id = %s",
    "SELECT m.role, m.content, m.created_at FROM messages m WHERE m.conversation_id = %s ORDER BY m.created_at "
    "DESC LIMIT %s",
    "INSERT INTO messages (conversation_id, role, content, model, input_tokens, output_tokens, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
]
USER_AGENTS = ["Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
               "Version/17.4 Safari/605.1.15",
               "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
               "Safari/537.36", "okhttp/4.12.0"]


def _span(span_id: int, parent_id: int, start: int, duration: int, name: str, service: str, resource: str,
          span_type: str, meta: dict, metrics: dict) -> dict:
    return {"service": service, "name": name, "resource": resource, "trace_id": 1, "span_id": span_id,
            "parent_id": parent_id, "start": start, "duration": duration, "error": 0,
            "meta": {"env": ENV, "version": VERSION} | meta, "metrics": metrics, "type": span_type}


def _integration(component: str, service: str, peer: str, port: int) -> tuple[dict, dict]:
    """Tags every client integration span carries."""
    return ({"component": component, "span.kind": "client", "out.host": peer, "server.address": peer,
             "peer.hostname": peer, "_dd.base_service": SERVICE, "_dd.peer.service.source": "out.host",
             "peer.service": peer},
            {"network.destination.port": float(port), "_dd.measured": 1.0, "_dd.top_level": 1.0})


def _postgres(span_id, start, duration, rng, statement: str) -> dict:
    meta, metrics = _integration("psycopg", "postgres", "db-primary.internal", 5432)
    meta |= {"db.system": "postgresql", "db.name": "chatbot", "db.user": "chatbot_app",
             "db.application": "chatbot-web", "db.operation": statement.split()[0]}
    metrics |= {"db.row_count": float(rng.randint(0, 40))}
    return _span(span_id, 1, start, duration, "postgres.query", "postgres", statement, "sql", meta, metrics)


def _redis(span_id, start, duration, command: str, key: str) -> dict:
    meta, metrics = _integration("redis", "redis", "cache.internal", 6379)
    meta |= {"db.system": "redis", "redis.raw_command": f"{command} {key}" + (" 3600 ..." if command == "SETEX"
                                                                             else "")}
    metrics |= {"out.redis_db": 0.0, "redis.args_length": 2.0 if command == "GET" else 4.0}
    return _span(span_id, 1, start, duration, "redis.command", "redis", command, "redis", meta, metrics)


def _http_client(span_id, start, duration, method: str, host: str, path: str, query: str, status: int) -> dict:
    meta, metrics = _integration("requests", SERVICE, host, 443)
    meta |= {"http.method": method, "http.url": f"https://{host}{path}" + (f"?{query}" if query else ""),
             "http.status_code": str(status), "http.useragent": "python-requests/2.32.3"}
    del meta["_dd.base_service"], metrics["_dd.top_level"]  # the app's own service: not a service entry
    return _span(span_id, 1, start, duration, "requests.request", SERVICE, f"{method} {path}", "http", meta,
                 metrics)


def web_trace(llm_call: list[dict], rng: random.Random) -> list[dict]:
    """One 10-span web request around ``llm_call`` (a captured `openai.request` trace with its child)."""
    llm = copy.deepcopy(next(s for s in llm_call if s["name"] == "openai.request"))
    child = copy.deepcopy(next(s for s in llm_call if s is not llm and s.get("parent_id")))
    method, route, view = rng.choice(ROUTES)
    conversation = f"{rng.getrandbits(64):016x}"
    user = rng.randint(1000, 99999)
    path = route.replace("<str:conversation_id>", conversation).replace("<int:ticket_id>", str(rng.randint(1, 9999)))
    start = llm["start"] - 25_000_000
    ms = 1_000_000
    spans = []
    at = start + 2 * ms  # middleware before the view
    k = 2

    def add(make, duration, *args) -> None:
        nonlocal at, k
        spans.append(make(k, at, duration, *args))
        at += duration + rng.randint(100_000, 600_000)
        k += 1

    add(_redis, rng.randint(200_000, 900_000), "GET", f"chat:ctx:{conversation}")
    add(_postgres, rng.randint(800_000, 4 * ms), rng, QUERIES[0])
    add(_postgres, rng.randint(1 * ms, 6 * ms), rng, QUERIES[1])
    add(lambda i, s, d: _http_client(i, s, d, "GET", "users.internal", f"/v1/users/{user}", "fields=plan,quota",
                                     200), rng.randint(4 * ms, 20 * ms))
    # The captured LLM call, a child of the root now, and its own child moved along with it.
    shift = at - llm["start"]
    llm["start"] += shift
    child["start"] += shift
    llm["span_id"], llm["parent_id"], child["span_id"], child["parent_id"] = k, 1, k + 1, k
    for key in ROOT_ONLY_META:
        llm["meta"].pop(key, None)
    propagated = {key: llm["meta"].pop(key) for key in list(llm["meta"]) if key.startswith("_dd.p.")}
    root_metrics = {key: llm["metrics"].pop(key, 1.0) for key in ROOT_ONLY_METRICS}
    spans += [llm, child]
    at += llm["duration"] + rng.randint(100_000, 600_000)
    k += 2
    add(_postgres, rng.randint(1 * ms, 5 * ms), rng, QUERIES[2])
    add(_redis, rng.randint(200_000, 900_000), "SETEX", f"chat:ctx:{conversation}")
    add(lambda i, s, d: _http_client(i, s, d, "POST", "events.internal", "/v2/track", "", 202),
        rng.randint(2 * ms, 10 * ms))
    failed = bool(llm.get("error"))
    status = 500 if failed else 200
    root_meta = {
        "component": "django", "span.kind": "server", "http.method": method, "http.route": route,
        "http.url": f"https://chatbot.example.com{path}", "http.status_code": str(status),
        "http.useragent": rng.choice(USER_AGENTS), "django.view": view, "django.user.is_authenticated": "True",
        "django.user.id": str(user), "django.response.class": "rest_framework.response.Response",
        "language": "python", "runtime-id": "629aa4e04069412fb19ca3bad2c49c69",
        "_dd.tags.process": "entrypoint.basedir:app,entrypoint.name:gunicorn,entrypoint.type:script,"
                            "entrypoint.workdir:srv,svc.user:true",
    } | propagated
    if failed:
        root_meta |= {key: llm["meta"][key] for key in ("error.type", "error.message", "error.stack")
                      if key in llm["meta"]}
    root_metrics["_dd.agent_psr"] = 1.0
    root = _span(1, 0, start, at + 1 * ms - start, "django.request", SERVICE, f"{method} {route}", "web",
                 root_meta, root_metrics)
    root["error"] = int(failed)
    del root["parent_id"]  # ddtrace leaves it out on a root
    return [root] + spans


def web_traces(count: int, seed: int = 7) -> list[list[dict]]:
    rng = random.Random(seed)
    captured = captured_traces()
    return [web_trace(captured[i % len(captured)], rng) for i in range(count)]


if __name__ == "__main__":  # what a web trace looks like
    import json
    import sys

    trace = web_traces(1)[0]
    for span in trace:
        tags = len(span["meta"]) + len(span["metrics"])
        print(f"{span['span_id']:>2} <- {span.get('parent_id', '-')!s:>2} {span['type']:6} {span['name']:18} "
              f"{tags:2} tags  {span['resource'][:70]}", file=sys.stderr)
    if "-v" in sys.argv:
        json.dump(trace, sys.stdout, indent=1, default=lambda b: f"<{len(b)} bytes>")
