"""Route groups: the types, and the interface every group store speaks.

A ``Group`` names the observed flows that are one flow's candidate routes (PUT /v1/groups/{group_id}).
Beside the definitions a store keeps, for the re-ranking on every replica:

- each route flow's newest ``outlook`` (its forecast's figures, ``FlowOutlook``), written by whichever
  replica forecast it, so that any replica can rank a group whose routes other replicas forecast;
- each group's ``GroupState``: what was last published for it (best route, weights, open breakers) and
  when, the hysteresis's memory, and the newest ranking that GET /v1/groups/{group_id} answers.

``create_group_store(url)`` (``app/groups/__init__.py``) picks the backend by scheme: ``memory://`` (this
process, lost with it) or ``redis://`` (shared by every replica, kept across restarts).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from app.routing_schemas import Objective


class GroupsUnavailable(Exception):
    """The group store cannot be reached: the endpoints answer 503 + Retry-After."""

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class GroupsFull(Exception):
    """The store holds ``max_groups`` groups and a PUT would add one more (409)."""


@dataclass(frozen=True, slots=True)
class GroupRoute:
    """One candidate route of a group: an observed flow, and the caller's relative cost of the route."""

    route_id: str
    flow_key: str  # 64 lowercase hex characters
    cost_factor: float = 1.0


@dataclass(frozen=True, slots=True)
class Group:
    """A flow's candidate routes, each an observed flow, ranked for ``objective``."""

    group_id: str
    flow_key: str  # the flow whose routes these are (hex)
    objective: Objective
    routes: tuple[GroupRoute, ...]
    updated_ms: int  # when it was last PUT, ms since the epoch

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        routes = tuple(GroupRoute(**route) for route in data["routes"])
        return cls(data["group_id"], data["flow_key"], data["objective"], routes, int(data["updated_ms"]))


@dataclass(frozen=True, slots=True)
class FlowOutlook:
    """The routing figures of one route flow's newest forecast (``app/routing.py``'s ``outlook``)."""

    expected_latency_ms: float
    expected_throughput: float
    reliability_score: float
    failure_probability: float
    predicted_load: float
    confidence: float
    predicted_context: list[float]
    time_to_recovery_ms: int
    time_horizon_ms: int
    model_version: str
    base_ts: int  # the newest observation it was forecast from, ms since the epoch

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**data)


@dataclass(slots=True)
class GroupState:
    """What was last published for a group, and its newest ranking.

    ``best``, ``weights`` and ``open_breakers`` are the published choice; ``ranking`` and ``scores`` the
    newest re-ranking's (which the hysteresis may not have published yet).
    """

    best: str | None = None
    best_since_ts: int = 0  # observation time (ms) when ``best`` was published
    challenger: str | None = None  # a route leading ``best`` by the margin, not yet for the dwell
    challenger_since_ts: int = 0  # observation time (ms) since when it has led
    weights: dict[str, float] = field(default_factory=dict)  # the last LoadBalancingUpdate's
    open_breakers: list[str] = field(default_factory=list)  # routes whose breaker is open
    changed_ms: int = 0  # when anything was last published
    updated_ms: int = 0  # when it was last re-ranked
    rankings: int = 0  # re-rankings so far
    changes: int = 0  # changes of best route published
    ranking: list[dict[str, Any]] = field(default_factory=list)  # the newest, best first
    model_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**data)


class GroupStore(abc.ABC):
    """Route groups, their routes' newest outlooks and their states. Used as ``async with``."""

    @property
    def problem(self) -> str | None:
        """Why the store does not work right now (for /readyz), or None."""
        return None

    @abc.abstractmethod
    async def put(self, group: Group) -> bool:
        """Create or replace a group (its state is forgotten); True when it is new. Raises ``GroupsFull``."""

    @abc.abstractmethod
    async def get_many(self, group_ids: Sequence[str]) -> list[Group | None]:
        """The groups ``group_ids``, in order; None for one that does not exist."""

    async def get(self, group_id: str) -> Group | None:
        [found] = await self.get_many([group_id])
        return found

    @abc.abstractmethod
    async def delete(self, group_id: str) -> bool:
        """Forget a group and its state; False when there was none."""

    @abc.abstractmethod
    async def ids(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` group ids after ``after``, in order: a stable page while groups change."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many groups the store holds."""

    @abc.abstractmethod
    async def outlooks(self, flow_keys: Sequence[str]) -> list[FlowOutlook | None]:
        """The newest outlook of each route flow, in order; None where there is none (or it expired)."""

    @abc.abstractmethod
    async def put_outlooks(self, outlooks: Mapping[str, FlowOutlook]) -> None:
        """Keep each flow's newest outlook (for the flow store's TTL)."""

    @abc.abstractmethod
    async def states(self, group_ids: Sequence[str]) -> list[GroupState | None]:
        """Each group's state, in order; None for a group never ranked."""

    @abc.abstractmethod
    async def put_states(self, states: Mapping[str, GroupState]) -> set[str]:
        """Keep each group's new state where the stored one is still the state it was decided from (the
        group's change version: ``state.rankings - 1`` re-rankings, none stored counting as 0), as one
        compare-and-set per group; a group deleted meanwhile keeps none. Returns the ids kept: a replica
        publishes only the changes of those, so that of two replicas re-ranking one group from the same
        state only one publishes what changed."""

    async def all(self, page: int = 1000) -> list[Group]:
        """Every group, a page at a time."""
        found: list[Group] = []
        after: str | None = None
        while True:
            ids = await self.ids(after, page)
            found += [g for g in await self.get_many(ids) if g is not None]
            if len(ids) < page:
                return found
            after = ids[-1]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None
