"""Datadog's intakes: the route of each payload kind (host prefix joined to the site, and path).

The sinks declare these in their encodings; `llmship intake` serves the same paths. Delivery never reads
this table: a payload carries its route. (PROTOCOLS.md, "Intake endpoints".)
"""

from __future__ import annotations

from llmship.delivery.payload import Route

ROUTES: dict[str, Route] = {
    "series": Route("api", "/api/v2/series"),
    "sketches": Route("api", "/api/beta/sketches"),
    "events": Route("api", "/api/v1/events"),
    "service_checks": Route("api", "/api/v1/check_run"),
    "logs": Route("http-intake.logs", "/api/v2/logs"),
    "llmobs": Route("llmobs-intake", "/api/v2/llmobs"),
    "traces": Route("trace.agent", "/api/v0.2/traces"),
}
