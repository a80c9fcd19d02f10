"""llmship: a local agent that ships LLM telemetry (metrics, spans, LLM Observability events, logs)."""

__version__ = "0.1.0"
