"""The route groups of one replica: definitions, the re-ranking on every new forecast, and the publishing.

``RouteGroups`` keeps an in-process index of every group (which groups each flow is a route of), read
from the store at start, updated at once by this replica's PUT and DELETE, by the other replicas'
announcements on CPE_GROUPS_CHANNEL, and reloaded whole every CPE_GROUP_REFRESH_S (an announcement is
sent at most once and may be lost). The index makes the hook on continuous prediction cheap: a round of
forecasts costs nothing here unless one of its flows is a route.

``on_forecasts`` is that hook (``ContinuousPrediction.on_forecasts``): for each forecast flow that is a
route, its outlook (``app/routing.py``'s figures at CPE_FORECAST_HORIZON) is kept in the store for every
replica; each group of those flows is re-ranked on its routes' newest outlooks (``ranking.decide``), its
state kept, and what changed published on the routing channel (CPE_BUS_CHANNEL). Re-rankings of this
replica run one at a time, so that two rounds never race on one group's state; between replicas a state is
kept by a compare-and-set on its change version (``GroupStore.put_states``), and only the replica whose
state was kept publishes the change: the other ranks the group again on the newer state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Protocol, Self

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from app.bus import Bus
from app.engine import WindowForecast
from app.groups.base import FlowOutlook, Group, GroupStore, GroupsUnavailable
from app.groups.ranking import Decision, Hysteresis, decide
from app.routing import (
    LATENCY,
    MIN_SIGMA,
    FailurePolicy,
    FlowKeyFormat,
    outlook_arrays,
    window_medians,
)

log = logging.getLogger("cpe.groups")

REFRESH_RETRY_S = 1.0  # how soon a failed reload of the groups is tried again
CAS_ATTEMPTS = 3  # rankings of a group per round when other replicas keep moving its state on


class ForecastWindow(Protocol):
    """A forecast flow's window, as continuous prediction hands it over."""

    @property
    def timestamps(self) -> np.ndarray: ...  # (n,) int64 ms

    @property
    def features(self) -> np.ndarray: ...  # (n, D)


