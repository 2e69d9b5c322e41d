"""The learning metrics: feedback, steps, losses, rollouts and rollbacks, reloads, the lease.

Registered whether or not this replica learns, so that the dashboards and alerts over them always find
their series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class LearningMetrics:
    """Feedback, learner and rollout collectors, on ``registry`` (a registry of their own when None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.feedback = Counter(
            "cpe_learning_feedback", "Feedback accepted or refused.", ["result"], registry=registry
        )
        self.learning_steps = Counter("cpe_learning_steps", "Training steps applied.", registry=registry)
        self.learning_step_seconds = Histogram(
            "cpe_learning_step_seconds",
            "Time of one training step (a minibatch forward, backward and update).",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.learning_last_step = Gauge(
            "cpe_learning_last_step_timestamp_seconds",
            "Unix time of the last training step applied (a stalled learner stops moving it).",
            registry=registry,
        )
        self.learning_skipped_steps = Counter(
            "cpe_learning_skipped_steps",
            "Training steps not applied because their loss or gradient was not finite.",
            registry=registry,
        )
        self.learning_train_loss = Gauge(
            "cpe_learning_train_loss", "Loss of the last training minibatch.", registry=registry
        )
        self.learning_validation_loss = Gauge(
            "cpe_learning_validation_loss",
            "Loss on the held-back feedback of the trained copy (candidate) and of the serving version.",
            ["model"],
            registry=registry,
        )
        self.learning_rate = Gauge("cpe_learning_rate", "The learner's learning rate.", registry=registry)
        self.learning_step_rate = Gauge(
            "cpe_learning_steps_per_second", "The learner's allowed step rate.", registry=registry
        )
        self.learning_buffer = Gauge(
            "cpe_learning_buffer_size",
            "Feedback samples in the replay buffer, held back for validation, or waiting for the learner.",
            ["part"],
            registry=registry,
        )
        self.learning_rollouts = Counter(
            "cpe_learning_rollouts", "New model versions that went live.", registry=registry
        )
        self.learning_rollbacks = Counter(
            "cpe_learning_rollbacks",
            "Trained copies thrown away (nonfinite, worse) and rollbacks by an operator (manual).",
            ["reason"],
            registry=registry,
        )
        self.learning_held_back = Counter(
            "cpe_learning_held_back",
            "Trained copies better than the serving version held back by a baseline they did not beat.",
            ["baseline"],
            registry=registry,
        )
        for baseline in ("persistence", "ewma"):  # at 0 from the start, for increase() over the first one
            self.learning_held_back.labels(baseline)
        self.learning_reloads = Counter(
            "cpe_learning_reloads",
            "Model versions loaded from the bus (ok) or that failed to load (error).",
            ["result"],
            registry=registry,
        )
        self.learning_lease_held = Gauge(
            "cpe_learning_lease_held", "1 while this replica holds the learner's lease.", registry=registry
        )
