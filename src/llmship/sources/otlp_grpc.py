"""OTLP/gRPC (``[sources.otlp] grpc``): the ``Export`` methods of the trace, metrics and logs collector
services on grpc.aio, sharing the OTLP/HTTP source's work (``OTLPSource.export``). Imported only when
configured: grpcio is the optional "grpc" extra.

Handlers are registered generically with the opentelemetry-proto message classes (de)serializing, so the
generated ``*_pb2_grpc`` stubs (and their grpcio version checks) are not needed. Answers (OTLP spec, "OTLP/gRPC
Response"): OK with the Export*ServiceResponse (and partial_success); UNAVAILABLE when overloaded (retryable
for every OTLP client); gRPC itself answers malformed messages, compression (gzip) and size limits
(``grpc.max_receive_message_length`` = ``max_body_bytes``, RESOURCE_EXHAUSTED above it).
"""

from __future__ import annotations

import grpc

from llmship.sources.otlp import LOGS, METRICS, TRACES, Overloaded, Signal

_SERVICES = {
    TRACES: "opentelemetry.proto.collector.trace.v1.TraceService",
    METRICS: "opentelemetry.proto.collector.metrics.v1.MetricsService",
    LOGS: "opentelemetry.proto.collector.logs.v1.LogsService",
}


async def serve(address: str, source, max_body_bytes: int, share_port: bool = False) -> grpc.aio.Server:
    """``share_port``: bind with SO_REUSEPORT, so that every worker listens on the same port (grpc.aio cannot
    serve a listening socket bound by another process); otherwise without it (grpc's default is with it on
    Linux, which would let another process of the same user share the port without a word)."""
    options = [("grpc.max_receive_message_length", max_body_bytes), ("grpc.so_reuseport", 1 if share_port else 0)]
    server = grpc.aio.server(options=options)
    for signal, service in _SERVICES.items():
        handler = grpc.unary_unary_rpc_method_handler(
            _handler(source, signal), request_deserializer=signal.request.FromString,
            response_serializer=signal.response.SerializeToString)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": handler}),))
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind OTLP/gRPC on {address}")
    await server.start()
    return server


def _handler(source, signal: Signal):
    async def export(request, context: grpc.aio.ServicerContext):
        source._tel.inc("requests", endpoint=f"grpc/{signal.name}")
        try:
            rejected, error = await source.export(signal, request)
        except Overloaded as e:
            source._tel.inc("dropped", reason=e.reason)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded: try again later")
        response = signal.response()
        if rejected:
            setattr(response.partial_success, signal.rejected_field, rejected)
            response.partial_success.error_message = error
        return response

    return export
