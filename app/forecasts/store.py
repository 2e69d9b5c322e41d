"""Each flow's newest forecast and running score: in this process (``memory://``) or in Redis (``redis://``).

What scoring the next observation needs (the window's newest timestamp the forecast was made from, the
predicted latency, and what persistence and EWMA said for the same moment) is kept beside what the
``PredictionResult`` that ``GET /v1/flows/{flow_key}`` answers is made of. A round of continuous
prediction hands its forecasts over as arrays (``RoundForecasts``, row i: flow i) and reads the previous
ones back as arrays (``Previous``); the memory store keeps them so, one row per flow in arrays of its own
and a reference to the round a flow's result is read from, and builds a flow's objects (``FlowForecast``,
its serialized result) only when someone asks for that flow. ``create_forecast_store(url)`` picks the
backend by scheme, like the cache and the bus.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

import numpy as np

from app.forecasts.result import Draft, RoundResults, serialize

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster")


@dataclass(slots=True)
class FlowScore:
    """A flow's running score: absolute latency errors summed over its ``scored`` forecasts."""

    scored: int = 0
    model: float = 0.0  # sum of |forecast - actual| latency_ms, by the model
    persistence: float = 0.0  # ... by persistence (the window's newest latency)
    ewma: float = 0.0  # ... by the EWMA of the window's latency

    def add(self, model: float, persistence: float, ewma: float) -> None:
        self.scored += 1
        self.model += model
        self.persistence += persistence
        self.ewma += ewma

    def as_dict(self) -> dict[str, float | int | None]:
        """The score as GET /v1/flows/{flow_key} answers it: MAEs in ms, the model's ratio to persistence."""
        n = self.scored
        if not n:
            return {
                "scored": 0,
                "mae_ms": None,
                "persistence_mae_ms": None,
                "ewma_mae_ms": None,
                "ratio": None,
            }
        return {
            "scored": n,
            "mae_ms": round(self.model / n, 6),
            "persistence_mae_ms": round(self.persistence / n, 6),
            "ewma_mae_ms": round(self.ewma / n, 6),
            "ratio": round(self.model / self.persistence, 6) if self.persistence else None,
        }


@dataclass(slots=True)
class FlowForecast:
    """A flow's newest forecast, and its score before it."""

    body: bytes | None  # the serialized PredictionResult; None until ``result`` serializes ``draft``
    draft: Draft | None  # what it is made of, while not serialized yet (in-process only)
    base_ts: int  # timestamp of the window's newest context: the forecast is for the context after it
    latency: float  # predicted latency_ms of that next context
    persistence: float  # persistence's forecast for it: the newest latency of the window
    ewma: float  # EWMA's forecast for it
    model: str  # kind of the model that made it
    score: FlowScore
    # (4, D) its step 1's served lower and upper, loc and std (``app.learning.conformal``): what scoring
    # its interval needs; None where it was not kept
    interval: np.ndarray | None = None

    def result(self) -> bytes:
        """The serialized PredictionResult (made now, once, if it was not yet)."""
        if self.body is None:
            assert self.draft is not None, "a forecast holds its result or what it is made of"
            self.body, self.draft = serialize(self.draft), None  # the forward pass's arrays may go
        return self.body


