"""The approximate nearest-neighbour index of window embeddings: hnswlib's HNSW graph, by slot.

Why hnswlib: measured on this project's machine against usearch and faiss-cpu on the same embeddings
(the README's "Pattern memory" has the figures; ``python -m scripts.bench_patterns --compare``), it
inserted the most per CPU second and searched about as fast as the fastest, and it replaces an element in
place: a
bounded memory keeps its windows in a ring of ``capacity`` slots, and a new window takes the oldest one's
slot (its label) with one ``add_items``, graph links repaired, no tombstones. faiss' HNSW cannot remove,
its IVF needs training and removes by scanning; usearch removes by tombstone.

Thread use: hnswlib releases the GIL and allows searches while another thread inserts, so inserts run
in a worker thread and searches on the event loop (they take a fraction of a millisecond). Only one
thread inserts at a time (the store's lock).
"""

from __future__ import annotations

from pathlib import Path

import hnswlib
import numpy as np

# The graph's settings, with which recall at 10 stays above the 0.95 asked of it at 1M windows
# (bench_patterns reports recall by search width): a degree and an insert width at the low end of the
# usual range, since the insert rate is the tight target; the search width is what buys the recall back.
M = 12  # graph degree
EF_CONSTRUCTION = 48  # candidates per insert
EF_SEARCH = 128  # candidates per search, at least k


class VectorIndex:
    """Unit vectors of dimension ``dim`` by slot (0..capacity-1); a slot added again is replaced."""

    def __init__(self, dim: int, capacity: int, *, ef_search: int = EF_SEARCH) -> None:
        assert dim >= 1 and capacity >= 1, f"need dim and capacity >= 1, got {dim}, {capacity}"
        self.dim, self.capacity, self.ef_search = dim, capacity, ef_search
        self._index = hnswlib.Index(space="l2", dim=dim)
        self._index.init_index(max_elements=capacity, M=M, ef_construction=EF_CONSTRUCTION)
        self._index.set_ef(ef_search)

    def __len__(self) -> int:
        return int(self._index.element_count)

    def add(self, vectors: np.ndarray, slots: np.ndarray, threads: int = 1) -> None:
        """Put ``vectors`` (n, dim) float32 at ``slots`` (n,), replacing what those slots held."""
        assert vectors.shape == (len(slots), self.dim), (
            f"expected ({len(slots)}, {self.dim}), got {vectors.shape}"
        )
        self._index.add_items(np.ascontiguousarray(vectors, dtype=np.float32), slots, num_threads=threads)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest slots of each query (q, dim): slots (q, k') int64, squared L2 distances
        (q, k') float32, nearest first; k' = min(k, stored), or fewer while a full answer cannot be had."""
        k = min(k, len(self))
        queries = np.asarray(vectors, dtype=np.float32)
        # hnswlib refuses a query that finds fewer than k (a graph young or in the middle of an insert):
        # ask again with a wider search, then for fewer
        for ef, want in (
            (self.ef_search, k),
            (4 * max(k, self.ef_search), k),
            (4 * max(k, self.ef_search), k // 2),
        ):
            if want == 0:
                break
            try:
                return self._query(queries, want, max(ef, want))
            except RuntimeError:
                continue
        return np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32)

    def _query(self, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        if ef != self.ef_search:
            self._index.set_ef(ef)
        try:
            slots, distances = self._index.knn_query(queries, k=k, num_threads=1)
        finally:
            if ef != self.ef_search:
                self._index.set_ef(self.ef_search)
        return slots.astype(np.int64), distances

    def search_where(self, vectors: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``search`` among the slots where ``allowed`` (capacity,) bool is true only."""
        k = min(k, int(allowed.sum()))
        if k == 0:
            return np.empty((len(vectors), 0), np.int64), np.empty((len(vectors), 0), np.float32)
        flags = allowed.tolist()  # the graph walk asks per slot: a list answers faster than numpy
        slots, distances = self._index.knn_query(
            np.asarray(vectors, dtype=np.float32), k=k, num_threads=1, filter=flags.__getitem__
        )
        return slots.astype(np.int64), distances

    def vectors(self, slots: np.ndarray) -> np.ndarray:
        """The stored vectors of ``slots`` (n, dim) float32 (exact search over a filtered few)."""
        if len(slots) == 0:
            return np.empty((0, self.dim), np.float32)
        return np.asarray(self._index.get_items(slots, return_type="numpy"), dtype=np.float32)

    def bytes(self) -> int:
        """What the index holds in memory: its graph and vectors, as hnswlib would write them."""
        return int(self._index.index_file_size())

    def save(self, path: Path) -> None:
        self._index.save_index(str(path))

    @classmethod
    def load(cls, path: Path, dim: int, capacity: int, *, ef_search: int = EF_SEARCH) -> VectorIndex:
        """The index saved at ``path``; a ValueError when it is not one of ``dim`` and ``capacity``."""
        index = cls.__new__(cls)
        index.dim, index.capacity, index.ef_search = dim, capacity, ef_search
        raw = hnswlib.Index(space="l2", dim=dim)
        try:
            raw.load_index(str(path), max_elements=capacity)
        except RuntimeError as exc:
            raise ValueError(f"{path}: not an index of dimension {dim}: {exc}") from None
        if raw.dim != dim or raw.max_elements != capacity:
            raise ValueError(f"{path}: an index of {raw.dim} x {raw.max_elements}, not {dim} x {capacity}")
        raw.set_ef(ef_search)
        index._index = raw
        return index
