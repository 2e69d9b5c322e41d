"""`python -m tools.bounds`: the references that read the true past beat the baselines that read the noisy
one, and the clean past says little more than the clean present."""

from tools.bounds import fit_clean_ar, mae_bounds, routing_bounds


def test_the_noise_free_references_beat_the_noisy_baselines_and_agree_with_each_other() -> None:
    w = fit_clean_ar(n_routes=8)
    m = mae_bounds(1000, w, level_changes=1.0)
    assert m["noise-free present"] < min(m["ewma"], m["kalman"]) < 1.0, m
    assert abs(m["clean-history AR"] - m["noise-free present"]) < 0.02, m
    r = routing_bounds(1000, w)
    assert r["persistence"]["accuracy_gap_closed"] == 0.0
    assert r["noise-free present"]["accuracy"] > max(r["ewma"]["accuracy"], r["kalman"]["accuracy"]), r
