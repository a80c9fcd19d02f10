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


# ---------------------------------------------------------------------------------------------- file sink


def _sink_payloads(compression: str) -> list:
    """Payloads of every kind, built by the real sinks from real client captures where there are some."""
    import json

    from harness import CAPTURES
    from llmship.aggregation import GAUGE, RATE, FlushResult, Series, SketchSeries
    from llmship.model import TracerInfo
    from llmship.sinks.llmobs import LLMObsSink
    from llmship.sinks.logs import LogsSink
    from llmship.sinks.metrics import MetricsSink
    from llmship.sinks.traces import TraceSink
    from llmship.sketch import Sketch
    from llmship.sources.traces import decode_v04
    from llmship.telemetry import Telemetry

    cfg = load_config_text(f'[agent]\nhostname = "h"\n[sinks.datadog]\ncompression = "{compression}"\n', env={})
    out: list = []
    tel = Telemetry()
    metrics = MetricsSink(cfg, out.append, tel)
    sk = Sketch()
    for v in (1.0, 2.5, -3.0):
        sk.insert(v)
    metrics.ship(FlushResult(
        series=[Series("req", RATE, 10, [(1700000000, 0.5), (1700000010, 1e-9)], ("a:1", "é:ü"), "h"),
                Series("depth", GAUGE, 10, [(1700000000, -0.0)], (), "")],
        sketches=[SketchSeries("lat", "h", ("k:v",), [(1700000000, sk)]), SketchSeries("lat2", "", (), [])]))
    metrics.send_service_check({"check": "c", "status": 2, "message": "m\n\"q\"", "tags": "a:b"})
    metrics.ship(FlushResult())
    metrics.send_event({"title": "t", "text": "x\ny", "tags": ["a:b"]})
    logs = LogsSink(cfg, out.append, tel)
    for i in range(3):
        logs.add({"message": f"line {i} \u2028 ✓", "ddtags": ["env:dev"], "nested": {"n": i, "f": 1.5}})
    logs.flush()
    llmobs = LLMObsSink(cfg, out.append, tel)
    capture = CAPTURES / "ddtrace-4.16" / "evp_llmobs_spans_apm_tracing_disabled.json"
    for envelope in json.loads(capture.read_text())["body"]:
        for event in envelope["spans"]:
            llmobs.add(event)
    llmobs.flush()
    traces = TraceSink(cfg, out.append, tel)
    chunks = decode_v04((CAPTURES / "ddtrace-4.16" / "v04_traces_llmobs_default.msgpack").read_bytes(),
                        "application/msgpack")
    for chunk in chunks:
        traces.add_chunk(chunk, TracerInfo(language="python", runtime_id="rt"))
    traces.add_chunk(chunks[0], TracerInfo(language="go"))
    traces.flush()
    assert {p.kind for p in out} == {"series", "sketches", "service_checks", "events", "logs", "llmobs", "traces"}
    return out


@pytest.mark.parametrize("compression", ["gzip", "zstd", "identity"])
async def test_the_file_sink_writes_the_same_lines_as_decoding_whole_payloads(tmp_path, compression):
    """Lines are what the file sink wrote before it stopped decoding whole payloads: the intake decoder's
    items, one orjson line each."""
    import orjson

    from llmship.delivery.payload import Payload
    from llmship.intake.decode import decode_payload

    payloads = _sink_payloads(compression)
    expected: dict[str, bytes] = {}
    for p in payloads:
        lines = b"".join(orjson.dumps(x, option=orjson.OPT_APPEND_NEWLINE)
                         for x in decode_payload(p.kind, p.body, p.content_encoding))
        expected[p.kind] = expected.get(p.kind, b"") + lines
    transport = FileTransport(tmp_path / "new")
    legacy = FileTransport(tmp_path / "legacy")
    try:
        for p in payloads:
            assert (await transport.send(p)).status == 200
            # the same payload without boundaries (a format 1 spool record) takes the whole-decode path
            bare = Payload(p.kind, p.route, p.body, p.content_type, p.content_encoding, p.items)
            assert (await legacy.send(bare)).status == 200
    finally:
        await transport.close()
        await legacy.close()
    for kind, lines in expected.items():
        assert (tmp_path / "new" / f"{kind}.ndjson").read_bytes() == lines, kind
        assert (tmp_path / "legacy" / f"{kind}.ndjson").read_bytes() == lines, kind
