"""The one code path behind every ingest door: validate, adapt, apply to the flow store, hand on.

POST /v1/observe, WS /v1/stream/observe, the Redis Stream door and POST /v1/otlp/v1/metrics all end in
``IngestService.apply``. An observation counts as accepted once the store applied it: durable in Redis
(``redis://``), or in the bounded in-process store (``memory://``, refused whole with ``FlowsFull`` when
it would take more than CPE_MAX_FLOWS flows). Then ``on_applied`` is awaited with the flows that had
observations applied: the hook of continuous prediction. The common shape (contexts alone) goes from the
body to the store as columns (``ContextBatch``), without an object per observation.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence

import msgspec
import numpy as np
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from app.flows import BatchApplied, ContextBatch, FlowContext, FlowStore
from app.flows.base import APPLIED, DUPLICATE, LATE
from app.ingest.adapters import Adapted, LearningRateHint, PatternHint, adapt
from app.ingest.fastread import read_body, read_msgpack_body
from app.ingest.observations import Observation, ObserveLimits, ObserveRequest, ObserveResult

log = logging.getLogger("cpe.ingest")

OnApplied = Callable[[Sequence[str]], Awaitable[None]]  # the flows with observations applied, each once
OnLearningRate = Callable[[float], Awaitable[None]]  # an AdaptationFeedback's hint, to the learner

DOORS = ("http", "websocket", "stream", "otlp")


class IngestMetrics:
    """The counters of ingest, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.observations = Counter(
            "cpe_observations",
            "Observations received, by door and outcome (accepted, late, duplicate, imputed is a subset of "
            "accepted).",
            ["door", "outcome"],
            registry=registry,
        )
        self.refused = Counter(
            "cpe_observe_refused",
            "Observation batches refused whole, by door and reason (invalid, full, unavailable).",
            ["door", "reason"],
            registry=registry,
        )


class IngestService:
    """Applies observations to ``store``; ``on_applied``, ``on_learning_rate`` and ``on_patterns`` (Layer 2's
    SimilarityResults, for pattern memory) hear what was applied."""

    def __init__(
        self,
        store: FlowStore,
        *,
        max_batch: int = 10_000,
        flow_record_interval_ms: int = 1_000,
        on_applied: OnApplied | None = None,
        on_learning_rate: OnLearningRate | None = None,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.on_patterns: Callable[[Sequence[PatternHint]], None] | None = None
        self.store = store
        self.limits = ObserveLimits(max_batch)
        self.flow_record_interval_ms = flow_record_interval_ms
        self.on_applied = on_applied
        self.on_learning_rate = on_learning_rate
        self.metrics = metrics or IngestMetrics(CollectorRegistry())

    def read(self, body: bytes | str) -> Adapted:
        """The items of a POST /v1/observe body: the common shape in one pass in C (``fastread``), any
        other by pydantic; raises pydantic's ``ValidationError`` naming each bad field."""
        fast = read_body(body, self.limits.max_batch)
        if fast is not None:
            return fast
        return adapt(self.parse(body), self.flow_record_interval_ms)

    def read_msgpack(self, body: bytes) -> Adapted:
        """``read`` of an ``application/msgpack`` body: the same map in MessagePack. The common shape in one
        pass in C, any other by pydantic from the decoded values; raises pydantic's ``ValidationError``
        naming each bad field (``msgpack_invalid`` at the body for bytes that are no MessagePack)."""
        fast = read_msgpack_body(body, self.limits.max_batch)
        if fast is not None:
            return fast
        try:
            values = msgspec.msgpack.decode(body)
        except msgspec.DecodeError as exc:
            raise ValidationError.from_exception_data(
                "ObserveRequest",
                [
                    {
                        "type": PydanticCustomError(
                            "msgpack_invalid", "Invalid MessagePack: {error}", {"error": str(exc)}
                        ),
                        "loc": (),
                        "input": None,
                    }
                ],
            ) from None
        request = ObserveRequest.model_validate(values, context=self.limits)
        return adapt(request.observations, self.flow_record_interval_ms)

    def parse(self, body: bytes | str) -> list[Observation]:
        """The observations of an observe body; else pydantic's ``ValidationError`` naming each bad field."""
        return ObserveRequest.model_validate_json(body, context=self.limits).observations

    async def observe(self, observations: Sequence[Observation], door: str) -> ObserveResult:
        """Apply validated observations (in order) and count what became of them."""
        return await self.apply(adapt(observations, self.flow_record_interval_ms), door)

    async def apply(self, adapted: Adapted, door: str) -> ObserveResult:
        """Apply adapted items in order: runs of contexts in one store call each (columns: one call)."""
        result = ObserveResult(accepted=0, late=0, duplicates=0, imputed=0)
        touched: list[str] = []
        if adapted.columns is not None and adapted.items:
            adapted = adapted.as_items()
        if adapted.columns is not None:
            done = await self.store.append_batch(adapted.columns)
            _count(result, done, None)
            touched = done.flows
        for start, end in _runs(adapted.items):
            first = adapted.items[start]
            weights = adapted.weights[start:end]
            if isinstance(first, FlowContext):
                contexts = [item for item in adapted.items[start:end] if isinstance(item, FlowContext)]
                done = await self.store.append_batch(ContextBatch.of(contexts))
                _count(result, done, weights)
                touched += done.flows
            elif isinstance(first, PatternHint):
                hints = [i for i in adapted.items[start:end] if isinstance(i, PatternHint)]
                await self.store.attach_patterns([(i.flow_key, i.pattern_id) for i in hints])
                if self.on_patterns is not None:
                    self.on_patterns(hints)
                result.accepted += sum(weights)
            else:
                for item in adapted.items[start:end]:
                    assert isinstance(item, LearningRateHint)
                    if self.on_learning_rate is not None:
                        await self.on_learning_rate(item.learning_rate)
                result.accepted += sum(weights)
        counter = self.metrics.observations
        for outcome, n in (
            ("accepted", result.accepted),
            ("late", result.late),
            ("duplicate", result.duplicates),
            ("imputed", result.imputed),
        ):
            if n:
                counter.labels(door=door, outcome=outcome).inc(n)
        if touched and self.on_applied is not None:
            await self.on_applied(touched)
        return result

    def refused(self, door: str, reason: str) -> None:
        self.metrics.refused.labels(door=door, reason=reason).inc()


def _runs(items: Sequence[object]) -> Iterator[tuple[int, int]]:
    """[start, end) of each run of items of one kind."""
    start = 0
    for i in range(1, len(items) + 1):
        if i == len(items) or type(items[i]) is not type(items[start]):
            yield start, i
            start = i


def _count(result: ObserveResult, done: BatchApplied, weights: Sequence[int] | None) -> None:
    """Add one store call's outcome to ``result``, each context counted as the observations it stands for
    (``weights``; None: one each)."""
    statuses = done.statuses
    applied = statuses == APPLIED
    if weights is None:
        result.accepted += int(np.count_nonzero(applied))
        result.late += int(np.count_nonzero(statuses == LATE))
        result.duplicates += int(np.count_nonzero(statuses == DUPLICATE))
        result.imputed += int(np.count_nonzero(applied & (done.imputed != 0)))
        return
    w = np.asarray(weights, dtype=np.int64)
    result.accepted += int(w[applied].sum())
    result.late += int(w[statuses == LATE].sum())
    result.duplicates += int(w[statuses == DUPLICATE].sum())
    result.imputed += int(w[applied & (done.imputed != 0)].sum())
