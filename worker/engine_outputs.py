"""Where a step's records go: dead letters, late records and fused results become the
step's output records (``Step.outputs``, by input partition number, in the order the
engine hands them over) and its counts. Pure code."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from worker.config import Config
from worker.errors import InvalidEvent
from worker.events import FinishedRequest
from worker.records import OutRecord, Record, Step, dead_letter
from worker.tracecontext import HEADER as TRACEPARENT
from worker.tracecontext import fused_traceparent


class Outputs:
    """The output records of one engine's steps. ``encode``: build records (False:
    only count); ``track``: note each fused request id in ``Step.touched``."""

    def __init__(self, config: Config, encode: bool, track: bool) -> None:
        k = config.kafka
        self.encode = encode
        self._track = track
        self._dlq_topic = k.dlq_topic
        self._late_topic = k.late_topic
        self._output_topic = k.output_topic

    def dead(self, r: Record, exc: InvalidEvent, out: Step) -> None:
        """An invalid record: to the dead-letter topic, counted by reason."""
        out.invalid.append((r, exc))
        out.dead_letters[exc.reason] += 1
        if self.encode:
            out.outputs.setdefault(r.partition, []).append(dead_letter(self._dlq_topic, r, exc))

    def not_joined(self, r: Record, model: str, outcome: str, out: Step) -> None:
        """A duplicate or late event: counted; a late one to the late topic if any."""
        out.other[(model, outcome)] += 1
        if outcome == "late" and self._late_topic:
            out.late += 1
            if self.encode:
                out.outputs.setdefault(r.partition, []).append(
                    OutRecord(self._late_topic, r.key, r.value, list(r.headers))
                )

    def fused(
        self,
        finished: Sequence[tuple[int, FinishedRequest]],
        values: Sequence[bytes],
        traced: bool,
        out: Step,
    ) -> None:
        """The result records of ``finished`` (``values``: their JSON; ``traced``: some
        member may carry a ``traceparent``, which the result's header continues)."""
        if self.encode:
            topic, outputs = self._output_topic, out.outputs
            if traced:
                recs = [
                    OutRecord(topic, f.request_id.encode(), value, _headers(f))
                    for (_, f), value in zip(finished, values, strict=True)
                ]
            else:  # the usual step: comprehensions, half the CPU of a loop per request
                recs = [
                    OutRecord(topic, f.request_id.encode(), value)
                    for (_, f), value in zip(finished, values, strict=True)
                ]
            out.fused_records += recs
            # The requests come partition by partition: one extend per run of them.
            start = 0
            for p, run in groupby([p for p, _ in finished]):
                end = start + len(list(run))
                outputs.setdefault(p, []).extend(recs[start:end])
                start = end
        if self._track:
            for p, f in finished:
                out.touched.setdefault(p, []).append(f.request_id)


def _headers(f: FinishedRequest) -> list[tuple[str, bytes]] | None:
    """A fused record's headers: the ``traceparent`` continuing its first traced member's
    trace, if any."""
    header = fused_traceparent(f.request_id, f.members.values())
    return None if header is None else [(TRACEPARENT, header)]
