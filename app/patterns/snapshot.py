"""Pattern memory on disk: written now and then and at shutdown, read back at start.

Two files beside each other: ``<path>.npz`` (the windows' metadata and the name tables, NumPy arrays
and JSON, never pickles) and ``<path>.<written>.hnsw`` (hnswlib's own index file, named by the count of
windows ever stored when it was written). The index is written first, then the metadata (to a temporary
name, renamed) that names it, then older index files are removed: a crash at any point leaves a
metadata file and the index it names. A snapshot that cannot
be read, or was made for another embedding width or capacity (another model, other settings), is
logged and skipped: the memory starts empty and fills again from the forecasts.

The name tables are compacted as the snapshot is written: flows and labels that no stored window names
any more (evicted) are dropped, so that the tables stay as small as what is stored.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from app.patterns.index import VectorIndex
from app.patterns.memory import PatternMemory

log = logging.getLogger("cpe.patterns")

FORMAT = "cpe-patterns/1"
_ARRAYS = ("flow", "timestamp", "next", "next_scaled", "change", "label", "confidence")


def files(path: Path, written: int) -> tuple[Path, Path]:
    """The metadata file of the snapshot at ``path``, and its index file when ``written`` were stored."""
    return path.with_name(path.name + ".npz"), path.with_name(f"{path.name}.{written}.hnsw")


def save(memory: PatternMemory, path: Path) -> int:
    """Write ``memory`` to ``path`` (blocking: call it from a worker thread); the windows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with memory._lock:
        meta_path, index_path = files(path, memory.written)
        _compact(memory)
        memory.index.save(index_path)
        header = {
            "format": FORMAT,
            "dim": memory.dim,
            "capacity": memory.capacity,
            "n_features": memory.n_features,
            "written": memory.written,
            "flows": memory.flow_names,
            "labels": memory.label_names,
            "index": index_path.name,
        }
        arrays = {name: getattr(memory, name) for name in _ARRAYS}
        tmp_meta = meta_path.with_name(meta_path.name + ".tmp")
        with open(tmp_meta, "wb") as f:
            np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
        os.replace(tmp_meta, meta_path)
        for old in path.parent.glob(f"{path.name}.*.hnsw"):
            if old != index_path:
                old.unlink(missing_ok=True)
        return len(memory)


def load(memory: PatternMemory, path: Path) -> int:
    """Fill the empty ``memory`` from the snapshot at ``path``; the windows read (0 when there is none,
    or it does not fit this memory: logged)."""
    meta_path, _ = files(path, 0)
    if not meta_path.exists():
        return 0
    try:
        with np.load(meta_path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            arrays = {name: z[name] for name in _ARRAYS}
        want = {
            "format": FORMAT,
            "dim": memory.dim,
            "capacity": memory.capacity,
            "n_features": memory.n_features,
        }
        got = {key: header.get(key) for key in want}
        if got != want:
            raise ValueError(f"made for {got}, this memory is {want}")
        index_path = path.with_name(str(header["index"]))
        index = VectorIndex.load(index_path, memory.dim, memory.capacity)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("pattern memory starts empty: the snapshot at %s cannot be used (%s)", path, exc)
        return 0
    with memory._lock:
        memory.index = index
        for name, array in arrays.items():
            getattr(memory, name)[...] = array
        memory.written = int(header["written"])
        memory.flow_names = list(header["flows"])
        memory.flow_ids = {name: i for i, name in enumerate(memory.flow_names)}
        memory.label_names = list(header["labels"])
        memory.label_ids = {name: i for i, name in enumerate(memory.label_names)}
    log.info("pattern memory: %d windows read from %s", len(memory), path)
    return len(memory)


def _compact(memory: PatternMemory) -> None:
    """Drop the names no stored window uses and renumber the rest (under the memory's lock)."""
    for ids_attr, names_attr, column in (
        ("flow_ids", "flow_names", memory.flow),
        ("label_ids", "label_names", memory.label),
    ):
        names: list[str] = getattr(memory, names_attr)
        used = np.unique(column[column >= 0])
        if len(used) == len(names):
            continue
        remap = np.full(len(names) + 1, -1, np.int32)  # the last entry maps -1 to -1
        remap[used] = np.arange(len(used), dtype=np.int32)
        column[...] = remap[column]
        kept = [names[i] for i in used.tolist()]
        setattr(memory, names_attr, kept)
        setattr(memory, ids_attr, {name: i for i, name in enumerate(kept)})
