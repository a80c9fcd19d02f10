"""Typed, frozen configuration loaded from TOML.

Every key has a default (the embedded default needs no file at all). Unknown keys are errors, and every
bad value is reported with its dotted key, all of them at once, so `llmship validate` can list them.
String values may use ``${VAR}`` and ``${VAR:-default}`` interpolation from the environment.
Units are in key names (_secs, _bytes).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import os
import re
import socket
import tomllib
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """One or more invalid values; ``problems`` holds one "key: reason" line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# ---------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class AgentConfig:
    hostname: str = ""  # "" -> this machine's hostname
    env: str = ""
    service: str = ""
    version: str = ""
    tags: tuple[str, ...] = ()
    flush_interval_secs: float = 10.0  # the Datadog Agent's DogStatsD bucket size
    # Live metric contexts at most; samples that would create more are dropped (reason=context_limit).
    # About 480 bytes a context (README): 500,000 is ~240 MB, a bound on a runaway tag, not a budget.
    max_metric_contexts: int = 500_000
    data_dir: str = "llmship-data"
    log_level: str = "info"
    log_format: str = "auto"  # auto: console on a terminal, JSON otherwise
    # Processing-plane processes: 1 (both planes in this process), N, or "auto" (one per usable core).
    workers: int | str = 1
    # Shed load when the event loop runs this late (a measure of the work waiting in the process): the
    # trace, logs and EVP listeners answer 429 (traces without Datadog-Send-Real-Http-Status: 200 and a
    # counted drop) and logs TCP reading pauses, until it catches up. 0: never shed on lag.
    overload_lag_ms: float = 150.0


@dataclass(frozen=True)
class DogStatsDConfig:
    udp: str = "127.0.0.1:8125"
    socket: str = ""  # unix datagram, e.g. /run/llmship/dsd.socket
    stream_socket: str = ""  # unix stream, 4-byte little-endian length prefix per payload
    # Asked for with SO_RCVBUF(FORCE); the kernel caps it at net.core.rmem_max. The default 208 KiB
    # loses datagrams under bursts even for a C receiver (measured, see README).
    receive_buffer_bytes: int = 8 * 1024 * 1024
    max_packet_bytes: int = 65536


@dataclass(frozen=True)
class TracesConfig:
    listen: str = "127.0.0.1:8126"
    socket: str = ""
    max_body_bytes: int = 25 * 1024 * 1024  # the Datadog Agent's apm_config.max_payload_size default


@dataclass(frozen=True)
class LogsSourceConfig:
    tcp: str = "127.0.0.1:10514"
    http: str = "127.0.0.1:10518"
    max_line_bytes: int = 256 * 1024  # the Datadog Agent's logs_config.max_message_size_bytes (256 kB)
    idle_timeout_secs: float = 60.0


@dataclass(frozen=True)
class OTLPConfig:
    # Off by default ("" disables): an app chooses OTLP explicitly (OTEL_EXPORTER_OTLP_ENDPOINT), and the
    # usual ports 4318/4317 may belong to a Collector already running on the host.
    http: str = ""  # OTLP/HTTP, e.g. "127.0.0.1:4318": /v1/traces, /v1/metrics, /v1/logs
    grpc: str = ""  # OTLP/gRPC, e.g. "127.0.0.1:4317" (needs the "grpc" extra: grpcio)
    # The trace API's limit (the Datadog Agent's apm_config.max_payload_size); an export batch of the
    # SDK's default 512 spans stays far below it.
    max_body_bytes: int = 25 * 1024 * 1024


@dataclass(frozen=True)
class SourcesConfig:
    dogstatsd: DogStatsDConfig = field(default_factory=DogStatsDConfig)
    traces: TracesConfig = field(default_factory=TracesConfig)
    logs: LogsSourceConfig = field(default_factory=LogsSourceConfig)
    otlp: OTLPConfig = field(default_factory=OTLPConfig)


