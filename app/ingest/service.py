"""The one code path behind every ingest door: validate, adapt, apply to the flow store, hand on.

POST /v1/observe, WS /v1/stream/observe, the Redis Stream door and POST /v1/otlp/v1/metrics all end in
``IngestService.apply``. An observation counts as accepted once the store applied it: durable in Redis
(``redis://``), or in the bounded in-process store (``memory://``, refused whole with ``FlowsFull`` when
it would take more than CPE_MAX_FLOWS flows). Then ``on_applied`` is awaited with the contexts applied,
per flow in timestamp order: the hook of continuous prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter

from app.flows import Appended, FlowContext, FlowStore
from app.flows.base import APPLIED, DUPLICATE, LATE
from app.ingest.adapters import Adapted, LearningRateHint, PatternHint, adapt
from app.ingest.fastread import read_body
from app.ingest.observations import Observation, ObserveLimits, ObserveRequest, ObserveResult

log = logging.getLogger("cpe.ingest")

OnApplied = Callable[[Mapping[str, list[FlowContext]]], Awaitable[None]]
OnLearningRate = Callable[[float], None]

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

    def parse(self, body: bytes | str) -> list[Observation]:
        """The observations of an observe body; else pydantic's ``ValidationError`` naming each bad field."""
        return ObserveRequest.model_validate_json(body, context=self.limits).observations

    async def observe(self, observations: Sequence[Observation], door: str) -> ObserveResult:
        """Apply validated observations (in order) and count what became of them."""
        return await self.apply(adapt(observations, self.flow_record_interval_ms), door)

    async def apply(self, adapted: Adapted, door: str) -> ObserveResult:
        """Apply adapted items in order: runs of contexts in one store call each."""
        result = ObserveResult(accepted=0, late=0, duplicates=0, imputed=0)
        applied: dict[str, list[FlowContext]] = {}
        for start, end in _runs(adapted.items):
            first = adapted.items[start]
            weights = adapted.weights[start:end]
            if isinstance(first, FlowContext):
                contexts = [item for item in adapted.items[start:end] if isinstance(item, FlowContext)]
                done = await self.store.append(contexts)
                _count(result, contexts, done, weights)
                for flow_key, flow_contexts in done.applied.items():
                    applied.setdefault(flow_key, []).extend(flow_contexts)
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
                        self.on_learning_rate(item.learning_rate)
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
        if applied and self.on_applied is not None:
            await self.on_applied(applied)
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


def _count(
    result: ObserveResult, contexts: Sequence[FlowContext], done: Appended, weights: Sequence[int]
) -> None:
    """Add one store call's outcome to ``result``, each context counted as the observations it stands for."""
    applied = {flow_key: iter(flow_contexts) for flow_key, flow_contexts in done.applied.items()}
    for context, status, weight in zip(contexts, done.statuses, weights, strict=True):
        if status == APPLIED:
            result.accepted += weight
            if next(applied[context.flow_key]).imputed:
                result.imputed += weight
        elif status == LATE:
            result.late += weight
        elif status == DUPLICATE:
            result.duplicates += weight
