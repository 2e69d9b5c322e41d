"""Route groups' wire types, as the client reads them (DESIGN.md, "Route groups").

The other answers are the server's own types (``app/schemas.py``, ``app/routing_schemas.py``,
``app/stream_schemas.py``). These are the part of the server's group answers (``app/groups/schemas.py``,
whose request validation the client has no need of) that a caller reads: ``PUT /v1/groups/{group_id}``
``{"flow_key", "objective", "routes": [{"route_id", "flow_key", "cost_factor"}]}``, ``GET`` answering the
group with its current choice. The server's other fields are kept (``extra="allow"``), so a newer
server's answer still reads; tests/app/client checks them against a live server.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.routing_schemas import Objective


class GroupRoute(BaseModel):
    """One candidate route of a group: the observed flow whose measurements are the route's."""

    model_config = ConfigDict(extra="allow")
    route_id: str
    flow_key: str
    cost_factor: float = 1.0


class Group(BaseModel):
    """A route group and its current choice (GET /v1/groups/{group_id}, and the answer to PUT)."""

    model_config = ConfigDict(extra="allow")
    group_id: str
    flow_key: str = Field(description="The flow whose routes these are.")
    objective: Objective
    routes: list[GroupRoute]
    best: str | None = Field(default=None, description="The route chosen; null until a route has a forecast.")
    weights: dict[str, float] = Field(default_factory=dict, description="The load-balancing weights.")


class GroupItem(BaseModel):
    """A group in a page of GET /v1/groups."""

    model_config = ConfigDict(extra="allow")
    group_id: str
    flow_key: str
    objective: Objective
    best: str | None = None


class GroupPage(BaseModel):
    """A page of groups in group-id order; ask for the next with ``after=next``."""

    model_config = ConfigDict(extra="allow")
    groups: list[GroupItem]
    next: str | None = None
    count: int | None = None
