"""The pattern-memory part of one replica: the memory, fed by continuous prediction and Layer 2, asked
by the API and by every forecast's ``similar_patterns``, snapshotted to disk; ``async with`` runs it.

Replicas. Each replica's memory holds the windows that it forecast (continuous prediction runs where
the observations are applied: with a Redis ingest stream, each replica takes its share of the flows),
so the fleet's memory is partitioned by replica, and each replica snapshots its own part
(``CPE_PATTERNS_SNAPSHOT_PATH`` per replica: give each its own file). A search answers from the
replica's part; a flow's own history and, with flows spread evenly, a sample of every kind of window
are there. No shared vector store is needed: the local Redis 7 has no vector search module, and a
full copy per replica would multiply the insert work by the number of replicas.

The embeddings are those of the default model (``CPE_MODEL``): requests to another model get no
stored neighbours. Online learning keeps the trunk by default (``CPE_LEARNING_LAYERS=head``), and only
the final norm's scale changes, so stored embeddings stay comparable to new ones across versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import numpy as np
from prometheus_client import CollectorRegistry

from app.engine import WindowForecast
from app.ingest.adapters import PatternHint
from app.patterns import snapshot
from app.patterns.analogy import analog_scaled, blend, overlapping
from app.patterns.memory import Match, PatternMemory
from app.settings import Settings
from models.predictor import Predictor

log = logging.getLogger("cpe.patterns")

SIMILAR = 3  # names in a PredictionResult's similar_patterns, as before pattern memory


class FlowWindow(Protocol):
    """A window as the flow store answers it (``app/forecasts/continuous.py``)."""

    @property
    def timestamps(self) -> np.ndarray: ...

    @property
    def features(self) -> np.ndarray: ...


class Patterns:
    """Pattern memory in service: see the module's docstring."""

    def __init__(
        self,
        memory: PatternMemory,
        kind: str,
        *,
        analog_k: int = 10,
        analog_weight: float = 0.0,
        analog_max_distance: float = 4.0,
        snapshot_path: Path | None = None,
        snapshot_interval_s: float = 300.0,
    ) -> None:
        self.memory, self.kind = memory, kind
        self.analog_k, self.analog_weight = analog_k, analog_weight
        self.analog_max_distance = analog_max_distance
        self.snapshot_path, self.snapshot_interval_s = snapshot_path, snapshot_interval_s
        self._saver: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, predictor: Predictor, registry: CollectorRegistry | None
    ) -> Patterns:
        """The memory of ``predictor``'s embeddings (the default model's), sized by the settings."""
        memory = PatternMemory(
            predictor.embedding_dim,
            predictor.scaler.n_features,
            capacity=settings.patterns_capacity,
            max_pending=settings.max_flows,
            registry=registry,
        )
        return cls(
            memory,
            predictor.kind,
            analog_k=settings.patterns_analog_k,
            analog_weight=settings.patterns_analog_weight,
            analog_max_distance=settings.patterns_analog_max_distance,
            snapshot_path=Path(settings.patterns_snapshot_path) if settings.patterns_snapshot_path else None,
            snapshot_interval_s=settings.patterns_snapshot_interval_s,
        )

    # -- fed by ingest and by continuous prediction -------------------------------------------------
    def hear(self, hints: Sequence[PatternHint]) -> None:
        """Layer 2's SimilarityResults (ingest's ``on_patterns``)."""
        self.memory.hear_labels(
            [h.flow_key for h in hints], [h.pattern_id for h in hints], [h.confidence for h in hints]
        )

    def on_forecasts(
        self,
        keys: Sequence[str],
        windows: Sequence[FlowWindow],
        forecasts: Sequence[WindowForecast],
    ) -> list[list[Match]]:
        """A round of continuous forecasts: store the outcomes their windows now show, remember the new
        windows for theirs, and answer each one's nearest stored windows (not its own overlapping ones)."""
        mine = [
            i for i, f in enumerate(forecasts) if f.predictor.kind == self.kind and f.embedding is not None
        ]
        if not mine:
            return [[] for _ in keys]
        transform = forecasts[mine[0]].predictor.scaler.transform
        own = [windows[i] for i in mine]  # each read once: a round's windows may be made on demand
        self.memory.resolve(
            [keys[i] for i in mine], [w.timestamps for w in own], [w.features for w in own], transform
        )
        for i, w in zip(mine, own, strict=True):
            f = forecasts[i]
            batch = f.batch
            assert batch.center is not None and batch.scale is not None and f.embedding is not None
            labels: list[str | None] | None = getattr(w, "pattern_ids", None)
            newest = next((p for p in reversed(labels) if p is not None), None) if labels else None
            self.memory.remember(
                keys[i],
                int(w.timestamps[-1]),
                f.embedding,
                batch.center[f.index],
                batch.scale[f.index],
                float(w.features[-1, 0]),
                newest,
            )
        return self._nearest(
            [keys[i] for i in mine],
            [int(w.timestamps[0]) for w in own],
            [forecasts[i] for i in mine],
            mine,
            len(keys),
        )

    def nearest(
        self, flow_keys: Sequence[str], since_ms: Sequence[int], forecasts: Sequence[WindowForecast]
    ) -> list[list[Match]]:
        """The nearest stored windows of forecasts made elsewhere (/v1/predict); none for other models'."""
        mine = [
            i for i, f in enumerate(forecasts) if f.predictor.kind == self.kind and f.embedding is not None
        ]
        return self._nearest(
            [flow_keys[i] for i in mine],
            [since_ms[i] for i in mine],
            [forecasts[i] for i in mine],
            mine,
            len(forecasts),
        )

    def _nearest(
        self,
        keys: Sequence[str],
        since: Sequence[int],
        forecasts: Sequence[WindowForecast],
        at: Sequence[int],
        n: int,
    ) -> list[list[Match]]:
        out: list[list[Match]] = [[] for _ in range(n)]
        if not forecasts or not len(self.memory):
            return out
        vectors = np.stack([f.embedding for f in forecasts if f.embedding is not None])
        # a flow's own recent windows overlap its query: ask for enough to have k others
        found = self.memory.search(vectors, self.analog_k + forecasts[0].predictor.seq_len)
        for j, (key, t, matches) in enumerate(zip(keys, since, found, strict=True)):
            out[at[j]] = overlapping(matches, key, t)[: self.analog_k]
        return out

    @staticmethod
    def names(matches: Sequence[Match], first: Sequence[str] = ()) -> list[str]:
        """``similar_patterns``: ``first`` (the window's own labelled contexts), then the names of the
        nearest stored windows (their pattern id, else ``<flow_key>@<timestamp>``), distinct, at most 3."""
        out = list(first[:SIMILAR])
        for m in matches:
            if len(out) >= SIMILAR:
                break
            if m.name not in out:
                out.append(m.name)
        return out

    def analog(self, matches: Sequence[Match], forecast: WindowForecast) -> list[float] | None:
        """(D,) the analog forecast of the step after the window, raw units (None: no matches)."""
        z = analog_scaled(matches)
        batch = forecast.batch
        if z is None or batch.center is None or batch.scale is None:
            return None
        y = batch.center[forecast.index] + batch.scale[forecast.index] * z
        return [float(v) for v in forecast.predictor.scaler.inverse(y)]

    def metadata(self, matches: Sequence[Match], forecast: WindowForecast, horizon: int) -> dict[str, float]:
        """A PredictionResult's metadata from pattern memory: ``analog_latency_ms`` (the next context's
        latency by analogy, ``analogy.py``), ``analog_matches``, ``blended_latency_ms`` (with a weight)."""
        z = analog_scaled(matches)
        batch = forecast.batch
        if z is None or batch.center is None or batch.scale is None:
            return {}
        scaler, i = forecast.predictor.scaler, forecast.index
        loc = batch.center[i] + batch.scale[i] * z  # (D,) transformed space
        distance = float(np.mean([m.distance for m in matches]))
        out = {
            "analog_latency_ms": float(scaler.inverse(loc)[0]),
            "analog_matches": float(len(matches)),
            "analog_distance": distance,
        }
        if self.analog_weight > 0 and horizon == 1 and distance <= self.analog_max_distance:
            mixed = blend(forecast.loc[0], loc, self.analog_weight)
            out["blended_latency_ms"] = float(scaler.inverse(mixed)[0])
        return out

    # -- lifetime ------------------------------------------------------------------------------------
    async def save(self) -> None:
        """Write the snapshot now (a worker thread), when a path is set."""
        if self.snapshot_path is None:
            return
        t = time.perf_counter()
        n = await asyncio.to_thread(snapshot.save, self.memory, self.snapshot_path)
        log.info(
            "pattern memory: %d windows written to %s in %.1f s",
            n,
            self.snapshot_path,
            time.perf_counter() - t,
        )

    async def _save_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_interval_s)
            try:
                await self.save()
            except OSError as exc:  # a full disk must not stop the service
                log.warning("pattern memory snapshot to %s failed: %s", self.snapshot_path, exc)

    async def __aenter__(self) -> Self:
        if self.snapshot_path is not None:
            await asyncio.to_thread(snapshot.load, self.memory, self.snapshot_path)
            self._saver = asyncio.get_running_loop().create_task(
                self._save_now_and_then(), name="cpe-patterns-snapshot"
            )
        await self.memory.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
        with contextlib.suppress(TimeoutError):
            await self.memory.drain(5.0)
        await self.memory.__aexit__(exc_type, exc, tb)
        try:
            await self.save()
        except OSError as exc_:
            log.warning("pattern memory snapshot to %s failed: %s", self.snapshot_path, exc_)
