"""Online learning wired together for the app: ``OnlineLearning.from_settings(...)``, run with ``async with``.

With ``CPE_LEARNING_URL=memory://`` every part lives in this process: the feedback buffer, the version
history, a lease it always holds. With ``redis://`` the feedback stream, the versions and their weights,
and the lease live in Redis, shared by every replica; new versions are announced on the bus.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import numpy as np

from app.bus import Bus
from app.engine import Engine
from app.learning.feedback import Feedback, FeedbackStore, MemoryFeedback, RedisFeedback
from app.learning.hints import HintListener
from app.learning.learner import Learner, LearnerConfig, replica_id
from app.learning.lease import LocalLease, RedisLease
from app.learning.metrics import LearningMetrics
from app.learning.recent import RecentWindows
from app.learning.rollout import Rollout
from app.learning.versions import MemoryVersions, RedisVersions, VersionStore
from app.settings import Settings
from app.window import Window

log = logging.getLogger("cpe.learning")

REDIS_SCHEMES = ("redis", "rediss", "unix")


class OnlineLearning:
    """The feedback store, the recent windows, the rollout and the learner of one replica."""

    def __init__(
        self,
        store: FeedbackStore,
        recent: RecentWindows,
        rollout: Rollout,
        learner: Learner,
        seq_len: int,
        closing: list[object] | None = None,
        hints: HintListener | None = None,
    ) -> None:
        self.store = store
        self.recent = recent
        self.rollout = rollout
        self.learner = learner
        self.hints = hints  # AdaptationFeedback's learning-rate hints from any replica, on the bus
        self.seq_len = seq_len  # feedback windows are kept to the contexts the model reads
        self._closing = closing or []  # clients to close after the parts

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        engine: Engine,
        bus: Bus,
        metrics: LearningMetrics,
        shipped: dict[str, Path],
        device: str = "cpu",
    ) -> OnlineLearning:
        kind = settings.model
        blobs = {engine.predictors[k].version: path.read_bytes() for k, path in shipped.items()}
        scheme = urlsplit(settings.learning_url).scheme
        me = replica_id()
        store: FeedbackStore
        versions: VersionStore
        lease: LocalLease | RedisLease
        closing: list[object] = []
        if scheme == "memory":
            store = MemoryFeedback(settings.feedback_buffer, settings.retry_after_s)
            versions = MemoryVersions(blobs, settings.learning_keep_versions)
            lease = LocalLease()
        elif scheme in REDIS_SCHEMES:
            from redis.asyncio import Redis

            client = Redis.from_url(settings.learning_url, socket_connect_timeout=2.0, socket_timeout=2.0)
            closing.append(client)
            prefix = settings.learning_prefix
            store = RedisFeedback(
                client=client,
                prefix=prefix,
                consumer=me,
                maxlen=settings.feedback_stream_maxlen,
                retry_after_s=settings.retry_after_s,
            )
            versions = RedisVersions(client, prefix, blobs, settings.learning_keep_versions)
            lease = RedisLease(client, f"{prefix}lease", me, settings.learning_lease_ttl_ms)
        else:
            raise ValueError(
                f"unsupported learning URL scheme {scheme!r}; expected memory:// or redis://host:port/db"
            )
        rollout = Rollout(engine, versions, bus, settings.models_channel, metrics, device)
        config = LearnerConfig(
            kind=kind,
            batch=settings.learning_batch,
            lr=settings.learning_rate,
            lr_min=settings.learning_rate_min,
            lr_max=settings.learning_rate_max,
            steps_per_s=settings.learning_steps_per_s,
            eval_steps=settings.learning_eval_steps,
            min_samples=settings.learning_min_samples,
            replay_capacity=settings.replay_capacity,
            replay_validation=settings.replay_validation,
            min_improvement=settings.learning_min_improvement,
            rollback_margin=settings.learning_rollback_margin,
            lease_ttl_ms=settings.learning_lease_ttl_ms,
            threads=settings.learning_threads,
            layers=settings.learning_layers,
        )
        learner = Learner(config, engine, store, rollout, lease, metrics)
        recent = RecentWindows(settings.recent_predictions)
        hints = HintListener(bus, settings.learning_hints_channel, learner)
        return cls(store, recent, rollout, learner, engine.predictors[kind].seq_len, closing, hints)

    @property
    def metrics(self) -> LearningMetrics:
        return self.learner.metrics

    def feedback(self, window: Window, actual_timestamp: int, actual: list[float]) -> Feedback:
        """The sample kept for ``window``: its last contexts (those the model reads) and the actual."""
        n = self.seq_len
        return Feedback(
            flow_key=window.flow_key,
            timestamps=np.ascontiguousarray(window.timestamps[-n:]),
            features=np.ascontiguousarray(window.features[-n:]),
            actual_timestamp=actual_timestamp,
            actual=np.asarray(actual, dtype=np.float64),
        )

    async def __aenter__(self) -> Self:
        await self.store.connect()
        await self.rollout.start()
        await self.learner.start()
        if self.hints is not None:
            await self.hints.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.hints is not None:
            await self.hints.__aexit__(exc_type, exc, tb)
        await self.learner.stop()
        await self.rollout.stop()
        await self.store.disconnect()
        for client in self._closing:
            await client.aclose()  # type: ignore[attr-defined]
