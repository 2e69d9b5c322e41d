"""The learner: feedback in, better versions out, in a thread of its own.

Three loops. On the event loop, ``_hold_lease`` keeps (or tries to take) the learner's lease, and
``_ingest`` moves feedback from the store (in-process buffer or Redis Stream) to the training thread
while the lease is held. In the training thread (``_train``), samples are encoded into the replay
buffer, minibatch steps run on a copy of the serving model at the tuner's step rate, and every
``eval_steps`` steps the copy is compared with the serving version and the baselines (persistence,
EWMA) on the held-back slice: better than all, it is rolled out (published through ``Rollout`` on the
event loop); better than the serving version only, it is held back and trains on; broken or worse, it
is thrown away.
The event loop never runs torch, and neither does the engine's inference thread for the learner.

On shutdown nothing accepted is left behind untaken: the learner first moves whatever still waits in
the in-process buffer (``memory://``) into the training thread, which takes all of it into the replay
buffer before it stops, and logs how many samples it took in over its life. That is all ``memory://``
can promise: the replay buffer, like every version rolled out there, lives in this process and ends
with it. With Redis nothing is drained at shutdown: what this learner has not read stays in the stream
for the next learner, which also refills its replay buffer from the stream's tail.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from redis import exceptions as redis_errors

from app.engine import Engine
from app.learning.feedback import Feedback, FeedbackStore
from app.learning.lease import LocalLease, RedisLease
from app.learning.metrics import LearningMetrics
from app.learning.replay import ReplayBuffer
from app.learning.rollout import Rollout, baseline_errors, judge
from app.learning.trainer import Trainer, Validation, encode, weights_finite
from app.learning.tuner import Tuner
from app.learning.versions import VersionRecord
from models import checkpoint

log = logging.getLogger("cpe.learning")

_FAILURES = (redis_errors.RedisError, OSError)
IDLE_S = 0.2  # how long the training thread waits for work before looking again
CHECK_S = 1.0  # how often a replica that does not read the feedback store probes it


@dataclass(frozen=True)
class LearnerConfig:
    kind: str  # the model kind trained
    batch: int = 32
    lr: float = 3e-4
    lr_min: float = 1e-5
    lr_max: float = 3e-3
    steps_per_s: float = 20.0
    eval_steps: int = 100
    min_samples: int = 256
    replay_capacity: int = 20_000
    replay_validation: int = 512
    min_improvement: float = 0.01
    rollback_margin: float = 0.05
    lease_ttl_ms: int = 3_000
    threads: int = 1
    layers: str = "head"


@dataclass(frozen=True)
class _TakeOver:
    """A marker for the training thread: this replica just became the learner; start from ``samples``."""

    samples: list[Feedback]


class Learner:
    """The online learning of one model kind on this replica; ``async with learner:`` runs it."""

    def __init__(
        self,
        config: LearnerConfig,
        engine: Engine,
        store: FeedbackStore,
        rollout: Rollout,
        lease: LocalLease | RedisLease,
        metrics: LearningMetrics,
    ) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.rollout = rollout
        self.lease = lease
        self.metrics = metrics
        self.stats = {"steps": 0, "skipped": 0, "rollouts": 0, "discarded": 0, "held_back": 0, "samples": 0}
        self._last_reason = ""  # the last evaluation's verdict, in the training thread
        self._incoming: queue.SimpleQueue[list[Feedback] | _TakeOver] = queue.SimpleQueue()
        self._active = threading.Event()  # the lease is held: train
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hinted_lr: float | None = None  # the newest learning-rate hint, for the training thread

    def holds_lease(self) -> bool:
        """Whether this replica is the learner now."""
        return bool(self.lease.held)

    def hint_learning_rate(self, learning_rate: float) -> None:
        """A learning rate suggested from outside: the tuner takes a bounded step to it (``Tuner.hint``)."""
        self._hinted_lr = learning_rate

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # torch's optimizers import torch._dynamo on first use, holding the GIL for a long while. In the
        # training thread that came after /readyz said ready, and stalled the first seconds of traffic;
        # done now, it is part of the start-up instead.
        import torch._dynamo  # noqa: F401

        self._thread = threading.Thread(target=self._train, name="cpe-learner", daemon=True)
        self._thread.start()
        self._tasks = [
            self._loop.create_task(self._hold_lease(), name="cpe-lease"),
            self._loop.create_task(self._ingest(), name="cpe-ingest"),
        ]

    async def stop(self) -> None:
        # a cancel can be lost inside redis-py (seen about once in 15 stops, ``_ingest`` cancelled in an
        # XREADGROUP soon after the stream key was deleted): the task then waits for ever, and so did
        # the shutdown. Cancelled again, it ends.
        while pending := [task for task in self._tasks if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)
        while self.store.pending:  # in-process feedback: hand all of it to the training thread
            self._incoming.put([sample for _, sample in await self.store.read(512, block_ms=0)])
        self._stop.set()  # the thread takes what is queued in before it ends
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        log.info(
            "learning: stopped; %d feedback samples taken in, %d left waiting",
            self.stats["samples"],
            self.store.pending,
        )
        if self.lease.held:
            try:
                await self.lease.release()
            except _FAILURES as exc:
                log.warning("learning: could not release the lease (it expires by itself): %s", exc)
        self.metrics.learning_lease_held.set(0)

    async def __aenter__(self) -> Learner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- on the event loop ----------------------------------------------------------------------
    async def _hold_lease(self) -> None:
        period_s = self.config.lease_ttl_ms / 3000.0
        unreachable = False
        while True:
            was_held = self._active.is_set()
            try:
                held = await self.lease.acquire()
                if held and not was_held:
                    capacity = self.config.replay_capacity + self.config.replay_validation
                    self._incoming.put(_TakeOver(await self.store.take_over(capacity)))
                    log.info("learning: this replica (%s) is the learner now", self.lease.holder)
            except _FAILURES as exc:
                held = False
                if not unreachable:  # once per outage, not every period
                    log.warning("learning: the lease is unreachable; no training until it is back: %s", exc)
                unreachable = True
            else:
                unreachable = False
            if was_held and not held:
                log.warning("learning: lost the lease; training pauses")
            (self._active.set if held else self._active.clear)()
            self.metrics.learning_lease_held.set(1 if held else 0)
            await asyncio.sleep(period_s)

    async def _ingest(self) -> None:
        unacked: list[str] = []  # taken in, but Redis went away before it heard so: acknowledged later
        next_check = 0.0
        while True:
            if not self._active.is_set():
                if time.monotonic() >= next_check:
                    # nothing reads the store here: probe it, so that its problem (GET /readyz) comes and
                    # goes with it, not with the next feedback
                    next_check = time.monotonic() + CHECK_S
                    await self.store.check()
                await asyncio.sleep(IDLE_S)
                continue
            try:
                if unacked:
                    await self.store.ack(unacked)
                    unacked = []
                entries = await self.store.read(512, block_ms=200)
                if entries:
                    self._incoming.put([sample for _, sample in entries])
                    unacked = [entry_id for entry_id, _ in entries]
                    await self.store.ack(unacked)
                    unacked = []
            except _FAILURES as exc:
                log.warning("learning: cannot read feedback: %s", exc)
                await asyncio.sleep(1.0)
            self.metrics.learning_buffer.labels(part="pending").set(self.store.pending)

    async def _publish(self, record: VersionRecord, blob: bytes) -> bool:
        if not await self.lease.acquire():  # lost meanwhile: the new learner decides now
            return False
        return await self.rollout.publish(record, blob)

    # -- in the training thread -----------------------------------------------------------------
    def _train(self) -> None:
        torch.set_num_threads(self.config.threads)
        cfg = self.config
        predictor = self.engine.predictors[cfg.kind]
        trainer = Trainer(predictor, cfg.lr, layers=cfg.layers)
        serving = copy.deepcopy(trainer.model)  # the serving weights, on the CPU, for comparisons
        tuner = Tuner(cfg.lr, cfg.lr_min, cfg.lr_max, cfg.steps_per_s)
        replay = ReplayBuffer(
            cfg.replay_capacity,
            cfg.replay_validation,
            predictor.seq_len,
            predictor.scaler.n_inputs,
            predictor.scaler.n_features,
        )
        self.metrics.learning_rate.set(tuner.lr)
        self.metrics.learning_step_rate.set(tuner.steps_per_s)
        next_step = 0.0
        since_eval = 0

        def ready() -> bool:
            return (
                self._active.is_set()
                and len(replay) >= cfg.min_samples
                and replay.validation_size >= cfg.replay_validation
            )

        while not self._stop.is_set():
            wait = max(next_step - time.monotonic(), 0.0) if ready() else IDLE_S
            self._take_incoming(trainer, replay, wait)
            hinted, self._hinted_lr = self._hinted_lr, None
            if hinted is not None:
                tuner.hint(hinted)
                trainer.set_lr(tuner.lr)
                self.metrics.learning_rate.set(tuner.lr)
            current = self.engine.predictors[cfg.kind]
            if current.version != trainer.base.version:  # a rollback, or another learner's version
                trainer.reset(current)
                serving = copy.deepcopy(trainer.model)
                tuner.restart()
                since_eval = 0
            if not ready() or time.monotonic() < next_step:  # again: a take-over empties the buffer
                continue
            next_step = time.monotonic() + 1.0 / tuner.steps_per_s
            try:
                step = trainer.step(replay, cfg.batch)
            except Exception:
                log.exception("learning: a training step failed")
                continue
            if step.applied:
                self.stats["steps"] += 1
                since_eval += 1
                self.metrics.learning_steps.inc()
                self.metrics.learning_last_step.set_to_current_time()
                self.metrics.learning_step_seconds.observe(step.seconds)
                self.metrics.learning_train_loss.set(step.loss)
            else:
                self.stats["skipped"] += 1
                self.metrics.learning_skipped_steps.inc()
            if since_eval >= cfg.eval_steps:
                since_eval = 0
                if self._evaluate(trainer, serving, tuner, replay):
                    serving = copy.deepcopy(trainer.model)  # the trained copy serves now
        self._take_incoming(trainer, replay, 0.0)  # what stop() handed over last

    def _take_incoming(self, trainer: Trainer, replay: ReplayBuffer, wait_s: float) -> None:
        """Encode whatever feedback arrived into the replay buffer, waiting up to ``wait_s`` for some."""
        try:
            item = self._incoming.get(timeout=wait_s) if wait_s > 0 else self._incoming.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(item, _TakeOver):
                replay.clear()
                samples = item.samples
            else:
                samples = item
            if samples:
                x, y = encode(trainer.base, samples)
                replay.add(x, y)
                self.stats["samples"] += len(samples)
            try:
                item = self._incoming.get_nowait()
            except queue.Empty:
                break
        self.metrics.learning_buffer.labels(part="replay").set(len(replay))
        self.metrics.learning_buffer.labels(part="validation").set(replay.validation_size)

    def _evaluate(
        self, trainer: Trainer, serving: torch.nn.Module, tuner: Tuner, replay: ReplayBuffer
    ) -> bool:
        """Compare the trained copy with the serving version and the baselines on the held-back slice, and
        act on it; True when the copy went live."""
        cfg = self.config
        x, y = replay.held_back()
        finite = weights_finite(trainer.model)
        candidate = trainer.validation(trainer.model, x, y) if finite else Validation(math.nan, math.nan)
        serving_loss = trainer.validation(serving, x, y).loss
        baseline_maes = baseline_errors(x, y, trainer.base.calibration.primary_feature)
        self.metrics.learning_validation_loss.labels(model="candidate").set(candidate.loss)
        self.metrics.learning_validation_loss.labels(model="serving").set(serving_loss)
        verdict = judge(
            candidate.loss,
            serving_loss,
            finite=finite,
            min_improvement=cfg.min_improvement,
            rollback_margin=cfg.rollback_margin,
            latency_mae=candidate.latency_mae,
            baseline_maes=baseline_maes,
        )
        figures = {
            "loss": candidate.loss,
            "serving_loss": serving_loss,
            "latency_mae": candidate.latency_mae,
            **{f"{name}_mae": mae for name, mae in baseline_maes.items()},
        }
        summary = ", ".join(f"{name} {value:.5f}" for name, value in figures.items())
        log.debug("learning: candidate %s: %s", summary, verdict.reason)
        promoted = False
        if verdict.discard:
            self.stats["discarded"] += 1
            self.metrics.learning_rollbacks.labels(reason=verdict.reason).inc()
            log.warning(
                "learning: threw the trained copy away (%s); back to %s", verdict.reason, trainer.base.version
            )
            trainer.reset(trainer.base)
            tuner.setback()
        elif verdict.promote:
            promoted = self._promote(trainer, figures, len(x))
            tuner.observe(candidate.loss, serving_loss)
            if promoted:
                tuner.restart()
        else:
            if verdict.held_back_by is not None:
                self.stats["held_back"] += 1
                self.metrics.learning_held_back.labels(baseline=verdict.held_back_by).inc()
                if verdict.reason != self._last_reason:  # it may last many evaluations: said when it starts
                    log.info("learning: held the trained copy back, %s (%s)", verdict.reason, summary)
            tuner.observe(candidate.loss, serving_loss)
        self._last_reason = verdict.reason
        trainer.set_lr(tuner.lr)
        self.metrics.learning_rate.set(tuner.lr)
        self.metrics.learning_step_rate.set(tuner.steps_per_s)
        return promoted

    def _promote(self, trainer: Trainer, figures: dict[str, float], samples: int) -> bool:
        """Publish the trained copy as a new version with its validation ``figures``; True when it serves."""
        base = trainer.base
        meta = {k: v for k, v in base.meta.items() if k != "version"}
        validation = {
            **{name: round(value, 6) for name, value in figures.items()},
            "samples": float(samples),
            "steps": float(trainer.steps),
        }
        meta["online"] = {"parent": base.version, **validation}
        blob = checkpoint.to_bytes(trainer.model, meta)
        version = f"{base.kind}-{checkpoint.read_meta(blob)['weights_sha256'][:12]}"
        record = VersionRecord(version, base.kind, "online", parent=base.version, validation=validation)
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._publish(record, blob), self._loop)
        try:
            published = future.result(timeout=30.0)
        except Exception:
            log.exception("learning: publishing %s failed", version)
            return False
        now = self.engine.predictors[base.kind]
        if not published or now.version != version:
            return False
        trainer.base = now  # keep training the same copy: it is what serves now
        self.stats["rollouts"] += 1
        self.metrics.learning_rollouts.inc()
        log.info(
            "learning: rolled out %s (loss %.5f vs %.5f of %s; latency MAE %.5f, persistence %.5f, "
            "EWMA %.5f)",
            version,
            figures["loss"],
            figures["serving_loss"],
            base.version,
            figures["latency_mae"],
            figures["persistence_mae"],
            figures["ewma_mae"],
        )
        return True


def replica_id() -> str:
    """This process's name in the lease and the consumer group: host, pid and a random suffix."""
    import os
    import socket

    return f"{socket.gethostname()}-{os.getpid()}-{np.random.default_rng().integers(1 << 16):04x}"