@dataclass(frozen=True)
class DatadogSinkConfig:
    api_key: str = ""  # default: $DD_API_KEY
    site: str = ""  # default: $DD_SITE or datadoghq.com
    url: str = ""  # replaces scheme and host of every intake endpoint (llmship intake, proxies, tests)
    compression: str = "zstd"  # as the Datadog Agent: zstd where the intake takes it, gzip where only gzip
    timeout_secs: float = 15.0
    proxy: str = ""  # default: $HTTPS_PROXY / $HTTP_PROXY (and $NO_PROXY); may hold user:password@

    def __repr__(self) -> str:  # never print the key nor proxy credentials, even in a traceback or a dump
        key = "<set>" if self.api_key else "<unset>"
        proxy = "<set>" if self.proxy else "<unset>"
        return f"DatadogSinkConfig(api_key={key}, site={self.site!r}, url={self.url!r}, proxy={proxy})"


@dataclass(frozen=True)
class OTLPSinkConfig:
    """[sinks.otlp]: OTLP/HTTP (protobuf) to an OpenTelemetry Collector or any OTLP endpoint."""

    endpoint: str = ""  # a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT: /v1/traces, /v1/metrics, /v1/logs appended
    headers: dict[str, str] = field(default_factory=dict)  # sent on every request; values are secrets
    compression: str = "gzip"  # gzip | identity (the two OTLP/HTTP names; "none" means identity)
    timeout_secs: float = 10.0  # OTEL_EXPORTER_OTLP_TIMEOUT's default

    def __repr__(self) -> str:  # header values (tokens) are never printed, even in a traceback or a dump
        return (f"OTLPSinkConfig(endpoint={self.endpoint!r}, headers={sorted(self.headers)}, "
                f"compression={self.compression!r})")


@dataclass(frozen=True)
class FileSinkConfig:
    dir: str = ""  # "" -> <agent.data_dir>/out


@dataclass(frozen=True)
class SinksConfig:
    datadog: DatadogSinkConfig = field(default_factory=DatadogSinkConfig)
    otlp: OTLPSinkConfig = field(default_factory=OTLPSinkConfig)
    file: FileSinkConfig = field(default_factory=FileSinkConfig)


@dataclass(frozen=True)
class StatusConfig:
    listen: str = "127.0.0.1:5012"
    ship_self_metrics: bool = False


@dataclass(frozen=True)
class Price:
    input: float  # USD per million input tokens
    output: float  # USD per million output tokens
    cache_read: float | None = None  # per million input tokens read from the provider's cache (None: input)
    cache_write: float | None = None  # per million input tokens written to the cache (None: input)
    reasoning: float | None = None  # per million reasoning output tokens (None: output)


@dataclass(frozen=True)
class SamplingRule:
    service: str = "*"
    model: str = "*"
    endpoint: str = "*"
    span_text_rate: float | None = None
    prompt_log_rate: float | None = None


@dataclass(frozen=True)
class SamplingConfig:
    span_text_rate: float = 1.0
    prompt_log_rate: float = 0.1
    rules: tuple[SamplingRule, ...] = ()


# Metric name sets [llm] compat_metrics can turn on (llm/compat.py): "openai", ddtrace <= 2.21's OpenAI metrics.
COMPAT_METRICS = ("openai",)


@dataclass(frozen=True)
class LLMConfig:
    max_text_chars: int = 512
    instrumented_proxy_urls: tuple[str, ...] = ()
    text_fields: tuple[str, ...] = ()
    compat_metrics: tuple[str, ...] = ()  # also emit these integrations' metric names (COMPAT_METRICS)
    pricing: dict[str, Price] = field(default_factory=dict)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass(frozen=True)
class ScrubRule:
    name: str
    regex: str = ""
    replacement: str = "[REDACTED]"
    enabled: bool = True
    action: str = "redact"  # redact | hash | drop_field (SCRUB_ACTIONS)


@dataclass(frozen=True)
class ScrubField:
    """A field policy: what to do with the value(s) at ``path`` (transforms/privacy.py)."""

    path: str
    action: str  # drop | hash | redact_all | keep (FIELD_ACTIONS)
    kind: str = ""  # llmobs | logs | spans; "" infers it from the path ("attributes." -> logs, else llmobs)
    name: str = ""  # the name in [HASHED:<name>:...] / [REDACTED:<name>]; default: the path's last key


@dataclass(frozen=True)
class ScrubConfig:
    rules: tuple[ScrubRule, ...] = ()
    fields: tuple[ScrubField, ...] = ()
    # The HMAC key of the hash actions; default $LLMSHIP_SCRUB_HASH_KEY. Never logged or shown (repr=False).
    hash_key: str = field(default="", repr=False)


