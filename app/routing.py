"""Predicted contexts of a flow's candidate routes -> ranked suggestions, load weights, failure risk.

Everything is read off each route's predictive distribution at step ``h`` (the request's horizon): per
feature a Gaussian N(mu, sigma^2) in the scaler's space, i.e. log(x + floor) for latency and throughput
(a log-normal in raw units), the identity for loss_rate and error_rate.

Per route:

- ``expected_latency_ms``, ``expected_throughput``: means of the log-normals,
  ``exp(mu + sigma^2 / 2) - floor``. The mean, not the median that /v1/predict reports: an uncertain
  route is expected to be slower than its median, and routing should see that.
- ``reliability_score = (1 - E[loss_rate]) * (1 - E[error_rate])``: the chance a packet gets through and
  its request succeeds, with ``E[max(Y, 0)] = mu * Phi(mu / sigma) + sigma * phi(mu / sigma)`` for a
  rate ``Y`` (rates cannot go below 0; capped at 1).
- ``failure_probability = 1 - (1 - P_rate) * (1 - P_latency)`` with
  ``P_rate = P(loss_rate + error_rate > CPE_FAILURE_RATE)`` (the sum of the two Gaussians) and
  ``P_latency = P(latency > CPE_FAILURE_LATENCY_FACTOR * median latency of the route's window)``, the two
  taken as independent.

Ranking: each route gets a score in [0, 1], 1 the best, from figures normalized over the candidates:
``L = min latency / latency``, ``T = throughput / max throughput``, ``R = reliability_score``,
``C = min cost / cost``. ``latency`` ranks by L, ``throughput`` by T, ``reliability`` by
``R * (1 - failure_probability)`` and ``balanced`` by ``(L + T + R + C) / 4``. Ties go to the lower
failure probability, then the lower latency, then the route_id.

Load-balancing weights, normalized to sum to 1, with ``CPE_WEIGHT_TEMPERATURE`` = tau:
``w ∝ (1 - failure_probability) * max(score, 0.01)`` for tau = 0 (proportional: a route with half the
score gets half the load), else ``w ∝ (1 - failure_probability) * exp((score - best score) / tau)``
(a softmax: a route whose score is d lower gets exp(-d / tau) of the best's share per unit of survival).
Only a route certain to fail gets 0; if every route is, the failure factor is left out. The
recommendation's ``confidence`` is the weighted mean of the routes' calibrated confidences: the
probability that a request spread by the weights sees a latency within ±10 % of its route's prediction.

A ``CircuitBreakerPrediction`` goes out for each route whose failure probability exceeds
``CPE_BREAKER_THRESHOLD``, with ``recommended_threshold = CPE_FAILURE_RATE`` (the loss + error rate that
the probability is about) and ``time_to_recovery_ms`` = the first later step whose failure probability is
back at or below the threshold, times the step spacing; ``(H + 1)`` steps when none within the horizon H.
Times are 0 for a one-context window: it has no spacing to go by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from app.engine import WindowForecast
from app.routing_schemas import Objective
from models.scaling import FEATURE_NAMES, Scaler

LATENCY, LOSS, THROUGHPUT, UTILIZATION, ERRORS = (
    FEATURE_NAMES.index(name)
    for name in ("latency_ms", "loss_rate", "throughput_mbps", "utilization", "error_rate")
)
MIN_SCORE = 0.01  # the least score a weight is computed from: no route starves unless it surely fails
MIN_SIGMA = 1e-9
MAX_EXPONENT = 50.0  # as Scaler.inverse: exp(50) is far beyond any measurement and still finite
_erfc = np.vectorize(math.erfc, otypes=[float])


def _survival(z: np.ndarray) -> np.ndarray:
    """P(Z > z) for a standard normal Z, elementwise (numpy has no erf; this runs on the event loop)."""
    return 0.5 * _erfc(np.asarray(z, dtype=np.float64) / math.sqrt(2.0))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class FailurePolicy:
    """What counts as a route failing, and when to warn its circuit breaker."""

    rate: float = 0.05  # loss_rate + error_rate beyond this is a failure
    latency_factor: float = 3.0  # so is latency beyond this many times the window's median
    breaker_threshold: float = 0.5  # failure probability that triggers a CircuitBreakerPrediction


@dataclass(frozen=True)
class RouteForecast:
    """What the routing reads of one route: its predictive distribution over the model's horizon H."""

    route_id: str
    cost_factor: float
    point: np.ndarray  # (H, D) point forecast, raw units
    loc: np.ndarray  # (H, D) mean in the scaler's space
    std: np.ndarray  # (H, D) deviation in the scaler's space
    confidence: np.ndarray  # (H,) calibrated confidence per step
    dt_s: float  # spacing of the steps, seconds
    window_latency_ms: float  # median latency of the route's window
    scaler: Scaler


