"""The tuner: moves the learning rate and the step rate by what the validation loss does.

This is the honest form of "meta-learning": no learned optimizer, a rule with a reason. At every
comparison the learner measures r = (trained copy's loss) / (serving version's loss) on the same
held-back feedback. r going down means the steps help: the learning rate grows by ``GROW`` (up to its
maximum) and the step rate goes back up towards its maximum. r going up means the last steps hurt
(too large a rate, or the data moved): the learning rate halves (down to its minimum) and the step rate
falls too (down to a tenth), so a learner that cannot improve stops spending CPU. A promotion makes the
trained copy the serving version, so r starts again from 1.
"""

from __future__ import annotations

from dataclasses import dataclass

GROW = 1.25
SHRINK = 0.5
STEP_RATE_FLOOR = 0.1  # the slowest step rate, as a fraction of the maximum
TOLERANCE = 1e-3  # changes of r smaller than this are noise


@dataclass
class Tuner:
    lr: float
    lr_min: float
    lr_max: float
    max_steps_per_s: float
    steps_per_s: float = 0.0
    last_ratio: float = 1.0

    def __post_init__(self) -> None:
        assert self.lr_min <= self.lr <= self.lr_max, "lr must lie within [lr_min, lr_max]"
        self.steps_per_s = self.steps_per_s or self.max_steps_per_s

    def observe(self, candidate_loss: float, serving_loss: float) -> None:
        """Adjust to one comparison of the trained copy with the serving version."""
        ratio = candidate_loss / serving_loss if serving_loss > 0 else 1.0
        if ratio < self.last_ratio - TOLERANCE:
            self.lr = min(self.lr * GROW, self.lr_max)
            self.steps_per_s = min(self.steps_per_s * GROW, self.max_steps_per_s)
        elif ratio > self.last_ratio + TOLERANCE:
            self.lr = max(self.lr * SHRINK, self.lr_min)
            self.steps_per_s = max(self.steps_per_s * SHRINK, STEP_RATE_FLOOR * self.max_steps_per_s)
        self.last_ratio = ratio

    def hint(self, learning_rate: float) -> None:
        """Move towards a rate suggested from outside (Layer 2's AdaptationFeedback), bounded: one step of
        at most ``GROW`` up or ``SHRINK`` down, within [lr_min, lr_max]. A hint cannot make the learner
        jump further than its own rule would in one comparison."""
        target = min(max(learning_rate, self.lr * SHRINK, self.lr_min), self.lr * GROW, self.lr_max)
        self.lr = target

    def setback(self) -> None:
        """The trained copy was thrown away (broken or worse): slow down, and start again from 1."""
        self.lr = max(self.lr * SHRINK, self.lr_min)
        self.steps_per_s = max(self.steps_per_s * SHRINK, STEP_RATE_FLOOR * self.max_steps_per_s)
        self.last_ratio = 1.0

    def restart(self) -> None:
        """The trained copy was promoted or thrown away: it equals the serving version again."""
        self.last_ratio = 1.0
