"""Pattern memory's figures: memory at N windows, insert rate while serving searches, search latency at
k = 10, recall at 10 against exact search. And, with ``--compare``, the candidate libraries side by side.

    python -m scripts.bench_patterns              # 1,000,000 windows (several minutes)
    python -m scripts.bench_patterns --quick      # 20,000 windows, a smoke test
    python -m scripts.bench_patterns --compare --n 200000   # hnswlib, usearch, faiss-cpu, same data
    python -m scripts.bench_patterns --sweep --n 200000     # the index's settings side by side

The vectors: real embeddings of the served model (``--model``, default the LSTM, E = 32) of windows cut
from seeded traces (``models/traces.py``), ``--real`` of them, each repeated with a small Gaussian jitter
(renormalised) up to N: real windows are too slow to embed by the million here, and the jittered copies
keep the embeddings' shape (clusters of similar windows), which is what makes recall hard. The insert
rate is that of the full memory (every insert evicting, ``--steady`` x N of them) while a thread
searches every half millisecond; the fill of the empty memory is reported beside it. The targets
(issue #16): 1M windows in <= 1 GiB resident, >= 20,000 inserts/s while serving, search p50 <= 1 ms and
p99 <= 5 ms at k = 10, recall at 10 >= 0.95. Figures on a shared machine are noisy: run it three times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

TARGETS = {"rss_mib": 1024, "insert_per_s": 20_000, "p50_ms": 1.0, "p99_ms": 5.0, "recall_at_10": 0.95}
LIBRARIES = ("hnswlib", "usearch", "faiss")
BATCH = 1024  # windows per insert: continuous prediction's rounds are of this order
LABELS = 50  # pattern ids, one per window in turn: filters of 50 %, 10 %, 2 % of the windows


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def vectors(model: str, n: int, real: int, seed: int = 0) -> np.ndarray:
    """(n, E) float32 unit vectors: ``real`` embeddings of trace windows, jittered copies up to ``n``."""
    from models.checkpoint import CHECKPOINT_DIR
    from models.predictor import Predictor
    from models.traces import generate_routes
    from tools.analogy import embed_traces

    predictor = Predictor.load(CHECKPOINT_DIR / f"{model}.safetensors")
    routes = max(1, real // 500)
    base = embed_traces(
        predictor, generate_routes(seed, routes, 500 + predictor.seq_len, "train"), "bench"
    ).embedding
    base = base[:real]
    rng = np.random.default_rng(seed)
    x = base[rng.integers(0, len(base), n)] + rng.normal(0.0, 0.02, (n, base.shape[1])).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top10(x: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    out = []
    for i in range(0, len(queries), 50):  # unit vectors: nearest = largest dot product
        sims = queries[i : i + 50] @ x.T
        out.extend(set(row.tolist()) for row in np.argpartition(-sims, 10, axis=1)[:, :10])
    return out


def percentiles(latencies: list[float]) -> tuple[float, float]:
    a = np.array(latencies) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def bench_memory(
    x: np.ndarray,
    queries: np.ndarray,
    threads: int,
    *,
    m: int | None = None,
    ef_construction: int | None = None,
    segments: int | None = None,
    ef_search: int | None = None,
    steady: float = 0.5,
) -> dict[str, Any]:
    """PatternMemory itself: fill it while a thread searches, then keep inserting into the full ring
    (``steady`` x N more windows, each evicting an old one) while the thread still searches: the insert
    rate of a memory in service. Recall at the end, against exact search over what is stored."""
    from app.patterns import index as ix
    from app.patterns.memory import Batch, PatternMemory

    n, dim = x.shape
    before = rss_mib()
    memory = PatternMemory(dim, 8, capacity=n)
    memory.index = ix.VectorIndex(
        dim,
        n,
        ef_search=ef_search or ix.EF_SEARCH,
        m=m or ix.M,
        ef_construction=ef_construction or ix.EF_CONSTRUCTION,
        segments=ix.SEGMENTS if segments is None else segments,
    )
    zeros = np.zeros((BATCH, 8), np.float32)
    keys = [f"{i:064x}" for i in range(4096)]  # 4096 flows
    labels = [(f"p{j}", 0.5 if j % 2 else 0.9) for j in range(LABELS)]  # Layer 2's, LABELS of them

    def batch(lo: int, hi: int) -> Batch:
        # window i goes to slot i % n: past the first n, take another vector than the slot held (hnswlib
        # replaces an element by itself much cheaper than by another)
        i = np.arange(lo, hi)
        rows = (i + (i // n) * (n // 3 + 7)) % n
        return Batch(
            vectors=x[rows],
            flow_keys=[keys[i % 4096] for i in range(lo, hi)],
            timestamps=np.arange(lo, hi, dtype=np.int64),
            next=zeros[: hi - lo],
            next_scaled=zeros[: hi - lo],
            change=zeros[: hi - lo, 0],
            labels=[labels[j % LABELS] for j in range(lo, hi)],
        )

    stop = threading.Event()
    latencies: list[float] = []
    search_cpu: list[float] = []  # the searching thread's CPU per search: what is work, not waiting

    def searcher() -> None:
        i = 0
        while not stop.is_set():
            if len(memory) >= 10:
                t, c = time.perf_counter(), time.thread_time()
                memory.search(queries[i % len(queries)][None], 10)
                latencies.append(time.perf_counter() - t)
                search_cpu.append(time.thread_time() - c)
                i += 1
            time.sleep(0.0005)  # a search every half millisecond or so: a serving load, not a flood

    def fill(lo: int, hi: int) -> tuple[float, float, list[float]]:
        """Insert windows lo..hi while the searcher runs: seconds, CPU seconds, its search latencies."""
        latencies.clear()
        search_cpu.clear()
        stop.clear()
        reader = threading.Thread(target=searcher, daemon=True)
        reader.start()
        # CPU: the inserting thread's, or with more insert threads the process's (the searcher's too)
        clock = time.thread_time if threads == 1 else time.process_time
        t0, c0 = time.perf_counter(), clock()
        for a in range(lo, hi, BATCH):
            memory.insert(batch(a, min(hi, a + BATCH)), threads)
        spent, cpu = time.perf_counter() - t0, clock() - c0
        stop.set()
        reader.join()
        return spent, cpu, list(latencies)

    fill_s, fill_cpu_s, during_fill = fill(0, n)
    rss = rss_mib() - before
    extra = int(steady * n)
    steady_s, steady_cpu_s, serving = fill(n, n + extra)  # the ring full: every insert evicts
    serving_cpu = list(search_cpu)
    rss_steady = rss_mib() - before
    stored = memory.index.vectors(np.flatnonzero(memory.index.present))
    where = np.flatnonzero(memory.index.present)
    truth = [set(where[list(t)].tolist()) for t in exact_top10(stored, queries[:200])]
    found = memory.search(queries[:200], 10)
    recall = float(np.mean([len({m.slot for m in ms} & t) / 10 for ms, t in zip(found, truth, strict=True)]))
    by_ef = {}
    for ef in (48, 64, 96, 128, 192):  # what the search width buys, at this size
        memory.index.set_ef(ef)
        t = time.perf_counter()
        found = memory.search(queries[:200], 10)
        spent = (time.perf_counter() - t) / 200
        hits = [len({m.slot for m in ms} & want) / 10 for ms, want in zip(found, truth, strict=True)]
        by_ef[ef] = {"recall_at_10": round(float(np.mean(hits)), 4), "mean_ms": round(spent * 1e3, 3)}
    memory.index.set_ef(ef_search or ix.EF_SEARCH)
    idle = []
    for q in queries:
        t = time.perf_counter()
        memory.search(q[None], 10)
        idle.append(time.perf_counter() - t)
    filters = bench_filters(memory, queries[:300])
    p50, p99 = percentiles(serving) if serving else (float("nan"), float("nan"))
    p50_idle, p99_idle = percentiles(idle)
    p50_fill, p99_fill = percentiles(during_fill) if during_fill else (float("nan"), float("nan"))
    held = memory.index.bytes() + sum(
        getattr(memory, a).nbytes
        for a in ("flow", "timestamp", "embedding", "next", "next_scaled", "change", "label", "confidence")
    )
    return {
        "library": "hnswlib (PatternMemory)",
        "n": n,
        "dim": dim,
        "M": memory.index.m,
        "ef_construction": memory.index.ef_construction,
        "segments": 0 if memory.index.in_place else memory.index.segments,
        "ef_search": memory.index.ef_search,
        "insert_threads": threads,
        "rss_mib": round(max(rss, rss_steady), 1),
        "held_mib": round(held / 2**20, 1),
        "stored": len(memory),
        # the headline: inserts into the full ring (each evicting) while searches run
        "insert_per_s": round(extra / steady_s) if extra else round(n / fill_s),
        "insert_per_cpu_s": round(extra / steady_cpu_s) if extra else round(n / fill_cpu_s),
        "fill_per_s": round(n / fill_s),
        "fill_per_cpu_s": round(n / fill_cpu_s),
        "searches_while_inserting": len(serving),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "p50_cpu_ms": round(percentiles(serving_cpu)[0], 3) if serving_cpu else None,
        "p99_cpu_ms": round(percentiles(serving_cpu)[1], 3) if serving_cpu else None,
        "p50_ms_idle": round(p50_idle, 3),
        "p99_ms_idle": round(p99_idle, 3),
        "p50_ms_during_fill": round(p50_fill, 3),
        "p99_ms_during_fill": round(p99_fill, 3),
        "recall_at_10": round(recall, 4),
        "by_ef": by_ef,
        "filters": filters,
    }


def bench_filters(memory: Any, queries: np.ndarray) -> dict[str, Any]:
    """Searches with filters of several breadths: latency and recall against exact search over the
    windows each lets through; beside it, the latency of the way before (a mask over the whole ring
    made per search, and for the graph walk a Python list of it)."""
    from app.patterns import index as ix
    from app.patterns.memory import EXACT_BELOW, PatternFilter

    out = {}
    for name, where in (
        ("50%", PatternFilter(pattern_ids=tuple(f"p{j}" for j in range(0, LABELS, 2)))),
        ("10%", PatternFilter(pattern_ids=tuple(f"p{j}" for j in range(5)))),
        ("2%", PatternFilter(pattern_ids=("p7",))),
        ("one flow", PatternFilter(flow_key=f"{5:064x}")),
    ):
        allowed = memory._lets(where, slice(None))
        ok = np.flatnonzero(allowed)
        stored = memory.index.vectors(ok)
        now, before, hits = [], [], []
        for q in queries:
            t = time.perf_counter()
            [found] = memory.search(q[None], 10, where)
            now.append(time.perf_counter() - t)
            kk = min(10, len(ok))
            truth = set(ok[np.argpartition(-(stored @ q), kk - 1)[:kk]].tolist())
            hits.append(len({m.slot for m in found} & truth) / kk)
            t = time.perf_counter()  # before: the mask, its list and the filtered walk, or get_items
            mask = memory._lets(where, slice(None))
            if int(mask.sum()) >= EXACT_BELOW:
                flags = mask.tolist()
                for g in memory.index._graphs:
                    ix._search(g, q[None], 10, memory.index.ef_search, flags.__getitem__)
            else:
                chosen = np.flatnonzero(mask)
                d = q @ memory.index.vectors(chosen).T
                np.argpartition(-d, min(10, len(chosen)) - 1)
            before.append(time.perf_counter() - t)
        p50, p99 = percentiles(now)
        b50, b99 = percentiles(before)
        out[name] = {
            "windows": len(ok),
            "p50_ms": round(p50, 3),
            "p99_ms": round(p99, 3),
            "recall_at_10": round(float(np.mean(hits)), 4),
            "before_p50_ms": round(b50, 3),
            "before_p99_ms": round(b99, 3),
        }
    return out


def bench_library(library: str, x: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """One candidate library, bare, with the same graph settings where it has them (M 12, ef 48/64)."""
    from app.patterns.index import EF_CONSTRUCTION, EF_SEARCH, M

    n, dim = x.shape
    before = rss_mib()
    if library == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="l2", dim=dim)
        index.init_index(max_elements=n, M=M, ef_construction=EF_CONSTRUCTION)
        index.set_ef(EF_SEARCH)

        def add(lo: int, hi: int) -> None:
            index.add_items(x[lo:hi], np.arange(lo, hi), num_threads=1)

        def search(q: np.ndarray) -> set[int]:
            return set(index.knn_query(q[None], k=10, num_threads=1)[0][0].tolist())
    elif library == "usearch":
        from usearch.index import Index

        u = Index(
            ndim=dim,
            metric="l2sq",
            dtype="f32",
            connectivity=M,
            expansion_add=EF_CONSTRUCTION,
            expansion_search=EF_SEARCH,
        )

        def add(lo: int, hi: int) -> None:
            u.add(np.arange(lo, hi), x[lo:hi], threads=1)

        def search(q: np.ndarray) -> set[int]:
            return set(u.search(q, 10, threads=1).keys.tolist())
    elif library == "faiss":
        import faiss

        faiss.omp_set_num_threads(1)
        graph = faiss.IndexHNSWFlat(dim, M)
        graph.hnsw.efConstruction, graph.hnsw.efSearch = EF_CONSTRUCTION, EF_SEARCH
        f = faiss.IndexIDMap2(graph)

        def add(lo: int, hi: int) -> None:
            f.add_with_ids(x[lo:hi], np.arange(lo, hi))

        def search(q: np.ndarray) -> set[int]:
            return set(f.search(q[None], 10)[1][0].tolist())
    else:
        raise ValueError(f"unknown library {library!r}; expected one of {LIBRARIES}")
    t0, c0 = time.perf_counter(), time.thread_time()
    for lo in range(0, n, BATCH):
        add(lo, min(n, lo + BATCH))
    fill_s, fill_cpu_s = time.perf_counter() - t0, time.thread_time() - c0
    rss = rss_mib() - before
    latencies, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(search(q))
        latencies.append(time.perf_counter() - t)
    truth = exact_top10(x, queries[:200])
    recall = float(np.mean([len(a & b) / 10 for a, b in zip(found[:200], truth, strict=True)]))
    p50, p99 = percentiles(latencies)
    return {
        "library": library,
        "n": n,
        "dim": dim,
        "ef_search": EF_SEARCH,
        "rss_mib": round(rss, 1),
        "insert_per_s": round(n / fill_s),
        "insert_per_cpu_s": round(n / fill_cpu_s),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "recall_at_10": round(recall, 4),
    }


def verdict(r: dict[str, Any]) -> str:
    scale = 1_000_000 / r["n"]  # memory grows linearly with the windows held
    mib = max(r["rss_mib"], r.get("held_mib", 0.0))
    checks = [
        f"memory at 1M ~{mib * scale:.0f} MiB <= {TARGETS['rss_mib']}: {mib * scale <= TARGETS['rss_mib']}",
        f"insert {r['insert_per_s']}/s wall ({r['insert_per_cpu_s'] or '-'}/CPU-s) "
        f">= {TARGETS['insert_per_s']}: "
        f"{r['insert_per_s'] >= TARGETS['insert_per_s']}",
        f"p50 {r['p50_ms']} ms <= {TARGETS['p50_ms']}: {r['p50_ms'] <= TARGETS['p50_ms']}",
        f"p99 {r['p99_ms']} ms <= {TARGETS['p99_ms']}: {r['p99_ms'] <= TARGETS['p99_ms']}",
        f"recall@10 {r['recall_at_10']} >= {TARGETS['recall_at_10']}: "
        f"{r['recall_at_10'] >= TARGETS['recall_at_10']}",
    ]
    return "\n".join("  " + c for c in checks)


SWEEP = (  # (segments, M, ef_construction, ef_search, threads, project): the last session's first
    (0, 12, 48, 128, 1, 0),  # segments 0: one graph, replaced in place
    (0, 12, 32, 96, 1, 0),
    (4, 12, 48, 96, 1, 0),
    (4, 12, 32, 96, 1, 0),
    (4, 8, 32, 96, 1, 0),
    (4, 12, 24, 128, 1, 0),
    (8, 12, 32, 64, 1, 0),
    (4, 12, 32, 96, 2, 0),
    (4, 12, 32, 96, 1, 16),
)
COLUMNS = ("segments", "M", "ef_construction", "ef_search", "insert_threads", "dim")
FIGURES = ("insert_per_s", "insert_per_cpu_s", "fill_per_s", "fill_per_cpu_s", "recall_at_10")
FIGURES += ("p50_ms", "p99_ms", "p50_ms_idle", "p99_ms_idle", "rss_mib")


def projected(x: np.ndarray, queries: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Both on the first ``dim`` principal axes of ``x`` (fit on up to 100,000 of them), renormalised."""
    sample = x[:100_000]
    mean = sample.mean(axis=0)
    axes = np.linalg.svd(sample - mean, full_matrices=False)[2][:dim].T.astype(np.float32)
    out = []
    for a in (x, queries):
        p = a @ axes
        out.append((p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32))
    return out[0], out[1]


