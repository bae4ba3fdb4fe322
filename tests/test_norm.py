"""batchnorm and layernorm: against plain-NumPy references on random shapes (batch 1
included), running statistics after k steps by hand, gradient checks, the fused ReLU, and
the running statistics through checkpoints and resume."""

import numpy as np
import pytest
import reference as ref

from dlcli import checkpoint, losses, run, spec
from dlcli.gradcheck import assert_gradients_ok, check_layer
from dlcli.layers import LAYERS
from dlcli.model import Model

# (one-sample input shape, `over`, axes the statistics run over for a batch (N, *shape), channel axis)
CASES = [
    ((5,), "auto", (0,), 1),  # after dense: features
    ((3, 7), "auto", (0, 2), 1),  # after conv1d: channels over batch and length
    ((2, 3, 4), "auto", (0, 2, 3), 1),  # after conv2d
    ((4, 3), "features", (0, 1), 2),  # a sequence (time, features)
]


def make(kind, input_shape, dtype=np.float64, relu=False, **given):
    cls = LAYERS[kind]
    options = {k: given.get(k, o.default) for k, o in cls.OPTIONS.items()}
    layer = cls(dtype=dtype, rng=np.random.default_rng(0), **options)
    layer.fuse_relu = relu
    layer.build(input_shape)
    return layer


def channel_shape(ndim, axis):
    """Broadcast shape of a per-channel vector against a batch of `ndim` dimensions."""
    return tuple(-1 if a == axis else 1 for a in range(ndim))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("shape,over,axes,axis", CASES)
def test_batchnorm_matches_the_reference(rng, shape, over, axes, axis, batch, relu, dtype):
    if batch == 1 and axes == (0,):
        batch = 2  # one value per feature has no variance to normalise by; batch 1 is checked below
    layer = make("batchnorm", shape, dtype, relu, over=over)
    c = layer.channels
    layer.params["weight"][...] = rng.uniform(0.5, 1.5, c)
    layer.params["bias"][...] = rng.standard_normal(c)
    x = (rng.standard_normal((batch,) + shape) * 3 + 2).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    cs = channel_shape(x.ndim, axis)
    gamma, beta = (layer.params[k].astype(np.float64).reshape(cs) for k in ("weight", "bias"))
    x64 = x.astype(np.float64)
    expected, _, _ = ref.batchnorm_train(x64, gamma, beta, 1e-5, axes)
    mask = expected > 0 if relu else np.ones_like(expected, dtype=bool)
    expected = np.where(mask, expected, 0)
    y = layer.forward(x, training=True)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y, expected, **tol)
    dx = layer.backward(dy.copy())
    edx, egamma, ebeta = ref.batchnorm_train_backward(x64, gamma, 1e-5, axes, dy * mask)
    np.testing.assert_allclose(dx, edx, **tol)
    np.testing.assert_allclose(layer.grads["weight"], egamma.reshape(-1), **tol)
    np.testing.assert_allclose(layer.grads["bias"], ebeta.reshape(-1), **tol)


def test_batchnorm_of_one_sample_gives_the_shift(rng):
    # Batch 1 after dense: each feature's batch variance is 0, so the output is beta.
    layer = make("batchnorm", (4,))
    layer.params["bias"][...] = [1.0, -2.0, 0.5, 3.0]
    y = layer.forward(rng.standard_normal((1, 4)), training=True)
    np.testing.assert_allclose(y, [[1.0, -2.0, 0.5, 3.0]])
    # ... and it leaves the running statistics alone (an unbiased variance of one value is 0/0)
    np.testing.assert_array_equal(layer.buffers["running_mean"], 0)
    np.testing.assert_array_equal(layer.buffers["running_var"], 1)
    assert np.all(np.isfinite(layer.backward(rng.standard_normal((1, 4)))))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize(
    "shape,over,axes,param_axes,axis",
    [
        ((6,), "auto", (1,), (0,), 1),
        ((3, 5), "auto", (1, 2), (0, 2), 1),  # channels and positions
        ((2, 3, 4), "auto", (1, 2, 3), (0, 2, 3), 1),
        ((4, 3), "features", (2,), (0, 1), 2),
    ],
)
def test_layernorm_matches_the_reference(rng, shape, over, axes, param_axes, axis, batch, relu, dtype):
    layer = make("layernorm", shape, dtype, relu, over=over)
    c = layer.channels
    layer.params["weight"][...] = rng.uniform(0.5, 1.5, c)
    layer.params["bias"][...] = rng.standard_normal(c)
    x = (rng.standard_normal((batch,) + shape) * 2 - 1).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    cs = channel_shape(x.ndim, axis)
    gamma, beta = (layer.params[k].astype(np.float64).reshape(cs) for k in ("weight", "bias"))
    expected = ref.layernorm(x.astype(np.float64), gamma, beta, 1e-5, axes)
    mask = expected > 0 if relu else np.ones_like(expected, dtype=bool)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for training in (True, False):  # the same either way
        np.testing.assert_allclose(layer.forward(x, training=training), np.where(mask, expected, 0), **tol)
    dx = layer.backward(dy.copy())
    edx, egamma, ebeta = ref.layernorm_backward(x.astype(np.float64), gamma, 1e-5, axes, dy * mask, param_axes)
    np.testing.assert_allclose(dx, edx, **tol)
    np.testing.assert_allclose(layer.grads["weight"], egamma.reshape(-1), **tol)
    np.testing.assert_allclose(layer.grads["bias"], ebeta.reshape(-1), **tol)


