"""The replay buffer: encoded feedback samples, drawn by proportional prioritization of their error.

Each sample is stored as the model reads it (the scaled window ``x`` (T, F)) with its scaled target
``y`` (1, D), the next context. New samples first enter the **validation slice**, the most recent
``validation`` samples, which are never trained on: versions are compared there. When the slice is
full, its oldest sample moves on into the **training ring** of ``capacity`` samples (the oldest of
which is then forgotten).

Sampling is proportional prioritization (Schaul et al., "Prioritized Experience Replay", 2016):
P(i) = p_i^alpha / sum_j p_j^alpha, with p_i the sample's last training loss plus a small epsilon, and
a new sample entering at the largest priority so far, so that each is seen at least about once. The
bias this brings is corrected by importance weights w_i = (N P(i))^-beta / max_j w_j. Drawing is an
O(N) pass over the priorities, vectorized, small against a training step at the buffer sizes allowed; a
sum tree would only pay off for buffers a hundred times larger.

Not thread-safe: the learner's thread alone uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHA = 0.6  # how much the priorities count: 0 = uniform, 1 = fully proportional
BETA = 0.4  # how much of the sampling bias the importance weights undo (1 = all of it)
EPSILON = 1e-3  # keeps every sample drawable, whatever its loss


@dataclass
class Minibatch:
    index: np.ndarray  # (B,) positions in the training ring, for update_priorities
    x: np.ndarray  # (B, T, F) float32
    y: np.ndarray  # (B, 1, D) float32
    weights: np.ndarray  # (B,) float32 importance weights, max 1


class ReplayBuffer:
    """A bounded training ring with priorities, behind a held-back slice of the newest samples."""

    def __init__(
        self, capacity: int, validation: int, seq_len: int, n_inputs: int, n_features: int, seed: int = 0
    ) -> None:
        assert capacity >= 1 and validation >= 1, "capacity and validation must be >= 1"
        self.capacity = capacity
        self.validation = validation
        self._x = np.zeros((capacity, seq_len, n_inputs), dtype=np.float32)
        self._y = np.zeros((capacity, 1, n_features), dtype=np.float32)
        self._priority = np.zeros(capacity, dtype=np.float64)  # p_i^alpha
        self._size = 0
        self._next = 0  # where the next training sample goes
        self._max_priority = 1.0
        # the held-back slice: a ring too, oldest at _val_next once full
        self._val_x = np.zeros((validation, seq_len, n_inputs), dtype=np.float32)
        self._val_y = np.zeros((validation, 1, n_features), dtype=np.float32)
        self._val_size = 0
        self._val_next = 0
        self._rng = np.random.default_rng(seed)
        self.added = 0  # samples ever added

    def __len__(self) -> int:
        """Samples available for training (the held-back ones not included)."""
        return self._size

    @property
    def validation_size(self) -> int:
        return self._val_size

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add samples ``x`` (N, T, F) and ``y`` (N, 1, D), oldest first."""
        for xi, yi in zip(x, y, strict=True):
            self.added += 1
            if self._val_size < self.validation:
                self._val_x[self._val_size], self._val_y[self._val_size] = xi, yi
                self._val_size += 1
                continue
            # the slice is full: its oldest sample moves into the training ring, the new one takes its place
            i = self._val_next
            self._train(self._val_x[i], self._val_y[i])
            self._val_x[i], self._val_y[i] = xi, yi
            self._val_next = (i + 1) % self.validation

    def _train(self, x: np.ndarray, y: np.ndarray) -> None:
        j = self._next
        self._x[j], self._y[j] = x, y
        self._priority[j] = self._max_priority**ALPHA
        self._next = (j + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def held_back(self) -> tuple[np.ndarray, np.ndarray]:
        """The validation slice: x (V, T, F), y (V, 1, D) (copies: the learner may evaluate at leisure)."""
        n = self._val_size
        return self._val_x[:n].copy(), self._val_y[:n].copy()

    def sample(self, batch: int) -> Minibatch:
        """``batch`` training samples drawn by priority, with their importance weights."""
        n = self._size
        assert n > 0, "the replay buffer holds no training sample yet"
        p = self._priority[:n]
        prob = p / p.sum()
        index = self._rng.choice(n, size=batch, p=prob)
        weights = (n * prob[index]) ** -BETA
        weights /= weights.max()
        return Minibatch(index, self._x[index], self._y[index], weights.astype(np.float32))

    def update_priorities(self, index: np.ndarray, errors: np.ndarray) -> None:
        """Set the drawn samples' priorities from their errors (non-finite errors count as the largest)."""
        errors = np.where(np.isfinite(errors), np.abs(errors), self._max_priority) + EPSILON
        self._priority[index] = errors**ALPHA
        self._max_priority = max(self._max_priority, float(errors.max()))

    def probabilities(self) -> np.ndarray:
        """P(i) of every training sample (for tests and inspection)."""
        p = self._priority[: self._size]
        return p / p.sum()

    def clear(self) -> None:
        self._size = self._next = self._val_size = self._val_next = 0
        self._max_priority = 1.0