class GroupMetrics:
    """The route groups' collectors."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.groups = Gauge("cpe_groups", "Route groups this replica's index holds.", registry=registry)
        self.rankings = Counter(
            "cpe_group_rankings", "Route groups re-ranked after a new forecast of a route.", registry=registry
        )
        self.changes = Counter(
            "cpe_group_changes",
            "Changes a re-ranking published, by what changed: best (a RoutingPrediction), weights (a "
            "LoadBalancingUpdate), breaker (a CircuitBreakerPrediction).",
            ["change"],
            registry=registry,
        )
        self.superseded = Counter(
            "cpe_group_rankings_superseded",
            "Re-rankings whose state another replica had moved on meanwhile (it published that change): "
            "ranked again on the newer state rather than published twice.",
            registry=registry,
        )
        self.failed = Counter(
            "cpe_group_rankings_failed",
            "Re-rankings skipped because the group store could not be reached.",
            registry=registry,
        )


class RouteGroups:
    """Route groups: their store, this replica's index of them, the re-ranking hook. ``async with``."""

    def __init__(
        self,
        store: GroupStore,
        bus: Bus,
        *,
        routing_channel: str,
        groups_channel: str,
        policy: FailurePolicy,
        rules: Hysteresis,
        horizon: int = 1,
        temperature: float = 0.0,
        flow_key_format: FlowKeyFormat = "hex",
        refresh_s: float = 30.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store, self.bus = store, bus
        self.routing_channel, self.groups_channel = routing_channel, groups_channel
        self.policy, self.rules, self.horizon, self.temperature = policy, rules, horizon, temperature
        self.flow_key_format: FlowKeyFormat = flow_key_format
        self.refresh_s = refresh_s
        self.metrics = GroupMetrics(registry)
        self.metrics.groups.set_function(lambda: len(self._groups))
        self.published = 0  # routing messages published
        self._groups: dict[str, Group] = {}
        self._by_flow: dict[str, set[str]] = {}  # route flow key -> ids of the groups it is a route of
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        # forecasts ahead for a group's routes when it is defined (``Forecasts.prefetch``): its ranking
        # is then made at once, not at its routes' next observations
        self.prefetch: Callable[[Sequence[str]], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.store.__aenter__()
        with contextlib.suppress(GroupsUnavailable):  # served empty until the store answers: see _refresh
            await self.reload()
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        follow = loop.create_task(self._follow(ready), name="cpe-groups-follow")
        self._tasks = [follow, loop.create_task(self._refresh(), name="cpe-groups-refresh")]
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({waiter, follow}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if follow.done():  # the subscription failed: say why, rather than wait for ever
            await self.__aexit__(None, None, None)
            follow.result()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.__aexit__(exc_type, exc, tb)

    async def _follow(self, ready: asyncio.Event) -> None:
        """Reload each group another replica announces."""
        async with self.bus.subscribe(self.groups_channel) as subscription:
            ready.set()
            async for message in subscription:
                group_id = message.decode()
                try:
                    self._index(group_id, await self.store.get(group_id))
                except GroupsUnavailable:
                    log.warning("could not reload group %s: the next full reload will", group_id)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.reload()
            except GroupsUnavailable as exc:
                log.warning("could not reload the route groups: %s", exc)
                await asyncio.sleep(REFRESH_RETRY_S)

    async def reload(self) -> None:
        """Read every group from the store into the index."""
        groups = await self.store.all()
        by_flow: dict[str, set[str]] = {}
        for group in groups:
            for route in group.routes:
                by_flow.setdefault(route.flow_key, set()).add(group.group_id)
        self._groups = {g.group_id: g for g in groups}
        self._by_flow = by_flow

    def _index(self, group_id: str, group: Group | None) -> None:
        """Put ``group`` in the index under ``group_id`` (None: take it out)."""
        old = self._groups.pop(group_id, None)
        for route in old.routes if old is not None else ():
            ids = self._by_flow.get(route.flow_key)
            if ids is not None:
                ids.discard(group_id)
                if not ids:
                    del self._by_flow[route.flow_key]
        if group is not None:
            self._groups[group_id] = group
            for route in group.routes:
                self._by_flow.setdefault(route.flow_key, set()).add(group_id)
            if self.prefetch is not None and group != old:  # not again for its own announcement
                self.prefetch([route.flow_key for route in group.routes])

    # -- definitions ----------------------------------------------------------------------------
    async def put(self, group: Group) -> bool:
        """Create or replace a group (raises ``GroupsFull``, ``GroupsUnavailable``); True when new."""
        new = await self.store.put(group)
        self._index(group.group_id, group)
        await self.bus.publish(self.groups_channel, group.group_id.encode())
        return new

    async def delete(self, group_id: str) -> bool:
        """Forget a group; False when there was none."""
        deleted = await self.store.delete(group_id)
        self._index(group_id, None)
        await self.bus.publish(self.groups_channel, group_id.encode())
        return deleted

    def groups_of(self, flow_key: str) -> Sequence[str]:
        """The groups ``flow_key`` is a route of (for the subscribers of /v1/stream/predictions by group)."""
        ids = self._by_flow.get(flow_key)
        return sorted(ids) if ids else ()

    @property
    def count(self) -> int:
        return len(self._groups)

    # -- the hook on continuous prediction ---------------------------------------------------------
    async def on_forecasts(
        self,
        keys: Sequence[str],
        windows: Sequence[ForecastWindow],
        forecasts: Sequence[WindowForecast],
    ) -> None:
        """A round of continuous prediction made ``forecasts`` for the flows ``keys`` from ``windows``."""
        by_flow = self._by_flow
        routes = [i for i, key in enumerate(keys) if key in by_flow]
        if not routes:
            return
        fresh = dict(zip([keys[i] for i in routes], self._outlooks(windows, forecasts, routes), strict=True))
        group_ids = sorted({g for key in fresh for g in by_flow.get(key, ())})
        async with self._lock:
            try:
                await self._rerank(fresh, group_ids)
            except GroupsUnavailable as exc:
                self.metrics.failed.inc(len(group_ids))
                log.warning("%d route groups not re-ranked: %s", len(group_ids), exc)

    def _outlooks(
        self, windows: Sequence[ForecastWindow], forecasts: Sequence[WindowForecast], chosen: list[int]
    ) -> list[FlowOutlook]:
        """The outlooks of the ``chosen`` flows of a round, computed together from the round's arrays: the
        forward passes' rows gathered per pass, the windows' medians read off the round's block when it
        hands one over (``block``), never an object per window."""
        medians, base_ts = _window_figures(windows, chosen)
        out: list[FlowOutlook | None] = [None] * len(chosen)
        by_pass: dict[int, list[int]] = {}  # forward pass -> positions in ``chosen``
        for k, i in enumerate(chosen):
            by_pass.setdefault(id(forecasts[i].batch), []).append(k)
        h = self.horizon
        for positions in by_pass.values():
            first = forecasts[chosen[positions[0]]]
            batch, predictor = first.batch, first.predictor
            rows = np.fromiter((forecasts[chosen[k]].index for k in positions), np.int64, len(positions))
            dt_s = batch.dt_s[rows]
            figures = outlook_arrays(
                predictor.scaler,
                batch.mean[rows],
                batch.loc[rows],
                np.maximum(batch.std[rows], MIN_SIGMA),
                batch.confidence[rows],
                dt_s,
                medians[positions],
                h,
                self.policy,
            )
            horizon_ms = np.round(h * dt_s * 1000.0).astype(np.int64).tolist()
            for k, row, span, base in zip(
                positions, figures.rows(), horizon_ms, base_ts[positions].tolist(), strict=True
            ):
                out[k] = FlowOutlook(
                    **row, time_horizon_ms=span, model_version=predictor.version, base_ts=base
                )
        return out  # type: ignore[return-value]  # every position was filled

    async def _rerank(self, fresh: dict[str, FlowOutlook], group_ids: list[str]) -> None:
        await self.store.put_outlooks(fresh)
        pending = group_ids
        for _ in range(CAS_ATTEMPTS):
            superseded = await self._rank(fresh, pending)
            if not superseded:
                return
            # another replica re-ranked these from the same state first, and published what changed: rank
            # them again on its state, where the same change is no change
            self.metrics.superseded.inc(len(superseded))
            pending = superseded

    async def _rank(self, fresh: dict[str, FlowOutlook], group_ids: list[str]) -> list[str]:
        """Re-rank ``group_ids`` on ``fresh`` and the stored outlooks of their other routes, keep their new
        states and publish what changed; the ids whose state another replica moved on meanwhile."""
        groups = [g for g in (self._groups.get(i) for i in group_ids) if g is not None]
        others = sorted({r.flow_key for g in groups for r in g.routes} - fresh.keys())
        known = dict(fresh)
        known.update(
            (key, found)
            for key, found in zip(others, await self.store.outlooks(others), strict=True)
            if found is not None
        )
        states = await self.store.states([g.group_id for g in groups])
        now_ms = int(time.time() * 1000)
        decided: dict[str, tuple[Group, Decision]] = {}
        for group, state in zip(groups, states, strict=True):
            decision = decide(
                group,
                [known.get(r.flow_key) for r in group.routes],
                state,
                self.rules,
                self.policy,
                temperature=self.temperature,
                now_ms=now_ms,
            )
            if decision is not None:
                decided[group.group_id] = (group, decision)
        kept = await self.store.put_states({g: d.state for g, (_, d) in decided.items()})
        self.metrics.rankings.inc(len(kept))
        published = 0
        for group_id, (group, decision) in decided.items():
            if group_id not in kept:
                continue
            for message in self._count(decision).messages(group, self.policy, self.flow_key_format, now_ms):
                await self.bus.publish(self.routing_channel, message)  # never raises: an outage is counted
                published += 1
        self.published += published
        return [g for g in decided if g not in kept and g in self._groups]

    def _count(self, decision: Decision) -> Decision:
        if decision.best_changed:
            self.metrics.changes.labels(change="best").inc()
        if decision.weights_changed:
            self.metrics.changes.labels(change="weights").inc()
        if decision.breakers_changed:
            self.metrics.changes.labels(change="breaker").inc(len(decision.breakers_changed))
        return decision


def _window_figures(windows: Sequence[ForecastWindow], chosen: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The median latency (float) and the newest timestamp (int ms) of each ``chosen`` window: read off the
    round's block (``windows.block``, a ``WindowBlock``) when there is one, one numpy call per window
    length; else from each window."""
    block = getattr(windows, "block", None)
    if block is None:
        picked = [windows[i] for i in chosen]  # each read once: a round's windows may be made on demand
        medians = np.asarray(window_medians([w.features for w in picked]), dtype=np.float64)
        return medians, np.asarray([int(w.timestamps[-1]) for w in picked], dtype=np.int64)
    rows = np.asarray(chosen, dtype=np.int64)
    lengths = block.lengths[rows]
    latency = block.features[rows, :, LATENCY]  # (R, L), each window in its last ``lengths`` columns
    width = latency.shape[1]
    medians = np.empty(len(rows), dtype=np.float64)
    for n in np.unique(lengths).tolist():
        same = lengths == n
        medians[same] = np.median(latency[same, width - n :], axis=1)
    return medians, block.timestamps[rows, -1].astype(np.int64)
