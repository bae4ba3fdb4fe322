"""Core kernels (dense, elementwise, losses, optimizer updates) against tests/reference.py.

Random shapes with odd sizes (1, 7, 33, ...) and both dtypes the kernels promise.
"""

import numpy as np
import pytest
import reference as ref

from dlcli import losses, optim
from dlcli.kernels import dense as KD
from dlcli.kernels import elementwise as KE

DTYPES = [np.float32, np.float64]  # layer kernels: training runs float32, gradient checks float64
# The optimizer and parameter-check kernels only ever see the float32 parameters of training
# (gradient checks never step an optimizer): testing them in float64 too would compile
# specialisations nothing else uses.
PARAM_DTYPES = [np.float32]
SHAPES = [(1, 1, 1), (7, 5, 3), (33, 17, 65), (64, 31, 1), (2, 129, 10)]  # (n, fin, fout)


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
def test_bias_act_matches_reference(rng, dtype, relu):
    for n, fin, fout in SHAPES:
        x, w, b = rand(rng, (n, fin), dtype), rand(rng, (fin, fout), dtype), rand(rng, (fout,), dtype)
        out = x @ w
        KD.bias_act(out, b, relu)
        expected = ref.dense(x, w, b)
        np.testing.assert_allclose(out, ref.relu(expected) if relu else expected, **tol(dtype))


def test_fused_relu_passes_nan_through():
    out = np.array([[np.nan, -1.0, 2.0]], np.float32)
    KD.bias_act(out, np.zeros(3, np.float32), True)
    assert np.isnan(out[0, 0]) and out[0, 1] == 0 and out[0, 2] == 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(1, 1), (1, 9), (7, 3), (31, 1), (33, 65), (257, 4)])
def test_column_sums(rng, dtype, n, m):
    a = rand(rng, (n, m), dtype)
    out = np.full(m, 123.0, dtype)  # stale contents must be overwritten, not added to
    KD.column_sums(a, out)
    np.testing.assert_allclose(out, a.sum(axis=0), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(1, 1), (7, 3), (65, 33)])
def test_relu_mask_column_sums(rng, dtype, n, m):
    y = ref.relu(rand(rng, (n, m), dtype))
    dy = rand(rng, (n, m), dtype)
    masked = dy * (y > 0)
    out = np.full(m, 7.0, dtype)
    KD.relu_mask_column_sums(y, dy, out)
    np.testing.assert_array_equal(dy, masked)
    np.testing.assert_allclose(out, masked.sum(axis=0), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_mask_inplace(rng, dtype):
    y = ref.relu(rand(rng, (13, 7), dtype))
    dy = rand(rng, (13, 7), dtype)
    expected = dy * (y > 0)
    KD.relu_mask_inplace(y, dy)
    np.testing.assert_array_equal(dy, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_mask_into_leaves_dy_alone(rng, dtype):
    y = ref.relu(rand(rng, (13, 7), dtype))
    y[0, 0] = np.nan  # as PyTorch: a NaN output passes its gradient
    dy = rand(rng, (13, 7), dtype)
    before = dy.copy()
    out = np.full_like(dy, 5.0)
    KD.relu_mask_into(y, dy, out)
    np.testing.assert_array_equal(out, np.where(y > 0, dy, 0) + np.where(np.isnan(y), dy, 0))
    np.testing.assert_array_equal(dy, before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (33, 65), (2, 3, 5, 4)])
def test_add_act_matches_reference(rng, dtype, relu, shape):
    a, b = rand(rng, shape, dtype), rand(rng, shape, dtype)
    a.reshape(-1)[0] = np.nan
    out = np.full(shape, 9.0, dtype)
    KD.add_act(a, b, out, relu)
    expected = ref.relu(a + b) if relu else a + b
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))  # NaN passes through
    np.testing.assert_allclose(out, expected, **tol(dtype))
    KD.add_act(out, b, out, False)  # in place, as a merge of three inputs runs it
    np.testing.assert_allclose(out, expected + b, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 7, 1000, 4099])
def test_activation_kernels(rng, dtype, size):
    x = rand(rng, size, dtype, scale=4)
    x[0] = 0  # the kink: relu'(0) is 0 here
    dy = rand(rng, size, dtype)
    y, dx = np.empty_like(x), np.empty_like(x)

    KE.relu_forward(x, y)
    np.testing.assert_array_equal(y, ref.relu(x))
    KE.relu_backward(x, dy, dx)
    np.testing.assert_array_equal(dx, dy * (x > 0))

    KE.sigmoid_forward(x, y)
    np.testing.assert_allclose(y, ref.sigmoid(x.astype(np.float64)), **tol(dtype))
    KE.sigmoid_backward(y, dy, dx)
    np.testing.assert_allclose(dx, dy * y * (1 - y), **tol(dtype))

    KE.tanh_forward(x, y)
    np.testing.assert_allclose(y, np.tanh(x), **tol(dtype))
    KE.tanh_backward(y, dy, dx)
    np.testing.assert_allclose(dx, dy * (1 - y * y), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_is_stable_at_extremes(dtype):
    x = np.array([-1000, -80, 0, 80, 1000], dtype)
    y = np.empty_like(x)
    KE.sigmoid_forward(x, y)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, [0, 0, 0.5, 1, 1], atol=1e-30 if dtype == np.float64 else 1e-30)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", [(1, 1), (1, 5), (9, 3), (40, 17)])
