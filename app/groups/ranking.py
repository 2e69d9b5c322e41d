"""A group re-ranked on its routes' newest outlooks, and what of it to publish: hysteresis against noise.

The figures, scores and weights are ``app/routing.py``'s (``rank``, ``balance``), so that a group and
POST /v1/routing/recommend rank the same forecasts the same way. What the group adds is memory: its state
says what was last published, and ``decide`` publishes only what changed enough.

- **Best route** (a RoutingPrediction). The leader of the new ranking (the best route whose breaker is not
  open) replaces the published best only when

  - the published best has no forecast any more, or its breaker opened (and the leader's did not): at once;
  - else when the leader has beaten the best by the margin, ``leader.score > best.score * (1 + margin)``
    (CPE_GROUP_SWITCH_MARGIN), at every re-ranking for at least ``min_dwell_ms`` (CPE_GROUP_MIN_DWELL_MS;
    the time-to-trigger of radio handovers), counted in observation time (the routes' newest timestamps,
    so that a replay or a slow consumer judges as live does). A re-ranking where it does not, or where
    another route leads, starts the count again.

  - or at once, without the dwell, when the leader beats the best by the decisive margin
    (CPE_GROUP_SWITCH_NOW_MARGIN, 1.0: twice the score).

  The margin keeps noise from flapping two routes of nearly equal score: it takes a leader clearly
  better than the best. The dwell keeps one noisy observation from switching: the lead must still be
  there at the next observation at least (a dwell shorter than the sampling interval means two
  observations in a row). A real degradation (a route several times slower) switches at its second
  observation, or at its first when its forecast already doubles the gap, which measurement noise of
  the flap benchmark's size (20 %) never does; a failing route's breaker skips the dwell.
- **Weights** (a LoadBalancingUpdate): when a route's weight moved by more than ``weight_step``
  (CPE_GROUP_WEIGHT_STEP) from the last published weights, or the set of routes changed.
- **Breakers** (a CircuitBreakerPrediction per route whose breaker changed): a route's opens when its
  failure probability exceeds CPE_BREAKER_THRESHOLD and closes when it falls below that threshold minus
  ``breaker_margin`` (CPE_GROUP_BREAKER_MARGIN); the message of a closing says the probability is back down.

The first ranking of a group publishes all three (and a breaker message for each open breaker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.groups.base import FlowOutlook, Group, GroupRoute, GroupState
from app.routing import (
    Attribution,
    FailurePolicy,
    FlowKeyFormat,
    Recommendation,
    RouteOutlook,
    balancing_message,
    breaker_message,
    prediction_message,
    rank,
    weighed,
)


@dataclass(frozen=True, slots=True)
class Hysteresis:
    """How much a group's ranking must change before it is published (the module's docstring)."""

    margin: float = 0.25
    min_dwell_ms: int = 500
    now_margin: float = 1.0
    weight_step: float = 0.1
    breaker_margin: float = 0.1


@dataclass(slots=True)
class Decision:
    """A group's new state and what changed: the recommendation, best first, is what the messages say."""

    state: GroupState
    rec: Recommendation
    best_changed: bool
    weights_changed: bool
    breakers_changed: list[RouteOutlook] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.best_changed or self.weights_changed or bool(self.breakers_changed)

    def messages(self, group: Group, policy: FailurePolicy, form: FlowKeyFormat, now_ms: int) -> list[bytes]:
        """The routing messages of what changed, attributed to the group."""
        who = Attribution(group.flow_key, group.group_id, now_ms, self.state.model_version or "")
        out = []
        if self.best_changed:
            out.append(prediction_message(self.rec, who, form))
        if self.weights_changed:
            out.append(balancing_message(self.state.weights, self.rec, who, form))
        out += [breaker_message(r, policy, who, form) for r in self.breakers_changed]
        return out


def route_outlook(route: GroupRoute, flow: FlowOutlook) -> RouteOutlook:
    """A route of a group as the ranking takes it: its flow's figures, the group's route id and cost."""
    # positional, in RouteOutlook's field order: a group of twenty routes makes twenty per re-ranking
    return RouteOutlook(
        route.route_id,
        flow.expected_latency_ms,
        flow.expected_throughput,
        flow.reliability_score,
        route.cost_factor,
        flow.failure_probability,
        flow.predicted_load,
        flow.confidence,
        flow.predicted_context,
        flow.time_to_recovery_ms,
    )


