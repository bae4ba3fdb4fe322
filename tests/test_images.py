"""The generated image and signal datasets: shapes, balance, seeding, learnability hints."""

import numpy as np

from dlcli.datasets import BUILTIN
from dlcli.options import parse_options


def _gen(name, seed=0, **options):
    cls = BUILTIN[name]
    o = parse_options(cls.OPTIONS, options)
    return cls.generate(o, np.random.default_rng(seed))


def test_shapes_dataset():
    g = _gen("shapes", samples=400, size=20, noise=0.0)
    assert g.x.shape == (400, 1, 20, 20) and g.x.dtype == np.float32
    assert g.classes == ["square", "circle", "triangle", "cross"]
    assert np.bincount(g.y).tolist() == [100] * 4
    # every image draws something, and positions vary: the lit pixels' centres spread out
    lit = g.x[:, 0] > 0
    assert lit.reshape(400, -1).sum(1).min() > 5
    rows = (lit * np.arange(20)[:, None]).sum((1, 2)) / lit.sum((1, 2))
    assert rows.std() > 1.0
    np.testing.assert_array_equal(_gen("shapes", samples=400, size=20).x, _gen("shapes", samples=400, size=20).x)
    assert not np.array_equal(_gen("shapes", samples=40).x, _gen("shapes", seed=1, samples=40).x)
    assert _gen("shapes", samples=4).x.shape == (4, 1, 28, 28)  # the default size


def test_signals_dataset():
    g = _gen("signals", samples=200, length=64, noise=0.0)
    assert g.x.shape == (200, 1, 64) and g.x.dtype == np.float32
    assert np.bincount(g.y).tolist() == [50] * 4
    square = g.x[g.y == 1, 0]
    # square waves take two levels per signal
    assert all(len(np.unique(np.round(s, 5))) == 2 for s in square[:10])
    burst = g.x[g.y == 3, 0]
    assert (np.abs(np.diff(burst, axis=1)) < 1e-6).mean() > 0.3  # quiet outside the burst
    assert _gen("signals", samples=4).x.shape == (4, 1, 128)  # the default length


def test_user_images_from_npz(tmp_path, write_spec):
    """Users' own image arrays come through the .npz loader, checked against model.input."""
    import pytest

    from dlcli import data, run, spec
    from dlcli.errors import DataError

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "imgs.npz", x=rng.standard_normal((20, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 2, 20))
    text = f"""
name: own
data: {{source: {tmp_path / "imgs.npz"}}}
model:
  input: [1, 8, 8]
  layers: [{{conv2d: {{filters: 2, kernel: 3}}}}, flatten, {{dense: 2}}]
loss: cross_entropy
"""
    s = spec.parse(text)
    model, loss = run.build(s)
    d = data.load(s, loss, model.output_shape)
    assert d.x_train.shape[1:] == (1, 8, 8)
    with pytest.raises(DataError, match=r"\(1, 8, 8\).*\[1, 9, 9\]"):
        s2 = spec.parse(text.replace("[1, 8, 8]", "[1, 9, 9]"))
        data.load(s2, loss, (2,))


def test_signal_distortions_each_do_what_they_say():
    from dlcli.datasets.images import Signals

    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 40))
    off = {"shift": 0.0, "scaling": 0.0, "shear": 0.0, "correlated_noise": 0.0}
    r = np.random.default_rng(1)
    assert Signals.distort(x, off, r) is x  # off by default: the same data, no random draws
    assert r.random() == np.random.default_rng(1).random()

    rolled = Signals.distort(x, {**off, "shift": 0.25}, np.random.default_rng(2))
    amounts = []
    for a, b in zip(x, rolled):
        k = next(k for k in range(-10, 11) if np.array_equal(np.roll(a, k), b))  # a roll of at most 10 = 0.25 * 40
        amounts.append(k)
    assert len(set(amounts)) > 10

    scaled = Signals.distort(x, {**off, "scaling": 0.5}, np.random.default_rng(2))
    factors = scaled[:, 0] / x[:, 0]
    np.testing.assert_allclose(scaled, x * factors[:, None], rtol=1e-12)
    assert factors.min() >= np.exp(-0.5) and factors.max() <= np.exp(0.5) and factors.std() > 0.1

    sheared = Signals.distort(x, {**off, "shear": 2.0}, np.random.default_rng(2))
    trend = sheared - x
    np.testing.assert_allclose(np.diff(trend, 2, axis=1), 0, atol=1e-12)  # a straight line per signal
    assert np.abs(trend[:, -1]).max() <= 2.0 and np.abs(trend[:, -1]).max() > 1.5

    noisy = Signals.distort(np.zeros((2000, 40)), {**off, "correlated_noise": 0.7}, np.random.default_rng(2))
    assert abs(noisy.std() - 0.7) < 0.05
    lag1 = np.mean(noisy[:, 1:] * noisy[:, :-1]) / np.mean(noisy**2)
    assert 0.9 < lag1 < 0.99  # slowly wandering, not white
    g = _gen("signals", samples=8, shift=0.5, scaling=0.3, shear=1.0, correlated_noise=0.5)
    assert "shift 0.5" in g.description and g.x.shape == (8, 1, 128)
