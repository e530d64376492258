"""OpenTelemetry trace context carried in NATS headers, so one job is one trace.

The submitter starts a trace and the W3C ``traceparent`` travels in the submission's headers; the
scheduler stores it in the job record and in the allocation; the agent starts its run span as a
child of it and passes it to the workload as ``TRACEPARENT``. Spans are exported only when
``OTEL_TRACES_EXPORTER=console`` (or a provider is installed by the embedding program); ids are
generated either way so the context always propagates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_configured = False


def configure(service: str) -> None:
    """Install the SDK tracer provider once per process (idempotent)."""
    global _configured
    if _configured:
        return
    _configured = True
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    from opentelemetry.sdk.resources import Resource

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if os.environ.get("OTEL_TRACES_EXPORTER", "") == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def tracer() -> trace.Tracer:
    """The federation's tracer."""
    return trace.get_tracer("nats-federation")


def inject(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``headers`` with the current trace context added (when there is one)."""
    out = dict(headers or {})
    _propagator.inject(out)
    return out


def traceparent(headers: Mapping[str, str] | None) -> str:
    """The ``traceparent`` header value, or an empty string."""
    return (headers or {}).get("traceparent", "")


def trace_id(value: str) -> str:
    """The trace id part of a ``traceparent`` value (empty when malformed)."""
    parts = value.split("-")
    return parts[1] if len(parts) == 4 else ""


@contextmanager
def span(name: str, parent: str = "", **attributes: str | int) -> Iterator[trace.Span]:
    """A span named ``name``, child of the ``traceparent`` string ``parent`` when given."""
    ctx = _propagator.extract({"traceparent": parent}) if parent else context.get_current()
    with tracer().start_as_current_span(name, context=ctx, attributes=attributes) as current:
        yield current


def current_traceparent() -> str:
    """The ``traceparent`` of the active span (empty when none)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")
