"""Rollout: which trained copy may go live, and how a version goes live on every replica.

``judge`` is the rule: a trained copy goes live only when its loss on the held-back feedback is below
the serving version's by ``min_improvement``, and its next-step latency error there is below that of
each baseline (``baseline_errors``: persistence and EWMA), since a model that does not beat persistence
is not shipped; a copy better than the serving version but not than a baseline is held back (counted)
and trains on. Non-finite weights or loss, or a loss worse by more than ``rollback_margin``, throw the
copy away (it is reset to the serving weights, and counted).

``Rollout`` makes a version live: it records the version and its safetensors blob in the version store,
swaps it into this replica's engine (``Engine.swap``: between batches, never mid-batch; the version is
part of every cache key, so no old prediction is served for it), and announces it on the bus channel.
Every replica listens there and hot-loads the blob: from Redis in one round-trip, built in a worker
thread, swapped on the event loop; in well under a second. A blob that does not load (corrupt,
trimmed, another architecture) leaves the serving version untouched, and is counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import orjson
from redis import exceptions as redis_errors

from app.bus import Bus
from app.engine import Engine
from app.learning.metrics import LearningMetrics
from app.learning.versions import VersionRecord, VersionStore
from models import baselines
from models.checkpoint import CheckpointError
from models.predictor import Predictor

log = logging.getLogger("cpe.learning")

_FAILURES = (redis_errors.RedisError, OSError)


@dataclass(frozen=True)
class Verdict:
    promote: bool  # the trained copy goes live
    discard: bool  # the trained copy is thrown away: back to the serving weights
    reason: str  # better | nonfinite | worse | not better yet | not better than <baseline>
    held_back_by: str | None = None  # the baseline a copy better than the serving version did not beat


def judge(
    candidate_loss: float,
    serving_loss: float,
    *,
    finite: bool,
    min_improvement: float,
    rollback_margin: float,
    latency_mae: float,
    baseline_maes: Mapping[str, float],
) -> Verdict:
    """What to do with a trained copy, from its loss and the serving version's on the same held-back slice,
    and its latency MAE there against each baseline's (``baseline_errors``), in the order given."""
    if not finite or not math.isfinite(candidate_loss):
        return Verdict(False, True, "nonfinite")
    if candidate_loss <= serving_loss * (1.0 - min_improvement):
        for name, baseline_mae in baseline_maes.items():
            if not latency_mae < baseline_mae:  # (a NaN error beats nothing)
                return Verdict(False, False, f"not better than {name}", held_back_by=name)
        return Verdict(True, False, "better")
    if candidate_loss > serving_loss * (1.0 + rollback_margin):
        return Verdict(False, True, "worse")
    return Verdict(False, False, "not better yet")


def baseline_errors(x: np.ndarray, y: np.ndarray, feature: int) -> dict[str, float]:
    """The next-step MAE of persistence and EWMA on ``feature`` of held-back samples x (V, T, F), y (V, 1, D).

    In the scaled space the model reads and predicts in (``models.scaling``: each window's transformed
    features, standardized by that window's own mean and deviation), so that they compare with the
    model's error there: persistence is the window's last scaled value, EWMA (``models.baselines``, its
    default smoothing) runs over the window's scaled values. Standardizing is affine per window, so EWMA
    there is EWMA of the transformed feature (for latency, its log: a geometric rather than arithmetic
    average of the raw values). Left-padding repeats a window's first context, which changes neither.
    """
    window = x[:, :, feature : feature + 1]  # (V, T, 1)
    actual = y[:, 0, feature]  # (V,)
    unused = np.empty(window.shape[:2])  # the timestamps: neither forecaster reads them
    return {
        "persistence": float(np.abs(baselines.persistence(unused, window)[:, 0] - actual).mean()),
        "ewma": float(np.abs(baselines.ewma(unused, window)[:, 0] - actual).mean()),
    }


class UnknownVersion(LookupError):
    """A rollback to a version that is not in the history, or whose weights are no longer kept."""


