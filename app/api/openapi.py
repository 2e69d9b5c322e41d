"""OpenAPI for request bodies that the handlers parse themselves (see ``deps.parse_body``).

FastAPI documents the bodies it parses; these it does not see, so each such route declares its body with
``json_body(Model)`` and ``document(app, models)`` adds the models to the schema components.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"


MSGPACK_NOTE = (
    "JSON, or the same request in MessagePack (`Content-Type: application/msgpack`), where a context's "
    "`features` may be a bin of D little-endian float32, and a request may carry its window packed "
    "instead of `contexts`: `timestamps` (a bin of n little-endian int64, or an array of n ints, ms) and "
    "`features` (a bin of n x D little-endian float32, row by row, oldest first); a flow key may be a bin of "
    "its 32 bytes. The answer is JSON either way."
)


def json_body(model: type[BaseModel], *, msgpack: bool = False) -> dict[str, Any]:
    """The route's ``openapi_extra``: a required JSON body of ``model`` (or, with ``msgpack``, the same in
    MessagePack: ``app.wire.msgpack``)."""
    schema = {"$ref": REF.format(model=model.__name__)}
    content = {"application/json": {"schema": schema}}
    if not msgpack:
        return {"requestBody": {"required": True, "content": content}}
    content["application/msgpack"] = {"schema": schema}
    return {"requestBody": {"required": True, "description": MSGPACK_NOTE, "content": content}}


def document(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Make ``app.openapi()`` include ``models`` (and the models they use) in its components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI caches it, so this adds the models once
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if any(model.__name__ not in components for model in models):
            _, defs = models_json_schema([(model, "validation") for model in models], ref_template=REF)
            components.update(defs.get("$defs", {}))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
