"""A NaN or an infinity is never hidden inside the engine: placed anywhere in a layer's
input or parameters it comes out where plain NumPy's would, and a NaN in the gradient
flowing back reaches every input and parameter gradient a finite one reaches. Training
with a NaN stops with the last good checkpoint."""

import inspect

import numpy as np
import pytest
import reference as ref
from numba.core.registry import CPUDispatcher

from dlcli import checkpoint, kernels, run, spec
from dlcli.kernels import FAST_FLAGS
from dlcli.layers import LAYERS
from dlcli.layers.activations import ReLU
from dlcli.layers.conv import resolve_padding
from dlcli.model import Model
from dlcli.options import parse_options
from dlcli.train import Callback

BATCH = 2
SPOTS = 10  # positions tried per tensor (seeded), the first and last among them


def build(kind, then_relu=False, **options):
    """A float64 model of one layer from its EXAMPLE (options overridden), optionally
    followed by a relu that the model fuses into it."""
    cls = LAYERS[kind]
    layer = cls(
        dtype=np.float64,
        rng=np.random.default_rng(0),
        name=kind,
        **parse_options(cls.OPTIONS, {**cls.EXAMPLE.get("options", {}), **options}),
    )
    layers = [layer] + ([ReLU(dtype=np.float64, name="relu")] if then_relu else [])
    return Model(layers, cls.EXAMPLE["input"], dtype=np.float64, loss=None, fuse=True)


CASES = {kind: (kind, {}) for kind, cls in LAYERS.items() if not cls.MERGE}  # merge layers: below
CASES["dense+relu (fused)"] = ("dense", {"then_relu": True})
CASES["conv2d+relu (fused)"] = ("conv2d", {"then_relu": True})
CASES["rnn relu"] = ("rnn", {"activation": "relu"})
CASES["lstm last step"] = ("lstm", {"return_sequences": False})


# ---------------------------------------------------------------- the NumPy mirror of each layer


def _as2d(x):  # (B, C, L) -> (B, C, 1, L)
    return x[:, :, None, :]


def _pool(layer, x, fn):
    o = layer.options
    size, stride = o["size"], o["stride"] or o["size"]
    if layer.ndim == 1:
        return fn(_as2d(x), (1,) + size, (1,) + stride)[0][:, :, 0, :]
    return fn(x, size, stride)[0]


def _conv(layer, x):
    o, p = layer.options, layer.params
    nd = layer.ndim
    pads = []
    for a in range(nd):
        opt = o["padding"] if isinstance(o["padding"], str) else o["padding"][a]
        pads += resolve_padding(opt, x.shape[2 + a], o["kernel"][a], o["stride"][a], o["dilation"][a])[:2]
    w, b = p["weight"], p.get("bias")
    if nd == 1:
        y = ref.conv2d(_as2d(x), w[:, :, None, :], b, (1,) + o["stride"], (0, 0) + tuple(pads), (1,) + o["dilation"])
        return y[:, :, 0, :]
    return ref.conv2d(x, w, b, o["stride"], tuple(pads), o["dilation"])


def _recurrent(layer, x):
    p = layer.params
    H = layer.options["units"]
    zeros = np.zeros(p["w_recurrent"].shape[1])
    b = p.get("bias", zeros)
    if layer.kind == "rnn":
        hs = ref.rnn_forward(x, p["w_input"], p["w_recurrent"], b, layer.options["activation"])
    elif layer.kind == "lstm":
        hs = ref.lstm_forward(x, p["w_input"], p["w_recurrent"], b)
    else:
        hs = ref.gru_forward(x, p["w_input"], p["w_recurrent"], b, p.get("bias_hn", np.zeros(H)))
    return hs if layer.options["return_sequences"] else hs[:, -1]


def _norm_axes(layer, x):
    """(channel axis shape for broadcasting, axes a layernorm sample is normalised over)."""
    over = layer.options["over"]
    if over == "auto":
        over = "features" if x.ndim == 2 else "channels"
    if over == "features":  # the last axis holds the features
        return (1,) * (x.ndim - 1) + (-1,), (x.ndim - 1,)
    return (1, -1) + (1,) * (x.ndim - 2), tuple(range(1, x.ndim))


