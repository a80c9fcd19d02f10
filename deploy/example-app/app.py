"""An example LLM app, unmodified for Datadog: ddtrace-run instruments its OpenAI calls, and llmship
receives the APM spans, the LLM Observability events and a DogStatsD counter.

Run it with `ddtrace-run python app.py`; the DD_* variables (see compose.yaml) point ddtrace and
DogStatsD at the agent, OPENAI_BASE_URL at the fake OpenAI server or the real API.
"""

from __future__ import annotations

import argparse
import os
import time

from datadog.dogstatsd import DogStatsd
from openai import OpenAI

QUESTIONS = [
    "What is the capital of France?",
    "Summarise the plot of Hamlet in one sentence.",
    "Give me three names for a grey cat.",
]


def statsd_from_env() -> DogStatsd:
    """DogStatsD at DD_DOGSTATSD_URL: unix:///path/to/dsd.socket or udp://host:port."""
    url = os.environ.get("DD_DOGSTATSD_URL", "udp://127.0.0.1:8125")
    if url.startswith("unix://"):
        return DogStatsd(socket_path=url.removeprefix("unix://"), disable_telemetry=True)
    host, _, port = url.removeprefix("udp://").rpartition(":")
    return DogStatsd(host=host, port=int(port), disable_telemetry=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Ask an LLM a few questions, forever or N times.")
    parser.add_argument("--iterations", type=int, default=0, help="0: run until stopped")
    parser.add_argument("--interval-secs", type=float, default=5.0)
    parser.add_argument("--model", default=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    args = parser.parse_args()

    client = OpenAI()  # OPENAI_API_KEY and OPENAI_BASE_URL from the environment
    statsd = statsd_from_env()
    done = 0
    while args.iterations == 0 or done < args.iterations:
        question = QUESTIONS[done % len(QUESTIONS)]
        response = client.chat.completions.create(
            model=args.model, messages=[{"role": "user", "content": question}], max_tokens=64)
        statsd.increment("example.questions", tags=[f"model:{args.model}"])
        print(f"{question} -> {response.choices[0].message.content}", flush=True)
        done += 1
        if args.iterations == 0 or done < args.iterations:
            time.sleep(args.interval_secs)
    statsd.flush()
    statsd.close_socket()


if __name__ == "__main__":
    main()