SCRUB_ACTIONS = ("redact", "hash", "drop_field")
FIELD_ACTIONS = ("drop", "hash", "redact_all", "keep")
FIELD_KINDS = ("llmobs", "logs", "spans")


@dataclass(frozen=True)
class DeliveryConfig:
    max_concurrency: int = 4
    queue_max_bytes: int = 64 * 1024 * 1024  # per payload kind
    when_full: str = ""  # "spill" (default with a spool) or "drop_newest" (default without)
    spool_dir: str = ""
    spool_max_bytes: int = 1024 * 1024 * 1024
    spool_max_age_secs: float = 3 * 24 * 3600
    spool_min_free_bytes: int = 256 * 1024 * 1024
    spool_flush_secs: float = 2.0
    drain_timeout_secs: float = 20.0
    retry_initial_secs: float = 1.0
    retry_max_secs: float = 60.0


@dataclass(frozen=True)
class AwsLambdaConfig:
    """Lambda extension mode (`llmship run --lambda`, or AWS_LAMBDA_RUNTIME_API set)."""

    # After each invocation, wait this long for delivery before asking Lambda for the next event; the rest
    # stays in memory and is retried during the next invocation. Lambda bills this wait as the invocation's
    # post-runtime duration, so it is short.
    flush_timeout_secs: float = 2.0
    # Where the Telemetry API sends platform events; the host is also the one in the subscription's URI.
    # sandbox.localdomain is the name AWS documents for it.
    telemetry_listen: str = "sandbox.localdomain:4243"


