"""The newcomer's path: no config file, no API key, a DogStatsD client, data visible on disk."""

from __future__ import annotations

import json

from datadog.dogstatsd import DogStatsd

from harness import wait_for


def read_ndjson(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_without_an_api_key_metrics_land_in_local_files(tmp_path, start_agent):
    agent = start_agent()  # no intake: no url and no key, so the embedded file sink is used
    assert "writing to" in agent.log_text()
    client = DogStatsd(host="127.0.0.1", port=agent.ports["dsd_port"], disable_buffering=True,
                       disable_telemetry=True)
    client.increment("quickstart.requests", 3, tags=["model:gpt-4o-mini"])
    client.gauge("quickstart.queue", 7)
    series_file = tmp_path / "data" / "out" / "series.ndjson"

    def arrived():
        names = {s["metric"]: s for s in read_ndjson(series_file)}
        return names if {"quickstart.requests", "quickstart.queue"} <= names.keys() else None

    series = wait_for(arrived, timeout=20, what="series in the file sink")
    assert series["quickstart.queue"]["points"][0]["value"] == 7
    assert "model:gpt-4o-mini" in series["quickstart.requests"]["tags"]
    client.close_socket()
