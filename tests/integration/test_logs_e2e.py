"""Sample logs end to end: real sockets into `llmship run`, out to `llmship intake`.

Truncation, scrubbing and tagging are checked exactly; a Python app using the standard library's logging
with a JSON formatter (the snippet the README shows) sends through the TCP source.
"""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import textwrap
import urllib.request

from harness import TEST_API_KEY
from llmship.transforms.truncate import truncate_text

CONFIG = """
[agent]
env = "e2e"
service = "agent-svc"
version = "9.9"
tags = ["team:llm"]
[llm]
max_text_chars = 64
[[llm.sampling.rules]]
service = "dropped-svc"
prompt_log_rate = 0.0
"""

OPENAI_KEY = "sk-proj-" + "Ab3dEfGh1jKlMn0pQr2StUvWxYz4aBcDeFgHiJkLmNoPqRsT"


def send_tcp(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(payload)


def post_http(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.status


def by_message_prefix(intake, prefix: str, n: int = 1) -> list[dict]:
    found = intake.wait_records("logs", n, where=lambda d: str(d.get("message", "")).startswith(prefix))
    return [r["data"] for r in found]


def test_tcp_logs_are_scrubbed_truncated_and_tagged(intake, start_agent):
    agent = start_agent(CONFIG, intake=intake)
    prompt = f"please call me on 555 and email bob@example.com with key {OPENAI_KEY} " + "then more text " * 10
    lines = [
        {"message": "tcp-json one", "service": "chatbot", "ddtags": "env:staging", "prompt": prompt,
         "completion": "ok", "model": "gpt-4o-mini", "trace_id": "123", "tokens": {"input": 10}},
        {"message": "tcp-dropped", "service": "dropped-svc"},
    ]
    payload = b"".join(json.dumps(line).encode() + b"\n" for line in lines) + b"tcp-plain line from 10.1.2.3\n"
    send_tcp(agent.ports["logs_tcp_port"], payload)

    (record,) = by_message_prefix(intake, "tcp-json")
    expected_prompt = truncate_text(prompt.replace("bob@example.com", "[REDACTED:email]")
                                    .replace(OPENAI_KEY, "[REDACTED:openai_api_key]"), 64)[0]
    assert record["prompt"] == expected_prompt and len(record["prompt"]) == 64
    assert record["completion"] == "ok" and record["tokens"] == {"input": 10} and record["trace_id"] == "123"
    assert record["hostname"] == "test-host" and record["service"] == "chatbot"
    assert record["ddtags"].split(",") == ["env:staging", "service:chatbot", "version:9.9", "team:llm",
                                           "llmship.truncated:true"]
    (plain,) = by_message_prefix(intake, "tcp-plain")
    assert plain["message"] == "tcp-plain line from [REDACTED:ipv4]"
    assert plain["service"] == "agent-svc"
    assert plain["ddtags"] == "env:e2e,service:agent-svc,version:9.9,team:llm"
    assert not [r for r in intake.records("logs") if r["data"].get("message") == "tcp-dropped"]
    assert agent.counter("logs_processor", "discarded", reason="sampled_out") == 1
    assert agent.counter("scrub", "scrub_matches", rule="openai_api_key") == 1
    # shipped the way the intake wants it: gzip, with the key, to /api/v2/logs
    request = intake.requests("logs")[0]
    assert request["path"] == "/api/v2/logs" and request["content_encoding"] == "zstd"
    assert request["api_key_present"] == 1
    assert TEST_API_KEY not in agent.log_text()


def test_http_intake_api_with_gzip_array_and_an_oversize_tcp_line(intake, start_agent):
    agent = start_agent(CONFIG + "[sources.logs]\nmax_line_bytes = 2048\n", intake=intake)
    logs = [{"message": f"http-{i} card 4111 1111 1111 1111", "ddsource": "python", "status": "info"}
            for i in range(50)]
    status = post_http(agent.ports["logs_http_port"], "/api/v2/logs?ddtags=via:http", gzip.compress(
        json.dumps(logs).encode()), {"Content-Encoding": "gzip", "DD-API-KEY": "app-side-key-ignored"})
    assert status == 202
    records = by_message_prefix(intake, "http-", 50)
    assert {r["message"] for r in records} == {f"http-{i} card [REDACTED:credit_card]" for i in range(50)}
    assert all("via:http" in r["ddtags"].split(",") and r["ddsource"] == "python" for r in records)

    line = b'{"message": "oversize ' + b"w" * 10_000 + b'"}'
    send_tcp(agent.ports["logs_tcp_port"], line + b"\n")
    (cut,) = by_message_prefix(intake, '{"message": "oversize')
    assert cut["llmship"] == {"line_bytes": len(line)}
    assert cut["message"] == truncate_text(line[:2048].decode(), 64)[0]  # cut at the line limit, then the text one
    assert "llmship.truncated:true" in cut["ddtags"].split(",")
    assert agent.counter("logs_tcp", "truncated_lines") == 1


APP = textwrap.dedent('''
    import json, logging, logging.handlers, sys

    class JsonFormatter(logging.Formatter):
        """One JSON object per record: the message plus any `extra=` attributes."""
        RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

        def format(self, record):
            doc = {"message": record.getMessage(), "status": record.levelname.lower(),
                   "logger": record.name, "ddsource": "python"}
            doc.update({k: v for k, v in vars(record).items() if k not in self.RESERVED})
            return json.dumps(doc, default=str)

    class JsonLinesHandler(logging.handlers.SocketHandler):
        """SocketHandler sends pickles; the agent reads JSON lines."""
        def makePickle(self, record):
            return (self.format(record) + "\\n").encode()

    handler = JsonLinesHandler("127.0.0.1", int(sys.argv[1]))
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("llm.samples")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    log.info("llm call", extra={"prompt": "What is 2+2? my mail is ann@corp.example",
                                "completion": "4", "model": "gpt-4o-mini", "service": "py-app",
                                "tokens": {"input": 12, "output": 1}, "duration_ms": 321.5})
    log.error("llm call failed", extra={"prompt": "again", "model": "gpt-4o-mini", "service": "py-app"})
    handler.close()
''')


def test_a_python_app_using_logging_sends_samples(intake, start_agent, tmp_path):
    agent = start_agent(CONFIG, intake=intake)
    script = tmp_path / "app.py"
    script.write_text(APP)
    done = subprocess.run([sys.executable, str(script), str(agent.ports["logs_tcp_port"])], capture_output=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    records = {r["message"]: r for r in by_message_prefix(intake, "llm call", 2)}
    ok, failed = records["llm call"], records["llm call failed"]
    assert ok["prompt"] == "What is 2+2? my mail is [REDACTED:email]"
    assert ok["completion"] == "4" and ok["tokens"] == {"input": 12, "output": 1} and ok["duration_ms"] == 321.5
    assert ok["status"] == "info" and ok["logger"] == "llm.samples" and ok["service"] == "py-app"
    assert ok["ddtags"] == "env:e2e,service:py-app,version:9.9,team:llm"
    assert failed["status"] == "error" and failed["prompt"] == "again"