@dataclass(slots=True)
class Previous:
    """The newest forecasts of a round's flows, as arrays: row i is flow i's (``found[i]`` false: none)."""

    found: np.ndarray  # (B,) bool
    base_ts: np.ndarray  # (B,) int64
    latency: np.ndarray  # (B,) float64 predicted latency_ms of the context after base_ts
    persistence: np.ndarray  # (B,) float64
    ewma: np.ndarray  # (B,) float64
    model: np.ndarray  # (B,) int64 index into ``kinds``
    kinds: Sequence[str]  # the model kinds ``model`` names
    scored: np.ndarray  # (B,) int64 the running score: forecasts scored ...
    score_model: np.ndarray  # (B,) float64 ... and their absolute errors summed, by the model,
    score_persistence: np.ndarray  # (B,) ... by persistence
    score_ewma: np.ndarray  # (B,) ... by EWMA
    interval: np.ndarray | None  # (B, 4, D) step 1's lower, upper, loc, std; None: none kept
    has_interval: np.ndarray  # (B,) bool rows of ``interval`` that were kept

    @classmethod
    def empty(cls, b: int) -> Previous:
        zeros = np.zeros(b, dtype=np.float64)
        return cls(
            np.zeros(b, dtype=bool),
            np.zeros(b, dtype=np.int64),
            zeros,
            zeros.copy(),
            zeros.copy(),
            np.zeros(b, dtype=np.int64),
            (),
            np.zeros(b, dtype=np.int64),
            zeros.copy(),
            zeros.copy(),
            zeros.copy(),
            None,
            np.zeros(b, dtype=bool),
        )

    @classmethod
    def of(cls, forecasts: Sequence[FlowForecast | None]) -> Previous:
        """The arrays of forecasts given as objects (a store that keeps them so: Redis)."""
        b = len(forecasts)
        out = cls.empty(b)
        kinds: dict[str, int] = {}
        rows = [i for i, f in enumerate(forecasts) if f is not None]
        if not rows:
            return out
        for i in rows:
            f = forecasts[i]
            assert f is not None
            out.found[i] = True
            out.base_ts[i], out.latency[i] = f.base_ts, f.latency
            out.persistence[i], out.ewma[i] = f.persistence, f.ewma
            out.model[i] = kinds.setdefault(f.model, len(kinds))
            s = f.score
            out.scored[i], out.score_model[i] = s.scored, s.model
            out.score_persistence[i], out.score_ewma[i] = s.persistence, s.ewma
            if f.interval is not None:
                if out.interval is None:
                    out.interval = np.zeros((b, *f.interval.shape))
                out.interval[i] = f.interval
                out.has_interval[i] = True
        out.kinds = list(kinds)
        return out


@dataclass(slots=True, weakref_slot=True)  # weakly referenced: tests see a superseded round freed
class RoundForecasts:
    """A round's new forecasts and the flows' running scores after it, as arrays: row i is flow i's."""

    flow_keys: Sequence[str]
    model: str  # the kind of the model that made them
    base_ts: np.ndarray  # (B,) int64
    latency: np.ndarray  # (B,) float64
    persistence: np.ndarray  # (B,) float64
    ewma: np.ndarray  # (B,) float64
    scored: np.ndarray  # (B,) int64
    score_model: np.ndarray  # (B,) float64
    score_persistence: np.ndarray  # (B,) float64
    score_ewma: np.ndarray  # (B,) float64
    interval: np.ndarray | None  # (B, 4, D) or None: not kept
    results: RoundResults  # each flow's PredictionResult, serialized when asked for
    has_interval: np.ndarray | None = None  # (B,) bool rows of ``interval`` kept; None: all of them

    def _interval(self, i: int) -> np.ndarray | None:
        if self.interval is None or (self.has_interval is not None and not self.has_interval[i]):
            return None
        return self.interval[i].copy()

    def score(self, i: int) -> FlowScore:
        return FlowScore(
            int(self.scored[i]),
            float(self.score_model[i]),
            float(self.score_persistence[i]),
            float(self.score_ewma[i]),
        )

    def forecast(self, i: int, body: bytes | None = None) -> FlowForecast:
        """Flow i's forecast as an object (its result serialized now unless given)."""
        return FlowForecast(
            self.results.body(i) if body is None else body,
            None,
            int(self.base_ts[i]),
            float(self.latency[i]),
            float(self.persistence[i]),
            float(self.ewma[i]),
            self.model,
            self.score(i),
            self._interval(i),
        )

    def forecasts(self) -> list[tuple[str, FlowForecast]]:
        """Every flow's (flow_key, forecast), the results serialized in bulk: what Redis keeps."""
        bodies = self.results.bodies(range(len(self.flow_keys)))
        return [(key, self.forecast(i, bodies[i])) for i, key in enumerate(self.flow_keys)]


