"""Per-flow corrections of the model's next-step latency, learnt online from the free labels.

The online learner fine-tunes one model for every flow, at a few steps a second, and may promote a copy
only after it beats the serving version on held-back labels: right for a change that many flows share,
slow for a change of one route's dynamics (a queue whose depth now leads its latency, a new response to
utilization, a periodic job). Each observed flow here also gets a small linear model of the shipped
model's error, in the space the model forecasts in:

    r = T(actual latency) - loc      (T: the scaler's log; loc: the model's forecast there)

regressed on ``FEATURES`` of the window the forecast was made from (the latency at a few lags relative to
the forecast, queue depth, utilization and jitter at the last lags, utilization's convex terms, the load
term u^2 / (1 - u) at the lags the latency lags carry), by
recursive least squares with forgetting (``forget``: the labels of about the last ``1 / (1 - forget)``
count), errors clipped at ``CLIP`` so that one outlier does not throw the weights. The error is in log
units rather than in units of the window's spread: an exogenous effect (utilization's, queue depth's)
adds to log latency whatever the window's spread is.

A correction ``w.x`` is computed for every forecast, at most ``CAP_ERRORS`` of the model's recent errors,
and shrunk on a window whose leverage ``x' cov x`` is over ``LEVERAGE`` times the recent one's (linear
weights extrapolate on a window unlike the ones they learnt from: a level step, a failure), but served
(step 1's latency point and interval shifted by it in T's space) only while it measures better: over the
flow's recent labels (an exponential average of about ``GATE_LABELS``) its error must be below the model's
own by ``margin`` and by ``GATE_Z`` standard errors of that gain, after at least ``min_labels`` labels,
and over the last few (``GATE_SHORT``) not above it:
when the flow changes again, the correction learnt before is taken off within a few labels, not a
hundred. Otherwise the flow is served the model's forecast untouched, so a correction that does not help
costs nothing but its arithmetic.

The state is this replica's, in process, for at most ``max_flows`` flows (the least recently scored are
forgotten): a flow scored on another replica starts learning there afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from models.predictor import Forecast, Predictor

LATENCY, JITTER, UTILIZATION, QUEUE_DEPTH = 0, 1, 4, 7
LAGS = (1, 2, 3, 4, 8, 12, 16, 24)  # latency lags read (24: a rhythm of up to a day of hourly samples)
# the load term u^2 / (1 - u) at earlier lags too: the latency lags hold what utilization did to those
# samples, and the model's forecast smooths over them, so the new response of the next sample can only be
# told apart from the old ones the model already carries with the same term at the same lags
LOAD_LAGS = (2, 3, 4)
SPAN = max(LAGS)  # contexts of the window read; a shorter window repeats its first
FEATURES = (
    "bias",
    *(f"latency_lag{k}" for k in LAGS),
    *("queue_depth_lag1", "queue_depth_lag2", "jitter_lag1", "utilization_lag1"),
    *("utilization", "utilization_sq", "utilization_load"),
    *(f"utilization_load_lag{k}" for k in LOAD_LAGS),
)
P = len(FEATURES)
CLIP = 0.7  # largest error (in log latency: a factor of 2) a label may teach, and largest correction
GATE_LABELS = 100  # labels the served/not-served comparison averages over (exponentially)
GATE_Z = 2.0  # ... and by this many standard errors of its gain
LEVERAGE = 10.0  # a window of more than this times the recent leverage x' cov x: its correction shrunk
CAP_ERRORS = 10.0  # the largest correction served, in the model's recent mean absolute errors
GATE_SHORT = 10  # ... and its quick check, which takes the correction off soon after the flow changes
RIDGE = 1.0  # prior precision of the weights: w starts at 0, pulled there until labels say otherwise
# Forgetting divides the covariance by ``forget`` at every label, also along directions that the labels
# do not excite (a utilization that stays put): unbounded, it grows until one label throws the weights.
# Past this trace it is no longer inflated.
MAX_TRACE = 100.0 * P / RIDGE


class FlowResiduals(Collector):
    """Per-flow latency corrections; ``correct`` each round's new forecasts, ``learn`` from scored ones.

    The flows' state is kept in arrays, a row per flow (grown by doubling up to ``max_flows``), and a
    round's flows are corrected and taught with a few numpy calls on their rows (the RLS steps batched):
    no Python step per flow but the look-up of its row."""

    def __init__(
        self,
        *,
        forget: float = 0.99,
        margin: float = 0.03,
        min_labels: int = 100,
        max_flows: int = 10_000,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.forget, self.margin, self.min_labels, self.max_flows = forget, margin, min_labels, max_flows
        self._row: dict[str, int] = {}  # flow_key -> its row
        self._keys: list[str | None] = []  # row -> flow_key (None: free)
        self._free: list[int] = []
        self._clock = 0  # order of creation or last label: the cap forgets the rows least recently scored
        self._grow(0)
        self.labels = 0
        self.corrected = 0  # forecasts served corrected
        if registry is not None:
            registry.register(self)

    def _grow(self, capacity: int) -> None:
        old = len(self._keys)
        self._keys.extend([None] * (capacity - old))
        self._free.extend(range(capacity - 1, old - 1, -1))  # popped from the end: lowest rows first

        def grown(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
            out: np.ndarray = np.zeros((capacity, *shape), dtype=dtype)
            if old:
                out[:old] = getattr(self, name)
            return out

        self._weights = grown("_weights", (P,), np.float64)
        self._cov = grown("_cov", (P, P), np.float64)  # RLS inverse-precision
        self._labels = grown("_labels", (), np.int64)
        # exponential averages of |error| ms over recent labels: the model alone, and corrected; the same
        # over the last few labels
        self._model_error = grown("_model_error", (), np.float64)
        self._corrected_error = grown("_corrected_error", (), np.float64)
        self._model_recent = grown("_model_recent", (), np.float64)
        self._corrected_recent = grown("_corrected_recent", (), np.float64)
        # exponential average of the squared gain (model's |error| - corrected's), and of the forecasts'
        # leverage x' cov x over recent labels
        self._gain_sq = grown("_gain_sq", (), np.float64)
        self._leverage = grown("_leverage", (), np.float64)
        # the newest forecast: its base timestamp (-1: none pending), features, loc and correction
        self._pending_ts = grown("_pending_ts", (), np.int64)
        self._pending_x = grown("_pending_x", (P,), np.float64)
        self._pending_loc = grown("_pending_loc", (), np.float64)
        self._pending_delta = grown("_pending_delta", (), np.float64)
        self._pending_leverage = grown("_pending_leverage", (), np.float64)
        self._served = grown("_served", (), bool)
        self._order = grown("_order", (), np.int64)
        if capacity > old:
            self._pending_ts[old:] = -1

    def _rows(self, keys: Sequence[str]) -> np.ndarray:
        """The rows of ``keys``, made (fresh: no labels, weights 0) for flows without one; -1 for a new flow
        that the cap leaves no room for (more new flows at once than ``max_flows``)."""
        get = self._row.get
        rows = np.fromiter((get(key, -1) for key in keys), np.int64, len(keys))
        new = np.flatnonzero(rows < 0)
        if not len(new):
            return rows
        keep = new[-self.max_flows :]  # of more new flows than the cap, the last ones stay
        need = len(self._row) + len(keep) - self.max_flows
        if need > 0:  # the least recently scored flows of other rounds go first
            candidates = self._used()
            candidates[rows[rows >= 0]] = False
            used = np.flatnonzero(candidates)
            evicted = min(need, len(used))
            if evicted:
                self._forget(used[np.argpartition(self._order[used], evicted - 1)[:evicted]])
            keep = keep[need - evicted :]
        if len(keep) > len(self._free):
            self._grow(min(self.max_flows, max(1024, 2 * len(self._keys), len(self._row) + len(keep))))
        made = np.array([self._free.pop() for _ in range(len(keep))], dtype=np.int64)
        for i, row in zip(keep.tolist(), made.tolist(), strict=True):
            key = keys[i]
            self._row[key] = row
            self._keys[row] = key
        self._weights[made] = 0.0
        self._cov[made] = np.eye(P) / RIDGE
        for name in (
            "_labels",
            "_model_error",
            "_corrected_error",
            "_model_recent",
            "_corrected_recent",
            "_gain_sq",
            "_leverage",
        ):
            getattr(self, name)[made] = 0
        self._pending_ts[made] = -1
        self._served[made] = False
        self._order[made] = np.arange(self._clock, self._clock + len(made))
        self._clock += len(made)
        rows[keep] = made
        return rows

    def _used(self) -> np.ndarray:
        used = np.zeros(len(self._keys), dtype=bool)
        if self._row:
            used[np.fromiter(self._row.values(), np.int64, len(self._row))] = True
        return used

    def _forget(self, rows: np.ndarray) -> None:
        for row in rows.tolist():
            key = self._keys[row]
            if key is not None:
                del self._row[key]
                self._keys[row] = None
                self._free.append(row)

    # -- serving ------------------------------------------------------------------------------
    def correct(
        self,
        predictor: Predictor,
        keys: Sequence[str],
        windows: Sequence[np.ndarray] | np.ndarray,
        rows: Sequence[Forecast],
        indices: Sequence[int],
        base_ts: Sequence[int],
        lengths: np.ndarray | None = None,
    ) -> None:
        """Compute each flow's correction of its new forecast (``rows[i]``'s row ``indices[i]``, made from
        ``windows[i]`` (n, D) raw; or with ``lengths``, ``windows`` is a right-aligned block (B, L, D),
        window i its last ``lengths[i]`` contexts); shift step 1's latency by it where the flow's gate is
        open. ``keys`` are distinct."""
        if not keys:
            return
        b = len(keys)
        loc = np.fromiter((f.loc[j, 0, LATENCY] for f, j in zip(rows, indices, strict=True)), np.float64, b)
        if lengths is not None:
            x = block_features(np.asarray(windows), lengths, loc, predictor.scaler.transform)
        else:
            x = features(windows, loc, predictor.scaler.transform)  # type: ignore[arg-type]
        floor = predictor.scaler.floors[LATENCY]
        at = self._rows(keys)
        live = np.flatnonzero(at >= 0)
        if len(live) < b:
            at, loc, x = at[live], loc[live], x[live]
        delta = np.clip(np.einsum("bp,bp->b", self._weights[at], x), -CLIP, CLIP)
        labels, flow_leverage = self._labels[at], self._leverage[at]
        delta = _capped(delta, loc, floor, labels, self._model_error[at])
        leverage = np.einsum("bi,bij,bj->b", x, self._cov[at], x)
        shrunk = (labels > 0) & (leverage > LEVERAGE * flow_leverage)
        if shrunk.any():
            delta = np.where(
                shrunk, delta * LEVERAGE * flow_leverage / np.where(shrunk, leverage, 1.0), delta
            )
        self._pending_leverage[at] = leverage
        self._pending_ts[at] = np.asarray(base_ts, dtype=np.int64)[live]
        self._pending_x[at] = x
        self._pending_loc[at] = loc
        self._pending_delta[at] = delta
        served = np.flatnonzero(self._served[at])
        for k in served.tolist():
            i = int(live[k])
            _shift(predictor, rows[i], indices[i], float(delta[k]))
        self.corrected += len(served)

    # -- learning -----------------------------------------------------------------------------
    def learn(
        self, predictor: Predictor, keys: Sequence[str], base_ts: Sequence[int], actual: np.ndarray
    ) -> None:
        """The flows' forecasts made at ``base_ts`` met the contexts ``actual`` (n, D) raw: RLS steps, one
        per flow (``keys`` are distinct), batched."""
        if not keys:
            return
        get = self._row.get
        at = np.fromiter((get(key, -1) for key in keys), np.int64, len(keys))
        ts = np.asarray(base_ts, dtype=np.int64)
        # not the forecast we corrected (another replica's, or forgotten): nothing to learn
        ok = at >= 0
        ok[ok] = self._pending_ts[at[ok]] == ts[ok]
        if not ok.any():
            return
        at, actual = at[ok], actual[ok]
        m = len(at)
        self._order[at] = np.arange(self._clock, self._clock + m)
        self._clock += m
        floor = predictor.scaler.floors[LATENCY]
        y = actual[:, LATENCY].astype(np.float64)
        ty = predictor.scaler.transform(actual)[:, LATENCY]
        lam = self.forget
        g, h = 1.0 / GATE_LABELS, 1.0 / GATE_SHORT
        loc, delta = self._pending_loc[at], self._pending_delta[at]
        # shadow scores: the model alone and corrected, whichever was served
        model_abs = np.abs(y - _inverse(loc, floor))
        corrected_abs = np.abs(y - _inverse(loc + delta, floor))
        model_error = self._model_error[at] + g * (model_abs - self._model_error[at])
        corrected_error = self._corrected_error[at] + g * (corrected_abs - self._corrected_error[at])
        model_recent = self._model_recent[at] + h * (model_abs - self._model_recent[at])
        corrected_recent = self._corrected_recent[at] + h * (corrected_abs - self._corrected_recent[at])
        gain_sq = self._gain_sq[at] + g * ((model_abs - corrected_abs) ** 2 - self._gain_sq[at])
        weight = np.where(self._labels[at] > 0, g, 1.0)
        leverage = self._leverage[at] + weight * (self._pending_leverage[at] - self._leverage[at])
        # the RLS steps
        x, cov, weights = self._pending_x[at], self._cov[at], self._weights[at]
        cx = np.einsum("bij,bj->bi", cov, x)
        k = cx / (lam + np.einsum("bi,bi->b", x, cx))[:, None]
        e = np.clip(ty - loc - np.einsum("bp,bp->b", weights, x), -CLIP, CLIP)
        weights += k * e[:, None]
        cov -= k[:, :, None] * cx[:, None, :]
        inflate = np.einsum("bii->b", cov) < MAX_TRACE
        cov[inflate] /= lam
        labels = self._labels[at] + 1
        self._weights[at], self._cov[at], self._labels[at] = weights, cov, labels
        self._model_error[at], self._corrected_error[at] = model_error, corrected_error
        self._model_recent[at], self._corrected_recent[at] = model_recent, corrected_recent
        self._gain_sq[at], self._leverage[at] = gain_sq, leverage
        self._pending_ts[at] = -1
        # whether the correction measures better than the model alone: by ``margin`` over the recent
        # labels, by ``GATE_Z`` standard errors of that mean gain (a correction fitted to noise wins a few
        # dozen labels by chance, and one served then costs the flow for a hundred), and not worse over
        # the last few
        gain = model_error - corrected_error
        n = np.minimum(labels, 2 * GATE_LABELS - 1)  # the labels an exponential average of GATE_LABELS weighs
        spread = np.maximum(gain_sq - gain * gain, 0.0)
        self._served[at] = (
            (labels >= self.min_labels)
            & (gain > self.margin * model_error)
            & (gain * gain * n > GATE_Z * GATE_Z * spread)
            & (corrected_recent <= model_recent)
        )
        self.labels += m

    # -- reporting ----------------------------------------------------------------------------
    def summary(self) -> dict[str, int]:
        """What GET /v1/stats answers: flows with a correction, served now, labels, forecasts corrected."""
        served = int(self._served[self._used()].sum())
        return {
            "flows": len(self._row),
            "served": served,
            "labels": self.labels,
            "corrected": self.corrected,
        }

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        yield from self._families(fill=True)

    def _families(self, fill: bool = False) -> Iterator[Metric]:
        labels = CounterMetricFamily(
            "cpe_residual_labels", "Free labels the per-flow latency corrections learnt from."
        )
        corrected = CounterMetricFamily(
            "cpe_residual_corrected", "Continuous forecasts served with their flow's latency correction."
        )
        flows = GaugeMetricFamily(
            "cpe_residual_corrections",
            "Latency corrections kept on this replica, one per flow: served (it beats the model on its "
            "flow's recent labels) or learning.",
            labels=["state"],
        )
        if fill:
            labels.add_metric([], self.labels)
            corrected.add_metric([], self.corrected)
            s = self.summary()
            flows.add_metric(["served"], s["served"])
            flows.add_metric(["learning"], s["flows"] - s["served"])
        yield from (labels, corrected, flows)


def features(
    windows: Sequence[np.ndarray], loc: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """(B, P) features of windows (each (n, D) raw) whose model forecast is ``loc`` (in T's space);
    ``transform``: the scaler's raw -> transformed map."""
    padded = np.stack([_last(w, SPAN) for w in windows])  # (B, SPAN, D) raw
    return _features_of(padded, loc, transform)


def _features_of(
    padded: np.ndarray, loc: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """(B, P) features of windows padded to SPAN contexts (B, SPAN, D) raw."""
    z = transform(padded)
    lat = z[:, :, LATENCY]
    x = np.empty((len(padded), P))
    x[:, 0] = 1.0
    for c, k in enumerate(LAGS, start=1):
        x[:, c] = lat[:, -k] - loc
    c = 1 + len(LAGS)
    for feature in (QUEUE_DEPTH, JITTER):
        col = z[:, :, feature]
        mu, sd = col.mean(axis=1), np.maximum(col.std(axis=1), 1e-3)
        x[:, c] = (col[:, -1] - mu) / sd
        if feature == QUEUE_DEPTH:
            c += 1
            x[:, c] = (col[:, -2] - mu) / sd
        c += 1
    u = padded[:, :, UTILIZATION]
    x[:, c] = (u[:, -1] - u.mean(axis=1)) / np.maximum(u.std(axis=1), 1e-3)
    last = np.clip(u[:, -1], 0.0, 0.98)
    x[:, c + 1] = last
    x[:, c + 2] = last * last
    x[:, c + 3] = last * last / (1.0 - last)
    for j, k in enumerate(LOAD_LAGS, start=c + 4):
        earlier = np.clip(u[:, -k], 0.0, 0.98)
        x[:, j] = earlier * earlier / (1.0 - earlier)
    return x


def block_features(
    block: np.ndarray, lengths: np.ndarray, loc: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``features`` of windows given as a right-aligned block (B, L, D), window i its last
    ``lengths[i]`` contexts: the same numbers, the short windows padded in bulk."""
    if block.shape[1] >= SPAN:
        padded = block[:, -SPAN:].astype(np.float64)
    else:
        padded = np.concatenate(
            (np.repeat(block[:, :1], SPAN - block.shape[1], axis=1), block), axis=1
        ).astype(np.float64)
    short = np.flatnonzero(lengths < SPAN)
    if len(short):  # a short window's first context, repeated over the columns before it
        first = SPAN - lengths[short]  # (S,) column of its first context
        cols = np.arange(SPAN)
        source = np.maximum(cols[None, :], first[:, None])  # (S, SPAN)
        padded[short] = padded[short[:, None], source]
    return _features_of(padded, loc, transform)


def _last(window: np.ndarray, n: int) -> np.ndarray:
    if len(window) >= n:
        return window[-n:]
    return np.concatenate((np.repeat(window[:1], n - len(window), axis=0), window))


def _capped(
    delta: np.ndarray, loc: np.ndarray, floor: float, labels: np.ndarray, model_error: np.ndarray
) -> np.ndarray:
    """``delta``, shrunk so that it moves the forecast by at most ``CAP_ERRORS`` of the model's recent
    errors (ms): on a window unlike the ones it learnt from (a link failure doubles latency), linear
    weights extrapolate, and one such forecast costs more than many good ones gain. A flow without
    labels yet is not capped."""
    base = _inverse(loc, floor)
    cap = CAP_ERRORS * model_error
    moved = _inverse(loc + delta, floor) - base
    over = (labels > 0) & (np.abs(moved) > cap)
    if not over.any():
        return delta
    target = base + np.where(moved > 0, cap, -cap)
    shrunk = np.log(np.maximum(target, 0.0) + floor + 1e-12) - loc
    return np.where(over, shrunk, delta)


def _inverse(loc: np.ndarray, floor: float) -> np.ndarray:
    return np.maximum(np.exp(np.minimum(loc, 50.0)) - floor, 0.0)


def _shift(predictor: Predictor, forecast: Forecast, row: int, delta: float) -> None:
    """Move step 1's latency (point, interval, loc) of ``forecast``'s ``row`` by ``delta`` in T's space."""
    floor = predictor.scaler.floors[LATENCY]
    factor = float(np.exp(delta))
    forecast.loc[row, 0, LATENCY] += delta
    for arr in (forecast.mean, forecast.lower, forecast.upper):
        arr[row, 0, LATENCY] = max((arr[row, 0, LATENCY] + floor) * factor - floor, 0.0)
