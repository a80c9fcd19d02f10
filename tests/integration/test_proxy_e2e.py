"""The sinks go through the proxy the environment names (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), or the one
[sinks.datadog] proxy names, with its credentials sent to the proxy and shown nowhere."""

from __future__ import annotations

import socket
import subprocess

import pytest
from forward_proxy import ForwardProxy
from harness import PYTHON, _subprocess_env, free_port, http_get, wait_for

PASSWORD = "pr0xy-s3cret-passw0rd"


@pytest.fixture
def forward_proxy():
    started: list[ForwardProxy] = []

    def start(credentials: str | None = None) -> ForwardProxy:
        started.append(ForwardProxy(credentials))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()


def send_metric(agent, name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(f"{name}:1|c".encode(), ("127.0.0.1", agent.ports["dsd_port"]))


def test_the_environments_proxy_carries_every_request_and_its_password_is_shown_nowhere(
        intake, start_agent, forward_proxy):
    proxy = forward_proxy(f"llmship:{PASSWORD}")
    agent = start_agent(intake=intake, env={"HTTP_PROXY": f"http://llmship:{PASSWORD}@127.0.0.1:{proxy.port}"})
    send_metric(agent, "via.env.proxy")
    intake.wait_records("series", where=lambda r: r["metric"] == "via.env.proxy")
    # The proxy records a request once the intake has answered it, so after the intake stored it: nothing
    # went around the proxy when both have counted the same requests (one that did would keep the intake ahead)
    wait_for(lambda: proxy.passed and len(intake.requests()) == len(proxy.passed),
             what="the proxy to have carried every request the intake got")
    assert all(p.credentials == f"llmship:{PASSWORD}" and p.status == 202 for p in proxy.passed)
    assert all(p.url.startswith(intake.url + "/api/") for p in proxy.passed)

    status = agent.status()
    assert status["components"]["delivery"]["info"]["destination"] == (
        f"{intake.url} via proxy http://127.0.0.1:{proxy.port} (with credentials)")
    table = subprocess.run([PYTHON, "-m", "llmship", "status", "--url", agent.status_url], capture_output=True,
                           text=True, env=_subprocess_env(None), timeout=30, check=True).stdout
    metrics = http_get(agent.status_url + "/metrics")[1].decode()
    for shown in (agent.log_text(), str(status), table, metrics):
        assert PASSWORD not in shown


def test_sinks_datadog_proxy_overrides_the_environment(intake, start_agent, forward_proxy):
    proxy = forward_proxy()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request sent there would fail
    agent = start_agent(f'[sinks.datadog]\nproxy = "127.0.0.1:{proxy.port}"\n', intake=intake,
                        env={"HTTP_PROXY": dead, "HTTPS_PROXY": dead})
    send_metric(agent, "via.configured.proxy")
    intake.wait_records("series", where=lambda r: r["metric"] == "via.configured.proxy")
    wait_for(lambda: proxy.passed, what="the proxy to record the request (it does once the intake answered)")
    assert proxy.passed[0].credentials is None


def test_no_proxy_sends_matching_hosts_direct(intake, start_agent, forward_proxy):
    proxy = forward_proxy()
    agent = start_agent(intake=intake, env={"HTTP_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.1"})
    send_metric(agent, "direct")
    intake.wait_records("series", where=lambda r: r["metric"] == "direct")
    assert proxy.passed == []


def test_a_proxy_refusing_our_credentials_is_a_retryable_failure_that_names_no_password(
        intake, start_agent, forward_proxy):
    proxy = forward_proxy("llmship:the-right-one")
    agent = start_agent(intake=intake, env={"HTTP_PROXY": f"http://llmship:{PASSWORD}@127.0.0.1:{proxy.port}"})
    send_metric(agent, "refused.by.proxy")
    wait_for(lambda: agent.counter("delivery.series", "errors", error_type="http_407") >= 1, what="a 407")
    assert agent.counter("delivery.series", "discarded") == 0  # kept and retried: the proxy may be fixed
    assert PASSWORD not in agent.log_text() and PASSWORD not in str(agent.status())
