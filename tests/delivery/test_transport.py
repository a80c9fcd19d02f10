"""Where each payload kind goes, and which transport a config picks."""

from __future__ import annotations

import pytest

from llmship.config import load_config_text
from llmship.delivery.payload import Route
from llmship.delivery.transport import FileTransport, HttpTransport, base_url, make_transport, url_for
from llmship.sinks.intakes import ROUTES


@pytest.mark.parametrize("kind, url", [
    ("series", "https://api.datadoghq.eu"),
    ("logs", "https://http-intake.logs.datadoghq.eu"),
    ("llmobs", "https://llmobs-intake.datadoghq.eu"),
    ("traces", "https://trace.agent.datadoghq.eu"),
])
def test_site_endpoints(kind, url):
    cfg = load_config_text('[sinks.datadog]\napi_key = "k"\nsite = "datadoghq.eu"\n', env={})
    assert base_url(cfg, ROUTES[kind]) == url
    assert url_for(cfg, ROUTES[kind]) == {
        "series": "https://api.datadoghq.eu/api/v2/series",
        "logs": "https://http-intake.logs.datadoghq.eu/api/v2/logs",
        "llmobs": "https://llmobs-intake.datadoghq.eu/api/v2/llmobs",
        "traces": "https://trace.agent.datadoghq.eu/api/v0.2/traces",
    }[kind]


def test_url_override_keeps_scheme_host_and_port_only():
    cfg = load_config_text('[sinks.datadog]\nurl = "http://user:secret@proxy.local:8080/some/prefix"\n', env={})
    assert base_url(cfg, ROUTES["logs"]) == "http://proxy.local:8080"
    assert url_for(cfg, ROUTES["series"]) == "http://proxy.local:8080/api/v2/series"
    assert url_for(cfg, Route("anything", "/x/y")) == "http://proxy.local:8080/x/y"  # routes are opaque
    transport = make_transport(cfg)
    assert isinstance(transport, HttpTransport)
    assert "secret" not in transport.destination and transport.destination == "http://proxy.local:8080"


def test_without_key_or_url_the_file_sink_is_used(tmp_path):
    cfg = load_config_text(f'[agent]\ndata_dir = "{tmp_path}"\n', env={})
    transport = make_transport(cfg)
    assert isinstance(transport, FileTransport)
    assert transport.directory == tmp_path / "out"
    cfg = load_config_text(f'[sinks.file]\ndir = "{tmp_path / "elsewhere"}"\n', env={})
    assert make_transport(cfg).directory == tmp_path / "elsewhere"


def test_a_key_alone_ships_to_the_site_and_is_not_in_the_destination():
    cfg = load_config_text('[sinks.datadog]\napi_key = "0123456789abcdef0123456789abcdef"\n', env={})
    transport = make_transport(cfg)
    assert isinstance(transport, HttpTransport)
    assert transport.destination == "Datadog (datadoghq.com)"
