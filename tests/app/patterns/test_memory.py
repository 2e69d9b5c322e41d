"""PatternMemory on its own: the index, the ring, filters, summaries, outcomes, snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.patterns import snapshot
from app.patterns.memory import EXACT_BELOW, Batch, PatternFilter, PatternMemory, UnknownPattern
from models.scaling import Scaler

DIM, D = 16, 8


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def batch(
    vectors: np.ndarray, start: int = 0, flows: int = 10, labels: list[tuple[str, float] | None] | None = None
) -> Batch:
    n = len(vectors)
    nxt = (
        np.tile(np.arange(D, dtype=np.float32), (n, 1))
        + np.arange(start, start + n, dtype=np.float32)[:, None]
    )
    return Batch(
        vectors=vectors,
        flow_keys=[f"{(start + i) % flows:064x}" for i in range(n)],
        timestamps=np.arange(start, start + n, dtype=np.int64) * 1000,
        next=nxt,
        next_scaled=np.zeros((n, D), np.float32),
        change=np.arange(start, start + n, dtype=np.float32),
        labels=labels or [],
    )


def test_the_nearest_stored_window_is_found_with_its_outcome() -> None:
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((500, DIM)))
    memory = PatternMemory(DIM, D, capacity=1000)
    memory.insert(batch(x))
    [matches] = memory.search(x[123][None], 5)
    assert matches[0].slot == 123 and matches[0].distance == pytest.approx(0.0, abs=1e-5)
    assert matches[0].timestamp == 123_000 and matches[0].next[0] == 123.0
    assert [m.distance for m in matches] == sorted(m.distance for m in matches)
    assert len(matches) == 5


def test_the_memory_is_bounded_and_evicts_the_oldest() -> None:
    rng = np.random.default_rng(1)
    memory = PatternMemory(DIM, D, capacity=100)
    assert memory.index.segments == 4  # a ring of four graphs of 25 slots
    x = unit(rng.standard_normal((250, DIM)))
    for lo in range(0, 240, 30):
        memory.insert(batch(x[lo : lo + 30], start=lo))
    # 240 written: the graph of slots 25..49 was dropped whole when the ring came back to it at 225
    assert len(memory) == 90 and memory.written == 240
    held = memory.flow >= 0
    assert int(held.sum()) == 90 and int(memory.timestamp[held].min()) == 150_000
    memory.insert(batch(x[240:], start=240))
    assert len(memory) == 100 and memory.written == 250
    assert int(memory.timestamp.min()) == 150_000  # the 150 oldest are gone
    [old] = memory.search(x[10][None], 1)
    assert old[0].timestamp >= 150_000  # no evicted window is ever answered
    [new] = memory.search(x[240][None], 1)
    assert new[0].timestamp == 240_000


def test_a_filter_by_pattern_id_and_confidence_answers_only_those_windows() -> None:
    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((300, DIM)))
    labels: list[tuple[str, float] | None] = [
        ("burst", 0.9) if i % 3 == 0 else ("calm", 0.4) if i % 3 == 1 else None for i in range(300)
    ]
    memory = PatternMemory(DIM, D, capacity=300)
    memory.insert(batch(x, labels=labels))
    [burst] = memory.search(x[1][None], 10, PatternFilter(pattern_ids=("burst",)))
    assert len(burst) == 10 and {m.pattern_id for m in burst} == {"burst"}
    # exact over the filtered few: the true nearest burst windows
    truth = np.argsort(((x[::3] - x[1]) ** 2).sum(axis=1))[:10] * 3
    assert [m.slot for m in burst] == truth.tolist()
    [sure] = memory.search(x[1][None], 10, PatternFilter(min_confidence=0.5))
    assert {m.pattern_id for m in sure} == {"burst"}
    [one] = memory.search(x[1][None], 10, PatternFilter(flow_key=f"{4:064x}"))
    assert {m.flow_key for m in one} == {f"{4:064x}"} and len(one) == 10  # flows of 10: 30 windows each
    assert memory.search(x[1][None], 10, PatternFilter(pattern_ids=("never",))) == [[]]


def test_a_filter_that_leaves_many_windows_walks_the_graph() -> None:
    rng = np.random.default_rng(3)
    n = EXACT_BELOW + 5000
    x = unit(rng.standard_normal((n, 8)))
    memory = PatternMemory(8, D, capacity=n)
    labels: list[tuple[str, float] | None] = [("even", 1.0) if i % 2 == 0 else None for i in range(n)]
    memory.insert(batch(x, labels=labels), threads=2)
    [found] = memory.search(x[2][None], 10, PatternFilter(pattern_ids=("even",)))
    assert found[0].slot == 2 and all(m.slot % 2 == 0 for m in found)


def test_filters_of_every_breadth_answer_only_their_windows_nearest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.patterns import memory as module

    monkeypatch.setattr(module, "EXACT_BELOW", 30)  # the graph paths with a small memory
    monkeypatch.setattr(module, "BROAD", 0.05)
    rng = np.random.default_rng(8)
    n = 2000
    x = unit(rng.standard_normal((n, 8)))
    labels: list[tuple[str, float] | None] = [(f"p{i % 100}", 1.0) for i in range(n)]
    memory = PatternMemory(8, D, capacity=n)
    memory.insert(batch(x, labels=labels))
    broad, mid, few = tuple(f"p{j}" for j in range(50)), ("p0", "p1"), ("p7",)
    for ids in (broad, mid, few):  # 50 %: asked for more and kept; 2 %: the filtered walk; 20: exact
        where = PatternFilter(pattern_ids=ids)
        [found] = memory.search(x[3][None], 10, where)
        ok = np.flatnonzero(np.isin(np.arange(n) % 100, [int(p[1:]) for p in ids]))
        truth = ok[np.argsort(((x[ok] - x[3]) ** 2).sum(axis=1))[:10]]
        assert len(found) == 10 and {m.pattern_id for m in found} <= set(ids)
        assert len({m.slot for m in found} & set(truth.tolist())) >= 9  # approximate: recall 0.9 at least
        assert [m.distance for m in found] == sorted(m.distance for m in found)


def test_a_filters_kept_mask_follows_inserts_and_evictions() -> None:
    rng = np.random.default_rng(9)
    memory = PatternMemory(8, D, capacity=400)
    where = PatternFilter(pattern_ids=("hot",), min_confidence=0.5)

    def labelled(lo: int, m: int) -> list[tuple[str, float] | None]:
        return [("hot", 0.9) if (lo + i) % 3 == 0 else ("hot", 0.1) for i in range(m)]

    memory.insert(batch(unit(rng.standard_normal((200, 8))), labels=labelled(0, 200)))
    assert memory._mask(where)[1] == 67  # made once ...
    for lo in range(200, 1000, 100):  # ... then kept by the inserts, through the ring's evictions
        memory.insert(batch(unit(rng.standard_normal((100, 8))), start=lo, labels=labelled(lo, 100)))
        mask, count = memory._mask(where)
        fresh = memory._lets(where, slice(None))
        assert count == int(fresh.sum()) and np.array_equal(mask, fresh)
    [found] = memory.search(unit(rng.standard_normal((1, 8))), 5, where)
    assert len(found) == 5 and all(m.confidence == pytest.approx(0.9) for m in found)
    assert all(m.timestamp // 1000 % 3 == 0 and m.timestamp >= 600_000 for m in found)


def test_a_pattern_summary_says_what_followed_it_and_unknown_is_an_error() -> None:
    x = unit(np.random.default_rng(4).standard_normal((10, DIM)))
    labels: list[tuple[str, float] | None] = [("p", 0.5)] * 4 + [None] * 6
    memory = PatternMemory(DIM, D, capacity=10)
    memory.insert(batch(x, labels=labels))
    s = memory.summary("p")
    assert s.count == 4
    assert s.mean_latency_change_ms == pytest.approx(1.5)  # changes 0, 1, 2, 3
    assert s.latency_change_std_ms == pytest.approx(np.std([0, 1, 2, 3]))
    assert s.first_timestamp == 0 and s.last_timestamp == 3000
    one = memory.summary(f"{7:064x}@7000")  # an unlabelled window, by its name
    assert one.count == 1 and one.mean_latency_change_ms == 7.0
    with pytest.raises(UnknownPattern):
        memory.summary("q")
    with pytest.raises(UnknownPattern):
        memory.summary(f"{7:064x}@8000")


def test_a_window_is_stored_when_the_observation_after_it_arrives() -> None:
    scaler = Scaler()
    memory = PatternMemory(DIM, D, capacity=10)
    key = "ab" * 32
    memory.hear_labels([key], ["burst"], [0.7])
    emb = unit(np.ones((1, DIM)))[0]
    memory.remember(key, 5000, emb, np.zeros(D), np.ones(D), 20.0)
    ts = np.array([4000, 5000], np.int64)
    fs = np.full((2, D), 0.5)
    assert memory.resolve([key], [ts], [fs], scaler.transform) == 0  # nothing after 5000 yet
    ts2, fs2 = np.array([4000, 5000, 6000], np.int64), np.vstack([fs, np.full((1, D), 0.5)])
    fs2[2, 0] = 25.0
    assert memory.resolve([key], [ts2], [fs2], scaler.transform) == 1
    memory.insert(memory._queue.popleft())
    [[m]] = memory.search(emb[None], 1)
    assert (m.flow_key, m.timestamp, m.pattern_id) == (key, 5000, "burst")
    assert m.confidence == pytest.approx(0.7) and m.next[0] == 25.0
    assert memory.change[m.slot] == pytest.approx(5.0)
    assert m.next_scaled[0] == pytest.approx(scaler.transform(fs2[2])[0])  # centre 0, scale 1


def test_a_snapshot_reloads_the_same_memory_and_compacts_the_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = unit(rng.standard_normal((60, DIM)))
    memory = PatternMemory(DIM, D, capacity=40)
    memory.insert(batch(x[:30], flows=30, labels=[("old", 0.1)] * 30))
    memory.insert(batch(x[30:], start=30, flows=60))
    assert len(memory.flow_names) == 60
    path = tmp_path / "mem"
    assert snapshot.save(memory, path) == 40
    again = PatternMemory(DIM, D, capacity=40)
    assert snapshot.load(again, path) == 40
    assert len(again.flow_names) == 40  # the 20 evicted flows' names were left out
    [a] = memory.search(x[55][None], 5)
    [b] = again.search(x[55][None], 5)
    assert [(m.flow_key, m.timestamp, m.pattern_id) for m in a] == [
        (m.flow_key, m.timestamp, m.pattern_id) for m in b
    ]
    assert again.summary("old").count == 10
    again.insert(batch(x[:1], start=60))
    snapshot.save(again, path)  # once more: the newest graphs' files only, one per graph of the ring
    assert sorted(p.name for p in tmp_path.glob("mem.*.hnsw")) == [
        f"mem.61.{j}.hnsw" for j in range(again.index.segments)
    ]


def test_a_snapshot_of_another_shape_or_a_broken_one_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    memory = PatternMemory(DIM, D, capacity=40)
    memory.insert(batch(unit(np.random.default_rng(6).standard_normal((5, DIM)))))
    path = tmp_path / "mem"
    snapshot.save(memory, path)
    other = PatternMemory(DIM * 2, D, capacity=40)
    assert snapshot.load(other, path) == 0 and len(other) == 0
    assert "cannot be used" in caplog.text
    for f in tmp_path.glob("mem.*.hnsw"):
        f.write_bytes(b"garbage")
    same = PatternMemory(DIM, D, capacity=40)
    assert snapshot.load(same, path) == 0 and len(same) == 0
    assert snapshot.load(same, tmp_path / "none") == 0


def test_the_names_of_evicted_flows_do_not_pile_up() -> None:
    memory = PatternMemory(8, D, capacity=10)
    x = unit(np.random.default_rng(7).standard_normal((5000, 8)))
    for lo in range(0, 5000, 100):
        memory.insert(batch(x[lo : lo + 100], start=lo, flows=10**6))  # every window a new flow
    assert len(memory.flow_names) <= 2 * 10 + 4096 + 100
    [found] = memory.search(x[4999][None], 3)
    assert found[0].flow_key == f"{4999:064x}" and found[0].timestamp == 4_999_000