def route_forecast(
    route_id: str,
    cost_factor: float,
    features: np.ndarray,
    forecast: WindowForecast,
    window_latency_ms: float | None = None,
) -> RouteForecast:
    """A route's forecast from the engine's, with its window ``features`` (n, D); ``window_latency_ms``:
    the window's median latency when the caller has it already (``window_medians``)."""
    if window_latency_ms is None:
        window_latency_ms = float(np.median(features[:, LATENCY]))
    return RouteForecast(
        route_id=route_id,
        cost_factor=cost_factor,
        point=forecast.mean,
        loc=forecast.loc,
        std=np.maximum(forecast.std, MIN_SIGMA),
        confidence=forecast.confidence,
        dt_s=forecast.dt_s,
        window_latency_ms=window_latency_ms,
        scaler=forecast.predictor.scaler,
    )


def window_medians(windows: list[np.ndarray]) -> list[float]:
    """The median latency of each window (n_i, D): one numpy call per window length, not per window."""
    out = [0.0] * len(windows)
    by_length: dict[int, list[int]] = {}
    for i, features in enumerate(windows):
        by_length.setdefault(len(features), []).append(i)
    for positions in by_length.values():
        medians = np.median(np.stack([windows[i][:, LATENCY] for i in positions]), axis=1)
        for i, m in zip(positions, medians.tolist(), strict=True):
            out[i] = m
    return out


@dataclass(slots=True)
class RouteOutlook:
    """One route's figures at the request's horizon, and its place in the ranking."""

    route_id: str
    expected_latency_ms: float
    expected_throughput: float
    reliability_score: float
    cost_factor: float
    failure_probability: float
    predicted_load: float  # utilization
    confidence: float
    predicted_context: list[float]
    time_to_recovery_ms: int  # meaningful when failure_probability exceeds the breaker threshold
    score: float = 0.0
    weight: float = 0.0


