"""A typed Python client of CPE: ``Client`` (blocking) and ``AsyncClient`` (asyncio, with the streams).

    from app.client import Client, CPEError

    with Client("http://127.0.0.1:8000") as cpe:
        result = cpe.predict("3f" * 32, contexts, horizon=3)
        print(result.predicted_context, result.confidence)

Answers are the server's own pydantic types (``app/schemas.py`` and its neighbours). Anything but a
success raises ``CPEError``, with ``status``, ``detail`` (a 422's field errors) and ``retry_after_s``.
It imports no torch: a caller needs only this package's wire types, httpx and websockets.
"""

from app.client.aio import AsyncClient
from app.client.errors import CPEError
from app.client.streams import ObserveStream, PredictStream, Subscription
from app.client.sync import Client
from app.client.types import Group, GroupItem, GroupPage, GroupRoute

__all__ = [
    "AsyncClient",
    "CPEError",
    "Client",
    "Group",
    "GroupItem",
    "GroupPage",
    "GroupRoute",
    "ObserveStream",
    "PredictStream",
    "Subscription",
]
