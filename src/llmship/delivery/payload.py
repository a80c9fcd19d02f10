"""What sinks hand to delivery: an encoded, compressed payload, opaque to delivery.

Delivery decides only when to send it again. It learns a payload's destination from its ``kind``
(ENDPOINTS) and, for a 413, asks the splitter the sink registered for that kind to cut it in two.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

# kind -> (Datadog intake subdomain, path). With [sinks.datadog] url set, scheme and host are replaced.
ENDPOINTS: dict[str, tuple[str, str]] = {
    "series": ("api", "/api/v2/series"),
    "sketches": ("api", "/api/beta/sketches"),
    "events": ("api", "/api/v1/events"),
    "service_checks": ("api", "/api/v1/check_run"),
    "logs": ("http-intake.logs", "/api/v2/logs"),
    "llmobs": ("llmobs-intake", "/api/v2/llmobs"),
    "traces": ("trace.agent", "/api/v0.2/traces"),
}

# Header carrying the payload id, so the intake (ours) can count each payload exactly once across retries.
PAYLOAD_ID_HEADER = "X-Llmship-Payload-Id"


@dataclass(slots=True)
class Payload:
    kind: str  # a key of ENDPOINTS
    body: bytes  # encoded and compressed, ready to send
    content_type: str
    content_encoding: str  # "gzip", "zstd", "deflate" or "identity"
    items: int  # how many events (series, log records, spans, ...) it carries
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)
    extra_headers: dict[str, str] = field(default_factory=dict)


Splitter = Callable[[Payload], list[Payload]]
_splitters: dict[str, Splitter] = {}


def register_splitter(kind: str, split: Splitter) -> None:
    """A sink registers how to cut its payloads in two (decode, halve, re-encode) for a 413."""
    _splitters[kind] = split


def split(payload: Payload) -> list[Payload]:
    """Two smaller payloads carrying everything ``payload`` did, or [payload] if it cannot be split."""
    splitter = _splitters.get(payload.kind)
    if splitter is None or payload.items < 2:
        return [payload]
    return splitter(payload)
