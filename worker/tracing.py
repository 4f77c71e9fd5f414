"""Optional OpenTelemetry spans of fused requests, through ``opentelemetry-api`` (the
``otel`` extra). A no-op unless the package is installed and an SDK tracer provider is
configured (e.g. the process runs under ``opentelemetry-instrument``, or the embedding
program called ``trace.set_tracer_provider``).

With an SDK, the live worker calls ``trace_step`` once per engine step (one marked hook in
the runtime), and every fused request whose members sent a ``traceparent`` gets one span:

- named ``fuse``, kind CONSUMER, its parent the first member's (by arrival) context, so it
  sits in that member's trace; a link to every member's context (each may be in a trace
  of its own), with the member's model name as the link attribute ``fusion.model``;
- from the arrival of the request's first event to its fusion (``opened_ms`` and
  ``fused_ts``, both wall clock live), with the request_id, status, strategy and missing
  models as attributes;
- when the span is recorded (sampled), the fused record's ``traceparent`` header names
  it instead of the deterministic span id the engine wrote, so a consumer of the result
  continues a span that was really exported.

Requests no member traced get no span: the worker continues traces, it does not start
them (the sampling decision belongs to whoever started the request).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker.engine import Step
from worker.fusion.native import STATUSES
from worker.tracecontext import replace_header

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

try:
    from opentelemetry import trace as _trace

    _AVAILABLE = True
except ImportError:  # the otel extra is not installed
    _AVAILABLE = False

_NS_PER_MS = 1_000_000
TRACER_NAME = "fusion-worker"


def _configured(provider: TracerProvider | None) -> TracerProvider | None:
    """The provider to use, or None when only the API's no-op (or proxy) one is set."""
    if not _AVAILABLE:
        return None
    if provider is None:
        provider = _trace.get_tracer_provider()
    if isinstance(provider, _trace.ProxyTracerProvider | _trace.NoOpTracerProvider):
        return None
    return provider


def _context(traceparent: str) -> Any:
    """The remote ``SpanContext`` of a parsed ``traceparent``."""
    return _trace.SpanContext(
        trace_id=int(traceparent[3:35], 16),
        span_id=int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=_trace.TraceFlags(int(traceparent[53:55], 16)),
    )


def _shown(step: Step) -> list[tuple[str, str, list[str]]]:
    """Each fused request's status, strategy and missing models, from its result dict
    or, where the compiled writer wrote it, from the counts (a step holds one or the
    other)."""
    if step.results:
        return [
            (str(r.get("status")), str(r.get("strategy")), list(r.get("missing") or ()))
            for r in step.results
        ]
    written = [(STATUSES[s], c) for c in step.counted for s in c.status_of]
    return [
        (status, c.strategy, [m for m in c.models if m not in req.members])
        for req, (status, c) in zip(step.finished, written, strict=True)
    ]


def trace_step(step: Step, provider: TracerProvider | None = None) -> int:
    """Record one span per traced fused request of ``step`` (see the module docstring)
    with ``provider`` (default: the global one); returns how many were recorded."""
    if not step.finished:
        return 0
    configured = _configured(provider)
    if configured is None:
        return 0
    tracer = configured.get_tracer(TRACER_NAME)
    records = step.fused_records
    recorded = 0
    for i, (req, (status, strategy, missing)) in enumerate(
        zip(step.finished, _shown(step), strict=True)
    ):
        contexts = [
            (model, ev.traceparent)
            for model, ev in req.members.items()
            if ev.traceparent is not None
        ]
        if not contexts:
            continue
        parent = _trace.set_span_in_context(_trace.NonRecordingSpan(_context(contexts[0][1])))
        links = [_trace.Link(_context(tp), {"fusion.model": model}) for model, tp in contexts]
        span = tracer.start_span(
            "fuse",
            context=parent,
            kind=_trace.SpanKind.CONSUMER,
            links=links,
            start_time=req.opened_ms * _NS_PER_MS,
            attributes={
                "fusion.request_id": req.request_id,
                "fusion.status": status,
                "fusion.strategy": strategy,
                "fusion.missing": missing,
            },
        )
        # An SDK span stops recording when it ends: ask before. Not recording: the
        # sampler dropped it, and the engine's deterministic header stays.
        recording = span.is_recording()
        span.end(end_time=max(req.fused_ts, req.opened_ms) * _NS_PER_MS)
        if not recording:
            continue
        recorded += 1
        if records:
            ctx = span.get_span_context()
            header = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
            records[i].headers = replace_header(records[i].headers, header.encode())
    return recorded


__all__ = ["TRACER_NAME", "trace_step"]
