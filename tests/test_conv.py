"""Convolution: kernels against the NumPy references, layers through the gradient
checker for every option combination, shape errors, and a conv model trained by the CLI."""

import itertools

import numpy as np
import pytest
import reference as ref

from dlcli.errors import ShapeError
from dlcli.gradcheck import assert_gradients_ok, check_layer, check_model
from dlcli.layers import LAYERS
from dlcli.model import Model
from dlcli.options import parse_options


def make_layer(kind, input_shape, dtype=np.float64, seed=0, fuse_relu=False, **given):
    """A built layer (options parsed as the spec loader parses them), in a one-layer model."""
    cls = LAYERS[kind]
    options = parse_options(cls.OPTIONS, given)
    layer = cls(dtype=dtype, rng=np.random.default_rng(seed), name=f"test {kind}", **options)
    Model([layer], input_shape, dtype=dtype, fuse=False)
    layer.fuse_relu = fuse_relu
    return layer


def same_pads(size, k, s, d):
    """TensorFlow's `same`: ceil(size/s) outputs, the odd pixel of padding after."""
    out = -(-size // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


# (input C,H,W, filters, kernel, stride, padding, dilation, batch)
CASES = [
    ((1, 7, 9), 2, (3, 3), (1, 1), "valid", (1, 1), 3),
    ((3, 8, 6), 4, (2, 4), (1, 1), "same", (1, 1), 2),  # even kernels, asymmetric padding
    ((2, 9, 9), 3, (3, 3), (2, 2), "same", (1, 1), 1),  # batch size 1, stride 2
    ((2, 11, 10), 3, (3, 2), (2, 3), "valid", (2, 1), 2),  # dilation, odd sizes
    ((3, 6, 7), 5, (4, 3), (1, 2), 2, (1, 2), 2),  # integer padding
    ((2, 5, 5), 1, (1, 1), (1, 1), "valid", (1, 1), 4),
    ((1, 28, 28), 6, (5, 5), (1, 1), "valid", (1, 1), 5),  # the reference CNN's first layer
    ((16, 12, 12), 5, (5, 5), (1, 1), "valid", (1, 1), 3),  # its second: direct, dx through GEMM
    ((8, 10, 10), 5, (3, 3), (1, 1), "same", (1, 1), 2),  # 72 taps, wide rows 1.2x: direct
    ((4, 8, 8), 3, (5, 5), (1, 1), "valid", (1, 1), 2),  # wide rows 2x: im2col
]


def _chooses_direct(shape, kernel, stride, padding, dilation):
    """The layer's rule: stride 1, and few taps or wide rows at most 1.5x the output row."""
    from dlcli.layers.conv import DIRECT_MAX_TAPS, DIRECT_MAX_WASTE

    pads = _geometry(shape, kernel, stride, padding, dilation)
    ow = shape[2] + pads[2] + pads[3] - dilation[1] * (kernel[1] - 1)
    wide = ow + (kernel[1] - 1) * dilation[1]
    few_taps = shape[0] * kernel[0] * kernel[1] <= DIRECT_MAX_TAPS
    return stride == (1, 1) and (few_taps or wide <= DIRECT_MAX_WASTE * ow)


def _geometry(shape, kernel, stride, padding, dilation):
    pads = []
    for a in range(2):
        if padding == "same":
            pads += list(same_pads(shape[1 + a], kernel[a], stride[a], dilation[a]))
        elif padding == "valid":
            pads += [0, 0]
        else:
            pads += [padding, padding]
    return tuple(pads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-k{c[2]}-s{c[3]}-{c[4]}-d{c[5]}-b{c[6]}")
def test_im2col_col2im_match_reference(case, dtype, rng):
    from dlcli.kernels import conv as K

    shape, _, kernel, stride, padding, dilation, batch = case
    pad = _geometry(shape, kernel, stride, padding, dilation)
    x = rng.standard_normal((batch,) + shape).astype(dtype)
    oh, ow = ref._conv_geometry(x.shape, (1,) + shape[:1] + kernel, stride, pad, dilation)
    # the kernels work batch-last: input (C, H, W, B), column (p*OW + q)*B + b
    xt = np.full(shape + (batch,), np.nan, dtype)
    K.to_batch_last(x.reshape(batch, shape[0], -1), xt.reshape(shape[0], -1, batch))
    np.testing.assert_array_equal(xt, x.transpose(1, 2, 3, 0))
    expected = ref.im2col(x, *kernel, stride, pad, dilation)
    expected = expected.reshape(len(expected), batch, oh * ow).transpose(0, 2, 1).reshape(len(expected), -1)
    cols = np.full(expected.shape, np.nan, dtype)
    K.im2col(xt, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[2], dilation[0], dilation[1], oh, ow, cols)
    np.testing.assert_array_equal(cols, expected)
    # col2im is im2col's adjoint: <im2col(x), c> == <x, col2im(c)>
    c = rng.standard_normal(cols.shape).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)
    scratch = np.full(xt.shape, np.nan, dtype)
    K.col2im(
        c,
        kernel[0],
        kernel[1],
        stride[0],
        stride[1],
        pad[0],
        pad[2],
        dilation[0],
        dilation[1],
        oh,
        ow,
        scratch,
        dx.reshape(batch, shape[0], -1),
    )
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(np.sum(dx.astype(np.float64) * x), np.sum(c.astype(np.float64) * expected), rtol=tol)


@pytest.mark.parametrize("path", ["chosen", "im2col"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fuse_relu", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-k{c[2]}-s{c[3]}-{c[4]}-d{c[5]}-b{c[6]}")
def test_conv2d_forward_backward_match_reference(case, fuse_relu, dtype, path, rng):
    """Both paths on every case: the one the layer chooses (`_chooses_direct`: direct
    kernels, with the input gradient through GEMM + col2im past 32 taps; else im2col +
    GEMM) and im2col forced."""
    shape, filters, kernel, stride, padding, dilation, batch = case
    layer = make_layer(
        "conv2d",
        shape,
        dtype,
        filters=filters,
        kernel=list(kernel),
        stride=list(stride),
        padding=padding,
        dilation=list(dilation),
        fuse_relu=fuse_relu,
    )
    assert layer.direct == _chooses_direct(shape, kernel, stride, padding, dilation)
    if path == "im2col":
        layer.direct = False
    layer.params["bias"][...] = rng.standard_normal(filters)
    pad = _geometry(shape, kernel, stride, padding, dilation)
    x = rng.standard_normal((batch,) + shape).astype(dtype)
    w = layer.params["weight"].astype(np.float64)
    b = layer.params["bias"].astype(np.float64)
    expected = ref.conv2d(x.astype(np.float64), w, b, stride, pad, dilation)
    if padding == "same":
        assert expected.shape[2:] == tuple(-(-shape[1 + a] // stride[a]) for a in range(2))
    if fuse_relu:
        expected = ref.relu(expected)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    y = layer.forward(x, training=True)
    assert y.shape == expected.shape and y.dtype == dtype
    np.testing.assert_allclose(y, expected, **tol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy.copy(), need_dx=True)
    dy_eff = dy.astype(np.float64) * (expected > 0) if fuse_relu else dy.astype(np.float64)
    edx, edw, edb = ref.conv2d_backward(x.astype(np.float64), w, dy_eff, stride, pad, dilation)
    np.testing.assert_allclose(dx, edx, **tol)
    np.testing.assert_allclose(layer.grads["weight"], edw, **tol)
    np.testing.assert_allclose(layer.grads["bias"], edb, **tol)


@pytest.mark.parametrize("shape, filters, kernel", [((1, 28, 28), 6, 5), ((2, 9, 9), 13, 3)])
def test_direct_weight_gradient_has_the_same_bits_for_any_thread_count(shape, filters, kernel, rng):
    """The weight gradient's vector tiles sum over samples in order in each (channel, tap)
    and shard over channel groups: 1, 2 or 3 threads give the same bits (several sample
    chunks at 28x28, one at 9x9)."""
    from dlcli import runtime

    layer = make_layer("conv2d", shape, np.float32, filters=filters, kernel=[kernel, kernel], fuse_relu=True)
    assert layer.direct
    x = rng.standard_normal((7,) + shape).astype(np.float32)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    results = []
    try:
        for threads in (1, 2, 3):
            runtime.set_threads(threads)
            layer.backward(dy.copy(), need_dx=False)
            results.append((layer.grads["weight"].copy(), layer.grads["bias"].copy()))
    finally:
        runtime.set_threads(None)
    for w, b in results[1:]:
        np.testing.assert_array_equal(w, results[0][0])
        np.testing.assert_array_equal(b, results[0][1])


# Stride-1 cases with more taps than DIRECT_MAX_TAPS, trained here through im2col, and one
# with 13 filters (6 + 4 + 3 single output channels in the tiles).
INFERENCE_CASES = [
    ((16, 12, 12), 32, (5, 5), "valid", (1, 1)),  # the reference CNN's second layer
    ((5, 9, 8), 13, (3, 3), "same", (1, 1)),
    ((6, 10, 11), 7, (3, 2), 1, (2, 2)),
    ((8, 1, 20), 6, (1, 5), "same", (1, 3)),  # a 1-D shape
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fuse_relu", [False, True])
@pytest.mark.parametrize("case", INFERENCE_CASES, ids=lambda c: f"{c[0]}-f{c[1]}-k{c[2]}-{c[3]}-d{c[4]}")
def test_small_inference_batches_run_the_direct_kernels(case, fuse_relu, dtype, rng):
    """forward(training=False) at batches up to DIRECT_INFERENCE_BATCH runs any stride-1
    convolution through the direct kernels: the reference convolution's values (NaN where
    a window holds one), and a backward after it is refused (there is no column matrix)."""
    from dlcli.layers.conv import DIRECT_INFERENCE_BATCH

    shape, filters, kernel, padding, dilation = case
    layer = make_layer(
        "conv2d", shape, dtype, filters=filters, kernel=list(kernel), padding=padding, dilation=list(dilation)
    )
    layer.fuse_relu = fuse_relu
    layer.direct = False  # training through im2col: only small inference batches go direct
    layer.params["bias"][...] = rng.standard_normal(filters)
    pad = _geometry(shape, kernel, (1, 1), padding, dilation)
    w, b = layer.params["weight"].astype(np.float64), layer.params["bias"].astype(np.float64)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for batch in (1, 3, DIRECT_INFERENCE_BATCH):
        x = rng.standard_normal((batch,) + shape).astype(dtype)
        x[0, 0, shape[1] // 2, shape[2] // 2] = np.nan
        expected = ref.conv2d(x.astype(np.float64), w, b, (1, 1), pad, dilation)
        if fuse_relu:
            expected = np.where(np.isnan(expected), np.nan, np.maximum(expected, 0))
        y = layer.forward(x, training=False)
        assert layer.by_direct
        np.testing.assert_allclose(y, expected, **tol)  # NaNs in the same places
        with pytest.raises(RuntimeError, match="training=True"):
            layer.backward(np.ones_like(y))
    big = rng.standard_normal((DIRECT_INFERENCE_BATCH + 1,) + shape).astype(dtype)
    layer.forward(big, training=False)
    assert not layer.by_direct  # larger batches go through im2col + GEMM
    layer.forward(big, training=True)
    layer.backward(np.ones((len(big),) + layer.output_shape, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv1d_matches_reference(dtype, rng):
    layer = make_layer("conv1d", (3, 13), dtype, filters=4, kernel=4, stride=2, padding="same", dilation=2)
    layer.params["bias"][...] = rng.standard_normal(4)
    x = rng.standard_normal((2, 3, 13)).astype(dtype)
    lo, hi = same_pads(13, 4, 2, 2)
    w4 = layer.params["weight"].astype(np.float64)[:, :, None, :]
    b = layer.params["bias"].astype(np.float64)
    expected = ref.conv2d(x.astype(np.float64)[:, :, None, :], w4, b, (1, 2), (0, 0, lo, hi), (1, 2))[:, :, 0]
    y = layer.forward(x)
    assert y.shape == (2, 4, 7)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y, expected, **tol)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy.astype(dtype))
    edx, edw, edb = ref.conv2d_backward(
        x.astype(np.float64)[:, :, None, :], w4, dy[:, :, None, :], (1, 2), (0, 0, lo, hi), (1, 2)
    )
    np.testing.assert_allclose(dx, edx[:, :, 0], **tol)
    np.testing.assert_allclose(layer.grads["weight"], edw[:, :, 0], **tol)
    np.testing.assert_allclose(layer.grads["bias"], edb, **tol)


CONV2D_GRID = list(itertools.product(["valid", "same", 1], [1, 2], [1, 2], [True, False]))


@pytest.mark.parametrize("padding,stride,dilation,bias", CONV2D_GRID)
def test_conv2d_gradients(padding, stride, dilation, bias, rng):
    layer = make_layer(
        "conv2d",
        (2, 7, 6),
        filters=3,
        kernel=[3, 2],
        stride=stride,
        padding=padding,
        dilation=dilation,
        bias=bias,
        seed=1,
    )
    assert ("bias" in layer.params) == bias
    x = rng.standard_normal((2, 2, 7, 6))
    assert_gradients_ok(check_layer(layer, x))


@pytest.mark.parametrize(
    "padding,stride,dilation,bias", list(itertools.product(["valid", "same", 2], [1, 3], [1, 2], [True, False]))
)
def test_conv1d_gradients(padding, stride, dilation, bias, rng):
    layer = make_layer(
        "conv1d", (2, 11), filters=3, kernel=4, stride=stride, padding=padding, dilation=dilation, bias=bias, seed=2
    )
    assert_gradients_ok(check_layer(layer, rng.standard_normal((2, 2, 11))))


def test_conv_relu_fused_gradients(rng):
    layer = make_layer("conv2d", (2, 6, 6), filters=3, kernel=3, padding="same", fuse_relu=True)
    layer.params["bias"][...] = 0.1
    assert_gradients_ok(check_layer(layer, rng.standard_normal((2, 2, 6, 6))))


def test_gradient_check_catches_a_wrong_weight_gradient(rng):
    """The check is able to fail: corrupt the backward pass and it must report it."""
    layer = make_layer("conv2d", (1, 5, 5), filters=2, kernel=3)
    original = layer.backward

    def broken(dy, need_dx=True):
        dx = original(dy, need_dx)
        layer.grads["weight"][0, 0, 0, 0] += 0.5
        return dx

    layer.backward = broken
    with pytest.raises(AssertionError, match="weight"):
        assert_gradients_ok(check_layer(layer, rng.standard_normal((2, 1, 5, 5))))


def _cnn_spec(fuse_note=""):
    return """
name: tiny_cnn
seed: 0
data:
  source: builtin:shapes
  options: {samples: 64, size: 12, noise: 0.1}
  validation_split: 0.25
model:
  input: [1, 12, 12]
  layers:
    - conv2d: {filters: 3, kernel: 3, padding: same}
    - relu
    - maxpool2d: 2
    - conv2d: {filters: 4, kernel: 2, stride: 2}
    - relu
    - avgpool2d: {size: 2, stride: 1}
    - flatten
    - dense: 4
loss: cross_entropy
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 1, batch_size: 16}
"""


@pytest.mark.slow  # 18-23 s each on a loaded machine
@pytest.mark.parametrize("fuse", [False, True])
def test_cnn_model_gradients(fuse, rng):
    from dlcli import run, spec

    s = spec.parse(_cnn_spec())
    model, loss = run.build(s, dtype=np.float64, fuse=fuse)
    assert model.layers[0].fuse_relu == fuse and model.layers[3].fuse_relu == fuse
    x = rng.standard_normal((3, 1, 12, 12))
    y = np.array([0, 3, 1])
    assert_gradients_ok(check_model(model, loss, x, y))


def test_global_avgpool_model_gradients(rng):
    from dlcli import run, spec

    text = """
name: gap
model:
  input: [2, 10]
  layers:
    - conv1d: {filters: 3, kernel: 3}
    - tanh
    - global_avgpool
    - dense: 2
data: {source: builtin:signals}
loss: cross_entropy
"""
    model, loss = run.build(spec.parse(text), dtype=np.float64)
    assert_gradients_ok(check_model(model, loss, rng.standard_normal((2, 2, 10)), np.array([1, 0])))


def test_kernel_larger_than_padded_input_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"test conv2d.*\[5, 5\].*\(1, 4, 6\)"):
        make_layer("conv2d", (1, 4, 6), filters=2, kernel=5)
    make_layer("conv2d", (1, 4, 6), filters=2, kernel=5, padding=1)  # fits once padded
    with pytest.raises(ShapeError, match="dilation"):
        make_layer("conv1d", (1, 6), filters=2, kernel=3, dilation=3)


def test_conv2d_on_a_flat_sample_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"test conv2d.*\(channels, height, width\).*\(784,\)"):
        make_layer("conv2d", (784,), filters=2, kernel=3)
    with pytest.raises(ShapeError, match=r"test conv1d.*\(channels, length\).*\(1, 28, 28\)"):
        make_layer("conv1d", (1, 28, 28), filters=2, kernel=3)


def test_spec_errors_name_the_field(write_spec):
    from dlcli import spec
    from dlcli.errors import SpecError

    text = _cnn_spec().replace("padding: same", "padding: full")
    with pytest.raises(SpecError, match=r"padding.*'valid', 'same'"):
        spec.parse(text)
    with pytest.raises(SpecError, match=r"kernel"):
        spec.parse(_cnn_spec().replace("kernel: 2, stride", "kernel: [2, 2, 2], stride"))


def test_he_init_before_relu_and_glorot_otherwise():
    a = make_layer("conv2d", (4, 9, 9), filters=64, kernel=3)  # no next layer: Glorot uniform
    limit = np.sqrt(6 / (4 * 9 + 64 * 9))
    assert np.abs(a.params["weight"]).max() <= limit
    cls = LAYERS["conv2d"]
    opts = parse_options(cls.OPTIONS, {"filters": 64, "kernel": 3})
    he = cls(dtype=np.float64, rng=np.random.default_rng(0), **opts)
    Model([he, LAYERS["relu"](dtype=np.float64)], (4, 9, 9), dtype=np.float64)
    assert abs(he.params["weight"].std() - np.sqrt(2 / 36)) < 0.02


def test_summary_shows_conv_output_shapes():
    from dlcli import run, spec

    model, _ = run.build(spec.parse(_cnn_spec()))
    rows = model.summary()
    assert [r.output_shape for r in rows[:4]] == [(3, 12, 12), (3, 12, 12), (3, 6, 6), (4, 3, 3)]
    assert rows[0].params == 3 * 9 + 3 and rows[0].flops == 12 * 12 * 3 * (2 * 9 + 1)
    assert "3 filters 3x3" in rows[0].detail and "pad same" in rows[0].detail
    assert rows[6].output_shape == (16,)


def test_cli_trains_a_conv_model(write_spec, tmp_path):
    from click.testing import CliRunner

    from dlcli.cli import main

    path = write_spec(_cnn_spec())
    out = tmp_path / "cnn.npz"
    result = CliRunner().invoke(main, ["train", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert "val_acc" in result.output
    with np.load(out, allow_pickle=False) as f:
        assert f["param.layers.0.weight"].shape == (3, 1, 3, 3)
        assert f["param.layers.3.weight"].shape == (4, 3, 2, 2)


def _conv_pool_model(text, input_shape):
    from dlcli import spec as specs

    s = specs.parse(
        f"data: {{source: builtin:shapes}}\nmodel:\n  input: {list(input_shape)}\n  layers: {text}\n"
        "loss: cross_entropy\noptimizer: {name: sgd, lr: 0.1}\n",
        "s.yaml",
    )
    return Model.from_spec(s.model, loss="cross_entropy")


@pytest.mark.parametrize(
    "layers, input_shape",
    [
        ("[{conv2d: {filters: 7, kernel: 5}}, relu, {maxpool2d: 2}, flatten, {dense: 3}]", (1, 28, 28)),
        ("[{conv2d: {filters: 5, kernel: 3, padding: same}}, {maxpool2d: {size: 3, stride: 2}}, flatten]", (3, 9, 8)),
        ("[{conv2d: {filters: 8, kernel: 5}}, relu, {maxpool2d: 2}, flatten]", (16, 12, 12)),
        ("[{conv1d: {filters: 4, kernel: 3}}, relu, {maxpool1d: 2}, flatten]", (2, 15)),
    ],
)
def test_evaluation_applies_a_max_pool_in_the_convolution_with_the_same_bits(layers, input_shape, rng):
    """In evaluation a convolution running the direct kernels applies the max pool after
    it (and after its relu) while reading its output: bit for bit what the two layers give
    apart, NaN windows included; the pool passes the result through. Training does not."""
    model = _conv_pool_model(layers, input_shape)
    conv, pool = model.layers[0], next(layer for layer in model.layers if layer.kind.startswith("maxpool"))
    assert conv.fuse_pool is pool and pool.pooled_by is conv
    for batch in (1, 5):
        x = rng.standard_normal((batch,) + input_shape).astype(np.float32)
        x[0, 0, ..., 3] = np.nan  # NaN in some windows of the first sample
        fused = model.forward(x, training=False).copy()
        assert conv.pooled and pool.passed
        conv.fuse_pool = None
        apart = model.forward(x, training=False)
        conv.fuse_pool = pool
        assert not conv.pooled and not pool.passed
        np.testing.assert_array_equal(fused, apart)
        assert np.isnan(fused[0]).any() and not np.isnan(fused[1:]).any()
    model.forward(x, training=False)
    with pytest.raises(RuntimeError, match="training=True"):
        model.backward(np.ones((batch,) + tuple(model.output_shape), np.float32))
    model.forward(x, training=True)
    assert not conv.pooled and not pool.passed
    model.backward(np.ones((batch,) + tuple(model.output_shape), np.float32))


def test_a_pool_is_not_applied_in_the_convolution_when_its_output_has_other_readers():
    model = _conv_pool_model(
        "[{conv2d: {filters: 4, kernel: 3}, name: c}, {maxpool2d: 2, name: p}, {flatten: null, name: f, input: c},"
        " {flatten: null, name: g, input: p}, {concat: null, input: [g, f]}]",
        (1, 8, 8),
    )
    assert all(layer.fuse_pool is None for layer in model.layers)