class Rollout:
    """Makes versions live on this replica and announces them to the others on ``channel``."""

    def __init__(
        self,
        engine: Engine,
        versions: VersionStore,
        bus: Bus,
        channel: str,
        metrics: LearningMetrics,
        device: str = "cpu",
    ) -> None:
        self.engine = engine
        self.versions = versions
        self.bus = bus
        self.channel = channel
        self.metrics = metrics
        self.device = device
        self._task: asyncio.Task[None] | None = None
        self._swapping = asyncio.Lock()

    async def start(self) -> None:
        """Serve what the store says is current (a replica started after a rollout), then listen."""
        try:
            for kind, predictor in self.engine.predictors.items():
                current = await self.versions.current(kind)
                if current is None:
                    await self.versions.record(VersionRecord(predictor.version, kind, "shipped"), None)
                elif current != predictor.version:
                    await self.activate(kind, current)
        except _FAILURES as exc:  # serve what was loaded; announcements bring the replica up to date
            log.warning(
                "rollout: the version store is unreachable at start; serving the shipped models: %s", exc
            )
        ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._listen(ready), name="cpe-rollout")
        await ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _listen(self, ready: asyncio.Event) -> None:
        async with self.bus.subscribe(self.channel) as subscription:
            ready.set()
            async for message in subscription:
                try:
                    announced = orjson.loads(message)
                    kind, version = str(announced["kind"]), str(announced["version"])
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("rollout: ignored a malformed announcement on %s: %s", self.channel, exc)
                    continue
                if kind in self.engine.predictors:
                    await self.activate(kind, version)

    async def activate(self, kind: str, version: str) -> bool:
        """Serve ``version`` for ``kind`` here; False (counted, logged) when its weights do not load."""
        async with self._swapping:  # one load at a time: an announcement of our own version is then a no-op
            if self.engine.predictors[kind].version == version:
                return True
            try:
                blob = await self.versions.blob(version)
                if blob is None:
                    raise CheckpointError(f"no weights are kept for version {version!r}")
                loop = asyncio.get_running_loop()
                predictor = await loop.run_in_executor(None, Predictor.load, blob, self.device)
                if predictor.version != version:
                    raise CheckpointError(f"the weights of {version!r} load as {predictor.version!r}")
                self.engine.swap(kind, predictor)
            except Exception as exc:  # whatever went wrong, the serving version stays
                self.metrics.learning_reloads.labels(result="error").inc()
                log.error(
                    "rollout: kept %s; version %s did not load: %s",
                    self.engine.predictors[kind].version,
                    version,
                    exc,
                )
                return False
            self.metrics.learning_reloads.labels(result="ok").inc()
            return True

    async def publish(self, record: VersionRecord, blob: bytes | None) -> bool:
        """Make ``record``'s version live here and on every replica; False when it did not load here."""
        await self.versions.record(record, blob)
        if not await self.activate(record.kind, record.version):
            return False
        message = orjson.dumps({"kind": record.kind, "version": record.version})
        if not await self.bus.publish(self.channel, message):
            log.warning(
                "rollout: could not announce %s on the bus; replicas load it when they restart",
                record.version,
            )
        return True

    async def history(self, kind: str) -> list[VersionRecord]:
        """The kind's version history, newest first; empty while the version store is unreachable."""
        try:
            return await self.versions.history(kind)
        except _FAILURES as exc:
            log.warning("rollout: the version history is unreachable: %s", exc)
            return []

    async def rollback(self, kind: str, version: str | None) -> tuple[str, str]:
        """Make an earlier version of ``kind`` live again; (previous, now serving). Raises UnknownVersion."""
        current = self.engine.predictors[kind].version
        history = await self.versions.history(kind)
        if version is None:
            earlier = [r.version for r in history if r.version != current]
            if not earlier:
                raise UnknownVersion(f"{kind!r} has no earlier version to roll back to")
            version = earlier[0]
        elif version not in {r.version for r in history}:
            raise UnknownVersion(f"{version!r} is not in the history of {kind!r}")
        if await self.versions.blob(version) is None:
            raise UnknownVersion(f"the weights of {version!r} are no longer kept")
        record = VersionRecord(version, kind, "rollback", parent=current)
        if not await self.publish(record, None):
            raise UnknownVersion(f"the weights of {version!r} do not load")
        self.metrics.learning_rollbacks.labels(reason="manual").inc()
        log.warning("rollout: %s rolled back from %s to %s", kind, current, version)
        return current, version

    async def __aenter__(self) -> Rollout:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.stop()
