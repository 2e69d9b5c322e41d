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

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

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


@dataclass(slots=True)
class _Flow:
    weights: np.ndarray  # (P,)
    cov: np.ndarray  # (P, P) RLS inverse-precision
    labels: int = 0
    model_error: float = 0.0  # exponential averages of |error| ms over recent labels: the model alone
    corrected_error: float = 0.0  # ... and corrected
    model_recent: float = 0.0  # the same over the last few labels
    corrected_recent: float = 0.0
    gain_sq: float = 0.0  # exponential average of the squared gain (model's |error| - corrected's)
    pending_ts: int = -1  # base timestamp of the newest forecast, its features, loc and correction
    pending_x: np.ndarray | None = None
    pending_loc: float = 0.0
    pending_delta: float = 0.0
    pending_leverage: float = 0.0
    leverage: float = 0.0  # exponential average of the forecasts' leverage x' cov x over recent labels
    served: bool = False


class FlowResiduals(Collector):
    """Per-flow latency corrections; ``correct`` each round's new forecasts, ``learn`` from scored ones."""

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
        self._flows: OrderedDict[str, _Flow] = OrderedDict()
        self.labels = 0
        self.corrected = 0  # forecasts served corrected
        if registry is not None:
            registry.register(self)

    # -- serving ------------------------------------------------------------------------------
    def correct(
        self,
        predictor: Predictor,
        keys: Sequence[str],
        windows: Sequence[np.ndarray],
        rows: Sequence[Forecast],
        indices: Sequence[int],
        base_ts: Sequence[int],
    ) -> None:
        """Compute each flow's correction of its new forecast (``rows[i]``'s row ``indices[i]``, made from
        ``windows[i]`` (n, D) raw); shift step 1's latency by it where the flow's gate is open."""
        if not keys:
            return
        loc = np.fromiter(
            (f.loc[j, 0, LATENCY] for f, j in zip(rows, indices, strict=True)), np.float64, len(keys)
        )
        x = features(windows, loc, predictor.scaler.transform)
        floor = predictor.scaler.floors[LATENCY]
        for i, key in enumerate(keys):
            flow = self._flows.get(key)
            if flow is None:
                flow = self._flows[key] = _Flow(np.zeros(P), np.eye(P) / RIDGE)
                if len(self._flows) > self.max_flows:
                    self._flows.popitem(last=False)
            delta = _capped(float(np.clip(flow.weights @ x[i], -CLIP, CLIP)), float(loc[i]), floor, flow)
            leverage = float(x[i] @ flow.cov @ x[i])
            if flow.labels and leverage > LEVERAGE * flow.leverage:
                delta *= LEVERAGE * flow.leverage / leverage
            flow.pending_leverage = leverage
            flow.pending_ts, flow.pending_x = int(base_ts[i]), x[i]
            flow.pending_loc, flow.pending_delta = float(loc[i]), delta
            if flow.served:
                _shift(predictor, rows[i], indices[i], delta)
                self.corrected += 1

    # -- learning -----------------------------------------------------------------------------
    def learn(
        self, predictor: Predictor, keys: Sequence[str], base_ts: Sequence[int], actual: np.ndarray
    ) -> None:
        """The flows' forecasts made at ``base_ts`` met the contexts ``actual`` (n, D) raw: RLS steps."""
        if not keys:
            return
        floor = predictor.scaler.floors[LATENCY]
        transformed = predictor.scaler.transform(actual)[:, LATENCY].tolist()
        lam = self.forget
        g, h = 1.0 / GATE_LABELS, 1.0 / GATE_SHORT
        for key, ts, y, ty in zip(keys, base_ts, actual[:, LATENCY].tolist(), transformed, strict=True):
            flow = self._flows.get(key)
            if flow is None or flow.pending_ts != ts or flow.pending_x is None:
                continue  # not the forecast we corrected (another replica's, or forgotten)
            self._flows.move_to_end(key)
            x = flow.pending_x
            # shadow scores: the model alone and corrected, whichever was served
            base = _inverse(flow.pending_loc, floor)
            corrected = _inverse(flow.pending_loc + flow.pending_delta, floor)
            flow.model_error += g * (abs(y - base) - flow.model_error)
            flow.corrected_error += g * (abs(y - corrected) - flow.corrected_error)
            flow.model_recent += h * (abs(y - base) - flow.model_recent)
            flow.corrected_recent += h * (abs(y - corrected) - flow.corrected_recent)
            flow.gain_sq += g * ((abs(y - base) - abs(y - corrected)) ** 2 - flow.gain_sq)
            flow.leverage += (g if flow.labels else 1.0) * (flow.pending_leverage - flow.leverage)
            # the RLS step
            r = ty - flow.pending_loc
            cx = flow.cov @ x
            k = cx / (lam + x @ cx)
            e = float(np.clip(r - flow.weights @ x, -CLIP, CLIP))
            flow.weights += k * e
            flow.cov -= np.outer(k, cx)
            if np.trace(flow.cov) < MAX_TRACE:
                flow.cov /= lam
            flow.labels += 1
            flow.pending_x = None
            flow.served = flow.labels >= self.min_labels and _beats(flow, self.margin)
            self.labels += 1

    # -- reporting ----------------------------------------------------------------------------
    def summary(self) -> dict[str, int]:
        """What GET /v1/stats answers: flows with a correction, served now, labels, forecasts corrected."""
        served = sum(1 for f in self._flows.values() if f.served)
        return {
            "flows": len(self._flows),
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
    z = transform(padded)
    lat = z[:, :, LATENCY]
    x = np.empty((len(windows), P))
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


def _last(window: np.ndarray, n: int) -> np.ndarray:
    if len(window) >= n:
        return window[-n:]
    return np.concatenate((np.repeat(window[:1], n - len(window), axis=0), window))


def _beats(flow: _Flow, margin: float) -> bool:
    """Whether the flow's correction measures better than the model alone: by ``margin`` over its recent
    labels, by ``GATE_Z`` standard errors of that mean gain (a correction fitted to noise wins a few
    dozen labels by chance, and one served then costs the flow for a hundred), and not worse over the
    last few."""
    gain = flow.model_error - flow.corrected_error
    n = min(flow.labels, 2 * GATE_LABELS - 1)  # the labels an exponential average of GATE_LABELS weighs
    spread = max(flow.gain_sq - gain * gain, 0.0)
    return (
        gain > margin * flow.model_error
        and gain * gain * n > GATE_Z * GATE_Z * spread
        and flow.corrected_recent <= flow.model_recent
    )


def _capped(delta: float, loc: float, floor: float, flow: _Flow) -> float:
    """``delta``, shrunk so that it moves the forecast by at most ``CAP_ERRORS`` of the model's recent
    errors (ms): on a window unlike the ones it learnt from (a link failure doubles latency), linear
    weights extrapolate, and one such forecast costs more than many good ones gain."""
    if flow.labels == 0:
        return delta
    base = _inverse(loc, floor)
    cap = CAP_ERRORS * flow.model_error
    moved = _inverse(loc + delta, floor) - base
    if abs(moved) <= cap:
        return delta
    target = base + (cap if moved > 0 else -cap)
    return float(np.log(max(target, 0.0) + floor + 1e-12) - loc)


def _inverse(loc: float, floor: float) -> float:
    return max(float(np.exp(min(loc, 50.0))) - floor, 0.0)


def _shift(predictor: Predictor, forecast: Forecast, row: int, delta: float) -> None:
    """Move step 1's latency (point, interval, loc) of ``forecast``'s ``row`` by ``delta`` in T's space."""
    floor = predictor.scaler.floors[LATENCY]
    factor = float(np.exp(delta))
    forecast.loc[row, 0, LATENCY] += delta
    for arr in (forecast.mean, forecast.lower, forecast.upper):
        arr[row, 0, LATENCY] = max((arr[row, 0, LATENCY] + floor) * factor - floor, 0.0)
