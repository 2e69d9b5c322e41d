"""Cache keys of predictions: everything a PredictionResult depends on, hashed.

A key is ``{<flow_key>}:<digest>``. The digest is the first 16 bytes of a SHA-256 of the model version,
the flow key, the horizon and the window as the request gave it (timestamps, features, and the pattern
ids, which ``similar_patterns`` reports). A new model version therefore never serves an old prediction, and a
window that changed in any of those is a new key. The contexts' ``metadata`` is left out: no part of the
answer depends on it, so windows that differ only there share their prediction. The ``{flow_key}`` hash
tag keeps a flow's keys in one Redis Cluster slot.

A prediction's ``prediction_id`` (what POST /v1/feedback refers to) is the key's digest: it names the
same things, and costs nothing more to make.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np
import orjson

from app.window import Window

# Part of every digest: bump it when the stored result changes for the same model and window (a new field,
# another similar_patterns rule), so that replicas of the new code do not serve what the old code stored.
# 2: results carry their prediction_id; 3: SHA-256 rather than blake2b; 4: the head in one piece, the pattern
# ids in it only when a context has one
KEY_FORMAT = b"cpe-prediction-4"


def prediction_key(
    model_version: str,
    flow_key: str,
    horizon: int,
    timestamps: np.ndarray,
    features: np.ndarray,
    pattern_ids: Sequence[str | None],
) -> str:
    """The cache key of the prediction for this window: ``timestamps`` (n,) int64, ``features`` (n, D),
    ``pattern_ids`` (n,) each context's pattern_id or None."""
    assert len(timestamps) == len(features) == len(pattern_ids), "one timestamp, row, pattern id per context"
    window = Window(flow_key, None, horizon, timestamps, features, list(pattern_ids))
    return prediction_keys([model_version], [window])[0]


def prediction_keys(versions: Sequence[str], windows: Sequence[Window]) -> list[str]:
    """The cache key of each window's prediction by the model version ``versions[i]`` (one version for
    all: a sequence of one), in order: a batch's keys in one pass.

    Per window, one SHA-256 of its head (format, version, flow key, horizon, contexts, the pattern ids
    when any is set) and of its arrays' own buffers, uncopied. SHA-256 rather than blake2b: the CPU's SHA
    instructions hash a window (~2.3 KB) in about 60 % of blake2b's time.
    """
    sha256 = hashlib.sha256
    if len(versions) == 1:  # one head for all: made once
        heads: Iterable[bytes] = repeat(b"%s\0%s\0" % (KEY_FORMAT, versions[0].encode()), len(windows))
    else:
        assert len(versions) == len(windows), "one version, or one per window"
        head_of = {v: b"%s\0%s\0" % (KEY_FORMAT, v.encode()) for v in set(versions)}
        heads = [head_of[v] for v in versions]
    keys = []
    for head, w in zip(heads, windows, strict=True):
        ts, features, patterns = w.timestamps, w.features, w.pattern_ids
        if ts.dtype != np.int64 or not ts.flags.c_contiguous:
            ts = np.ascontiguousarray(ts, dtype=np.int64)
        if features.dtype != np.float64 or not features.flags.c_contiguous:
            features = np.ascontiguousarray(features, dtype=np.float64)
        # the usual window has no pattern ids: counted in one pass in C, and left out of the head
        labels = b"" if patterns.count(None) == len(patterns) else orjson.dumps(list(patterns))
        digest = sha256(
            b"%s%s\0%d\0%d\0%d\0%s" % (head, w.flow_key.encode(), w.horizon, len(ts), len(labels), labels)
        )
        digest.update(ts.data)
        digest.update(features.data)
        keys.append(f"{{{w.flow_key}}}:{digest.hexdigest()[:32]}")
    return keys


def prediction_id(key: str) -> str:
    """The ``prediction_id`` of the prediction stored under ``key``: its 32 hex digest characters."""
    return key[-32:]
