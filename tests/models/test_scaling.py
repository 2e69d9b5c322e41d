import numpy as np

from models.scaling import INPUT_CLIP, Scaler


def _window(n: int, seed: int = 0, interval_ms: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000_000 + np.cumsum(rng.integers(interval_ms // 2, interval_ms * 2, n))
    feats = np.column_stack(
        [
            rng.uniform(10, 30, n),  # latency
            rng.uniform(0.5, 2, n),  # jitter
            rng.uniform(0, 0.01, n),  # loss
            rng.uniform(50, 200, n),  # throughput
            rng.uniform(0.2, 0.8, n),  # utilization
            rng.uniform(0, 0.01, n),  # errors
            rng.integers(10, 100, n),  # connections
            rng.integers(0, 50, n),  # queue
        ]
    ).astype(np.float64)
    return ts, feats


def test_latency_scale_and_sampling_interval_are_invisible() -> None:
    s = Scaler()
    ts, feats = _window(32)
    x, _ = s.encode([ts], [feats], 32)
    scaled = feats.copy()
    scaled[:, 0] *= 10  # another network's latency scale
    slow_ts = ts[0] + (ts - ts[0]) * 30  # sampled 30 times less often
    x2, stats2 = s.encode([slow_ts], [scaled], 32)
    np.testing.assert_allclose(x[..., 1:], x2[..., 1:], atol=1e-5)
    np.testing.assert_allclose(x[..., 0], x2[..., 0], atol=2e-3)  # only the log floor differs
    assert abs(stats2.dt_s[0] - 30 * np.median(np.diff(ts)) / 1000) < 1e-6


def test_short_windows_are_left_padded_and_mixed_lengths_match_one_by_one() -> None:
    s = Scaler()
    windows = [_window(n, seed=n) for n in (1, 5, 32, 50)]
    x, stats = s.encode([w[0] for w in windows], [w[1] for w in windows], 32)
    assert x.shape == (4, 32, 9)
    for i, (ts, feats) in enumerate(windows):
        xi, si = s.encode([ts], [feats], 32)
        np.testing.assert_allclose(x[i], xi[0], rtol=1e-6)
        np.testing.assert_allclose(stats.center[i], si.center[0])
    # a window of 5: 27 padded rows repeat the first context, with a zero time delta
    assert np.all(x[1, :27, :8] == x[1, 27, :8]) and np.all(x[1, :28, 8] == 0)
    assert stats.dt_s[0] == 0.0  # one context has no spacing


def test_decode_inverts_encode_targets() -> None:
    s = Scaler()
    ts, feats = _window(40)
    _, stats = s.encode([ts], [feats], 32)
    future = feats[-3:][None]  # (1, 3, D)
    y = s.encode_targets(future, stats)
    loc, _ = s.decode(y, np.ones_like(y), stats)
    np.testing.assert_allclose(s.inverse(loc), future, rtol=1e-4, atol=1e-6)


def test_extreme_values_stay_finite_and_clipped() -> None:
    s = Scaler()
    ts, feats = _window(32)
    feats[-1, 0] = 1e9  # a wild latency
    feats[:, 2] = 0.0  # a flat rate: its deviation floor keeps it finite
    x, _ = s.encode([ts], [feats], 32)
    assert np.isfinite(x).all() and np.abs(x).max() <= INPUT_CLIP
    assert np.all(s.inverse(np.array([[-100.0] * 8, [100.0] * 8])) >= 0)
    assert np.all(s.inverse(np.array([[100.0] * 8]))[:, [2, 4, 5]] <= 1.0)


def test_full_window_fast_path_matches_the_padded_path() -> None:
    s = Scaler()
    rng = np.random.default_rng(7)
    for T in (1, 2, 17, 32):
        windows = [_window(T + int(rng.integers(0, 5)), seed=int(rng.integers(1000))) for _ in range(6)]
        ts, fs = [w[0] for w in windows], [w[1] for w in windows]
        fast, fs_stats = s._encode_full(ts, fs, T)
        slow, sl_stats = s._encode_padded(ts, fs, T)
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
        for name in ("center", "scale", "last", "dt_s"):
            np.testing.assert_allclose(getattr(fs_stats, name), getattr(sl_stats, name), rtol=1e-9)


def test_scale_channels_show_how_much_a_window_varies_and_stay_scale_free() -> None:
    from models.scaling import ScalerConfig

    s = Scaler(ScalerConfig(scale_channels=True))
    assert s.n_inputs == 17
    ts, feats = _window(32)
    calm = feats.copy()
    calm[:, 0] = 20.0 * np.exp(0.02 * np.random.default_rng(1).standard_normal(32))
    shifted = calm.copy()
    shifted[-5:, 0] *= 2.0  # a level shift
    x, _ = s.encode([ts, ts, ts], [calm, shifted, calm * np.array([10.0] + [1.0] * 7)], 32)
    assert x.shape == (3, 32, 17)
    channel = x[:, :, 9]  # latency's deviation
    assert np.all(channel == channel[:, :1])  # the same at every step
    assert channel[1, 0] > channel[0, 0] + 1.0  # the shifted window varies far more
    np.testing.assert_allclose(x[2], x[0], atol=2e-3)  # ten times the latency: the same inputs
    # padded windows get them too
    short, _ = s.encode([ts[:5]], [shifted[:5]], 32)
    assert short.shape == (1, 32, 17) and np.isfinite(short).all()