def _batchnorm(layer, x):  # not training: the running statistics
    shape, _ = _norm_axes(layer, x)
    b = layer.buffers
    y = (x - b["running_mean"].reshape(shape)) / np.sqrt(b["running_var"].reshape(shape) + layer.options["eps"])
    return y * layer.params["weight"].reshape(shape) + layer.params["bias"].reshape(shape)


def _layernorm(layer, x):
    shape, axes = _norm_axes(layer, x)
    mean = x.mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(x.var(axis=axes, keepdims=True) + layer.options["eps"])
    return y * layer.params["weight"].reshape(shape) + layer.params["bias"].reshape(shape)


MIRRORS = {
    "embedding": lambda L, x: L.params["weight"][x],
    "batchnorm": _batchnorm,
    "layernorm": _layernorm,
    "dense": lambda L, x: x @ L.params["weight"] + L.params.get("bias", 0),
    "relu": lambda L, x: np.maximum(x, 0),
    "sigmoid": lambda L, x: ref.sigmoid(x),
    "tanh": lambda L, x: np.tanh(x),
    "softmax": lambda L, x: ref.softmax(x),
    "dropout": lambda L, x: x,  # not training
    "conv2d": _conv,
    "conv1d": _conv,
    "maxpool2d": lambda L, x: _pool(L, x, ref.maxpool2d),
    "maxpool1d": lambda L, x: _pool(L, x, ref.maxpool2d),
    "avgpool2d": lambda L, x: _pool(L, x, ref.avgpool2d),
    "avgpool1d": lambda L, x: _pool(L, x, ref.avgpool2d),
    "global_avgpool": lambda L, x: x.mean(axis=tuple(range(2, x.ndim))),
    "flatten": lambda L, x: x.reshape(len(x), -1),
    "permute": lambda L, x: x.transpose((0,) + tuple(L.options["dims"])),
    "rnn": _recurrent,
    "lstm": _recurrent,
    "gru": _recurrent,
}


def mirror(model, x):
    for layer in model.layers:
        x = MIRRORS[layer.kind](layer, x)
    return x


def spots(size, rng):
    picks = rng.choice(size, min(size, SPOTS), replace=False)
    return sorted({0, size - 1, *picks.tolist()})


def model_input(model, rng):
    """A random batch: token ids for a model that takes them, else standard normal."""
    first = model.layers[0]
    if first.INTEGER_INPUT:
        return rng.integers(0, first.vocab_size, (BATCH,) + tuple(model.input_shape))
    return rng.standard_normal((BATCH,) + tuple(model.input_shape))


def tensors(model, x):
    out = {} if model.layers[0].INTEGER_INPUT else {"input": x}  # an id cannot be NaN
    for layer in model.layers:
        out.update({f"{layer.name}.{k}": v for k, v in layer.params.items()})
    return out


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("case", list(CASES))
def test_non_finite_values_come_out_where_numpy_says(case, value):
    kind, options = CASES[case]
    model = build(kind, **options)
    rng = np.random.default_rng(7)
    x = model_input(model, rng)
    has_mirror = all(layer.kind in MIRRORS for layer in model.layers)
    base = model.forward(x.copy())
    reached = 0
    for name, arr in tensors(model, x).items():
        for pos in spots(arr.size, rng):
            saved = arr.flat[pos]
            if has_mirror:
                arr.flat[pos] = value
                y = model.forward(x.copy())
                want = mirror(model, x)
                bad = ~np.isfinite(y)
                assert np.array_equal(bad, ~np.isfinite(want)), (name, pos, y, want)
            else:  # a layer with no NumPy mirror yet: every output a change there moves must be hit
                arr.flat[pos] = saved + 0.5
                moved = model.forward(x.copy()) != base
                arr.flat[pos] = value
                bad = ~np.isfinite(model.forward(x.copy()))
                assert bad[moved].all(), (name, pos)
            arr.flat[pos] = saved
            reached += bad.any()
    if value is np.nan:
        assert reached > 0