def decide(
    group: Group,
    flows: Sequence[FlowOutlook | None],
    state: GroupState | None,
    rules: Hysteresis,
    policy: FailurePolicy,
    *,
    temperature: float = 0.0,
    now_ms: int,
) -> Decision | None:
    """Re-rank ``group`` on its routes' outlooks (``flows``, in the order of ``group.routes``; None for a
    route with no forecast, left out) against its last ``state``; None when no route has a forecast."""
    present = [(route, flow) for route, flow in zip(group.routes, flows, strict=True) if flow is not None]
    if not present:
        return None
    clock = max(flow.base_ts for _, flow in present)  # observation time: what the dwell counts in
    ranked = rank([route_outlook(route, flow) for route, flow in present], group.objective)
    prev = state or GroupState()
    by_id = {r.route_id: r for r in ranked}

    # breakers, with their own hysteresis; routes without a forecast keep theirs
    was_open = set(prev.open_breakers)
    open_now = {r for r in was_open if r not in by_id}
    flipped = []
    for r in ranked:
        bound = (
            policy.breaker_threshold - rules.breaker_margin
            if r.route_id in was_open
            else policy.breaker_threshold
        )
        if r.failure_probability > bound:
            open_now.add(r.route_id)
        if (r.route_id in open_now) != (r.route_id in was_open) or (state is None and r.route_id in open_now):
            flipped.append(r)

    # the best route
    leader = next((r for r in ranked if r.route_id not in open_now), ranked[0])
    best = prev.best
    incumbent = by_id.get(best) if best is not None else None
    challenger, since = None, clock
    if incumbent is None or (best in open_now and leader.route_id not in open_now):
        chosen = leader  # the best is gone or failing: no hysteresis holds it
    elif leader is not incumbent and leader.score > incumbent.score * (1.0 + rules.margin):
        challenger = leader.route_id
        if prev.challenger == challenger:
            since = prev.challenger_since_ts
        decisive = leader.score > incumbent.score * (1.0 + rules.now_margin)
        chosen = leader if decisive or clock - since >= rules.min_dwell_ms else incumbent
    else:
        chosen = incumbent
    best_changed = chosen.route_id != best
    ordered = [chosen, *(r for r in ranked if r is not chosen)]  # the published choice first
    rec = weighed(
        group.flow_key, group.objective, ordered, _horizon_ms(group, flows, chosen.route_id), temperature
    )

    # the weights
    weights = rec.weights
    weights_changed = weights.keys() != prev.weights.keys() or any(
        abs(w - prev.weights[k]) > rules.weight_step for k, w in weights.items()
    )
    chosen_flow = next(flow for route, flow in present if route.route_id == chosen.route_id)
    new = GroupState(
        best=chosen.route_id,
        best_since_ts=clock if best_changed else prev.best_since_ts,
        challenger=None if chosen is leader else challenger,
        challenger_since_ts=since if challenger is not None and chosen is not leader else 0,
        weights=dict(weights) if weights_changed else prev.weights,
        open_breakers=sorted(open_now),
        changed_ms=now_ms if (best_changed or weights_changed or flipped) else prev.changed_ms,
        updated_ms=now_ms,
        rankings=prev.rankings + 1,
        changes=prev.changes + (best_changed and best is not None),
        ranking=[_ranked(r, r.route_id in open_now) for r in ordered],
        model_version=chosen_flow.model_version,
    )
    return Decision(new, rec, best_changed, weights_changed, flipped)


def _horizon_ms(group: Group, flows: Sequence[FlowOutlook | None], route_id: str) -> int:
    for route, flow in zip(group.routes, flows, strict=True):
        if route.route_id == route_id and flow is not None:
            return flow.time_horizon_ms
    return 0


def _ranked(r: RouteOutlook, breaker_open: bool) -> dict[str, object]:
    """One route of the newest ranking, as GET /v1/groups/{group_id} answers it."""
    return {
        "route_id": r.route_id,
        "score": r.score,
        "weight": r.weight,
        "expected_latency_ms": r.expected_latency_ms,
        "expected_throughput": r.expected_throughput,
        "reliability_score": r.reliability_score,
        "cost_factor": r.cost_factor,
        "failure_probability": r.failure_probability,
        "breaker_open": breaker_open,
        "predicted_load": r.predicted_load,
        "confidence": r.confidence,
    }
