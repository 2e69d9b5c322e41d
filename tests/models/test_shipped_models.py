"""The shipped checkpoints keep their promise on data the training never saw (a small, seeded sample
of what `cpe evaluate` measures in full)."""

import pytest

from models.checkpoint import CHECKPOINT_DIR
from models.evaluation import evaluate, routing_figures, routing_groups, standard_test_sets
from models.predictor import Predictor

KINDS = ["lstm", "transformer", "hybrid"]
# the first 8 routes of the sets `cpe evaluate` uses (route i depends only on the seed and i)
TEST_SETS = standard_test_sets(n_routes=8, n_steps=600, seed=1000)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("test_set", TEST_SETS, ids=lambda s: s.name)
def test_shipped_model_beats_persistence_and_is_calibrated(kind: str, test_set) -> None:
    predictor = Predictor.load(CHECKPOINT_DIR / f"{kind}.safetensors")
    r = evaluate(predictor, test_set.traces, stride=2)
    assert r["ratio"]["persistence"] < 0.95, r["ratio"]
    assert r["ece"] <= 0.05, r["ece"]
    assert 0.84 <= r["coverage"] <= 0.96, r["coverage"]
    assert predictor.meta["training"]["validation"]["ratio"]["persistence"] < 1.0


def test_shipped_models_choose_routes_better_than_persistence() -> None:
    predictors = {k: Predictor.load(CHECKPOINT_DIR / f"{k}.safetensors") for k in KINDS}
    r = routing_figures(predictors, routing_groups(n_groups=6, n_steps=300, seed=1000), stride=3)
    assert r["oracle"]["accuracy"] == 1.0 and r["oracle"]["regret"] == 0.0
    for kind in KINDS:
        assert r[kind]["accuracy"] > r["persistence"]["accuracy"], r
        assert r[kind]["regret"] < r["persistence"]["regret"], r


def test_the_noise_free_present_bounds_what_reading_the_past_can_do() -> None:
    """Knowing the last sample's true latency exactly beats every forecaster on next-step MAE and on route
    choice accuracy, and most of what it still loses on route regret comes at a one-step jump."""
    predictor = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    r = evaluate(predictor, TEST_SETS[1].traces, stride=2)
    base = r["baseline_latency_mae"]
    assert base["noise_free"] < min(r["latency_mae"], base["kalman"], base["ewma"]) < base["persistence"]
    routes = routing_figures(
        {"lstm": predictor}, routing_groups(n_groups=6, n_steps=300, seed=1000), stride=3
    )
    for name in ("lstm", "kalman", "ewma", "persistence"):
        assert routes[name]["accuracy"] <= routes["noise-free"]["accuracy"], routes
    assert routes["noise-free"]["jump_share_of_regret"] > 0.5, routes["noise-free"]
    assert routes["noise-free"]["jump_share_of_samples"] < 0.2, routes["noise-free"]
