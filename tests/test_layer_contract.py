"""The layer contract of layers/base.py: capability flags the model reads instead of lists
of kinds, and state buffers that checkpoints keep and the optimizer never sees."""

from pathlib import Path

import numpy as np
import pytest

from dlcli import checkpoint, optim, run
from dlcli import spec as spec_mod
from dlcli.errors import ShapeError
from dlcli.layers import LAYERS
from dlcli.layers.base import Layer
from dlcli.model import Model


class Gain(Layer):
    """y = x * gain; keeps a running mean of its input as a buffer (a batchnorm in miniature)."""

    kind = "gain"
    FUSES_RELU = True

    def build(self, input_shape):
        self.params["gain"] = np.full(input_shape, 2.0, self.dtype)
        self.buffers["running_mean"] = np.zeros(input_shape, self.dtype)
        self.zeros_like_params()
        return super().build(input_shape)

    def forward(self, x, training=False):
        if training:
            self.buffers["running_mean"] += 0.5 * (x.mean(axis=0) - self.buffers["running_mean"])
        self.x = x
        y = x * self.params["gain"]
        return np.maximum(y, 0) if self.fuse_relu else y

    def backward(self, dy, need_dx=True):
        self.grads["gain"][...] = (dy * self.x).sum(axis=0)
        return dy * self.params["gain"]


def test_the_model_fuses_by_capability_not_by_kind():
    model = Model([Gain(), LAYERS["relu"](), LAYERS["dense"](units=2, bias=True, init="auto")], (3,), loss="mse")
    assert model.layers[0].fuse_relu and model.layers[1].fused
    assert model.layers[0].next_kind == "relu"
    for kind, cls in LAYERS.items():  # the built-in flags: what the kernels can do
        assert cls.FUSES_RELU == (kind in ("dense", "conv1d", "conv2d", "batchnorm", "layernorm", "add")), kind
        assert cls.RECORDS_TIME_GRADS == (kind in ("rnn", "lstm", "gru")), kind


def test_buffers_are_saved_restored_and_never_optimised(tmp_path):
    model = Model([Gain(dtype=np.float64)], (3,), dtype=np.float64, loss="mse")
    assert model.n_params() == 3  # the buffer is not a parameter
    assert set(model.state()) == {"layers.0.gain", "layers.0.running_mean"}
    assert set(model.buffers()) == {"layers.0.running_mean"}
    x = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    model.forward(x, training=True)
    model.forward(x, training=False)  # evaluation leaves the state alone
    np.testing.assert_allclose(model.layers[0].buffers["running_mean"], [1.0, 1.5, 2.0])

    # One optimizer step with weight decay and clipping: the buffer does not move, and the
    # per-layer gradient norms cover the parameter only.
    model.backward(np.ones((2, 3)))
    text = "data: builtin:spirals\nmodel: {input: [3], layers: [relu]}\noptimizer: {name: sgd, momentum: 0.9, weight_decay: 0.5}"
    opt = optim.for_model(spec_mod.parse(text).optimizer, model)
    sums = opt.step(model.params_flat, model.grads_flat, 0.1, scale=0.5)
    np.testing.assert_allclose(model.layers[0].buffers["running_mean"], [1.0, 1.5, 2.0])
    np.testing.assert_allclose(np.sqrt(sums), [np.linalg.norm(x.sum(axis=0))])

    path = checkpoint.save(tmp_path / "c.npz", "spec text", model, opt)
    restored = Model([Gain(dtype=np.float64)], (3,), dtype=np.float64, loss="mse")
    restored.load_state(checkpoint.load(path).params)
    np.testing.assert_array_equal(restored.layers[0].buffers["running_mean"], [1.0, 1.5, 2.0])
    np.testing.assert_array_equal(restored.params_flat, model.params_flat)


SAMPLES = sorted((Path(__file__).resolve().parents[1] / "sample_configs").glob("*.yaml"))


def _inputs(model, n, seed):
    rng = np.random.default_rng(seed)
    first = model.trained[0]
    if first.INTEGER_INPUT:  # token ids
        return rng.integers(0, first.vocab_size, size=(n, *model.input_shape)).astype(model.dtype)
    return rng.standard_normal((n, *model.input_shape)).astype(model.dtype)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_the_bound_evaluation_pass_is_forward(path):
    """`Model.evaluator` (what predict runs per batch: each layer's pass bound once, fused
    relus and pools skipped) gives forward's bits on every sample config, at batch 1 and
    37, call after call on its reused buffers."""
    model, _ = run.build(spec_mod.load(path))
    for batch in (1, 37):
        evaluate = model.evaluator(batch)
        for seed in (1, 2):  # the second call reuses the first one's buffers
            x = _inputs(model, batch, seed)
            np.testing.assert_array_equal(evaluate(x), model.forward(x, training=False))


def test_the_bound_evaluation_pass_refuses_another_shape():
    text = "model: {input: [1, 12, 12], layers: [{conv2d: {filters: 4, kernel: 3}}, relu, {maxpool2d: 2}, flatten, {dense: 3}]}"
    model, _ = run.build(spec_mod.parse("data: builtin:shapes\n" + text))
    assert model.trained[0].pools_at(2)  # the pass that binds the most: conv, relu and pool in one
    evaluate = model.evaluator(2)
    with pytest.raises(ShapeError, match=r"expects input of shape \(2, 1, 12, 12\), got \(2, 1, 12, 11\)"):
        evaluate(np.zeros((2, 1, 12, 11), np.float32))
    with pytest.raises(ShapeError):
        evaluate(np.zeros((3, 1, 12, 12), np.float32))
