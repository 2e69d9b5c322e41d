"""Online learning: feedback, a prioritized replay buffer, a trainer off the request path, safe rollout.

- ``feedback.py``: where accepted feedback waits (bounded in-process buffer, or a Redis Stream).
- ``recent.py``: the windows of recent predictions, for feedback by ``prediction_id``.
- ``replay.py``: the prioritized replay buffer and its held-back validation slice.
- ``trainer.py``: minibatch steps on a copy of the serving model.
- ``tuner.py``: the learning rate and step rate, moved by the validation loss.
- ``rollout.py``: when a trained copy may go live, and how a version goes live on every replica.
- ``versions.py``: the version history and the weights kept for rollback.
- ``lease.py``: one learner at a time.
- ``learner.py``: the loops that tie them together; ``online.py``: the whole, wired for the app.
"""
