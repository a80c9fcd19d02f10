"""OTLP with [agent] workers > 1: the workers serve OTLP/HTTP on the listener the parent bound, and OTLP/gRPC
on the port each of them binds (SO_REUSEPORT); metric points, sketches and cumulative series cross to the
parent, which takes the differences of cumulative series. Real processes and real clients: the OpenTelemetry
SDK's OTLP/HTTP exporters, grpcio, `llmship run` with two workers, `llmship intake`."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from harness import CAPTURES, free_port, http_post, wait_for
from test_ddtrace_openai import has_tags, series_total, sketch_count
from test_workers import WORKERS_CONFIG, workers

APP = r'''
import logging
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

calls = int(sys.argv[1])
resource = Resource.create({"service.name": "chatbot", "deployment.environment.name": "bars",
                            "service.version": "2.0"})
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
# Counters keep the SDK's default, cumulative (the parent takes their differences); histograms are delta
# (sketches made in the worker).
reader = PeriodicExportingMetricReader(
    OTLPMetricExporter(preferred_temporality={Histogram: AggregationTemporality.DELTA}),
    export_interval_millis=3_600_000)
meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
log = logging.getLogger("app")
log.addHandler(LoggingHandler(logger_provider=logger_provider))
log.setLevel(logging.INFO)
log.propagate = False

tracer = tracer_provider.get_tracer("app")
meter = meter_provider.get_meter("app")
orders = meter.create_counter("app.orders")
latency = meter.create_histogram("app.latency_ms")
queue = meter.create_gauge("app.queue")
with tracer.start_as_current_span("handle_request"):
    for i in range(calls):
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=trace.SpanKind.CLIENT) as span:
            span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                                 "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini",
                                 "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5})
        log.info("answered call %d", i)
orders.add(3)
latency.record(12.0)
latency.record(30.0)
queue.set(5)
reader.force_flush()  # a first export: the counter's first point counts as is (its series started after llmship)
orders.add(4)
latency.record(7.0)
tracer_provider.shutdown()
meter_provider.shutdown()
logger_provider.shutdown()
'''

CALLS = 4


def otlp_config(agent: str = "", **listeners: int) -> str:
    """Two workers (and ``agent``, more of [agent]) with the OTLP ``listeners`` on these ports."""
    return WORKERS_CONFIG + agent + "[sources.otlp]\n" + "".join(f'{k} = "127.0.0.1:{port}"\n' for k, port in listeners.items())


def run_app(tmp_path: Path, otlp_port: int) -> None:
    script = tmp_path / "otel_app.py"
    script.write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "OTEL_"))}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{otlp_port}"
    proc = subprocess.run([sys.executable, str(script), str(CALLS)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Failed to export" not in proc.stderr and "error" not in proc.stderr.lower(), proc.stderr


def counted_by_workers(agent) -> float:
    """OTLP requests in the per-worker lines of /status, once they account for every OTLP request counted
    (the sum over all processes): the parent's own would be in the sum and in no worker's line."""
    total = agent.counter("otlp", "requests")
    by_workers = sum(w["requests"] for w in workers(agent))  # only OTLP reaches these agents
    assert by_workers <= total
    return by_workers if by_workers == total and total > 0 else 0


def test_an_sdk_app_over_otlp_http_reaches_the_intake_through_the_workers(tmp_path, intake, start_agent):
    otlp_port = free_port()
    agent = start_agent(otlp_config(http=otlp_port), intake=intake)
    run_app(tmp_path, otlp_port)

    # traces: every span, the LLM calls found in them (events and llm.* metrics, counted in the parent)
    spans = [r["data"] for r in intake.wait_records("traces", CALLS + 1, timeout=30)]
    assert len(spans) == CALLS + 1 and all(s["service"] == "chatbot" and s["meta"]["env"] == "bars" for s in spans)
    events = intake.wait_records("llmobs", CALLS, timeout=30)
    assert len({e["data"]["span_id"] for e in events}) == len(events) == CALLS
    wait_for(lambda: series_total(intake, "llm.requests", "service:chatbot", "model:gpt-4o-mini")[0] == CALLS,
             timeout=30, what=f"llm.requests = {CALLS}")
    assert series_total(intake, "llm.tokens.input", "service:chatbot", "model:gpt-4o-mini")[0] == 10 * CALLS
    # logs
    # the app's own records (llmship's sample log of a call, kept for one trace in ten, is another source)
    logs = intake.wait_records("logs", CALLS, timeout=30,
                               where=lambda d: d.get("service") == "chatbot" and d.get("ddsource") != "llmship")
    assert sorted(r["data"]["message"] for r in logs) == [f"answered call {i}" for i in range(CALLS)]
    # the app's metrics: a cumulative counter (3, then 3 + 4), delta histograms, a gauge
    wait_for(lambda: series_total(intake, "app.orders", "service:chatbot")[0] == 7, timeout=30,
             what="app.orders = 7 (3 as is, then the difference 4)")
    wait_for(lambda: sketch_count(intake, "app.latency_ms", "service:chatbot") == 3, timeout=30,
             what="3 app.latency_ms values in sketches")
    queue = [r["data"] for r in intake.records("series") if r["data"]["metric"] == "app.queue"]
    assert queue and all(has_tags(q["tags"], "service:chatbot") for q in queue)
    assert {p["value"] for q in queue for p in q["points"]} == {5.0}

    # served by the workers alone, counted in their lines; the otlp component sums them
    assert wait_for(lambda: counted_by_workers(agent), what="every OTLP request in a worker's line") >= 4
    assert agent.counter("otlp", "spans_received") == CALLS + 1
    assert agent.counter("otlp", "logs_received") == CALLS
    assert agent.counter("otlp", "dropped") == 0


def cumulative_request(value: int, start: int, ts: int) -> bytes:
    """A monotonic cumulative sum at ``value`` and a cumulative histogram holding ``value`` values."""
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "cumul"
    sm = rm.scope_metrics.add()
    m = sm.metrics.add(name="cumul.total")
    m.sum.aggregation_temporality, m.sum.is_monotonic = 2, True
    m.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=ts, as_int=value)
    m = sm.metrics.add(name="cumul.sizes")
    m.histogram.aggregation_temporality = 2
    m.histogram.data_points.add(start_time_unix_nano=start, time_unix_nano=ts, count=value, sum=2.0 * value,
                                explicit_bounds=[10.0], bucket_counts=[value, 0])
    return request.SerializeToString()


def test_a_cumulative_series_reaching_both_workers_ships_each_difference_once(intake, start_agent):
    """Each point on a connection of its own, until both workers took some: the differences are the
    parent's, so the totals are the series' last values whichever worker took which point."""
    otlp_port = free_port()
    agent = start_agent(otlp_config(http=otlp_port), intake=intake)
    start = time.time_ns()  # after the agent started: the first point counts as is
    base = start + 10**9
    value, sent = 0, 0
    while sent < 4 or not all(w["requests"] for w in workers(agent)):
        assert sent < 200, f"every connection went to one worker: {workers(agent)}"
        value += 3
        assert http_post(otlp_port, "/v1/metrics", cumulative_request(value, start, base + sent * 10**9),
                         {"Content-Type": "application/x-protobuf", "Connection": "close"}) == 200
        sent += 1
    wait_for(lambda: series_total(intake, "cumul.total", "service:cumul")[0] == value, timeout=30,
             what=f"cumul.total = {value}, the last cumulative value")
    # the histogram's first point is dropped (as the Agent drops it): the values added after it
    wait_for(lambda: sketch_count(intake, "cumul.sizes", "service:cumul") == value - 3, timeout=30,
             what=f"{value - 3} cumul.sizes values")
    assert series_total(intake, "cumul.total", "service:cumul")[0] == value


def grpc_export(grpc, port: int, service: str, request, response_class):
    """One Export over a channel of its own (its own subchannel pool: its own TCP connection)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        export = channel.unary_unary(f"/opentelemetry.proto.collector.{service}/Export",
                                     request_serializer=type(request).SerializeToString,
                                     response_deserializer=response_class.FromString)
        return export(request, timeout=10)


