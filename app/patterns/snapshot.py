"""Pattern memory on disk: written now and then and at shutdown, read back at start.

Files beside each other: ``<path>.npz`` (the windows' metadata and the name tables, NumPy arrays
and JSON, never pickles) and ``<path>.<written>.<part>.hnsw`` (hnswlib's own file of each of the index's
graphs, named by the count of windows ever stored when it was written). The graphs are written first,
then the metadata (to a temporary name, renamed) that names them, then older graph files are removed:
a crash at any point leaves a metadata file and the graphs it names. A snapshot that cannot
be read, or was made for another embedding width or capacity (another model, other settings), is
logged and skipped: the memory starts empty and fills again from the forecasts.

The name tables are written compacted: flows and labels that no stored window names any more (evicted)
are left out, so that a restart begins with tables as small as what is stored.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from app.patterns.index import VectorIndex
from app.patterns.memory import PatternMemory, compacted

log = logging.getLogger("cpe.patterns")

FORMAT = "cpe-patterns/2"  # 2: one file per graph of the ring
_ARRAYS = ("flow", "timestamp", "embedding", "next", "next_scaled", "change", "label", "confidence")


def files(path: Path, written: int, parts: int) -> tuple[Path, list[Path]]:
    """The metadata file of the snapshot at ``path``, and its graphs' files when ``written`` were stored."""
    graphs = [path.with_name(f"{path.name}.{written}.{j}.hnsw") for j in range(parts)]
    return path.with_name(path.name + ".npz"), graphs


def save(memory: PatternMemory, path: Path) -> int:
    """Write ``memory`` to ``path`` (blocking: call it from a worker thread); the windows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with memory._lock:
        meta_path, graph_paths = files(path, memory.written, memory.index.segments)
        # the file gets compacted copies: the live tables are renumbered only by the writer (memory.py)
        flows, flow = compacted(memory.flow_names, memory.flow)
        labels, label = compacted(memory.label_names, memory.label)
        names = memory.index.save(graph_paths)
        header = {
            "format": FORMAT,
            "dim": memory.dim,
            "capacity": memory.capacity,
            "n_features": memory.n_features,
            "written": memory.written,
            "flows": flows,
            "labels": labels,
            "index": names,
        }
        arrays = {name: getattr(memory, name) for name in _ARRAYS} | {"flow": flow, "label": label}
        tmp_meta = meta_path.with_name(meta_path.name + ".tmp")
        with open(tmp_meta, "wb") as f:
            np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
        os.replace(tmp_meta, meta_path)
        for old in path.parent.glob(f"{path.name}.*.hnsw"):
            if old.name not in names:
                old.unlink(missing_ok=True)
        return len(memory)


def load(memory: PatternMemory, path: Path) -> int:
    """Fill the empty ``memory`` from the snapshot at ``path``; the windows read (0 when there is none,
    or it does not fit this memory: logged)."""
    meta_path, _ = files(path, 0, 0)
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
        graphs = [None if name is None else path.with_name(str(name)) for name in header["index"]]
        index = VectorIndex.load(graphs, memory.dim, memory.capacity)
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
        memory._masks.clear()
    log.info("pattern memory: %d windows read from %s", len(memory), path)
    return len(memory)