def test_every_layer_type_has_a_numpy_mirror():
    assert set(LAYERS) <= set(MIRRORS) | set(MERGE_MIRRORS), "add the new layer type to MIRRORS"


MERGE_MIRRORS = {
    "add": lambda L, xs: (xs[0] @ L.params["weight"] if L.params else xs[0]) + sum(xs[1:]),
    "concat": lambda L, xs: np.concatenate(xs, axis=-1 if L.options["over"] == "features" or xs[0].ndim == 2 else 1),
}


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "+inf"])
@pytest.mark.parametrize("kind", [k for k, cls in LAYERS.items() if cls.MERGE])
def test_merge_layers_pass_non_finite_values_where_numpy_does(kind, value):
    cls = LAYERS[kind]
    layer = cls(
        dtype=np.float64, rng=np.random.default_rng(0), name=kind, **parse_options(cls.OPTIONS, cls.EXAMPLE["options"])
    )
    shapes = [tuple(s) for s in cls.EXAMPLE["input"]]
    layer.build(shapes)
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((BATCH,) + s) for s in shapes]
    named = {f"input {i}": x for i, x in enumerate(xs)} | {f"{kind}.{k}": v for k, v in layer.params.items()}
    for name, arr in named.items():
        for pos in spots(arr.size, rng):
            saved = arr.flat[pos]
            arr.flat[pos] = value
            y = layer.forward([x.copy() for x in xs])
            want = MERGE_MIRRORS[kind](layer, xs)
            arr.flat[pos] = saved
            assert np.array_equal(~np.isfinite(y), ~np.isfinite(want)), (name, pos)
            assert (~np.isfinite(y)).any()


# ---------------------------------------------------------------- backward


@pytest.mark.parametrize("case", list(CASES))
def test_a_nan_gradient_reaches_every_gradient_a_finite_one_reaches(case):
    """dL/dy = NaN at one output: wherever dL/dy = 1 there would give a nonzero input or
    parameter gradient, NaN must arrive (a NaN times 0 may be 0 or NaN: not asserted)."""
    kind, options = CASES[case]
    model = build(kind, **options)
    rng = np.random.default_rng(8)
    x = model_input(model, rng)
    out_size = BATCH * int(np.prod(model.output_shape))
    flowed = 0

    def backward(value, pos):
        model.forward(x.copy(), training=True)  # backward may consume what forward kept
        dy = np.zeros((BATCH,) + tuple(model.output_shape))
        dy.flat[pos] = value
        dx = model.backward(dy, need_input_grad=True)
        grads = {f"{layer.name}.{k}": g.copy() for layer in model.layers for k, g in layer.grads.items()}
        return grads if dx is None else {"input": dx.copy(), **grads}

    for pos in spots(out_size, rng):
        for layer in model.layers:
            layer.rng = np.random.default_rng(1)  # dropout: the same mask both times
        finite = backward(1.0, pos)
        for layer in model.layers:
            layer.rng = np.random.default_rng(1)
        nan = backward(np.nan, pos)
        for name in finite:
            reach = finite[name] != 0
            flowed += reach.sum()
            assert np.isnan(nan[name][reach]).all(), (name, pos)
    assert flowed > 0


# ---------------------------------------------------------------- the kernels' compile flags


def test_no_kernel_may_assume_values_are_finite():
    """fastmath=True (or 'nnan'/'ninf'/'afn') lets LLVM drop the comparisons that carry a
    NaN through a max or a clamp: no kernel may use them."""
    import importlib
    import pkgutil

    seen = 0
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"dlcli.kernels.{info.name}")
        for name, fn in inspect.getmembers(module, lambda f: isinstance(f, CPUDispatcher)):
            flags = fn.targetoptions.get("fastmath", False)
            assert flags is False or (isinstance(flags, set) and flags <= FAST_FLAGS), (info.name, name, flags)
            seen += 1
    assert seen > 30
    assert not {"nnan", "ninf", "afn"} & FAST_FLAGS