def send_grpc_logs(grpc, port: int, prefix: str, n: int = 16) -> list[str]:
    """``n`` log records, each exported on a connection of its own: the kernel hashes each connection to
    one of the sockets bound to the port (a worker's)."""
    sent = []
    for i in range(n):
        request = logs_service_pb2.ExportLogsServiceRequest()
        rl = request.resource_logs.add()
        rl.resource.attributes.add(key="service.name").value.string_value = "grpc-app"
        rl.scope_logs.add().log_records.add(time_unix_nano=time.time_ns()).body.string_value = f"{prefix} {i}"
        response = grpc_export(grpc, port, "logs.v1.LogsService", request, logs_service_pb2.ExportLogsServiceResponse)
        assert not response.HasField("partial_success")
        sent.append(f"{prefix} {i}")
    return sent


def test_otlp_grpc_is_served_by_every_worker_on_one_port_and_after_a_restart(intake, start_agent):
    grpc = pytest.importorskip("grpc")
    grpc_port = free_port()
    agent = start_agent(otlp_config(grpc=grpc_port), intake=intake)
    sent = send_grpc_logs(grpc, grpc_port, "grpc log")
    traces = trace_service_pb2.ExportTraceServiceRequest.FromString(
        (CAPTURES / "otel-1.45" / "openai-v2_traces_1.pb").read_bytes())
    grpc_export(grpc, grpc_port, "trace.v1.TraceService", traces, trace_service_pb2.ExportTraceServiceResponse)

    logs = intake.wait_records("logs", len(sent), timeout=30, where=lambda d: d.get("service") == "grpc-app")
    assert sorted(r["data"]["message"] for r in logs) == sorted(sent)
    assert len(intake.wait_records("llmobs", 6, timeout=30)) == 6  # the capture's six LLM calls
    assert wait_for(lambda: counted_by_workers(agent) == len(sent) + 1, what="every gRPC request in a worker's line")
    assert all(w["requests"] for w in workers(agent)), "one worker took every connection: is the port shared?"
    assert agent.counter("otlp", "requests", endpoint="grpc/logs") == len(sent)

    # A worker killed and started again binds the port again, next to the other: both serve.
    before = workers(agent)
    os.kill(before[0]["pid"], signal.SIGKILL)
    wait_for(lambda: (w := workers(agent)[0])["restarts"] == 1 and w["state"] == "ready", timeout=20,
             what="the worker restarted")
    later = send_grpc_logs(grpc, grpc_port, "after restart")
    logs = intake.wait_records("logs", len(later), timeout=30, where=lambda d: d["message"].startswith("after"))
    assert sorted(r["data"]["message"] for r in logs) == sorted(later)
    wait_for(lambda: counted_by_workers(agent) == len(sent) + 1 + len(later), what="the later requests counted")
    assert all(w["requests"] > b["requests"] for w, b in zip(workers(agent), before)), workers(agent)


