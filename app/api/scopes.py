"""The dependencies of the routers that change state: the one place where access control plugs in.

Every router that writes takes its ``dependencies`` from here: feedback (``WRITE``) and model rollback
(``ADMIN``). Empty while the service has no API keys; adding a check here guards every such route.
"""

from __future__ import annotations

from typing import Any

WRITE: list[Any] = []  # POST /v1/feedback
ADMIN: list[Any] = []  # POST /v1/models/rollback