def test_softmax_rows(rng, dtype, n, c):
    x = rand(rng, (n, c), dtype, scale=5) + dtype(300)  # large logits: must subtract the max
    y = np.empty_like(x)
    KE.softmax_rows(x, y)
    np.testing.assert_allclose(y, ref.softmax(x.astype(np.float64)), **tol(dtype))
    dy = rand(rng, (n, c), dtype)
    dx = np.empty_like(dy)
    KE.softmax_rows_backward(y, dy, dx)
    # Reference: the Jacobian of softmax applied row by row.
    y64 = y.astype(np.float64)
    expected = np.stack([(np.diag(r) - np.outer(r, r)) @ g for r, g in zip(y64, dy.astype(np.float64))])
    np.testing.assert_allclose(dx, expected, **tol(dtype))


@pytest.mark.parametrize("dtype", PARAM_DTYPES)
def test_reductions_and_finiteness(rng, dtype):
    a = rand(rng, 1001, dtype)
    offsets = np.array([0, 1, 8, 8, 500, 1001], np.int64)  # an empty segment too
    chunks, owner = optim.segment_chunks(offsets, chunk=100)  # several chunks per big segment
    sums = np.empty(len(chunks))
    KE.chunk_sums_of_squares(a, chunks, sums)
    expected = [np.sum(a[offsets[k] : offsets[k + 1]].astype(np.float64) ** 2) for k in range(5)]
    np.testing.assert_allclose(np.bincount(owner, sums, minlength=5), expected, rtol=1e-5)
    assert KE.all_finite(a)
    for bad in (np.nan, np.inf, -np.inf):
        c = a.copy()
        c[777] = bad
        assert not KE.all_finite(c)
    mask = (rng.random(1001) < 0.5).astype(dtype) * dtype(2)
    y = np.empty_like(a)
    KE.dropout_apply(a, mask, y)
    np.testing.assert_array_equal(y, a * mask)


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", [(1, 2), (7, 3), (33, 10)])
def test_cross_entropy_matches_reference(rng, dtype, n, c):
    logits = rand(rng, (n, c), dtype, scale=3)
    labels = rng.integers(0, c, n)
    loss, grad, hits = losses.make("cross_entropy")(logits, labels)
    ref_loss, ref_grad = ref.softmax_cross_entropy(logits.astype(np.float64), labels)
    np.testing.assert_allclose(loss, ref_loss, **tol(dtype))
    np.testing.assert_allclose(grad, ref_grad, **tol(dtype))
    assert grad.dtype == dtype
    assert hits == int(np.sum(logits.argmax(1) == labels))


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]], np.float32)
    loss, grad, hits = losses.make("cross_entropy")(logits, np.array([0, 0]))
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, 1000.0 / 2, rtol=1e-6)  # row 0 costs 0, row 1 costs 1000
    assert hits == 1


def test_cross_entropy_on_sequences(rng):
    logits = rand(rng, (3, 4, 5), np.float64)
    labels = rng.integers(0, 5, (3, 4))
    loss, grad, _ = losses.make("cross_entropy")(logits, labels)
    ref_loss, ref_grad = ref.softmax_cross_entropy(logits.reshape(-1, 5), labels.reshape(-1))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad.reshape(3, 4, 5), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (33, 3)])
def test_mse_and_bce_match_reference(rng, dtype, shape):
    pred = rand(rng, shape, dtype, scale=3)
    target = rand(rng, shape, dtype)
    loss, grad, hits = losses.make("mse")(pred, target)
    ref_loss, ref_grad = ref.mse(pred.astype(np.float64), target.astype(np.float64))
    np.testing.assert_allclose(loss, ref_loss, **tol(dtype))
    np.testing.assert_allclose(grad, ref_grad, **tol(dtype))
    assert hits is None

    t01 = (rng.random(shape) < 0.5).astype(dtype)
    loss, grad, hits = losses.make("binary_cross_entropy")(pred, t01)
    ref_loss, ref_grad = ref.binary_cross_entropy(pred.astype(np.float64), t01.astype(np.float64))
    np.testing.assert_allclose(loss, ref_loss, **tol(dtype))
    np.testing.assert_allclose(grad, ref_grad, **tol(dtype))
    assert hits == int(np.sum((pred > 0) == (t01 > 0.5)))


def test_bce_is_stable_for_huge_logits():
    z = np.array([[500.0], [-500.0], [500.0]], np.float32)
    t = np.array([[1.0], [0.0], [0.0]], np.float32)
    loss, grad, _ = losses.make("binary_cross_entropy")(z, t)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, 500.0 / 3, rtol=1e-6)