@dataclass(frozen=True)
class Config:
    agent: AgentConfig = field(default_factory=AgentConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    scrub: ScrubConfig = field(default_factory=ScrubConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    aws_lambda: AwsLambdaConfig = field(default_factory=AwsLambdaConfig)
    path: str = ""  # the file it came from ("" for the embedded default)

    @property
    def ships_to_datadog(self) -> bool:
        """Ship over HTTP when there is somewhere to ship to; otherwise the local file sink."""
        return bool(self.sinks.datadog.api_key or self.sinks.datadog.url)

    @property
    def ships_to_otlp(self) -> bool:
        return bool(self.sinks.otlp.endpoint)

    @property
    def uses_datadog_sinks(self) -> bool:
        """The Datadog sinks run when they ship to Datadog, or to the local file sink when nothing else is
        configured (neither Datadog nor OTLP): an OTLP-only agent writes no files."""
        return self.ships_to_datadog or not self.ships_to_otlp

    @property
    def file_sink_dir(self) -> str:
        return self.sinks.file.dir or str(Path(self.agent.data_dir) / "out")

    @property
    def worker_count(self) -> int:
        """``[agent] workers`` as a number: "auto" is the cores this process may run on."""
        return usable_cores() if self.agent.workers == "auto" else int(self.agent.workers)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a cgroup cpuset or taskset narrows it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------- loading

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, env: typing.Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    return value


def load_config(path: str | os.PathLike | None = None, env: typing.Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (or the embedded default when None). Raises ConfigError listing every problem."""
    if path is None:
        return load_config_text("", env=env)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError([f"config: cannot read {path}: {e.strerror}"]) from None
    return load_config_text(text, env=env, path=str(path))


def load_config_text(text: str, env: typing.Mapping[str, str] | None = None, path: str = "") -> Config:
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"config: not valid TOML: {e}"]) from None
    raw = _interpolate(raw, env)
    problems: list[str] = []
    cfg = _build(Config, raw, "", problems)
    if cfg is not None:
        cfg = _apply_environment_defaults(cfg, env)
        cfg = dataclasses.replace(cfg, path=path)
        _validate(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def _apply_environment_defaults(cfg: Config, env: typing.Mapping[str, str]) -> Config:
    dd = cfg.sinks.datadog
    dd = dataclasses.replace(
        dd,
        api_key=dd.api_key or env.get("DD_API_KEY", ""),
        site=dd.site or env.get("DD_SITE", "") or "datadoghq.com",
    )
    agent = cfg.agent
    if not agent.hostname:
        agent = dataclasses.replace(agent, hostname=env.get("DD_HOSTNAME", "") or socket.gethostname())
    scrub = cfg.scrub
    if not scrub.hash_key and env.get("LLMSHIP_SCRUB_HASH_KEY"):
        scrub = dataclasses.replace(scrub, hash_key=env["LLMSHIP_SCRUB_HASH_KEY"])
    return dataclasses.replace(cfg, agent=agent, sinks=dataclasses.replace(cfg.sinks, datadog=dd), scrub=scrub)


def _build(cls: type, raw: Any, where: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from the TOML table ``raw``, recording problems with dotted keys."""
    if not isinstance(raw, dict):
        problems.append(f"{where or 'config'}: expected a table, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not (cls is Config and f.name == "path")}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{where}.{key}" if where else key
        if key not in fields:
            problems.append(f"{dotted}: unknown key")
            continue
        converted = _convert(hints[key], value, dotted, problems)
        if converted is not _INVALID:
            kwargs[key] = converted
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and n not in kwargs]
    for name in required:
        problems.append(f"{where}.{name}: required")
    if required:
        return None
    return cls(**kwargs)


_INVALID = object()


def _convert(hint: Any, value: Any, dotted: str, problems: list[str]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        built = _build(hint, value, dotted, problems)
        return _INVALID if built is None else built
    if origin in (types.UnionType, typing.Union):  # X | None, or X | Y of distinct TOML types (int | str)
        if value is None:
            return None
        choices = [a for a in args if a is not type(None)]
        if len(choices) > 1:
            for choice in choices:
                if isinstance(value, choice) and not (choice is int and isinstance(value, bool)):
                    return value
            names = " or ".join([{int: "an integer", float: "a number", str: "a string"}.get(c, c.__name__)
                                 for c in choices])
            problems.append(f"{dotted}: expected {names}, got {value!r}")
            return _INVALID
        return _convert(choices[0], value, dotted, problems)
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(f"{dotted}: expected a list, got {type(value).__name__}")
            return _INVALID
        items = [_convert(args[0], v, f"{dotted}[{i}]", problems) for i, v in enumerate(value)]
        return _INVALID if _INVALID in items else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{dotted}: expected a table, got {type(value).__name__}")
            return _INVALID
        out = {k: _convert(args[1], v, f'{dotted}."{k}"', problems) for k, v in value.items()}
        return _INVALID if _INVALID in out.values() else out
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{dotted}: expected true or false, got {value!r}")
            return _INVALID
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{dotted}: expected an integer, got {value!r}")
            return _INVALID
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{dotted}: expected a number, got {value!r}")
            return _INVALID
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            problems.append(f"{dotted}: expected a string, got {value!r}")
            return _INVALID
        return value
    raise TypeError(f"unsupported config type {hint} at {dotted}")  # a bug in this module, not user input


# ---------------------------------------------------------------------------------------------- checks


def parse_host_port(address: str) -> tuple[str, int]:
    """"127.0.0.1:8125", "[::1]:8125" or "localhost:8125" -> (host, port); ValueError otherwise."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return host, port


def _validate(cfg: Config, problems: list[str]) -> None:
    def check(ok: bool, key: str, reason: str) -> None:
        if not ok:
            problems.append(f"{key}: {reason}")

    def address(key: str, value: str) -> None:
        if value:
            try:
                parse_host_port(value)
            except ValueError as e:
                problems.append(f"{key}: {e}")

    def positive(key: str, value: float) -> None:
        check(value > 0, key, f"must be greater than 0, got {value}")

    def rate(key: str, value: float | None) -> None:
        if value is not None:
            check(0.0 <= value <= 1.0, key, f"must be between 0 and 1, got {value}")

    a = cfg.agent
    positive("agent.flush_interval_secs", a.flush_interval_secs)
    positive("agent.max_metric_contexts", a.max_metric_contexts)
    check(a.log_level.lower() in ("debug", "info", "warning", "error"), "agent.log_level",
          f"expected debug, info, warning or error, got {a.log_level!r}")
    check(a.log_format in ("auto", "console", "json"), "agent.log_format",
          f"expected auto, console or json, got {a.log_format!r}")
    if isinstance(a.workers, str):
        check(a.workers == "auto", "agent.workers", f"expected an integer >= 1 or \"auto\", got {a.workers!r}")
    else:
        check(a.workers >= 1, "agent.workers", f"expected an integer >= 1 or \"auto\", got {a.workers!r}")
    check(a.overload_lag_ms >= 0, "agent.overload_lag_ms", f"must be >= 0, got {a.overload_lag_ms}")
    for i, t in enumerate(a.tags):
        check(bool(t.strip()) and "," not in t, f"agent.tags[{i}]", f"expected a tag like k:v, got {t!r}")

    d = cfg.sources.dogstatsd
    address("sources.dogstatsd.udp", d.udp)
    positive("sources.dogstatsd.receive_buffer_bytes", d.receive_buffer_bytes)
    # Above 64 KiB every read buffer is an mmap'd allocation (~13 µs a read, measured); no datagram is larger.
    check(512 <= d.max_packet_bytes <= 65536, "sources.dogstatsd.max_packet_bytes",
          f"must be between 512 and 65536, got {d.max_packet_bytes}")
    address("sources.traces.listen", cfg.sources.traces.listen)
    positive("sources.traces.max_body_bytes", cfg.sources.traces.max_body_bytes)
    lg = cfg.sources.logs
    address("sources.logs.tcp", lg.tcp)
    address("sources.logs.http", lg.http)
    positive("sources.logs.max_line_bytes", lg.max_line_bytes)
    positive("sources.logs.idle_timeout_secs", lg.idle_timeout_secs)
    otlp = cfg.sources.otlp
    address("sources.otlp.http", otlp.http)
    address("sources.otlp.grpc", otlp.grpc)
    positive("sources.otlp.max_body_bytes", otlp.max_body_bytes)
    if otlp.grpc:
        try:
            import grpc  # noqa: F401  (an optional dependency: say so at start-up, not at the first request)
        except ImportError:
            problems.append("sources.otlp.grpc: needs grpcio: pip install 'llmship[grpc]'")

    dd = cfg.sinks.datadog
    check(dd.compression in ("gzip", "deflate", "zstd", "identity"), "sinks.datadog.compression",
          f"expected gzip, deflate, zstd or identity, got {dd.compression!r}")
    o = cfg.sinks.otlp
    if o.endpoint:
        parts = urllib.parse.urlsplit(o.endpoint)
        check(parts.scheme in ("http", "https") and bool(parts.netloc), "sinks.otlp.endpoint",
              f"expected an http:// or https:// base URL, got {o.endpoint!r}")
    check(o.compression in ("gzip", "identity", "none"), "sinks.otlp.compression",
          f"expected gzip or none, got {o.compression!r}")
    positive("sinks.otlp.timeout_secs", o.timeout_secs)
    for name in o.headers:
        check(bool(name.strip()) and ":" not in name and "\n" not in name, f'sinks.otlp.headers."{name}"',
              "expected an HTTP header name")
    check(not dd.url or re.match(r"^https?://[^/\s]+", dd.url) is not None, "sinks.datadog.url",
          f"expected http(s)://host[:port], got {dd.url!r}")
    check(re.fullmatch(r"[A-Za-z0-9.-]+", dd.site) is not None, "sinks.datadog.site",
          f"expected a domain such as datadoghq.com, got {dd.site!r}")
    positive("sinks.datadog.timeout_secs", dd.timeout_secs)
    problem = _proxy_problem(dd.proxy)
    check(problem is None, "sinks.datadog.proxy", problem or "")
    address("status.listen", cfg.status.listen)

    llm = cfg.llm
    check(llm.max_text_chars >= 16, "llm.max_text_chars", f"must be at least 16, got {llm.max_text_chars}")
    for i, url in enumerate(llm.instrumented_proxy_urls):
        check(re.match(r"^https?://[^/\s]+", url) is not None, f"llm.instrumented_proxy_urls[{i}]",
              f"expected an http(s) URL, got {url!r}")
    for i, name in enumerate(llm.compat_metrics):
        check(name in COMPAT_METRICS, f"llm.compat_metrics[{i}]",
              f"expected one of {', '.join(COMPAT_METRICS)}, got {name!r}")
    for pattern, price in llm.pricing.items():
        check(price.input >= 0 and price.output >= 0, f'llm.pricing."{pattern}"', "prices must be >= 0")
    rate("llm.sampling.span_text_rate", llm.sampling.span_text_rate)
    rate("llm.sampling.prompt_log_rate", llm.sampling.prompt_log_rate)
    for i, rule in enumerate(llm.sampling.rules):
        rate(f"llm.sampling.rules[{i}].span_text_rate", rule.span_text_rate)
        rate(f"llm.sampling.rules[{i}].prompt_log_rate", rule.prompt_log_rate)
        for key in ("service", "model", "endpoint"):
            try:
                re.compile(fnmatch.translate(getattr(rule, key)))
            except re.error as e:
                problems.append(f"llm.sampling.rules[{i}].{key}: bad glob: {e}")

    from llmship.transforms.scrub import rule_problems  # here: scrub imports this module

    for i, rule in enumerate(cfg.scrub.rules):
        check(bool(rule.name), f"scrub.rules[{i}].name", "must not be empty")
        check(rule.action in SCRUB_ACTIONS, f"scrub.rules[{i}].action",
              f"expected one of {', '.join(SCRUB_ACTIONS)}, got {rule.action!r}")
        for key, reason in rule_problems(rule):  # user regexes run in RE2: linear time, no lookarounds
            problems.append(f"scrub.rules[{i}].{key}: {reason}")
    from llmship.transforms.privacy import path_problem  # likewise

    for i, f in enumerate(cfg.scrub.fields):
        check(f.action in FIELD_ACTIONS, f"scrub.fields[{i}].action",
              f"expected one of {', '.join(FIELD_ACTIONS)}, got {f.action!r}")
        check(f.kind in ("", *FIELD_KINDS), f"scrub.fields[{i}].kind",
              f"expected one of {', '.join(FIELD_KINDS)}, got {f.kind!r}")
        if reason := path_problem(f):
            problems.append(f"scrub.fields[{i}].path: {reason}")
    hashing = [f"scrub.rules[{i}]" for i, r in enumerate(cfg.scrub.rules) if r.action == "hash" and r.enabled]
    hashing += [f"scrub.fields[{i}]" for i, f in enumerate(cfg.scrub.fields) if f.action == "hash"]
    check(not hashing or bool(cfg.scrub.hash_key), "scrub.hash_key",
          f"required when a rule or field hashes ({', '.join(hashing)}): set it (\"${{VAR}}\" works) or "
          f"LLMSHIP_SCRUB_HASH_KEY")

    dl = cfg.delivery
    positive("delivery.max_concurrency", dl.max_concurrency)
    positive("delivery.queue_max_bytes", dl.queue_max_bytes)
    check(dl.when_full in ("", "spill", "drop_newest"), "delivery.when_full",
          f"expected spill or drop_newest, got {dl.when_full!r}")
    check(not (dl.when_full == "spill" and not dl.spool_dir), "delivery.when_full",
          "spill needs delivery.spool_dir")
    for key in ("spool_max_bytes", "spool_max_age_secs", "spool_flush_secs", "drain_timeout_secs",
                "retry_initial_secs", "retry_max_secs"):
        positive(f"delivery.{key}", getattr(dl, key))
    check(dl.retry_max_secs >= dl.retry_initial_secs, "delivery.retry_max_secs",
          "must be >= delivery.retry_initial_secs")

    positive("aws_lambda.flush_timeout_secs", cfg.aws_lambda.flush_timeout_secs)
    address("aws_lambda.telemetry_listen", cfg.aws_lambda.telemetry_listen)


def is_loopback(host: str) -> bool:
    """True for loopback addresses and names; used to warn when a listener is exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _proxy_problem(raw: str) -> str | None:
    """Why ``raw`` is not a usable proxy URL, in words that never show its credentials; None if it is."""
    if not raw:
        return None
    parts = urllib.parse.urlsplit(raw if "://" in raw else "http://" + raw)
    shown = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else raw
    expected = f"expected http://[user:password@]host:port, got {shown!r}"
    try:
        _ = parts.port  # raises on a port that is not a number
    except ValueError:
        return expected
    # aiohttp speaks to http proxies (with CONNECT for https intakes)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return expected
    return None