def test_running_statistics_after_k_steps_by_hand(rng):
    momentum, eps = 0.2, 1e-3
    layer = make("batchnorm", (3, 4), momentum=momentum, eps=eps)
    mean, var = np.zeros(3), np.ones(3)
    for _ in range(4):
        x = rng.standard_normal((5, 3, 4)) * [[[1.0], [2.0], [0.5]]] + [[[3.0], [-1.0], [0.0]]]
        layer.forward(x, training=True)
        values = x.transpose(1, 0, 2).reshape(3, -1)  # each channel's 20 values
        mean = (1 - momentum) * mean + momentum * values.mean(axis=1)
        var = (1 - momentum) * var + momentum * values.var(axis=1, ddof=1)  # unbiased, as PyTorch
    np.testing.assert_allclose(layer.buffers["running_mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_var"], var, rtol=1e-12)
    # Evaluation uses them, and leaves them alone.
    x = rng.standard_normal((2, 3, 4))
    y = layer.forward(x, training=False)
    np.testing.assert_allclose(y, (x - mean[:, None]) / np.sqrt(var[:, None] + eps), rtol=1e-10)
    np.testing.assert_allclose(layer.buffers["running_mean"], mean, rtol=1e-12)


@pytest.mark.parametrize(
    "kind,shape,options,training",
    [
        ("batchnorm", (5,), {}, True),
        ("batchnorm", (3, 4), {"momentum": 0.3}, True),
        ("batchnorm", (2, 3, 3), {"affine": False}, True),
        ("batchnorm", (3, 4), {}, False),  # at evaluation: the running statistics
        ("layernorm", (5,), {}, True),
        ("layernorm", (3, 4), {"affine": False}, True),
        ("layernorm", (4, 3), {"over": "features"}, True),
    ],
)
def test_norm_gradients(rng, kind, shape, options, training):
    layer = make(kind, shape, **options)
    if layer.params:
        layer.params["weight"][...] = rng.uniform(0.5, 1.5, layer.channels)
        layer.params["bias"][...] = rng.standard_normal(layer.channels)
    if kind == "batchnorm":
        layer.buffers["running_mean"][...] = rng.standard_normal(layer.channels)
        layer.buffers["running_var"][...] = rng.uniform(0.5, 2, layer.channels)
    x = rng.standard_normal((4,) + shape)
    results = check_layer(layer, x, training=training)
    assert_gradients_ok(results)
    assert {r.tensor for r in results} == {"input"} | set(layer.params)


NORM_SPEC = """
seed: 3
data: {{source: builtin:spirals, options: {{samples: 96}}}}
model:
  input: [2]
  layers:
    - dense: 8
    - {kind}
    - relu
    - dense: 3
optimizer: {{name: adam, lr: 0.02}}
train: {{epochs: {epochs}, batch_size: 16}}
"""


@pytest.mark.parametrize("kind", ["batchnorm", "layernorm"])
def test_fused_relu_gives_the_unfused_results(rng, kind):
    s = spec.parse(NORM_SPEC.format(kind=kind, epochs=1))
    fused = Model.from_spec(s.model, dtype=np.float64, seed=s.seed, loss=s.loss, fuse=True)
    plain = Model.from_spec(s.model, dtype=np.float64, seed=s.seed, loss=s.loss, fuse=False)
    assert fused.layers[1].fuse_relu and fused.layers[2].fused and not plain.layers[1].fuse_relu
    loss = losses.make(s.loss)
    x, y = rng.standard_normal((9, 2)), rng.integers(0, 3, 9)
    for training in (True, False):
        outs = []
        for m in (fused, plain):
            out = m.forward(x, training=training)
            m.backward(loss(out, y)[1])
            outs.append((out.copy(), m.grads_flat.copy()))
        np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-10, atol=1e-12)


def test_running_statistics_are_checkpointed_and_resumed(tmp_path):
    straight = run.train(spec.parse(NORM_SPEC.format(kind="batchnorm", epochs=2)), output=tmp_path / "s.npz")[2]
    bn = straight.model.layers[1]
    assert not np.allclose(bn.buffers["running_var"], 1)  # they moved
    ck = checkpoint.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(ck.params["layers.1.running_mean"], bn.buffers["running_mean"])
    # A checkpoint's model evaluates with the saved statistics.
    _, model = checkpoint.build_model(ck)
    x = np.random.default_rng(0).standard_normal((7, 2)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x), straight.model.forward(x))
    # Train one epoch, resume for the second: the statistics continue where they were.
    out = tmp_path / "r.npz"
    run.train(spec.parse(NORM_SPEC.format(kind="batchnorm", epochs=1)), output=out)
    resumed = run.train(spec.parse(NORM_SPEC.format(kind="batchnorm", epochs=2)), resume=out, output=out)[2]
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(resumed.model.layers[1].buffers[name], bn.buffers[name], rtol=1e-6)
    np.testing.assert_allclose(resumed.model.params_flat, straight.model.params_flat, rtol=1e-6, atol=1e-7)
