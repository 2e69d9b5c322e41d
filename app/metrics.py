"""Prometheus collectors of the service, on a registry of their own per app, served on ``GET /metrics``.

Each app gets its own ``Metrics`` (hence its own ``CollectorRegistry``) rather than registering on
prometheus_client's global default registry: several apps in one process (tests) would otherwise collide
on the metric names. Only what the parts wired so far need is here; collectors for requests, the engine
and the models join this class as those parts export them. Nothing here runs per HTTP request unless a
handler calls it: no middleware.

Exported so far:

- ``cpe_cache_requests_total{tier, result}``: cache lookups per tier (``memory``, ``redis``) and
  result (``hit``, ``miss``). A key looked up in Redis missed the memory tier first.
- ``cpe_cache_errors_total{tier}``: failed round-trips to a tier (only ``redis`` can fail).
- ``cpe_cache_entries{tier="memory"}``: entries held by the in-process tier, read at scrape time.
- ``cpe_redis_up``: 1 while the Redis tier answers, 0 while it does not (its breaker is open) or when
  no Redis tier is configured.
- ``cpe_ws_subscribers``: routing WebSocket clients of this process with a subscription.
- ``cpe_ws_messages_sent_total``: routing messages written to those clients.
- ``cpe_ws_messages_dropped_total``: routing messages a slow client lost (its oldest, to make room).
- ``cpe_bus_errors_total``: bus operations that could not reach the bus's transport (Redis).
- ``cpe_learning_feedback_total{result}``: feedback ``accepted`` (202) or ``refused`` (429: the in-process
  buffer is full; 503: the Redis stream is unreachable).
- ``cpe_learning_steps_total``, ``cpe_learning_step_seconds``: training steps applied, and their time.
- ``cpe_learning_skipped_steps_total``: steps not applied because their loss or gradient was not finite.
- ``cpe_learning_train_loss``, ``cpe_learning_validation_loss{model}``: the last step's minibatch loss;
  the trained copy's (``candidate``) and the serving version's (``serving``) loss on the held-back feedback.
- ``cpe_learning_rate``: the learning rate the tuner set; ``cpe_learning_steps_per_second``: its step rate.
- ``cpe_learning_buffer_size{part}``: samples in the replay buffer (``replay``), held back
  (``validation``), and feedback waiting for the learner (``pending``, in-process buffer only).
- ``cpe_learning_rollouts_total``: new versions that went live (counted by the learner that made them).
- ``cpe_learning_rollbacks_total{reason}``: trained copies thrown away (``nonfinite`` weights, ``worse``
  than the serving version) and rollbacks by an operator (``manual``).
- ``cpe_learning_reloads_total{result}``: versions this replica loaded from the bus (``ok``) or could not
  load (``error``: it kept serving the version it had).
- ``cpe_learning_lease_held``: 1 while this replica holds the learner's lease, else 0.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """One app's collectors and their registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.cache_requests = Counter(
            "cpe_cache_requests",
            "Prediction cache lookups, per tier and result.",
            ["tier", "result"],
            registry=self.registry,
        )
        self.cache_errors = Counter(
            "cpe_cache_errors",
            "Failed round-trips to a cache tier (the request is answered without that tier).",
            ["tier"],
            registry=self.registry,
        )
        self.cache_entries = Gauge(
            "cpe_cache_entries",
            "Entries held by a cache tier.",
            ["tier"],
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "cpe_redis_up",
            "1 while the Redis cache tier answers; 0 while it does not or when none is configured.",
            registry=self.registry,
        )

        self.ws_subscribers = Gauge(
            "cpe_ws_subscribers",
            "Routing WebSocket clients of this process with a subscription.",
            registry=self.registry,
        )
        self.ws_messages_sent = Counter(
            "cpe_ws_messages_sent",
            "Routing messages written to WebSocket clients.",
            registry=self.registry,
        )
        self.ws_messages_dropped = Counter(
            "cpe_ws_messages_dropped",
            "Routing messages a slow WebSocket client lost: its oldest, dropped to make room.",
            registry=self.registry,
        )
        self.bus_errors = Counter(
            "cpe_bus_errors",
            "Bus operations that could not reach its transport (Redis); the bus retries by itself.",
            registry=self.registry,
        )

        self._learning_collectors()

    def _learning_collectors(self) -> None:
        registry = self.registry
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
        self.learning_reloads = Counter(
            "cpe_learning_reloads",
            "Model versions loaded from the bus (ok) or that failed to load (error).",
            ["result"],
            registry=registry,
        )
        self.learning_lease_held = Gauge(
            "cpe_learning_lease_held", "1 while this replica holds the learner's lease.", registry=registry
        )

    def render(self) -> bytes:
        """The text exposition format of every collector, as ``GET /metrics`` serves it."""
        return generate_latest(self.registry)
