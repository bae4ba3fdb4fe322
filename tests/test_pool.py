"""Pooling, global average pooling and flatten: kernels against the NumPy references,
gradient checks for each layer and option combination, shape errors."""

import itertools

import numpy as np
import pytest
import reference as ref
from test_conv import make_layer

from dlcli.errors import ShapeError
from dlcli.gradcheck import assert_gradients_ok, check_layer

# (input C,H,W, size, stride, batch)
CASES = [
    ((2, 6, 6), (2, 2), (2, 2), 3),  # 2x2 stride 2 on even planes: the unrolled fast path
    ((2, 7, 9), (2, 2), (2, 2), 2),  # odd planes: the general kernel drops a row and a column
    ((3, 7, 9), (3, 2), (2, 3), 1),  # odd sizes, trailing rows dropped, batch 1
    ((1, 5, 8), (2, 3), (1, 1), 2),  # overlapping windows
    ((2, 4, 4), (4, 4), (4, 4), 2),  # one window
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_pool_kernels_match_reference(case, mode, dtype, rng):
    from dlcli.kernels import pool as K

    shape, size, stride, batch = case
    x = rng.standard_normal((batch,) + shape).astype(dtype)
    expected, backward = (ref.maxpool2d if mode == "max" else ref.avgpool2d)(x.astype(np.float64), size, stride)
    y = np.full(expected.shape, np.nan, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)
    if mode == "max":
        idx = np.empty(y.shape, np.int32)
        K.maxpool_forward(x, *size, *stride, y, idx)
        K.maxpool_backward(dy, idx, dx)
    else:
        K.avgpool_forward(x, *size, *stride, y)
        K.avgpool_backward(dy, *size, *stride, dx)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, backward(dy.astype(np.float64)), rtol=tol, atol=tol)


@pytest.mark.parametrize("cuts", [(0, 15), (0, 4, 15), (0, 1, 7, 8, 15)], ids=str)
def test_maxpool_2x2_across_planes_picks_the_first_maximum(cuts, rng):
    """The 2x2 stride-2 kernel runs a shard's even planes as one loop over row pairs:
    with values drawn from {0, 1, 2} (ties in most windows) the outputs, the gradient's
    targets (the first maximum in reading order) and the gradient sums are the
    reference's, wherever the shards cut the 15 planes."""
    from dlcli.kernels import pool as K

    x = rng.integers(0, 3, size=(3, 5, 8, 6)).astype(np.float32)
    expected, backward = ref.maxpool2d(x.astype(np.float64), (2, 2), (2, 2))
    dy = rng.standard_normal(expected.shape).astype(np.float32)
    y, idx, dx = np.empty(expected.shape, np.float32), np.empty(expected.shape, np.int32), np.empty_like(x)
    bad = np.zeros(15, np.uint8)
    for lo, hi in zip(cuts, cuts[1:]):
        K._maxpool2x2_forward(x, y, idx, bad, lo, hi)
    for lo, hi in zip(cuts, cuts[1:]):
        K._maxpool_backward(dy, idx, dx, lo, hi)
    assert not bad.any()
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_allclose(dx, backward(dy.astype(np.float64)), rtol=1e-6, atol=1e-6)


def test_maxpool_ties_send_the_gradient_to_one_input():
    from dlcli.kernels import pool as K

    x = np.zeros((1, 1, 2, 2))
    y, idx = np.empty((1, 1, 1, 1)), np.empty((1, 1, 1, 1), np.int32)
    K.maxpool_forward(x, 2, 2, 2, 2, y, idx)
    dx = np.empty_like(x)
    K.maxpool_backward(np.ones((1, 1, 1, 1)), idx, dx)
    assert dx.sum() == 1 and dx[0, 0, 0, 0] == 1


@pytest.mark.parametrize(
    "kind,size,stride", list(itertools.product(["maxpool2d", "avgpool2d"], [2, [3, 2]], [None, 1, [2, 1]]))
)
def test_pool2d_gradients(kind, size, stride, rng):
    given = {"size": size} if stride is None else {"size": size, "stride": stride}
    layer = make_layer(kind, (2, 7, 6), **given)
    # distinct values keep max-pool away from ties (kinks)
    x = rng.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) * 0.1
    assert_gradients_ok(check_layer(layer, x))


@pytest.mark.parametrize("kind,size,stride", list(itertools.product(["maxpool1d", "avgpool1d"], [2, 3], [None, 1, 2])))
def test_pool1d_gradients(kind, size, stride, rng):
    given = {"size": size} if stride is None else {"size": size, "stride": stride}
    layer = make_layer(kind, (3, 10), **given)
    x = rng.permutation(2 * 3 * 10).reshape(2, 3, 10) * 0.1
    assert_gradients_ok(check_layer(layer, x))


def test_pool1d_matches_2d_reference(rng):
    layer = make_layer("maxpool1d", (2, 9), size=3, stride=2)
    x = rng.standard_normal((2, 2, 9))
    y = layer.forward(x)
    expected, _ = ref.maxpool2d(x[:, :, None, :], (1, 3), (1, 2))
    assert y.shape == (2, 2, 4)
    np.testing.assert_allclose(y, expected[:, :, 0])


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 7)])
def test_global_avgpool(shape, rng):
    layer = make_layer("global_avgpool", shape)
    x = rng.standard_normal((2,) + shape)
    axes = tuple(range(2, x.ndim))
    np.testing.assert_allclose(layer.forward(x), x.mean(axis=axes))
    assert layer.output_shape == (shape[0],)
    assert_gradients_ok(check_layer(layer, x))


def test_flatten(rng):
    layer = make_layer("flatten", (2, 3, 4))
    x = rng.standard_normal((2, 2, 3, 4))
    np.testing.assert_array_equal(layer.forward(x), x.reshape(2, 24))
    assert layer.output_shape == (24,)
    assert_gradients_ok(check_layer(layer, x))


def test_pool_shape_errors():
    with pytest.raises(ShapeError, match=r"test maxpool2d.*\[3, 3\].*\(1, 2, 8\)"):
        make_layer("maxpool2d", (1, 2, 8), size=3)
    with pytest.raises(ShapeError, match=r"test avgpool1d.*\(channels, length\).*\(1, 4, 4\)"):
        make_layer("avgpool1d", (1, 4, 4), size=2)
    with pytest.raises(ShapeError, match=r"test global_avgpool.*\(5,\)"):
        make_layer("global_avgpool", (5,))
