"""The CLI verbs as an operator runs them: real subprocesses, real exit codes and output."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from harness import TEST_API_KEY


def llmship(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "LLMSHIP_"))}
    return subprocess.run([sys.executable, "-m", "llmship", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=60)


def test_validate_accepts_the_embedded_default():
    result = llmship("validate")
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_names_every_bad_key_one_line_each(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[agent]\nflush_interval_secs = -5\n[sources.traces]\nlisten = "nowhere"\n'
                    '[delivery]\nmax_concurrency = 0\n')
    result = llmship("validate", "--config", str(path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    for key in ("agent.flush_interval_secs", "sources.traces.listen", "delivery.max_concurrency"):
        assert any(key in line for line in lines), (key, lines)


def test_validate_reads_the_config_from_the_environment(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[agent]\nunknown_key = 1\n")
    result = llmship("validate", env={"LLMSHIP_CONFIG": str(path)})
    assert result.returncode != 0
    assert "agent.unknown_key: unknown key" in result.stderr


def test_validate_binds_no_socket(tmp_path):
    """validate runs the start-up path short of binding: a port in use must not make it fail."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "ok.toml"
        path.write_text(f'[sources.traces]\nlisten = "127.0.0.1:{port}"\n')
        result = llmship("validate", "--config", str(path))
    assert result.returncode == 0, result.stderr


def test_validate_never_prints_the_api_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[sinks.datadog]\napi_key = "${KEY}"\ncompression = "nope"\nurl = "ftp://x"\n')
    result = llmship("validate", "--config", str(path), env={"KEY": TEST_API_KEY})
    assert result.returncode != 0
    assert TEST_API_KEY not in result.stdout + result.stderr


def test_status_reports_an_unreachable_agent_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    result = llmship("status", "--url", f"http://127.0.0.1:{port}")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_validate_rejects_a_scrub_rule_without_a_regex_or_a_default_to_override(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[scrub.rules]]\nname = "not_a_default_rule"\n')
    result = llmship("validate", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("llmship: invalid config: scrub.rules:"), result.stderr


def test_validate_rejects_a_spool_dir_that_is_a_file_or_cannot_be_created(tmp_path):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    for spool_dir, reason in ((a_file, f"{a_file} exists and is not a directory"),
                              (a_file / "spool", f"cannot be created: {a_file} is not a directory")):
        path = tmp_path / "llmship.toml"
        path.write_text(f'[delivery]\nspool_dir = "{spool_dir}"\n')
        result = llmship("validate", "--config", str(path))
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == f"llmship: invalid config: delivery.spool_dir: {reason}"
    path.write_text(f'[delivery]\nspool_dir = "{tmp_path / "new" / "spool"}"\n')  # made at start: fine
    assert llmship("validate", "--config", str(path)).returncode == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere on a writable file system")
def test_validate_rejects_an_unwritable_spool_dir(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o500)
    try:
        path = tmp_path / "llmship.toml"
        path.write_text(f'[delivery]\nspool_dir = "{spool}"\n')
        result = llmship("validate", "--config", str(path))
        assert result.returncode == 2
        assert f"delivery.spool_dir: {spool} is not writable by this user" in result.stderr
    finally:
        spool.chmod(0o700)