def _expected(scaler: Scaler, feature: int, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Mean of a feature's predictive distribution in raw units, per route: (B,) from (B,), (B,)."""
    if scaler.is_log[feature]:  # log-normal
        mean = np.exp(np.minimum(mu + sigma * sigma / 2, MAX_EXPONENT)) - float(scaler.floors[feature])
        return np.maximum(mean, 0.0)  # type: ignore[no-any-return]
    a = mu / sigma  # a rate: E[max(Y, 0)] of Y ~ N(mu, sigma^2), capped at 1
    rectified = mu * (1.0 - _survival(a)) + sigma * np.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    return np.clip(rectified, 0.0, 1.0)  # type: ignore[no-any-return]


def failure_probabilities(routes: list[RouteForecast], policy: FailurePolicy) -> np.ndarray:
    """P(the route fails) at every step 1..H of each route, (B, H), for routes of one scaler: see the
    module's docstring."""
    return failure_matrix(
        routes[0].scaler,
        np.stack([r.loc for r in routes]),
        np.stack([r.std for r in routes]),
        np.asarray([r.window_latency_ms for r in routes]),
        policy,
    )


def failure_matrix(
    scaler: Scaler, loc: np.ndarray, std: np.ndarray, window_latency_ms: np.ndarray, policy: FailurePolicy
) -> np.ndarray:
    """``failure_probabilities`` of B routes given as arrays: loc, std (B, H, D), their windows' median
    latencies (B,)."""
    assert not scaler.is_log[LOSS] and not scaler.is_log[ERRORS], (
        "loss and error rates must be identity-scaled"
    )
    bound = np.zeros((len(loc), scaler.n_features))
    bound[:, LATENCY] = policy.latency_factor * np.maximum(window_latency_ms, scaler.floors[LATENCY])
    latency_bound = scaler.transform(bound)[:, LATENCY, None]  # (B, 1)
    p_latency = _survival((latency_bound - loc[:, :, LATENCY]) / std[:, :, LATENCY])
    rate_mu = loc[:, :, LOSS] + loc[:, :, ERRORS]
    rate_sigma = np.hypot(std[:, :, LOSS], std[:, :, ERRORS])
    p_rate = _survival((policy.rate - rate_mu) / rate_sigma)
    return np.clip(1.0 - (1.0 - p_rate) * (1.0 - p_latency), 0.0, 1.0)  # type: ignore[no-any-return]


def outlooks(routes: list[RouteForecast], horizon: int, policy: FailurePolicy) -> list[RouteOutlook]:
    """The figures of each route at step ``horizon`` (1-based), in the order given: computed for all the
    routes of one scaler at once (a continuous round hands over hundreds)."""
    out: list[RouteOutlook | None] = [None] * len(routes)
    by_scaler: dict[int, list[int]] = {}
    for i, route in enumerate(routes):
        by_scaler.setdefault(id(route.scaler), []).append(i)
    for positions in by_scaler.values():
        mine = [routes[i] for i in positions]
        for i, figures in zip(positions, _outlooks(mine, horizon, policy), strict=True):
            out[i] = figures
    return [o for o in out if o is not None]


@dataclass(frozen=True, slots=True)
class OutlookArrays:
    """The figures of B routes at one step, as arrays: ``RouteOutlook``'s, less the route's own fields."""

    expected_latency_ms: np.ndarray  # (B,)
    expected_throughput: np.ndarray  # (B,)
    reliability_score: np.ndarray  # (B,)
    failure_probability: np.ndarray  # (B,)
    predicted_context: np.ndarray  # (B, D) the point forecast
    confidence: np.ndarray  # (B,)
    time_to_recovery_ms: np.ndarray  # (B,) int

    def rows(self) -> list[dict[str, Any]]:
        """Each route's figures as Python numbers, named as ``RouteOutlook`` and ``FlowOutlook`` name them
        (``predicted_load``: the point forecast's utilization)."""
        contexts = self.predicted_context.tolist()
        return [
            {
                "expected_latency_ms": lat,
                "expected_throughput": thr,
                "reliability_score": rel,
                "failure_probability": fail,
                "predicted_load": context[UTILIZATION],
                "confidence": conf,
                "predicted_context": context,
                "time_to_recovery_ms": rec,
            }
            for lat, thr, rel, fail, context, conf, rec in zip(
                self.expected_latency_ms.tolist(),
                self.expected_throughput.tolist(),
                self.reliability_score.tolist(),
                self.failure_probability.tolist(),
                contexts,
                self.confidence.tolist(),
                self.time_to_recovery_ms.tolist(),
                strict=True,
            )
        ]


def outlook_arrays(
    scaler: Scaler,
    point: np.ndarray,
    loc: np.ndarray,
    std: np.ndarray,
    confidence: np.ndarray,
    dt_s: np.ndarray,
    window_latency_ms: np.ndarray,
    horizon: int,
    policy: FailurePolicy,
) -> OutlookArrays:
    """The figures at step ``horizon`` (1-based) of B routes of one scaler given as arrays: point, loc and
    std (B, S, D; std at least MIN_SIGMA), confidence (B, S), dt_s (B,), their windows' median latencies
    (B,). What ``outlooks`` computes, without an object per route (a round's route groups read hundreds)."""
    h = horizon - 1
    mu, sigma = loc[:, h], std[:, h]  # (B, D)
    loss = _expected(scaler, LOSS, mu[:, LOSS], sigma[:, LOSS])
    errors = _expected(scaler, ERRORS, mu[:, ERRORS], sigma[:, ERRORS])
    failing = failure_matrix(scaler, loc, std, window_latency_ms, policy)  # (B, H)
    steps = failing.shape[1]
    back = failing[:, h + 1 :] <= policy.breaker_threshold  # (B, H - h - 1): later steps back under it
    first = back.argmax(axis=1) if back.shape[1] else np.zeros(len(loc), dtype=np.int64)
    recovery = np.where(back.any(axis=1), first + h + 1, steps) + 1  # (B,) steps
    return OutlookArrays(
        expected_latency_ms=_expected(scaler, LATENCY, mu[:, LATENCY], sigma[:, LATENCY]),
        expected_throughput=_expected(scaler, THROUGHPUT, mu[:, THROUGHPUT], sigma[:, THROUGHPUT]),
        reliability_score=(1.0 - loss) * (1.0 - errors),
        failure_probability=failing[:, h],
        predicted_context=point[:, h],
        confidence=confidence[:, h],
        time_to_recovery_ms=np.round(recovery * dt_s * 1000.0).astype(np.int64),
    )


def _outlooks(routes: list[RouteForecast], horizon: int, policy: FailurePolicy) -> list[RouteOutlook]:
    figures = outlook_arrays(
        routes[0].scaler,
        np.stack([r.point for r in routes]),
        np.stack([r.loc for r in routes]),
        np.stack([r.std for r in routes]),
        np.stack([r.confidence for r in routes]),
        np.asarray([r.dt_s for r in routes]),
        np.asarray([r.window_latency_ms for r in routes]),
        horizon,
        policy,
    )
    return [
        RouteOutlook(route_id=route.route_id, cost_factor=route.cost_factor, **row)
        for route, row in zip(routes, figures.rows(), strict=True)
    ]


def outlook(route: RouteForecast, horizon: int, policy: FailurePolicy) -> RouteOutlook:
    """The figures of one route at step ``horizon`` (1-based)."""
    [figures] = outlooks([route], horizon, policy)
    return figures


def rank(routes: list[RouteOutlook], objective: Objective) -> list[RouteOutlook]:
    """Score ``routes`` for ``objective`` and return them best first (formulas: the module's docstring)."""
    min_latency = min(max(r.expected_latency_ms, MIN_SIGMA) for r in routes)
    max_throughput = max(r.expected_throughput for r in routes)
    min_cost = min(r.cost_factor for r in routes)
    for r in routes:
        latency = min_latency / max(r.expected_latency_ms, MIN_SIGMA)
        throughput = r.expected_throughput / max_throughput if max_throughput > 0 else 1.0
        cost = min_cost / r.cost_factor
        r.score = {
            "latency": latency,
            "throughput": throughput,
            "reliability": r.reliability_score * (1.0 - r.failure_probability),
            "balanced": (latency + throughput + r.reliability_score + cost) / 4,
        }[objective]
    return sorted(routes, key=lambda r: (-r.score, r.failure_probability, r.expected_latency_ms, r.route_id))


def balance(routes: list[RouteOutlook], temperature: float = 0.0) -> dict[str, float]:
    """Load-balancing weights of scored ``routes``: they sum to 1, better routes get more (formulas: the
    module's docstring; ``temperature`` 0 is proportional to the scores, above 0 a softmax of them)."""
    if temperature > 0.0:
        top = max(r.score for r in routes)
        shares = [math.exp((r.score - top) / temperature) for r in routes]
    else:
        shares = [max(r.score, MIN_SCORE) for r in routes]
    raw = [(1.0 - r.failure_probability) * share for r, share in zip(routes, shares, strict=True)]
    if sum(raw) <= 0.0:  # every route is certain to fail: spread by the scores alone
        raw = shares
    total = sum(raw)
    for r, w in zip(routes, raw, strict=True):
        r.weight = w / total
    return {r.route_id: r.weight for r in routes}


@dataclass
class Recommendation:
    """The routes of one flow ranked for one objective, with the weights and the overall confidence."""

    flow_key: str  # hex
    objective: Objective
    routes: list[RouteOutlook]  # best first
    weights: dict[str, float]
    confidence: float
    time_horizon_ms: int


def recommend(
    flow_key: str,
    objective: Objective,
    routes: list[RouteForecast],
    horizon: int,
    policy: FailurePolicy,
    temperature: float = 0.0,
) -> Recommendation:
    """Rank ``routes`` of ``flow_key`` by their forecasts at step ``horizon``."""
    ranked = rank(outlooks(routes, horizon, policy), objective)
    best = next(route for route in routes if route.route_id == ranked[0].route_id)
    return weighed(flow_key, objective, ranked, round(horizon * best.dt_s * 1000.0), temperature)


def weighed(
    flow_key: str, objective: Objective, ranked: list[RouteOutlook], time_horizon_ms: int, temperature: float
) -> Recommendation:
    """The recommendation of routes already ranked (best first): their weights and overall confidence."""
    weights = balance(ranked, temperature)
    confidence = sum(r.weight * r.confidence for r in ranked)
    return Recommendation(
        flow_key=flow_key,
        objective=objective,
        routes=ranked,
        weights=weights,
        confidence=min(max(confidence, 0.0), 1.0),
        time_horizon_ms=time_horizon_ms,
    )


# -- the routing messages (DESIGN.md: the Rust enum's externally tagged serde form) ---------------------
FlowKeyFormat = Literal["hex", "bytes"]


def wire_flow_key(flow_key: str, form: FlowKeyFormat) -> str | list[int]:
    """A hex flow key as routing messages carry it: hex, or the 32 ints of a Rust ``[u8; 32]``."""
    return flow_key if form == "hex" else list(bytes.fromhex(flow_key))


@dataclass(frozen=True, slots=True)
class Attribution:
    """What every routing message carries beside the Rust enum's fields (serde ignores unknown fields)."""

    flow_key: str  # hex: the flow whose routes the message is about
    group_id: str | None  # the route group that made it; None for POST /v1/routing/recommend
    timestamp: int  # ms since the epoch, when the message was made
    model_version: str  # the model version whose forecasts it was made from


def _attributed(kind: str, body: dict[str, Any], who: Attribution, form: FlowKeyFormat) -> bytes:
    body["flow_key"] = wire_flow_key(who.flow_key, form)
    body["group_id"] = who.group_id
    body["timestamp"] = who.timestamp
    body["model_version"] = who.model_version
    return orjson.dumps({kind: body})


def prediction_message(rec: Recommendation, who: Attribution, form: FlowKeyFormat) -> bytes:
    """The RoutingPrediction of ``rec``: the best route's predicted context and every route, best first."""
    body = {
        "predicted_context": rec.routes[0].predicted_context,
        "confidence": rec.confidence,
        "time_horizon_ms": rec.time_horizon_ms,
        "routing_suggestions": [
            {
                "route_id": r.route_id,
                "expected_latency_ms": r.expected_latency_ms,
                "expected_throughput": r.expected_throughput,
                "reliability_score": r.reliability_score,
                "cost_factor": r.cost_factor,
            }
            for r in rec.routes
        ],
    }
    return _attributed("RoutingPrediction", body, who, form)


def balancing_message(
    weights: dict[str, float], rec: Recommendation, who: Attribution, form: FlowKeyFormat
) -> bytes:
    """A LoadBalancingUpdate with ``weights`` (``rec``'s own, or those a group publishes)."""
    body = {
        "service_weights": weights,
        "predicted_loads": {r.route_id: r.predicted_load for r in rec.routes},
        "adaptation_confidence": rec.confidence,
    }
    return _attributed("LoadBalancingUpdate", body, who, form)


def breaker_message(
    route: RouteOutlook, policy: FailurePolicy, who: Attribution, form: FlowKeyFormat
) -> bytes:
    """The CircuitBreakerPrediction of one route."""
    body = {
        "service_id": route.route_id,
        "failure_probability": route.failure_probability,
        "recommended_threshold": policy.rate,
        "time_to_recovery_ms": route.time_to_recovery_ms,
    }
    return _attributed("CircuitBreakerPrediction", body, who, form)


def routing_messages(
    rec: Recommendation, policy: FailurePolicy, form: FlowKeyFormat, who: Attribution
) -> list[bytes]:
    """RoutingPrediction, LoadBalancingUpdate and one CircuitBreakerPrediction per route at risk, as JSON."""
    messages = [prediction_message(rec, who, form), balancing_message(rec.weights, rec, who, form)]
    messages += [
        breaker_message(r, policy, who, form)
        for r in rec.routes
        if r.failure_probability > policy.breaker_threshold
    ]
    return messages
