"""The Redis Stream door: collectors XADD observations; every replica reads them in one consumer group.

Each entry's field ``o`` holds one observation or a JSON list of them. A replica acknowledges an entry
(XACK) only after the ingest service applied it, so an entry read by a replica that dies stays pending
and another replica takes it over (XAUTOCLAIM) after CPE_INGEST_CLAIM_MS: at-least-once delivery, made
idempotent by the store's rule that a context at its flow's newest timestamp is a duplicate. An entry
that is not valid is logged, counted and acknowledged (it would never become valid); while the flow
store is unreachable entries stay pending and are tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pydantic import ValidationError
from redis import exceptions as rex
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from app.flows import FlowsFull, FlowsUnavailable
from app.ingest.adapters import Adapted
from app.ingest.service import IngestService

log = logging.getLogger("cpe.ingest")

FIELD = b"o"
BATCH = 500  # entries read at once
_DOWN = (rex.ConnectionError, rex.TimeoutError, rex.ClusterError, OSError)


class StreamDoor:
    """Reads ``stream`` in ``group`` as ``consumer`` and applies what it reads; ``async with`` runs it."""

    def __init__(
        self,
        url: str,
        ingest: IngestService,
        *,
        stream: str = "cpe:observe",
        group: str = "cpe",
        consumer: str,
        claim_ms: int = 5_000,
        parse: Any,
    ) -> None:
        if url.startswith("redis+cluster://"):
            self.client: Any = RedisCluster.from_url("redis://" + url.removeprefix("redis+cluster://"))
        else:
            self.client = Redis.from_url(url)
        self.ingest, self.stream, self.group, self.consumer = ingest, stream, group, consumer
        self.claim_ms = claim_ms
        self.parse = parse  # text -> Adapted, raising ValidationError (app/api/observe.read_frame)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StreamDoor:
        self._task = asyncio.create_task(self._run(), name="cpe-ingest-stream")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()

    async def _ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except rex.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _run(self) -> None:
        ready = False
        backlog = True  # this consumer's own pending entries first (it restarted under the same name)
        while True:
            try:
                if not ready:
                    await self._ensure_group()
                    ready = True
                entries = await self._claimed()
                if not entries:
                    start = "0" if backlog else ">"
                    block = None if backlog else 1000
                    answer = await self.client.xreadgroup(
                        self.group, self.consumer, {self.stream: start}, count=BATCH, block=block
                    )
                    entries = answer[0][1] if answer else []
                    if backlog and not entries:
                        backlog = False
                        continue
                if entries:
                    await self._apply(entries)
            except (FlowsUnavailable, FlowsFull) as exc:
                log.warning("ingest stream: entries stay pending: %s", exc)
                backlog = True
                await asyncio.sleep(exc.retry_after_s)
            except _DOWN as exc:
                log.warning("ingest stream: Redis unreachable: %s", exc)
                backlog, ready = True, False
                await asyncio.sleep(1.0)
            except rex.ResponseError as exc:  # the stream or group deleted under us: make them again
                log.warning("ingest stream: %s", exc)
                ready = False
                await asyncio.sleep(1.0)

    async def _claimed(self) -> list[Any]:
        """Entries another consumer read and left unacknowledged for ``claim_ms`` (it died)."""
        answer = await self.client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_ms, start_id="0-0", count=BATCH
        )
        return [entry for entry in answer[1] if entry[1]]  # deleted entries come back empty

    async def _apply(self, entries: list[Any]) -> None:
        parts: list[Adapted] = []
        for entry_id, fields in entries:
            text = fields.get(FIELD)
            try:
                if text is None:
                    raise ValueError(f"no field {FIELD.decode()!r}")
                parts.append(self.parse(text, self.ingest))
            except (ValidationError, ValueError) as exc:
                self.ingest.refused("stream", "invalid")
                log.warning("ingest stream: entry %s is not valid and is dropped: %s", entry_id, exc)
        if parts:
            await self.ingest.apply(Adapted.join(parts), "stream")
        await self.client.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])
