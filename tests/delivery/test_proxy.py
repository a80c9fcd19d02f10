"""Which proxy a request goes through: the environment's, or the sink's own setting; NO_PROXY; credentials."""

from __future__ import annotations

import base64

import pytest

from llmship.config import ConfigError, load_config_text
from llmship.delivery.proxy import parse, proxy_for, secrets

ENV = {"HTTPS_PROXY": "http://secure-proxy:3128", "HTTP_PROXY": "http://plain-proxy:3128"}


@pytest.mark.parametrize("url, env, configured, expected", [
    ("https://api.datadoghq.com/api/v2/series", ENV, "", "http://secure-proxy:3128"),
    ("http://127.0.0.1:8080/api/v2/series", ENV, "", "http://plain-proxy:3128"),
    ("https://api.datadoghq.com/x", {"https_proxy": "http://lower:1"}, "", "http://lower:1"),
    ("https://api.datadoghq.com/x", {}, "", None),
    ("https://api.datadoghq.com/x", ENV, "config-proxy:8888", "http://config-proxy:8888"),  # overrides env
    ("https://api.datadoghq.com/x", {**ENV, "NO_PROXY": "datadoghq.com"}, "", None),  # domain suffix
    ("https://api.datadoghq.com/x", {**ENV, "NO_PROXY": "example.com"}, "", "http://secure-proxy:3128"),
    ("http://127.0.0.1:8080/x", {"no_proxy": "127.0.0.1"}, "http://config-proxy:8888", None),  # for both
    ("http://intake:8080/x", {"NO_PROXY": "*"}, "http://config-proxy:8888", None),
])
def test_the_proxy_for_a_url(url, env, configured, expected):
    proxy = proxy_for(url, configured, env)
    assert (proxy and proxy.url) == expected


def test_credentials_go_to_proxy_auth_and_nowhere_else():
    proxy = parse("http://us%40er:p%3Ass@proxy.internal:3128")
    assert proxy.url == "http://proxy.internal:3128"
    assert proxy.authorization == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert "p:ss" not in repr(proxy) and "p%3Ass" not in proxy.describe()
    # to the proxy only: on the CONNECT for https (never inside the tunnel), on the request for http
    assert proxy.request_options("https://api.datadoghq.com/x") == (
        {}, {"proxy": proxy.url, "proxy_headers": {"Proxy-Authorization": proxy.authorization}})
    assert proxy.request_options("http://intake:8080/x") == (
        {"Proxy-Authorization": proxy.authorization}, {"proxy": proxy.url})
    assert "p%3Ass" in secrets("http://us%40er:p%3Ass@proxy.internal:3128", {})


def test_config_checks_the_proxy_and_never_echoes_its_password():
    cfg = load_config_text('[sinks.datadog]\nproxy = "http://u:pw-1234567@proxy:3128"\n')
    assert "pw-1234567" not in repr(cfg)
    with pytest.raises(ConfigError) as e:
        load_config_text('[sinks.datadog]\nproxy = "socks5://u:pw-1234567@proxy:1080"\n')
    assert e.value.problems[0].startswith("sinks.datadog.proxy: expected http://")
    assert "pw-1234567" not in str(e.value.problems)