@pytest.mark.parametrize("worker_count", [2, 1])
def test_a_grpc_port_another_process_holds_stops_the_start(tmp_path, intake, start_agent, worker_count):
    """SO_REUSEPORT would let the agent share the port with that process without a word: the workers' (they
    bind with it) and one process's (grpc binds with it by default)."""
    pytest.importorskip("grpc")
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        config = otlp_config(grpc=port).replace("workers = 2", f"workers = {worker_count}")
        with pytest.raises(RuntimeError, match="exited"):
            start_agent(config, intake=intake)
        log = next(tmp_path.glob("agent-*.log")).read_text()
        assert str(port) in log and "worker_spawned" not in log
    finally:
        holder.close()


def test_otlp_sheds_with_429_in_the_workers_and_counts_it(intake, start_agent):
    """A bound so small that any load exceeds it (as test_workers' one-process overload test): the workers
    answer 429 with Retry-After, as one process does, and the otlp component counts each refusal."""
    otlp_port = free_port()
    agent = start_agent(otlp_config("overload_lag_ms = 2\n", http=otlp_port), intake=intake)
    body = (CAPTURES / "otel-1.45" / "openai-v2_traces_1.pb").read_bytes()
    statuses: dict[int, int] = {}
    retry_after: set[str | None] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def send() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", otlp_port, timeout=20)
        while not stop.is_set():
            conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            response.read()
            with lock:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 429:
                    retry_after.add(response.getheader("Retry-After"))
        conn.close()

    threads = [threading.Thread(target=send, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: statuses.get(429, 0) >= 3 and statuses.get(200, 0) >= 3, timeout=60,
                 what="some OTLP requests refused and some accepted")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert retry_after == {"1"}
    wait_for(lambda: agent.counter("otlp", "requests") == sum(statuses.values()), what="every request counted")
    assert agent.counter("otlp", "dropped", reason="overloaded") == statuses[429]
    assert sum(w["requests"] for w in workers(agent)) == sum(statuses.values())
