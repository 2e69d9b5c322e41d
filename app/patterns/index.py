"""The approximate nearest-neighbour index of window embeddings: hnswlib's HNSW graphs, by slot.

Why hnswlib: measured on this project's machine against usearch and faiss-cpu on the same embeddings
(the README's "Pattern memory" has the figures; ``python -m scripts.bench_patterns --compare``), it
inserted the most per CPU second and searched about as fast as the fastest.

A ring of graphs. The memory keeps its windows in a ring of ``capacity`` slots, cut into ``segments``
parts, each its own graph. The writer fills one part after the other with fresh inserts; coming back
to a full part, it drops that part's graph whole (its windows, the oldest, are evicted together) and
starts an empty one. Why not one graph, a new window replacing the oldest in place: hnswlib can, but
a replacement repairs the links of the old element's neighbours and their neighbours, and measured
three to four times the CPU of a fresh insert (``bench_patterns`` reports both), so a full memory
inserted at a third of its filling rate. The cost of parts: a search asks each graph (each smaller,
so each a little cheaper), and the memory holds between ``capacity - capacity / segments`` and
``capacity`` windows once full.

Thread use: hnswlib releases the GIL and allows searches while another thread inserts, so inserts run
in a worker thread and searches on the event loop (they take a fraction of a millisecond). Only one
thread inserts at a time (the store's lock). A part dropped while a search walks it stays alive until
that search is done (the search holds a reference).
"""

from __future__ import annotations

import math
from pathlib import Path

import hnswlib
import numpy as np

# The graphs' settings, with which recall at 10 stays above the 0.95 asked of it at 1M windows
# (bench_patterns --sweep reports insert rate and recall by these): a degree and an insert width at
# the low end of the usual range, since the insert rate is the tight target; the search width is what
# buys the recall back.
M = 12  # graph degree
EF_CONSTRUCTION = 32  # candidates per insert
EF_SEARCH = 96  # candidates per search, at least k
SEGMENTS = 4  # graphs in the ring


