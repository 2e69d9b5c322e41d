"""Route groups: PUT, GET and DELETE /v1/groups/{group_id}, GET /v1/groups.

A group names the observed flows that are one flow's candidate routes; it is re-ranked whenever one of
them gets a new forecast, and what changed is published on /v1/stream/routing (``app/groups``).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.requests import HTTPConnection

from app.api.deps import LimitsDep, parse_body
from app.api.errors import ERROR_RESPONSES
from app.api.flows import FlowsDep
from app.api.openapi import json_body
from app.api.responses import OrjsonResponse
from app.flows import FlowsUnavailable
from app.groups import Group, GroupRoute, GroupsFull, GroupsUnavailable
from app.groups.schemas import GroupAnswer, GroupPage, GroupRequest, answer
from app.groups.service import RouteGroups
from app.routing_schemas import GROUP_ID_PATTERN
from app.schemas import Message
from app.services import Services

router = APIRouter(prefix="/v1/groups", tags=["groups"])  # read
writer = APIRouter(prefix="/v1/groups", tags=["groups"])  # write
admin = APIRouter(prefix="/v1/groups", tags=["groups"])

PathGroup = Annotated[str, Path(pattern=GROUP_ID_PATTERN, description="1..128 of A-Z a-z 0-9 . _ : ~ -")]
MAX_PAGE = 1000
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": Message, "description": "The group or flow store (Redis) is unreachable; retry later."}
}


async def get_groups(conn: HTTPConnection) -> RouteGroups:
    return Services.of(conn.app).groups


GroupsDep = Annotated[RouteGroups, Depends(get_groups)]


def _unavailable(exc: GroupsUnavailable | FlowsUnavailable) -> OrjsonResponse:
    return OrjsonResponse(
        {"detail": str(exc), "retry_after_s": exc.retry_after_s},
        status_code=503,
        headers={"retry-after": str(exc.retry_after_s)},
    )


@writer.put(
    "/{group_id}",
    response_model=GroupAnswer,
    responses={
        **ERROR_RESPONSES,
        201: {"model": GroupAnswer, "description": "Created."},
        409: {"model": Message, "description": "The store holds CPE_MAX_GROUPS groups."},
        **UNAVAILABLE,
    },
    openapi_extra=json_body(GroupRequest),
)
async def put_group(
    request: Request, group_id: PathGroup, groups: GroupsDep, flows: FlowsDep, limits: LimitsDep
) -> Any:
    """Create or replace a route group (200 replaced, 201 created); every route's flow must be observed."""
    req = await parse_body(request, GroupRequest, limits)
    try:
        windows = await flows.windows([r.flow_key for r in req.routes])
    except FlowsUnavailable as exc:
        return _unavailable(exc)
    unknown = [
        {
            "type": "unknown_flow",
            "loc": ("body", "routes", i, "flow_key"),
            "msg": f"flow {route.flow_key} is not observed (never sent to /v1/observe, or expired)",
            "input": route.flow_key,
        }
        for i, (route, window) in enumerate(zip(req.routes, windows, strict=True))
        if window is None
    ]
    if unknown:
        raise RequestValidationError(unknown)
    routes = tuple(GroupRoute(r.route_id, r.flow_key, r.cost_factor) for r in req.routes)
    group = Group(group_id, req.flow_key, req.objective, routes, int(time.time() * 1000))
    try:
        created = await groups.put(group)
    except GroupsFull as exc:
        return OrjsonResponse({"detail": f"{exc} (CPE_MAX_GROUPS)"}, status_code=409)
    except GroupsUnavailable as exc:
        return _unavailable(exc)
    return OrjsonResponse(answer(group, None), status_code=201 if created else 200)


@router.get("", response_model=GroupPage, responses=UNAVAILABLE)
async def list_groups(
    groups: GroupsDep,
    after: Annotated[str | None, Query(description="The `next` of the page before.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Any:
    """The route groups in group-id order, a page at a time, with each one's published best route."""
    store = groups.store
    try:
        ids = await store.ids(after, limit)
        found = await store.get_many(ids)
        states = await store.states(ids)
        count = await store.count()
    except GroupsUnavailable as exc:
        return _unavailable(exc)
    items = [
        {
            "group_id": g.group_id,
            "flow_key": g.flow_key,
            "objective": g.objective,
            "routes": len(g.routes),
            "best": None if s is None else s.best,
        }
        for g, s in zip(found, states, strict=True)
        if g is not None
    ]
    return OrjsonResponse({"groups": items, "next": ids[-1] if len(ids) == limit else None, "count": count})


@router.get("/{group_id}", response_model=GroupAnswer, responses={404: {"model": Message}, **UNAVAILABLE})
async def get_group(group_id: PathGroup, groups: GroupsDep) -> Any:
    """One group: its routes, the published best route and weights, breaker risk, the newest ranking."""
    try:
        group = await groups.store.get(group_id)
        [state] = await groups.store.states([group_id]) if group is not None else [None]
    except GroupsUnavailable as exc:
        return _unavailable(exc)
    if group is None:
        return OrjsonResponse({"detail": f"group {group_id} does not exist"}, 404)
    return OrjsonResponse(answer(group, state))


@admin.delete(
    "/{group_id}",
    status_code=204,
    response_class=Response,
    response_model=None,
    responses={404: {"model": Message}, **UNAVAILABLE},
)
async def delete_group(group_id: PathGroup, groups: GroupsDep) -> Any:
    """Forget a route group (admin)."""
    try:
        deleted = await groups.delete(group_id)
    except GroupsUnavailable as exc:
        return _unavailable(exc)
    if not deleted:
        return OrjsonResponse({"detail": f"group {group_id} does not exist"}, 404)
    return Response(status_code=204)
