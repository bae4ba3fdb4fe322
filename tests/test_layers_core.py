"""Dense and activation layers, the model's flat buffers and fusions, and a finite-difference
check (float64) of every core layer and loss."""

import numpy as np
import pytest
import reference as ref

from dlcli import losses, spec
from dlcli.gradcheck import assert_gradients_ok, check_layer, check_model
from dlcli.layers import LAYERS, activations, dense
from dlcli.model import Model
from dlcli.options import parse_options

# The core layer types: every type layers/dense.py and layers/activations.py define.
CORE = {cls.kind for cls in LAYERS.values() if cls.__module__ in (dense.__name__, activations.__name__)}


def make_layer(kind, input_shape, dtype=np.float64, seed=0, **options):
    cls = LAYERS[kind]
    parsed = parse_options(cls.OPTIONS, options)
    layer = cls(dtype=dtype, rng=np.random.default_rng(seed), **parsed)
    layer.build(input_shape)
    return layer


def model_from(text, dtype=np.float64, fuse=True):
    s = spec.parse(text)
    return Model.from_spec(s.model, dtype=dtype, seed=s.seed, loss=s.loss, fuse=fuse), losses.make(s.loss)


# ---------------------------------------------------------------- finite differences, layer by layer


LAYER_CASES = [
    ("dense", {"units": 4}, (5,)),
    ("dense", {"units": 3, "bias": False}, (7,)),
    ("dense", {"units": 2}, (3, 5)),  # time-distributed over a sequence
    ("relu", {}, (6,)),
    ("sigmoid", {}, (6,)),
    ("tanh", {}, (2, 3)),
    ("softmax", {}, (5,)),
    ("dropout", {"rate": 0.3}, (8,)),
]


@pytest.mark.parametrize("kind,options,input_shape", LAYER_CASES)
def test_layer_gradients(rng, kind, options, input_shape):
    layer = make_layer(kind, input_shape, **options)
    x = rng.standard_normal((4,) + input_shape)
    results = check_layer(layer, x)
    assert_gradients_ok(results)
    expected = {"input"} | set(layer.params)
    assert {r.tensor for r in results} == expected
    assert all(r.checked > 0 for r in results)


def test_every_core_layer_is_checked():
    # The parametrisation above must keep covering every core layer type, a new one too.
    assert len(CORE) >= 6 and {kind for kind, _, _ in LAYER_CASES} == CORE


def test_gradcheck_catches_a_wrong_gradient(rng):
    """The checker itself must be able to fail: a tanh layer with a sigmoid's backward."""
    from dlcli.kernels import elementwise as K

    layer = make_layer("tanh", (5,))
    layer.bwd = K.sigmoid_backward
    with pytest.raises(AssertionError, match="input"):
        assert_gradients_ok(check_layer(layer, rng.standard_normal((3, 5))))


# ---------------------------------------------------------------- finite differences, models with losses

MLP = """
seed: 3
data: builtin:spirals
model:
  input: [4]
  layers:
    - dense: 6
    - relu
    - dense: 5
    - tanh
    - dense: 4
    - sigmoid
    - dropout: 0.25
    - dense: 3
    {final}
loss: {loss}
"""


@pytest.mark.parametrize(
    "loss,final,targets",
    [
        ("cross_entropy", "", "labels"),
        ("cross_entropy", "- softmax", "labels"),
        ("mse", "", "values"),
        ("mse", "- softmax", "values"),
        ("binary_cross_entropy", "", "binary"),
        ("binary_cross_entropy", "- sigmoid", "binary"),
    ],
)
def test_model_and_loss_gradients(rng, loss, final, targets):
    model, loss_fn = model_from(MLP.format(loss=loss, final=final))
    x = rng.standard_normal((6, 4))
    y = {
        "labels": rng.integers(0, 3, 6),
        "values": rng.standard_normal((6, 3)),
        "binary": (rng.random((6, 3)) < 0.5).astype(np.float64),
    }[targets]
    results = check_model(model, loss_fn, x, y)
    assert_gradients_ok(results)
    # the loss's own gradient and every parameter tensor were checked
    assert any(r.layer == "loss" for r in results)
    checked = {(r.layer, r.tensor) for r in results}
    for i in model.param_layers:
        for name in model.layers[i].params:
            assert (model.layers[i].name, name) in checked


# ---------------------------------------------------------------- forward values and the model's bookkeeping


def test_dense_forward_matches_reference(rng):
    layer = make_layer("dense", (5,), dtype=np.float32, units=7)
    layer.params["bias"][...] = rng.standard_normal(7)
    x = rng.standard_normal((9, 5)).astype(np.float32)
    y = layer.forward(x)
    np.testing.assert_allclose(y, ref.dense(x, layer.params["weight"], layer.params["bias"]), rtol=1e-5, atol=1e-5)
    assert y.dtype == np.float32