def sweep(args: argparse.Namespace) -> None:
    """Every SWEEP setting, each in its own process (fresh memory figures): a Markdown table."""
    print("| " + " | ".join(COLUMNS + FIGURES) + " |")
    print("|" + "---|" * (len(COLUMNS) + len(FIGURES)))
    for segments, m, efc, ef, threads, project in SWEEP:
        cmd = [sys.executable, "-m", "scripts.bench_patterns", "--n", str(args.n), "--real", str(args.real)]
        cmd += ["--model", args.model, "--queries", str(args.queries), "--steady", str(args.steady)]
        cmd += ["--segments", str(segments), "--m", str(m), "--ef-construction", str(efc)]
        cmd += ["--ef-search", str(ef), "--threads", str(threads), "--project", str(project)]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            print(f"| {segments} | {m} | {efc} | {ef} | {threads} | failed: {done.stderr[-200:]!r} |")
            continue
        r = json.loads(lines[0])
        print("| " + " | ".join(str(r[c]) for c in COLUMNS + FIGURES) + " |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="windows stored")
    parser.add_argument("--real", type=int, default=20_000, help="real embeddings the vectors derive from")
    parser.add_argument("--model", default="lstm", help="whose embeddings (lstm: E = 32, others: 64)")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="threads of one insert")
    parser.add_argument("--steady", type=float, default=0.5, help="windows inserted into the full ring, x N")
    parser.add_argument(
        "--segments", type=int, help="graphs in the ring (default: the index's; 0: one, replaced in place)"
    )
    parser.add_argument("--m", type=int, help="graph degree (default: the index's)")
    parser.add_argument("--ef-construction", type=int, help="insert width (default: the index's)")
    parser.add_argument("--ef-search", type=int, help="search width (default: the index's)")
    parser.add_argument("--project", type=int, default=0, help="store the embeddings on this many PCA axes")
    parser.add_argument("--quick", action="store_true", help="20,000 windows: a smoke test")
    parser.add_argument("--sweep", action="store_true", help="the index settings side by side (a table)")
    parser.add_argument(
        "--compare", action="store_true", help="every candidate library, each in its own process"
    )
    parser.add_argument(
        "--library", choices=LIBRARIES, help="one candidate library, bare (what --compare runs)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.real, args.queries = 20_000, 2_000, 300
    if args.sweep:
        sweep(args)
        return
    if args.compare:
        for library in LIBRARIES:
            cmd = [sys.executable, "-m", "scripts.bench_patterns", "--library", library]
            cmd += [
                "--n",
                str(args.n),
                "--real",
                str(args.real),
                "--model",
                args.model,
                "--queries",
                str(args.queries),
            ]
            subprocess.run(cmd, check=False)
        return
    x = vectors(args.model, args.n, args.real)
    queries = vectors(args.model, args.queries, args.real, seed=1)
    if args.project:
        x, queries = projected(x, queries, args.project)
    if args.library:
        result = bench_library(args.library, x, queries)
    else:
        result = bench_memory(
            x,
            queries,
            args.threads,
            m=args.m,
            ef_construction=args.ef_construction,
            segments=args.segments,
            ef_search=args.ef_search,
            steady=args.steady,
        )
    print(json.dumps(result))
    print(verdict(result))


if __name__ == "__main__":
    main()