class ForecastStore(abc.ABC):
    """The newest forecast per flow; idle flows' forecasts expire with their windows. ``async with``."""

    keeps_drafts = False  # whether it keeps forecasts unserialized (in-process), else serialized

    @abc.abstractmethod
    async def get_many(self, flow_keys: Sequence[str]) -> list[FlowForecast | None]:
        """The newest forecast of each flow, in order; None where there is none."""

    @abc.abstractmethod
    async def put_many(self, forecasts: Sequence[tuple[str, FlowForecast]]) -> None:
        """Keep each (flow_key, forecast) as that flow's newest."""

    @abc.abstractmethod
    async def delete(self, flow_key: str) -> None:
        """Forget a flow's forecast and score."""

    async def get_previous(self, flow_keys: Sequence[str]) -> Previous:
        """The newest forecasts of ``flow_keys`` as arrays (a round's scoring reads them so)."""
        return Previous.of(await self.get_many(flow_keys))

    async def put_round(self, forecasts: RoundForecasts) -> None:
        """Keep a round's forecasts as their flows' newest."""
        await self.put_many(forecasts.forecasts())

    async def get(self, flow_key: str) -> FlowForecast | None:
        [found] = await self.get_many([flow_key])
        return found

    @property
    def problem(self) -> str | None:
        """Why the store does not work now, or None."""
        return None

    async def check(self) -> str | None:
        """``problem`` as of now: a store that can be out of reach asks it (/readyz calls this)."""
        return self.problem

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class MemoryForecasts(ForecastStore):
    """Forecasts in this process, at most ``max_flows``, each forgotten ``ttl_ms`` after its last update.

    One row per flow in arrays (grown by doubling, rows of forgotten flows reused): the numbers scoring
    reads and the running score, copied in per round with a few numpy calls, and a reference to the round
    (``RoundForecasts``) and row the flow's result is read from. A round is freed once none of its flows'
    newest forecasts is in it any more. Expiry and the bound look at the rows' update times and write
    order in bulk: no walk of flows in Python."""

    keeps_drafts = True
    SWEEP_S = 1.0  # how often a write looks for expired rows (a read checks its own rows' age)

    def __init__(self, *, ttl_ms: int, max_flows: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_ms, self.max_flows = ttl_ms, max_flows
        self._clock = clock
        self._slot: dict[str, int] = {}  # flow_key -> row
        self._keys: list[str | None] = []  # row -> flow_key (None: free)
        self._free: list[int] = []
        self._kinds: list[str] = []
        self._kind_index: dict[str, int] = {}
        self._seq = 0  # write order: the bound forgets the rows written least recently
        self._swept = -float("inf")
        self._grow(0)

    def _grow(self, capacity: int) -> None:
        old = len(self._keys)
        self._keys.extend([None] * (capacity - old))
        self._free.extend(range(capacity - 1, old - 1, -1))  # popped from the end: lowest rows first

        def grown(array: np.ndarray | None, dtype: type | str, fill: object = 0) -> np.ndarray:
            shape = (capacity,) if array is None else (capacity, *array.shape[1:])
            out = np.full(shape, fill, dtype=dtype)
            if array is not None:
                out[:old] = array[:old]
            return out

        get = getattr
        self._round = grown(get(self, "_round", None), object, None)  # row -> RoundForecasts
        self._row = grown(get(self, "_row", None), np.int64)  # ... and its row there
        self._updated = grown(get(self, "_updated", None), np.float64)
        self._order = grown(get(self, "_order", None), np.int64)
        self._base_ts = grown(get(self, "_base_ts", None), np.int64)
        self._latency = grown(get(self, "_latency", None), np.float64)
        self._persistence = grown(get(self, "_persistence", None), np.float64)
        self._ewma = grown(get(self, "_ewma", None), np.float64)
        self._model = grown(get(self, "_model", None), np.int64)
        self._scored = grown(get(self, "_scored", None), np.int64)
        self._score_model = grown(get(self, "_score_model", None), np.float64)
        self._score_persistence = grown(get(self, "_score_persistence", None), np.float64)
        self._score_ewma = grown(get(self, "_score_ewma", None), np.float64)
        self._has_interval = grown(get(self, "_has_interval", None), bool, False)
        self._live = grown(get(self, "_live", None), bool, False)  # rows that hold a flow
        interval = get(self, "_interval", None)
        self._interval = None if interval is None else grown(interval, np.float64)

    def __len__(self) -> int:
        return len(self._slot)

    def _rows(self, flow_keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The rows of ``flow_keys`` (-1: none) and whether each is there and not expired."""
        get = self._slot.get
        rows = np.fromiter((get(key, -1) for key in flow_keys), np.int64, len(flow_keys))
        found = rows >= 0
        if found.any():
            deadline = self._clock() - self.ttl_ms / 1000.0
            found &= self._updated[np.maximum(rows, 0)] > deadline
        return rows, found

    async def get_previous(self, flow_keys: Sequence[str]) -> Previous:
        b = len(flow_keys)
        rows, found = self._rows(flow_keys)
        if not found.any():
            return Previous.empty(b)
        r = np.where(found, rows, 0)

        def pick(array: np.ndarray) -> np.ndarray:
            out = array[r]
            out[~found] = 0
            return out

        interval = None if self._interval is None else self._interval[r]
        has_interval = pick(self._has_interval)
        return Previous(
            found,
            pick(self._base_ts),
            pick(self._latency),
            pick(self._persistence),
            pick(self._ewma),
            pick(self._model),
            list(self._kinds),
            pick(self._scored),
            pick(self._score_model),
            pick(self._score_persistence),
            pick(self._score_ewma),
            interval,
            has_interval,
        )

    async def get_many(self, flow_keys: Sequence[str]) -> list[FlowForecast | None]:
        rows, found = self._rows(flow_keys)
        out: list[FlowForecast | None] = [None] * len(flow_keys)
        for i in np.flatnonzero(found).tolist():
            out[i] = self._forecast(int(rows[i]))
        return out

    def _forecast(self, row: int) -> FlowForecast:
        """Row ``row``'s forecast as an object, its result serialized now if it was not yet."""
        made: RoundForecasts = self._round[row]
        j = int(self._row[row])
        interval = None
        if self._interval is not None and self._has_interval[row]:
            interval = self._interval[row].copy()
        return FlowForecast(
            made.results.body(j),
            None,
            int(self._base_ts[row]),
            float(self._latency[row]),
            float(self._persistence[row]),
            float(self._ewma[row]),
            self._kinds[int(self._model[row])],
            FlowScore(
                int(self._scored[row]),
                float(self._score_model[row]),
                float(self._score_persistence[row]),
                float(self._score_ewma[row]),
            ),
            interval,
        )

    def _assign(self, flow_keys: Sequence[str]) -> np.ndarray:
        """The rows of ``flow_keys``, taking free rows for new flows."""
        slot = self._slot
        get = slot.get
        rows = [get(key, -1) for key in flow_keys]
        if -1 in rows:
            for i, key in enumerate(flow_keys):
                if rows[i] >= 0:
                    continue
                row = slot.get(key)  # a key given twice
                if row is None:
                    if not self._free:
                        self._grow(max(1024, 2 * len(self._keys)))
                    row = slot[key] = self._free.pop()
                    self._keys[row] = key
                rows[i] = row
        return np.asarray(rows, dtype=np.int64)

    def _kind(self, model: str) -> int:
        index = self._kind_index.get(model)
        if index is None:
            index = self._kind_index[model] = len(self._kinds)
            self._kinds.append(model)
        return index

    async def put_round(self, forecasts: RoundForecasts) -> None:
        b = len(forecasts.flow_keys)
        if not b:
            return
        rows = self._assign(forecasts.flow_keys)
        now = self._clock()
        holder = np.empty(1, dtype=object)
        holder[0] = forecasts
        self._round[rows] = holder
        self._live[rows] = True
        self._row[rows] = np.arange(b)
        self._updated[rows] = now
        self._order[rows] = np.arange(self._seq, self._seq + b)
        self._seq += b
        self._base_ts[rows] = forecasts.base_ts
        self._latency[rows] = forecasts.latency
        self._persistence[rows] = forecasts.persistence
        self._ewma[rows] = forecasts.ewma
        self._model[rows] = self._kind(forecasts.model)
        self._scored[rows] = forecasts.scored
        self._score_model[rows] = forecasts.score_model
        self._score_persistence[rows] = forecasts.score_persistence
        self._score_ewma[rows] = forecasts.score_ewma
        if forecasts.interval is not None:
            if self._interval is None:
                self._interval = np.zeros((len(self._keys), *forecasts.interval.shape[1:]))
            self._interval[rows] = forecasts.interval
            self._has_interval[rows] = True if forecasts.has_interval is None else forecasts.has_interval
        else:
            self._has_interval[rows] = False
        self._forget(now)

    async def put_many(self, forecasts: Sequence[tuple[str, FlowForecast]]) -> None:
        """Forecasts given as objects (tests, a store of another kind's): kept as a round of their own."""
        if forecasts:
            await self.put_round(round_of(forecasts))

    def _forget(self, now: float) -> None:
        """Free the rows beyond the bound (the least recently written) and, once a SWEEP_S, the expired."""
        excess = len(self._slot) - self.max_flows
        if excess > 0:
            used = np.flatnonzero(self._live)
            order = self._order[used]
            victims = used[np.argpartition(order, excess - 1)[:excess]] if excess < len(used) else used
            self._free_rows(victims)
        if now - self._swept >= min(self.SWEEP_S, self.ttl_ms / 1000.0):
            self._swept = now
            deadline = now - self.ttl_ms / 1000.0
            expired = np.flatnonzero((self._updated <= deadline) & self._live)
            if len(expired):
                self._free_rows(expired)

    def _free_rows(self, rows: np.ndarray) -> None:
        keys, slot = self._keys, self._slot
        for row in rows.tolist():
            key = keys[row]
            if key is not None:
                del slot[key]
                keys[row] = None
                self._free.append(row)
        self._round[rows] = None  # the rounds no newest forecast reads any more are freed
        self._live[rows] = False

    async def delete(self, flow_key: str) -> None:
        row = self._slot.get(flow_key)
        if row is not None:
            self._free_rows(np.array([row]))


def round_of(forecasts: Sequence[tuple[str, FlowForecast]]) -> RoundForecasts:
    """Forecasts given as objects, as a round's arrays (their results as they are)."""
    first = forecasts[0][1]
    models = {f.model for _, f in forecasts}
    assert len(models) == 1, "a round's forecasts are of one model"
    b = len(forecasts)
    kept = [i for i, (_, f) in enumerate(forecasts) if f.interval is not None]
    interval, has_interval = None, None
    if kept:
        shape = forecasts[kept[0]][1].interval.shape  # type: ignore[union-attr]
        interval, has_interval = np.zeros((b, *shape)), np.zeros(b, dtype=bool)
        for i in kept:
            interval[i] = forecasts[i][1].interval
        has_interval[kept] = True

    def column(name: str, dtype: type) -> np.ndarray:
        return np.fromiter((getattr(f, name) for _, f in forecasts), dtype, b)

    def score(name: str, dtype: type) -> np.ndarray:
        return np.fromiter((getattr(f.score, name) for _, f in forecasts), dtype, b)

    return RoundForecasts(
        [key for key, _ in forecasts],
        first.model,
        column("base_ts", np.int64),
        column("latency", np.float64),
        column("persistence", np.float64),
        column("ewma", np.float64),
        score("scored", np.int64),
        score("model", np.float64),
        score("persistence", np.float64),
        score("ewma", np.float64),
        interval,
        RoundResults.given([f for _, f in forecasts]),
        has_interval,
    )


def create_forecast_store(
    url: str,
    *,
    ttl_ms: int,
    max_flows: int,
    prefix: str = "cpe:fc:",
    client: Redis | RedisCluster | None = None,
) -> ForecastStore:
    """The store that ``url``'s scheme names, imported only when chosen."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryForecasts(ttl_ms=ttl_ms, max_flows=max_flows)
    if scheme in REDIS_SCHEMES:
        from app.forecasts.redis import RedisForecasts

        return RedisForecasts(url, client=client, prefix=prefix, ttl_ms=ttl_ms)
    raise ValueError(
        f"unsupported forecast URL scheme {scheme!r}; expected memory://, redis://host:port/db or "
        "redis+cluster://host:port"
    )