class VectorIndex:
    """Unit vectors of dimension ``dim`` by slot (0..capacity-1), in ``segments`` graphs of consecutive
    slots; adding a slot that its graph already holds empties that graph first (``add``)."""

    def __init__(
        self,
        dim: int,
        capacity: int,
        *,  # segments 0: one graph whose slots are replaced in place (hnswlib's update), for comparison
        ef_search: int = EF_SEARCH,
        segments: int = SEGMENTS,
        m: int = M,
        ef_construction: int = EF_CONSTRUCTION,
    ) -> None:
        assert dim >= 1 and capacity >= 1, f"need dim and capacity >= 1, got {dim}, {capacity}"
        self.dim, self.capacity, self.ef_search = dim, capacity, ef_search
        self.m, self.ef_construction = m, ef_construction
        self.in_place = segments == 0  # one graph, a slot replaced in place (to measure against)
        self.size = math.ceil(capacity / max(1, min(segments, capacity)))  # slots per graph
        self.segments = math.ceil(capacity / self.size)
        self.present = np.zeros(capacity, bool)  # slots whose window the graphs hold
        self._graphs = [self._empty(j) for j in range(self.segments)]

    def _empty(self, j: int) -> hnswlib.Index:
        graph = hnswlib.Index(space="l2", dim=self.dim)
        graph.init_index(max_elements=self._slots(j), M=self.m, ef_construction=self.ef_construction)
        graph.set_ef(self.ef_search)
        return graph

    def _slots(self, j: int) -> int:
        return min(self.capacity, (j + 1) * self.size) - j * self.size

    def __len__(self) -> int:
        return sum(int(g.element_count) for g in self._graphs)

    def set_ef(self, ef_search: int) -> None:
        """The search width of every graph (the benchmark's sweep)."""
        self.ef_search = ef_search
        for g in self._graphs:
            g.set_ef(ef_search)

    def add(self, vectors: np.ndarray, slots: np.ndarray, threads: int = 1) -> np.ndarray:
        """Put ``vectors`` (n, dim) float32 at the distinct ``slots`` (n,). A graph that already holds one
        of its slots is emptied first: the slots so evicted (and not written again here) are returned."""
        assert vectors.shape == (len(slots), self.dim), (
            f"expected ({len(slots)}, {self.dim}), got {vectors.shape}"
        )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        slots = np.asarray(slots, np.int64)
        part = slots // self.size
        evicted = []
        for j in np.unique(part).tolist():
            mine = np.flatnonzero(part == j)
            if not self.in_place and self.present[slots[mine]].any():  # the ring is back: drop it whole
                lo, hi = j * self.size, j * self.size + self._slots(j)
                gone = np.flatnonzero(self.present[lo:hi]) + lo
                self.present[lo:hi] = False
                self._graphs[j] = self._empty(j)
                evicted.append(gone)
            self._graphs[j].add_items(vectors[mine], slots[mine], num_threads=threads)
            self.present[slots[mine]] = True
        if not evicted:
            return np.empty(0, np.int64)
        gone = np.concatenate(evicted)
        return gone[~self.present[gone]]

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest slots of each query (q, dim): slots (q, k') int64, squared L2 distances
        (q, k') float32, nearest first; k' = min(k, stored), or fewer while a full answer cannot be had."""
        queries = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        found = [_search(g, queries, k, self.ef_search) for g in self._graphs if g.element_count]
        return _merged(found, len(queries), k)

    def search_where(self, vectors: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``search`` among the slots where ``allowed`` (capacity,) bool is true only: each graph walk
        asks ``allowed`` of the slots it visits (a few thousand), never of all."""
        queries = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        lets = allowed.__getitem__
        found = []
        for j, g in enumerate(self._graphs):
            lo = j * self.size
            here = int(np.count_nonzero(allowed[lo : lo + self._slots(j)]))
            if here and g.element_count:
                found.append(_search(g, queries, min(k, here), self.ef_search, lets))
        return _merged(found, len(queries), k)

    def vectors(self, slots: np.ndarray) -> np.ndarray:
        """The stored vectors of ``slots`` (n, dim) float32, copied element by element (the benchmark)."""
        slots = np.asarray(slots, np.int64)
        out = np.empty((len(slots), self.dim), np.float32)
        part = slots // self.size
        for j in np.unique(part).tolist():
            mine = np.flatnonzero(part == j)
            out[mine] = self._graphs[j].get_items(slots[mine], return_type="numpy")
        return out

    def bytes(self) -> int:
        """What the index holds in memory: its graphs and vectors, as hnswlib would write them."""
        return sum(int(g.index_file_size()) for g in self._graphs)

    def save(self, paths: list[Path]) -> list[str | None]:
        """Each graph to its path (``segments`` of them); the names written, None for an empty graph."""
        assert len(paths) == self.segments, f"expected {self.segments} paths, got {len(paths)}"
        names: list[str | None] = []
        for g, path in zip(self._graphs, paths, strict=True):
            if g.element_count:
                g.save_index(str(path))
                names.append(path.name)
            else:
                names.append(None)
        return names

    @classmethod
    def load(
        cls, paths: list[Path | None], dim: int, capacity: int, *, ef_search: int = EF_SEARCH
    ) -> VectorIndex:
        """The graphs saved at ``paths`` (None: an empty one); a ValueError when they are not of ``dim``
        and ``capacity`` in as many graphs as this build makes."""
        index = cls(dim, capacity, ef_search=ef_search)
        if len(paths) != index.segments:
            raise ValueError(f"{len(paths)} graphs, not {index.segments}")
        for j, path in enumerate(paths):
            if path is None:
                continue
            raw = hnswlib.Index(space="l2", dim=dim)
            try:
                raw.load_index(str(path), max_elements=index._slots(j))
            except RuntimeError as exc:
                raise ValueError(f"{path}: not an index of dimension {dim}: {exc}") from None
            if raw.dim != dim or raw.max_elements != index._slots(j):
                raise ValueError(
                    f"{path}: a graph of {raw.dim} x {raw.max_elements}, not {dim} x {index._slots(j)}"
                )
            raw.set_ef(ef_search)
            index._graphs[j] = raw
            held = np.asarray(raw.get_ids_list(), np.int64)
            lo, hi = j * index.size, j * index.size + index._slots(j)
            if len(held) and (held.min() < lo or held.max() >= hi):
                raise ValueError(f"{path}: holds slots outside {lo}..{hi - 1}")
            index.present[held] = True
        return index


def _search(
    graph: hnswlib.Index, queries: np.ndarray, k: int, ef_search: int, allowed: object = None
) -> tuple[np.ndarray, np.ndarray]:
    """One graph's ``k`` nearest. hnswlib refuses a query that finds fewer than k (a graph young or in
    the middle of an insert, a filter it walks past): ask again with a wider search, then for fewer."""
    k = min(k, int(graph.element_count))
    for ef, want in ((ef_search, k), (4 * max(k, ef_search), k), (4 * max(k, ef_search), k // 2)):
        if want == 0:
            break
        ef = max(ef, want)
        if ef != ef_search:
            graph.set_ef(ef)
        try:
            slots, distances = graph.knn_query(queries, k=want, num_threads=1, filter=allowed)
            return slots.astype(np.int64), distances
        except RuntimeError:
            continue
        finally:
            if ef != ef_search:
                graph.set_ef(ef_search)
    return np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32)


def _merged(found: list[tuple[np.ndarray, np.ndarray]], q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of several graphs' answers, nearest first."""
    if not found:
        return np.empty((q, 0), np.int64), np.empty((q, 0), np.float32)
    if len(found) == 1:
        return found[0]
    slots = np.concatenate([s for s, _ in found], axis=1)
    distances = np.concatenate([d for _, d in found], axis=1)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(slots, order, axis=1), np.take_along_axis(distances, order, axis=1)
