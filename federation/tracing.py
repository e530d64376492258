"""OpenTelemetry trace context carried in NATS headers, so one job is one trace.

The submitter starts a trace and the W3C ``traceparent`` travels in the submission's headers; the
scheduler stores it in the job record and in the allocation; the agent starts its run span as a
child of it and passes it to the workload as ``TRACEPARENT``. Spans are exported only when
``OTEL_TRACES_EXPORTER=console`` (or a provider is installed by the embedding program); ids are
generated either way so the context always propagates. ``FED_TRACE_FILE=path`` appends every
finished span as one JSON line (service, name, trace id, span id, parent id), which is how the
tests check that submit, placement and run share one trace without a collector.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_configured = False
_recording = False


class FileSpanExporter(SpanExporter):
    """Appends finished spans to a file as JSON lines (small, dependency-free, for tests and demos)."""

    def __init__(self, path: str, service: str) -> None:
        self.path = path
        self.service = service

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for item in spans:
            ctx = item.get_span_context()
            parent = item.parent
            lines.append(
                json.dumps(
                    {
                        "service": self.service,
                        "name": item.name,
                        "trace_id": f"{ctx.trace_id:032x}" if ctx else "",
                        "span_id": f"{ctx.span_id:016x}" if ctx else "",
                        "parent_id": f"{parent.span_id:016x}" if parent else "",
                        "attributes": dict(item.attributes or {}),
                    }
                )
            )
        with open(self.path, "a") as handle:
            handle.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def configure(service: str) -> None:
    """Install the SDK tracer provider once per process (idempotent)."""
    global _configured, _recording
    if _configured:
        return
    _configured = True
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        _recording = True  # the embedding program installed its own provider
        return
    from opentelemetry.sdk.resources import Resource

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if os.environ.get("OTEL_TRACES_EXPORTER", "") == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        _recording = True
    if os.environ.get("FED_TRACE_FILE"):
        provider.add_span_processor(
            SimpleSpanProcessor(FileSpanExporter(os.environ["FED_TRACE_FILE"], service))
        )
        _recording = True
    trace.set_tracer_provider(provider)


def recording() -> bool:
    """Whether spans go anywhere; hot paths skip optional spans when they do not."""
    return _recording


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


def dump_tasks() -> None:
    """SIGUSR1: log what every task is waiting on (for a daemon that seems stuck)."""
    for task in asyncio.all_tasks():
        structlog.get_logger().warning("task", name=task.get_name(), stack=task_stack(task))


def task_stack(task: asyncio.Task[Any]) -> list[str]:
    """Where a task waits: its chain of awaits, outermost first."""
    frames: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(frames) < 40:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is not None:
            code = frame.f_code
            frames.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} {code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return frames