# ---------------------------------------------------------------- optimizer kernels


def rmsprop_reference(p, g, sq, buf, lr, alpha, eps, wd, momentum):
    """PyTorch's RMSprop (not centered)."""
    d = g + wd * p
    sq = alpha * sq + (1 - alpha) * d * d
    step = d / (np.sqrt(sq) + eps)
    if momentum:
        buf = momentum * buf + step
        step = buf
    return p - lr * step, sq, buf


def chunks_for(n, chunk=5):
    """Two segments (layers) [0, 11) and [11, n), cut into chunks of at most 5 entries."""
    from dlcli.optim import segment_chunks

    return segment_chunks(np.array([0, 11, n]), chunk=chunk)


def check_sumsq(g, chunks, owner, chunk_sumsq, dtype):
    per_segment = np.bincount(owner, chunk_sumsq, minlength=2)
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(per_segment, [np.sum(g64[:11] ** 2), np.sum(g64[11:] ** 2)], rtol=1e-6)


def test_segment_chunks_never_straddle_segments():
    from dlcli.optim import segment_chunks

    chunks, owner = segment_chunks(np.array([0, 3, 3, 20]), chunk=8)
    assert chunks.tolist() == [[0, 3], [3, 11], [11, 19], [19, 20]]
    assert owner.tolist() == [0, 2, 2, 2]


@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize(
    "momentum,nesterov,wd,scale",
    [(0.0, False, 0.0, 1.0), (0.9, False, 0.0, 0.5), (0.9, True, 1e-2, 1.0), (0.5, False, 0.1, 0.25)],
)
def test_sgd_update_kernel(rng, dtype, momentum, nesterov, wd, scale):
    n = 37
    chunks, owner = chunks_for(n)
    sumsq = np.zeros(len(chunks))
    p, v = rand(rng, n, dtype), np.zeros(n, dtype)
    rp, rv = p.astype(np.float64), np.zeros(n)
    for _ in range(4):
        g = rand(rng, n, dtype)
        KE.sgd_update(p, g, v, dtype(0.1), dtype(momentum), dtype(wd), nesterov, dtype(scale), chunks, sumsq)
        rp, rv = ref.sgd(rp, scale * g.astype(np.float64), rv, 0.1, momentum, wd, nesterov)
        check_sumsq(g, chunks, owner, sumsq, dtype)
    np.testing.assert_allclose(p, rp, **tol(dtype))


@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("decoupled,wd,scale", [(False, 0.0, 1.0), (False, 0.05, 0.3), (True, 0.05, 1.0)])
def test_adam_update_kernel(rng, dtype, decoupled, wd, scale):
    n = 29
    chunks, owner = chunks_for(n)
    sumsq = np.zeros(len(chunks))
    p = rand(rng, n, dtype)
    m, v = np.zeros(n, dtype), np.zeros(n, dtype)
    rp, rm, rv = p.astype(np.float64), np.zeros(n), np.zeros(n)
    for t in range(1, 6):
        g = rand(rng, n, dtype)
        KE.adam_update(
            p,
            g,
            m,
            v,
            *map(dtype, (0.01, 0.9, 0.999, 1e-8, wd)),
            decoupled,
            dtype(1 - 0.9**t),
            dtype(1 - 0.999**t),
            dtype(scale),
            chunks,
            sumsq,
        )
        rp, rm, rv = ref.adam(rp, scale * g.astype(np.float64), rm, rv, 0.01, 0.9, 0.999, 1e-8, wd, decoupled, t)
        check_sumsq(g, chunks, owner, sumsq, dtype)
    np.testing.assert_allclose(p, rp, **tol(dtype))
    np.testing.assert_allclose(m, rm, **tol(dtype))


@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("momentum,wd,scale", [(0.0, 0.0, 1.0), (0.9, 0.01, 0.5)])
def test_rmsprop_update_kernel(rng, dtype, momentum, wd, scale):
    n = 41
    chunks, owner = chunks_for(n)
    sumsq = np.zeros(len(chunks))
    p = rand(rng, n, dtype)
    sq, buf = np.zeros(n, dtype), np.zeros(n, dtype)
    rp, rsq, rbuf = p.astype(np.float64), np.zeros(n), np.zeros(n)
    for _ in range(4):
        g = rand(rng, n, dtype)
        KE.rmsprop_update(p, g, sq, buf, *map(dtype, (0.01, 0.99, 1e-8, wd, momentum, scale)), chunks, sumsq)
        rp, rsq, rbuf = rmsprop_reference(rp, scale * g.astype(np.float64), rsq, rbuf, 0.01, 0.99, 1e-8, wd, momentum)
        check_sumsq(g, chunks, owner, sumsq, dtype)
    np.testing.assert_allclose(
        p, rp, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-5 if dtype == np.float32 else 1e-10
    )