def test_dense_init_is_he_before_relu_and_glorot_otherwise():
    relu_net, _ = model_from("data: builtin:spirals\nmodel: {input: [400], layers: [{dense: 300}, relu, {dense: 300}]}")
    he, glorot = relu_net.layers[0].params["weight"], relu_net.layers[2].params["weight"]
    np.testing.assert_allclose(he.std(), np.sqrt(2 / 400), rtol=0.05)
    np.testing.assert_allclose(glorot.std(), np.sqrt(2 / 600), rtol=0.05)  # uniform(-a, a): std a/sqrt(3)
    assert np.abs(glorot).max() <= np.sqrt(6 / 600)


def test_dropout_is_inverted_and_identity_at_inference(rng):
    layer = make_layer("dropout", (1000,), rate=0.4)
    x = np.ones((20, 1000))
    assert layer.forward(x, training=False) is x
    y = layer.forward(x, training=True)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.6)
    assert abs(kept.mean() - 0.6) < 0.02
    dy = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(layer.backward(dy), dy * y)  # same mask (x is all ones)


def test_softmax_layer_forward(rng):
    layer = make_layer("softmax", (2, 4))
    x = rng.standard_normal((3, 2, 4)) * 10
    np.testing.assert_allclose(layer.forward(x), ref.softmax(x), rtol=1e-12)


def test_dense_relu_fusion_gives_the_unfused_results(rng):
    text = "seed: 1\ndata: builtin:spirals\nmodel: {input: [5], layers: [{dense: 8}, relu, {dense: 3}]}"
    fused, loss = model_from(text, dtype=np.float32, fuse=True)
    plain, _ = model_from(text, dtype=np.float32, fuse=False)
    assert fused.layers[0].fuse_relu and fused.layers[1].fused
    assert not plain.layers[0].fuse_relu
    np.testing.assert_array_equal(fused.params_flat, plain.params_flat)
    x = rng.standard_normal((11, 5)).astype(np.float32)
    y = rng.integers(0, 3, 11)
    outs = []
    for m in (fused, plain):
        out = m.forward(x, training=True)
        _, dout, _ = loss(out, y)
        m.backward(dout)
        outs.append((out.copy(), m.grads_flat.copy()))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-6)


def test_final_softmax_is_left_out_of_the_trained_graph(rng):
    m, _ = model_from("data: builtin:spirals\nmodel: {input: [2], layers: [{dense: 3}, softmax]}\nloss: cross_entropy")
    assert [layer.kind for layer in m.trained] == ["dense"]
    m2, _ = model_from("data: builtin:spirals\nmodel: {input: [2], layers: [{dense: 3}, softmax]}\nloss: mse")
    assert [layer.kind for layer in m2.trained] == ["dense", "softmax"]
    m3, _ = model_from(
        "data: builtin:xor\nmodel: {input: [2], layers: [{dense: 1}, sigmoid]}\nloss: binary_cross_entropy"
    )
    assert [layer.kind for layer in m3.trained] == ["dense"]


def test_params_and_grads_are_views_of_the_flat_buffers(rng):
    # float32, as in training: the per-layer norms' kernel is never run on float64 buffers
    m, loss = model_from(
        "data: builtin:spirals\nmodel: {input: [3], layers: [{dense: 4}, tanh, {dense: 2}]}", np.float32
    )
    assert m.n_params() == 3 * 4 + 4 + 4 * 2 + 2
    m.params_flat[:] = np.arange(m.n_params())
    np.testing.assert_array_equal(m.layers[0].params["weight"].reshape(-1), np.arange(12))
    np.testing.assert_array_equal(m.layers[2].params["bias"], [m.n_params() - 2, m.n_params() - 1])
    out = m.forward(rng.standard_normal((5, 3)).astype(np.float32), training=True)
    _, dout, _ = loss(out, rng.integers(0, 2, 5))
    m.backward(dout)
    assert np.all(m.grads_flat != 0)
    # per-layer gradient norms are the norms of the views
    expected = [
        np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in m.layers[i].grads.values())) for i in m.param_layers
    ]
    np.testing.assert_allclose(m.layer_grad_norms(), expected, rtol=1e-6)


def test_seeded_initialisation_repeats_and_differs_by_seed():
    text = "seed: {}\ndata: builtin:spirals\nmodel: {{input: [2], layers: [{{dense: 5}}, relu, {{dense: 3}}]}}"
    a, _ = model_from(text.format(7))
    b, _ = model_from(text.format(7))
    c, _ = model_from(text.format(8))
    np.testing.assert_array_equal(a.params_flat, b.params_flat)
    assert not np.array_equal(a.params_flat, c.params_flat)


def test_summary_counts_params_and_flops():
    m, _ = model_from("data: builtin:spirals\nmodel: {input: [2], layers: [{dense: 64}, relu, {dense: 3}]}")
    rows = m.summary()
    assert [r.params for r in rows] == [2 * 64 + 64, 0, 64 * 3 + 3]
    assert rows[0].flops == 2 * 2 * 64 + 64
    assert [tuple(r.output_shape) for r in rows] == [(64,), (64,), (3,)]
