"""OpenTelemetry spans of fused requests (worker/tracing.py), read with the SDK's
in-memory exporter; without an SDK nothing happens and the engine's header stays."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NoOpTracerProvider, SpanKind

from tests.test_engine import MODELS
from tests.test_engine_trace import HEADER_B, TRACE_A, TRACE_B, live_step, rec, traced
from worker.tracing import trace_step

SPAN_B = int(HEADER_B[36:52], 16)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    yield exp
    exp.shutdown()


def provider(exporter: InMemorySpanExporter, sampler: object = None) -> TracerProvider:
    tp = TracerProvider() if sampler is None else TracerProvider(sampler=sampler)  # type: ignore[arg-type]
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


def test_one_span_per_traced_request_in_the_first_members_trace(
    exporter: InMemorySpanExporter,
) -> None:
    """The span continues the first traced member's trace, its parent that member's span,
    and links every traced member's context with its model name."""
    step = live_step(traced())
    assert trace_step(step, provider(exporter)) == 1
    (span,) = exporter.get_finished_spans()
    assert span.name == "fuse"
    assert span.kind is SpanKind.CONSUMER
    assert span.context.trace_id == int(TRACE_B, 16)
    assert span.parent is not None
    assert span.parent.span_id == SPAN_B
    assert [
        (f"{link.context.trace_id:032x}", dict(link.attributes or {})) for link in span.links
    ] == [
        (TRACE_B, {"fusion.model": MODELS[1]}),
        (TRACE_A, {"fusion.model": MODELS[2]}),
    ]
    assert span.attributes is not None
    assert span.attributes["fusion.request_id"] == "r-1"
    assert span.attributes["fusion.status"] == "complete"


def test_the_fused_header_names_the_exported_span(exporter: InMemorySpanExporter) -> None:
    """With a recorded span the fused record's traceparent names that span, so a consumer
    of the result continues a span that exists."""
    step = live_step(traced())
    trace_step(step, provider(exporter))
    (span,) = exporter.get_finished_spans()
    assert step.fused_records[0].headers == [
        ("traceparent", f"00-{TRACE_B}-{span.context.span_id:016x}-01".encode())
    ]


def test_the_span_covers_the_join_wait(exporter: InMemorySpanExporter) -> None:
    """The span runs from the first event's arrival to the fusion (the join's clock)."""
    engine_step = live_step(traced())
    req = engine_step.finished[0]
    trace_step(engine_step, provider(exporter))
    (span,) = exporter.get_finished_spans()
    assert span.start_time == req.opened_ms * 1_000_000
    assert span.end_time == req.fused_ts * 1_000_000


def test_untraced_requests_get_no_span(exporter: InMemorySpanExporter) -> None:
    """A request no member traced is not given a span (nor a header)."""
    step = live_step([rec(i, "r-1", m) for i, m in enumerate(MODELS)])
    assert trace_step(step, provider(exporter)) == 0
    assert exporter.get_finished_spans() == ()
    assert step.fused_records[0].headers is None


def test_a_dropped_span_keeps_the_deterministic_header(exporter: InMemorySpanExporter) -> None:
    """A span the sampler drops is not exported and the engine's header stays."""
    step = live_step(traced())
    before = list(step.fused_records[0].headers or [])
    assert trace_step(step, provider(exporter, ALWAYS_OFF)) == 0
    assert exporter.get_finished_spans() == ()
    assert step.fused_records[0].headers == before


def test_without_an_sdk_nothing_happens() -> None:
    """The API's no-op provider (and the default proxy) record nothing, change nothing."""
    step = live_step(traced())
    before = list(step.fused_records[0].headers or [])
    assert trace_step(step, NoOpTracerProvider()) == 0
    assert trace_step(step) == 0  # no global SDK provider is set in the tests
    assert step.fused_records[0].headers == before
