"""The parts of observing the network, built from the settings and run as one ``async with``."""

from __future__ import annotations

import contextlib
from typing import Self

from prometheus_client import CollectorRegistry

from app.flows import FlowStore, flow_store_from_settings
from app.ingest.otlp import metric_table
from app.ingest.service import IngestMetrics, IngestService, OnApplied, OnLearningRate
from app.settings import Settings


class Observing:
    """The flow store, the ingest service, the OTLP metric table and the Redis Stream door (if any)."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        *,
        on_applied: OnApplied | None = None,
        on_learning_rate: OnLearningRate | None = None,
        consumer: str = "cpe",
    ) -> None:
        self.otlp_metric_table = metric_table(settings.otlp_metric_names)  # first: a bad entry fails at once
        self.flows: FlowStore = flow_store_from_settings(settings)
        self.ingest = IngestService(
            self.flows,
            max_batch=settings.max_observe_batch,
            flow_record_interval_ms=settings.flow_record_interval_ms,
            on_applied=on_applied,
            on_learning_rate=on_learning_rate,
            metrics=IngestMetrics(registry),
        )
        self._settings, self._consumer = settings, consumer
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self._stack.enter_async_context(self.flows)
        settings = self._settings
        if settings.ingest_url:
            from app.api.observe import read_frame
            from app.ingest.stream import StreamDoor

            door = StreamDoor(
                settings.ingest_url,
                self.ingest,
                stream=settings.ingest_stream,
                group=settings.ingest_group,
                consumer=self._consumer,
                claim_ms=settings.ingest_claim_ms,
                parse=read_frame,
            )
            await self._stack.enter_async_context(door)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