# ---------------------------------------------------------------- training stops


def test_max_pooling_passes_a_nan_that_is_not_first_in_its_window(rng):
    from dlcli.kernels import pool as K

    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    for (i, j), (size, stride) in [((1, 1), (2, 2)), ((0, 5), (2, 2)), ((4, 2), (3, 1)), ((5, 5), (3, 3))]:
        xn = x.copy()
        xn[1, 2, i, j] = np.nan
        oh, ow = (6 - size) // stride + 1, (6 - size) // stride + 1
        y = np.empty((2, 3, oh, ow), np.float32)
        idx = np.empty(y.shape, np.int32)
        K.maxpool_forward(xn, size, size, stride, stride, y, idx)
        want, _ = ref.maxpool2d(xn.astype(np.float64), (size, size), (stride, stride))
        np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
        assert np.isnan(y).any()
        np.testing.assert_array_equal(y[~np.isnan(y)], want[~np.isnan(want)])  # the plane with it too
        assert (idx[np.isnan(y)] == i * 6 + j).all()  # the gradient goes to the NaN
        dx = np.empty_like(xn)
        K.maxpool_backward(np.ones_like(y), idx, dx)
        assert dx[1, 2, i, j] > 0


class PoisonData(Callback):
    """After the first epoch, one pixel (or time step) of every training sample becomes NaN,
    where max pooling or a ReLU used to hide it from the loss (only the first layer's weight
    gradient then showed it)."""

    def __init__(self, index):
        self.index = index

    def on_epoch(self, trainer, e):
        if e.epoch == 0:
            trainer.dataset.x_train[(slice(None),) + self.index] = np.nan


CNN = """\
name: nan_cnn
data: {source: data.npz, validation_split: 0.25}
model:
  input: [1, 4, 4]
  layers: [{conv2d: {filters: 2, kernel: 1}}, relu, {maxpool2d: 2}, flatten, {dense: 2}]
optimizer: {name: sgd, lr: 0.01}
train: {epochs: 3, batch_size: 8}
"""
RNN = """\
name: nan_rnn
data: {source: data.npz, validation_split: 0.25}
model:
  input: [4, 3]
  layers: [{rnn: {units: 4, activation: relu}}, {dense: 2}]
optimizer: {name: sgd, lr: 0.01}
train: {epochs: 3, batch_size: 8}
"""


@pytest.mark.parametrize(
    "text,shape,index",
    [(CNN, (1, 4, 4), (0, 1, 1)), (RNN, (4, 3), (1, 0))],
    ids=["maxpool", "rnn-relu"],
)
def test_a_nan_in_the_data_stops_training_with_the_last_good_checkpoint(tmp_path, text, shape, index):
    rng = np.random.default_rng(0)
    # compressed: read into memory, where the callback can poison it (np.savez's
    # uncompressed arrays are memory-mapped read-only)
    np.savez_compressed(tmp_path / "data.npz", x=rng.standard_normal((32,) + shape), y=rng.integers(0, 2, 32))
    (tmp_path / "s.yaml").write_text(text)
    out = tmp_path / "n.npz"
    s = spec.load(tmp_path / "s.yaml")
    result, _, _ = run.train(s, output=out, callbacks=[PoisonData(index)])
    assert result.stopped == "diverged", result
    assert "NaN" in result.message and "epoch 2" in result.message
    ck = checkpoint.load(out)
    assert ck.meta["epochs_done"] == 1
    assert all(np.isfinite(v).all() for v in ck.params.values())
    # the NaN reaches every output, hence the loss itself, not only a gradient
    x = rng.standard_normal((4,) + shape).astype(np.float32)
    x[(slice(None),) + index] = np.nan
    _, model = checkpoint.build_model(ck)
    assert np.isnan(model.predict_raw(x)).all()
