"""`llmship intake` as a process: serving, fault flags, env overrides, --show, signals, bad flags."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pytest

from harness import PYTHON, TEST_API_KEY, wait_for
from llmship.compression import compress
from llmship.delivery.payload import PAYLOAD_ID_HEADER
from llmship.sinks.intakes import ROUTES
from llmship.intake import cli


def post(url: str, kind: str, items, encoding: str = "gzip", payload_id: str | None = None
         ) -> tuple[int, dict, dict]:
    body = orjson.dumps(items if kind != "series" else {"series": items})
    headers = {"DD-API-KEY": TEST_API_KEY, "Content-Encoding": encoding, "Content-Type": "application/json"}
    if payload_id:
        headers[PAYLOAD_ID_HEADER] = payload_id
    request = urllib.request.Request(url + ROUTES[kind].path, data=compress(body, encoding), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read()), dict(e.headers)


def show(*flags: str) -> str:
    result = subprocess.run([PYTHON, "-m", "llmship", "intake", "--show", *flags], capture_output=True,
                            timeout=30, check=True)
    return result.stdout.decode()


def test_serves_records_and_shows_them_then_exits_0_on_sigterm(start_intake):
    intake = start_intake()
    log = [{"message": "hello", "ddsource": "llmship"}]
    series = [{"metric": "llm.tokens", "points": [{"timestamp": 1, "value": 3.0}]}]
    assert post(intake.url, "logs", log, "zstd", payload_id="p1")[:2] == (202, {})
    assert post(intake.url, "series", series, "deflate")[:2] == (202, {"errors": []})
    [record] = intake.wait_records("logs", 1)  # read from this process while the intake process writes
    assert record["data"] == log[0] and record["payload_id"] == "p1"

    lines = show("--db", str(intake.db)).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("logs ") and lines[0].endswith(' {"message":"hello","ddsource":"llmship"}')
    assert lines[1].startswith("series ")
    assert show("--db", str(intake.db), "--kind", "series").splitlines() == [lines[1]]

    intake.stop()
    assert intake.proc.returncode == 0
    output = intake.log_path.read_text()
    assert "intake_listening" in output and TEST_API_KEY not in output
    assert all(TEST_API_KEY.encode() not in p.read_bytes() for p in intake.db.parent.glob(intake.db.name + "*"))


def test_fault_flags(start_intake):
    intake = start_intake("--fail-first", "1", "--fail-status", "500", "--retry-after", "7", "--fail-kind", "logs",
                          "--max-body-bytes", "300", "--latency-ms", "100")
    began = time.monotonic()
    big_series = [{"metric": "m" * 400, "points": []}]
    assert post(intake.url, "series", big_series, "identity")[0] == 202  # other kinds: no fault, no limit
    assert time.monotonic() - began >= 0.1  # latency applies to every kind
    status, _, headers = post(intake.url, "logs", [{"message": "a"}])
    assert status == 500 and headers["Retry-After"] == "7"
    assert post(intake.url, "logs", [{"message": "b"}])[0] == 202
    assert post(intake.url, "logs", [{"message": "c" * 400}], "identity")[0] == 413
    assert [(r["kind"], r["status"], r["fault"]) for r in intake.requests()] == [
        ("series", 202, None), ("logs", 500, "fail_first"), ("logs", 202, None), ("logs", 413, "max_body_bytes")]
    assert [r["data"]["message"] for r in intake.records("logs")] == ["b"]


def test_env_overrides_flags_and_port_0_prints_the_bound_port(tmp_path):
    db = tmp_path / "env.sqlite"
    env = {**os.environ, "LLMSHIP_INTAKE_LISTEN": "127.0.0.1:0", "LLMSHIP_INTAKE_DB": str(db),
           "LLMSHIP_INTAKE_FAIL_FOR_SECS": "0.3"}
    proc = subprocess.Popen([PYTHON, "-m", "llmship", "intake"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env)
    try:
        line = proc.stdout.readline().decode()  # printed once bound
        assert line.startswith("listening on http://127.0.0.1:") and not line.rstrip().endswith(":0")
        url = line.split()[-1]
        assert post(url, "logs", [{"message": "early"}])[0] == 503
        assert wait_for(lambda: post(url, "logs", [{"message": "late"}])[0] == 202, timeout=10,
                        what="the --fail-for-secs window to end")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        proc.stdout.close()
    assert db.exists()


def test_every_flag_reads_its_env_variable(monkeypatch):
    values = {"LISTEN": "0.0.0.0:9", "DB": "x.sqlite", "SHOW": "1", "KIND": "logs", "FAIL_FIRST": "3",
              "FAIL_STATUS": "429", "RETRY_AFTER": "5", "LATENCY_MS": "12.5", "FAIL_KIND": "traces",
              "MAX_BODY_BYTES": "1000", "FAIL_FOR_SECS": "2"}
    for name, value in values.items():
        monkeypatch.setenv("LLMSHIP_INTAKE_" + name, value)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    assert vars(args) == {"listen": "0.0.0.0:9", "db": "x.sqlite", "show": True, "kind": "logs", "fail_first": 3,
                          "fail_status": 429, "retry_after": "5", "latency_ms": 12.5, "fail_kind": "traces",
                          "max_body_bytes": 1000, "fail_for_secs": 2.0}
    assert parser.parse_args(["--fail-first", "1"]).fail_first == 1  # a flag beats its env variable


@pytest.mark.parametrize("flags, env, code, message", [
    (["--listen", "nonsense"], {}, 2, "not host:port"),
    ([], {"LLMSHIP_INTAKE_FAIL_KIND": "metrics"}, 2, "--fail-kind must be one of"),
    (["--show"], {}, 1, "no database"),
])
def test_bad_flags_exit_with_one_clear_line(tmp_path, flags, env, code, message):
    result = subprocess.run([PYTHON, "-m", "llmship", "intake", "--db", str(tmp_path / "none.sqlite"), *flags],
                            capture_output=True, timeout=30, env={**os.environ, **env})
    assert result.returncode == code
    assert message in result.stderr.decode() and "Traceback" not in result.stderr.decode()


def test_port_in_use_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "llmship", "intake", "--listen", f"127.0.0.1:{port}",
                                 "--db", str(tmp_path / "db.sqlite")], capture_output=True, timeout=30)
    assert result.returncode == 1
    assert b"cannot listen on" in result.stderr and b"Traceback" not in result.stderr

