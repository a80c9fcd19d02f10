from __future__ import annotations

import pytest

from llmship.config import ConfigError, Price, SamplingRule, load_config, load_config_text, parse_host_port


def test_embedded_default_needs_no_file_and_no_key():
    cfg = load_config(None, env={})
    assert cfg.agent.flush_interval_secs == 10
    assert cfg.sources.dogstatsd.udp == "127.0.0.1:8125"
    assert cfg.sources.traces.listen == "127.0.0.1:8126"
    assert cfg.status.listen == "127.0.0.1:5012"
    assert cfg.agent.hostname  # resolved from the machine
    assert not cfg.ships_to_datadog
    assert cfg.file_sink_dir.endswith("out")


def test_every_default_listener_is_loopback():
    cfg = load_config(None, env={})
    for address in (cfg.sources.dogstatsd.udp, cfg.sources.traces.listen, cfg.sources.logs.tcp,
                    cfg.sources.logs.http, cfg.status.listen):
        assert parse_host_port(address)[0] == "127.0.0.1"


def test_api_key_and_site_come_from_the_environment():
    cfg = load_config_text("", env={"DD_API_KEY": "abc123", "DD_SITE": "datadoghq.eu"})
    assert cfg.sinks.datadog.api_key == "abc123"
    assert cfg.sinks.datadog.site == "datadoghq.eu"
    assert cfg.ships_to_datadog
    assert "abc123" not in repr(cfg) and "abc123" not in repr(cfg.sinks.datadog)


def test_interpolation_with_and_without_default():
    text = '[agent]\nenv = "${APP_ENV}"\nservice = "${SVC:-chatbot}"\ntags = ["team:${TEAM:-llm}"]\n'
    cfg = load_config_text(text, env={"APP_ENV": "prod"})
    assert (cfg.agent.env, cfg.agent.service, cfg.agent.tags) == ("prod", "chatbot", ("team:llm",))


def test_every_bad_value_is_reported_with_its_key():
    text = """
[agent]
flush_interval_secs = 0
colour = "blue"
[sources.dogstatsd]
udp = "localhost"
[sinks.datadog]
compression = "brotli"
[llm.sampling]
span_text_rate = 1.5
[[scrub.rules]]
name = "x"
regex = "("
"""
    with pytest.raises(ConfigError) as e:
        load_config_text(text, env={})
    keys = [p.split(":")[0] for p in e.value.problems]
    assert sorted(keys) == sorted([
        "agent.colour", "agent.flush_interval_secs", "sources.dogstatsd.udp", "sinks.datadog.compression",
        "llm.sampling.span_text_rate", "scrub.rules[0].regex",
    ])


def test_wrong_types_name_the_key():
    with pytest.raises(ConfigError) as e:
        load_config_text('[agent]\ntags = "a:b"\n[status]\nship_self_metrics = "yes"\n', env={})
    assert any(p.startswith("agent.tags: expected a list") for p in e.value.problems)
    assert any(p.startswith("status.ship_self_metrics: expected true or false") for p in e.value.problems)


def test_pricing_and_sampling_rules_are_typed():
    text = """
[llm.pricing]
"gpt-4o*" = { input = 2.5, output = 10 }
[[llm.sampling.rules]]
service = "chat*"
prompt_log_rate = 0.5
"""
    cfg = load_config_text(text, env={})
    assert cfg.llm.pricing == {"gpt-4o*": Price(input=2.5, output=10.0)}
    assert cfg.llm.sampling.rules == (SamplingRule(service="chat*", prompt_log_rate=0.5),)


def test_compat_metrics_takes_known_names_only():
    assert load_config_text("", env={}).llm.compat_metrics == ()
    assert load_config_text('[llm]\ncompat_metrics = ["openai"]\n', env={}).llm.compat_metrics == ("openai",)
    with pytest.raises(ConfigError) as e:
        load_config_text('[llm]\ncompat_metrics = ["openai", "OpenAI"]\n', env={})
    assert e.value.problems == ["llm.compat_metrics[1]: expected one of openai, got 'OpenAI'"]


def test_spill_needs_a_spool_dir():
    with pytest.raises(ConfigError, match="delivery.when_full"):
        load_config_text('[delivery]\nwhen_full = "spill"\n', env={})


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1:8125", ("127.0.0.1", 8125)), ("[::1]:8126", ("::1", 8126)), ("localhost:1", ("localhost", 1)),
])
def test_parse_host_port(address, expected):
    assert parse_host_port(address) == expected


@pytest.mark.parametrize("address", ["8125", ":8125", "host:", "host:99999", "host:abc"])
def test_parse_host_port_rejects(address):
    with pytest.raises(ValueError):
        parse_host_port(address)


@pytest.mark.parametrize(("regex", "why"), [
    (r"(?<=key=)\w+", "backtracking"),  # a lookbehind
    (r"(a)\1", "backtracking"),  # a backreference
    ("(", "not a valid regular expression"),
])
def test_scrub_rules_must_run_in_linear_time(regex, why):
    text = f"[[scrub.rules]]\nname = \"x\"\nregex = '{regex}'\n"
    with pytest.raises(ConfigError) as e:
        load_config_text(text, env={})
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith("scrub.rules[0].regex: ")
    assert why in e.value.problems[0]


def test_a_nested_quantifier_is_accepted_it_runs_in_re2():
    cfg = load_config_text("[[scrub.rules]]\nname = \"x\"\nregex = '(a+)+$'\n", env={})
    assert cfg.scrub.rules[0].regex == "(a+)+$"


def test_a_scrub_replacement_must_name_groups_of_its_regex():
    with pytest.raises(ConfigError) as e:
        load_config_text("[[scrub.rules]]\nname = \"x\"\nregex = 'a(b)'\nreplacement = '\\2'\n", env={})
    assert e.value.problems[0].startswith("scrub.rules[0].replacement: ")


def test_otlp_sink_config_interpolates_headers_and_hides_them():
    from llmship.agent import log_secrets

    cfg = load_config_text('[sinks.otlp]\nendpoint = "https://gw:4318"\n'
                           'headers = { authorization = "Bearer ${TOK}" }\n', env={"TOK": "t0ken-xyz"})
    assert cfg.sinks.otlp.headers == {"authorization": "Bearer t0ken-xyz"}
    assert "t0ken-xyz" not in repr(cfg) and "Bearer t0ken-xyz" in log_secrets(cfg)
    assert cfg.ships_to_otlp and not cfg.ships_to_datadog and not cfg.uses_datadog_sinks
    both = load_config_text('[sinks.otlp]\nendpoint = "http://gw:4318"\n', env={"DD_API_KEY": "k" * 32})
    assert both.ships_to_otlp and both.uses_datadog_sinks
    assert load_config_text("", env={}).uses_datadog_sinks  # nothing configured: the file sink


def test_otlp_sink_config_problems_name_their_keys():
    with pytest.raises(ConfigError) as e:
        load_config_text('[sinks.otlp]\nendpoint = "gw:4318"\ncompression = "zstd"\ntimeout_secs = 0\n', env={})
    text = "\n".join(e.value.problems)
    assert "sinks.otlp.endpoint" in text and "sinks.otlp.compression" in text and "sinks.otlp.timeout_secs" in text
