"""Recurrent layers (issue 5): kernels against step-by-step NumPy references, gradient
checks, dL/dh_t norms, datasets, and training through the CLI."""

import numpy as np
import pytest
import reference as ref

from dlcli.errors import ShapeError
from dlcli.gradcheck import assert_gradients_ok, check_layer, check_model
from dlcli.layers import LAYERS
from dlcli.layers.recurrent import GRU, LSTM, RNN

SHARDS = (1, 2, 3)  # the whole batch, uneven halves, one row each
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-6, atol=2e-6)}


def make(cls, dtype=np.float64, T=5, F=3, seed=0, shards=1, **options):
    layer = cls(dtype=dtype, rng=np.random.default_rng(seed), **{"units": 7, **options})
    layer.shards = shards
    layer.build((T, F))
    # Non-zero biases so that every term of the equations is exercised.
    for name, p in layer.params.items():
        if name.startswith("bias"):
            p[...] = np.random.default_rng(seed + 1).uniform(-0.5, 0.5, p.shape)
    return layer


def reference_forward(layer, x):
    p = {k: v.astype(np.float64) for k, v in layer.params.items()}
    x = x.astype(np.float64)
    if layer.kind == "rnn":
        return ref.rnn_forward(x, p["w_input"], p["w_recurrent"], p["bias"], layer.options["activation"])
    if layer.kind == "lstm":
        return ref.lstm_forward(x, p["w_input"], p["w_recurrent"], p["bias"])
    return ref.gru_forward(x, p["w_input"], p["w_recurrent"], p["bias"], p["bias_hn"])


def reference_backward(layer, x, dhs):
    """(grads by parameter name, dx, norms)."""
    p = {k: v.astype(np.float64) for k, v in layer.params.items()}
    x = x.astype(np.float64)
    if layer.kind == "rnn":
        gi, gh, gb, dx, n = ref.rnn_backward(
            x, p["w_input"], p["w_recurrent"], p["bias"], dhs, layer.options["activation"]
        )
        return {"w_input": gi, "w_recurrent": gh, "bias": gb}, dx, n
    if layer.kind == "lstm":
        gi, gh, gb, dx, n = ref.lstm_backward(x, p["w_input"], p["w_recurrent"], p["bias"], dhs)
        return {"w_input": gi, "w_recurrent": gh, "bias": gb}, dx, n
    gi, gh, gb, gbhn, dx, n = ref.gru_backward(x, p["w_input"], p["w_recurrent"], p["bias"], p["bias_hn"], dhs)
    return {"w_input": gi, "w_recurrent": gh, "bias": gb, "bias_hn": gbhn}, dx, n


CELLS = [
    pytest.param(RNN, {"activation": "tanh"}, id="rnn-tanh"),
    pytest.param(RNN, {"activation": "relu"}, id="rnn-relu"),
    pytest.param(LSTM, {}, id="lstm"),
    pytest.param(GRU, {}, id="gru"),
]


@pytest.mark.parametrize("cls,opts", CELLS)
@pytest.mark.parametrize("shards", SHARDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_reference(cls, opts, shards, dtype, rng):
    layer = make(cls, dtype, shards=shards, return_sequences=True, **opts)
    x = rng.standard_normal((3, 5, 3)).astype(dtype)
    y = layer.forward(x, training=True)
    assert y.shape == (3, 5, 7) and y.dtype == dtype
    np.testing.assert_allclose(y, reference_forward(layer, x), **TOL[dtype])
    last = make(cls, dtype, shards=shards, return_sequences=False, **opts)
    y_last = last.forward(x, training=True)
    assert y_last.shape == (3, 7)
    np.testing.assert_allclose(y_last, y[:, -1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls,opts", CELLS)
@pytest.mark.parametrize("shards", SHARDS)
@pytest.mark.parametrize("seq", [True, False])
def test_backward_matches_reference(cls, opts, shards, seq, rng):
    dtype = np.float32
    layer = make(cls, dtype, shards=shards, return_sequences=seq, **opts)
    layer.record_time_grads = True
    x = rng.standard_normal((3, 5, 3)).astype(dtype)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy.copy())
    dhs = dy.astype(np.float64) if seq else np.zeros((3, 5, 7))
    if not seq:
        dhs[:, -1] = dy
    grads, dx_ref, norms_ref = reference_backward(layer, x, dhs)
    for name, g in grads.items():
        np.testing.assert_allclose(layer.grads[name], g, rtol=1e-3, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-3, atol=1e-4)
    assert layer.time_grad_norms.dtype == np.float64 and layer.time_grad_norms.shape == (5,)
    np.testing.assert_allclose(layer.time_grad_norms, norms_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls,opts", CELLS)
@pytest.mark.parametrize("seq", [True, False])
def test_gradcheck_layer(cls, opts, seq, rng):
    layer = make(cls, np.float64, T=4, F=2, units=3, return_sequences=seq, **opts)
    x = rng.standard_normal((2, 4, 2))
    assert_gradients_ok(check_layer(layer, x))


@pytest.mark.parametrize("cls,opts", CELLS)
@pytest.mark.parametrize("B,T", [(1, 4), (2, 1)])
def test_gradcheck_batch_one_and_length_one(cls, opts, B, T, rng):
    for shards in SHARDS:
        layer = make(cls, np.float64, T=T, F=2, units=3, return_sequences=True, shards=shards, **opts)
        assert_gradients_ok(check_layer(layer, rng.standard_normal((B, T, 2))))


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_gradcheck_without_bias(cls, rng):
    layer = make(cls, np.float64, T=3, F=2, units=3, bias=False)
    assert not any(k.startswith("bias") for k in layer.params)
    assert_gradients_ok(check_layer(layer, rng.standard_normal((2, 3, 2))))


def _model(layers_yaml, input_shape, loss_name):
    """A float64 model built from spec text, as the CLI builds it."""
    from dlcli import run, spec

    s = spec.parse(
        f"data: {{source: builtin:adding}}\nmodel:\n  input: {list(input_shape)}\n  layers:\n{layers_yaml}"
        f"loss: {loss_name}\n"
    )
    return run.build(s, dtype=np.float64)


def test_gradcheck_stacked_model(rng):
    """rnn -> lstm -> gru -> dense, sequence to one, with the real loss."""
    model, loss = _model(
        "    - rnn: {units: 3, return_sequences: true}\n    - lstm: {units: 4, return_sequences: true}\n"
        "    - gru: {units: 3}\n    - dense: 2\n",
        (4, 2),
        "mse",
    )
    assert model.output_shape == (2,)
    x = rng.standard_normal((2, 4, 2))
    y = rng.standard_normal((2, 2))
    assert_gradients_ok(check_model(model, loss, x, y))


def test_gradcheck_sequence_to_sequence(rng):
    """A dense layer after return_sequences applies to every step; labels (B, T)."""
    model, loss = _model("    - gru: {units: 4, return_sequences: true}\n    - dense: 3\n", (5, 2), "cross_entropy")
    assert model.output_shape == (5, 3)
    x = rng.standard_normal((2, 5, 2))
    y = rng.integers(0, 3, size=(2, 5))
    assert_gradients_ok(check_model(model, loss, x, y))
    # time-distributed: step t of the output depends only on h_t
    out = model.forward(x)
    h = model.layers[0].forward(x)
    dense = model.layers[1]
    np.testing.assert_allclose(out[:, 2], h[:, 2] @ dense.params["weight"] + dense.params["bias"], rtol=1e-10)


def test_time_grad_norms_off_by_default_and_decay(rng):
    layer = make(RNN, np.float64, T=30, F=2, units=8, return_sequences=False, activation="tanh")
    layer.params["w_recurrent"] *= 0.3  # small recurrent weights: the gradient vanishes through time
    x = rng.standard_normal((4, 30, 2))
    layer.forward(x, training=True)
    layer.backward(np.ones((4, 8)))
    assert layer.time_grad_norms is None
    layer.record_time_grads = True
    layer.forward(x, training=True)
    layer.backward(np.ones((4, 8)))
    n = layer.time_grad_norms
    assert n.shape == (30,)
    assert n[-1] == pytest.approx(np.sqrt(4 * 8))  # dL/dh_T is the output gradient itself
    assert n[0] < 1e-6 * n[-1]
    assert np.all(np.diff(np.log(n[10:])) > 0)  # grows toward the last step


def test_initialisation():
    lstm = make(LSTM, np.float64, units=5)
    lstm = LSTM(dtype=np.float64, rng=np.random.default_rng(0), units=5)
    lstm.build((4, 3))
    b = lstm.params["bias"]
    assert np.all(b[5:10] == 1) and np.all(b[:5] == 0) and np.all(b[10:] == 0)
    w = lstm.params["w_recurrent"]
    for k in range(4):
        blk = w[:, 5 * k : 5 * (k + 1)]
        np.testing.assert_allclose(blk.T @ blk, np.eye(5), atol=1e-10)
    limit = np.sqrt(6 / (3 + 20))
    assert np.abs(lstm.params["w_input"]).max() <= limit
    gru = GRU(dtype=np.float64, rng=np.random.default_rng(0), units=5)
    gru.build((4, 3))
    assert set(gru.params) == {"w_input", "w_recurrent", "bias", "bias_hn"}
    assert gru.params["w_recurrent"].shape == (5, 15)


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_shape_error_names_layer_and_shapes(cls):
    layer = cls(units=4, name="layers[0] " + cls.kind)
    with pytest.raises(ShapeError, match=r"layers\[0\] .*\(time, features\).*\(8,\)"):
        layer.build((8,))


def test_examples_registered():
    for kind in ("rnn", "lstm", "gru"):
        cls = LAYERS[kind]
        assert len(cls.EXAMPLE["input"]) == 2
        layer = cls(dtype=np.float64, **cls.EXAMPLE["options"])
        layer.build(cls.EXAMPLE["input"])
        assert layer.flops() > 0 and layer.describe()


def test_tanh_approximation_accuracy():
    from dlcli.kernels.recurrent import tanh_approx

    x = np.linspace(-20, 20, 100001)
    out = np.empty_like(x)
    tanh_approx(x, out)
    assert np.abs(out - np.tanh(x)).max() < 1e-6
    x32 = x.astype(np.float32)
    out32 = np.empty_like(x32)
    tanh_approx(x32, out32)
    assert np.abs(out32 - np.tanh(x)).max() < 1e-6
    assert np.abs(out32).max() <= 1.0  # so a sigmoid gate stays within [0, 1]
    special = np.array([np.nan, np.inf, -np.inf], np.float32)
    out = np.empty_like(special)
    tanh_approx(special, out)
    assert np.isnan(out[0]) and out[1] == pytest.approx(1.0) and out[2] == pytest.approx(-1.0)  # NaN is not hidden


@pytest.mark.parametrize("module", ["recurrent", "conv"])
def test_kernels_name_the_tiles_they_were_compiled_with(module):
    """Each kernel module that inlines simd.py's tiles holds simd.py's hash in SIMD_SOURCE:
    Numba's cache checks only the module's own file, so a change to the tiles must come
    with a change there, or cached kernels keep the old tiles."""
    import hashlib
    import importlib

    from dlcli.kernels import simd

    with open(simd.__file__, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    kernels = importlib.import_module(f"dlcli.kernels.{module}")
    assert kernels.SIMD_SOURCE == digest, f"simd.py changed: set SIMD_SOURCE = {digest!r} in kernels/{module}.py"


def panels_of(b):
    from dlcli.kernels.recurrent import pack_panels, panel_shape

    panels = np.full(panel_shape(b), np.nan, b.dtype)
    pack_panels(b, panels)
    return panels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,n", [(3, 8), (5, 45), (128, 512), (1, 1)])
def test_panels_hold_b_a_vector_wide(dtype, k, n, rng):
    """pack_panels: panel p holds columns p*lanes.. of b, row by row; the columns past the
    last whole panel are left out (the product reads them from b)."""
    b = rng.standard_normal((k, n)).astype(dtype)
    panels = panels_of(b)
    lanes = 32 // b.itemsize
    assert panels.shape == (n // lanes, k, lanes)
    for p in range(n // lanes):
        assert np.array_equal(panels[p], b[:, p * lanes : (p + 1) * lanes])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "m,k,n,lo,hi",
    [
        (9, 13, 7, 0, 9),  # narrower than one tile: every column by the plain sum
        (9, 13, 40, 3, 9),  # a 6-row tile from row 3, wide and one-vector tiles, an edge
        (12, 40, 32, 1, 11),  # 6 + 4 rows
        (5, 1, 16, 4, 5),  # K = 1
        (1, 128, 512, 0, 1),  # one row
        (16, 128, 512, 0, 16),  # the benchmark's shard: 6 + 6 + 4 rows
        (3, 8, 12, 0, 3),
    ],
)
def test_recurrent_product_matches_numpy(dtype, m, k, n, lo, hi, rng):
    """gemm_rows_nn: 6-row, 4-row and single-row vector tiles, the columns past the last
    whole tile, and a shard starting on any row."""
    from dlcli.kernels.recurrent import gemm_rows_nn

    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    out = np.full((m, n), -7.0, dtype)
    gemm_rows_nn(a, b, panels_of(b), out, lo, hi)
    np.testing.assert_allclose(out[lo:hi], a[lo:hi].astype(np.float64) @ b.astype(np.float64), **TOL[dtype])
    assert np.all(out[:lo] == -7.0) and np.all(out[hi:] == -7.0)  # rows outside the shard untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_row_gets_the_same_bits_in_any_tile(dtype, rng):
    """Rows computed in 6-row, 4-row and single-row tiles (and columns in wide, one-vector
    and plain-sum parts) agree bit for bit, so a shard may start on any row."""
    from dlcli.kernels.recurrent import gemm_rows_nn

    a = rng.standard_normal((11, 37)).astype(dtype)
    b = rng.standard_normal((37, 45)).astype(dtype)
    panels = panels_of(b)
    whole = np.empty((11, 45), dtype)
    gemm_rows_nn(a, b, panels, whole, 0, 11)  # rows 0-5 a 6-row tile, 6-9 a 4-row tile, 10 alone
    for lo, hi in [(0, 1), (1, 5), (3, 9), (5, 11), (10, 11)]:
        part = np.empty_like(whole)
        gemm_rows_nn(a, b, panels, part, lo, hi)
        assert np.array_equal(part[lo:hi], whole[lo:hi]), (lo, hi)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,m", [(1, 1), (3, 5), (8, 8), (16, 24), (9, 17), (128, 512), (13, 8), (8, 13)])
def test_transpose_matches_numpy(dtype, n, m, rng):
    """The blocked transpose behind the forward's W_hh^T: whole 8x8 blocks and the ragged
    edges on either side."""
    from dlcli.kernels.recurrent import transpose

    a = rng.standard_normal((n, m)).astype(dtype)
    out = np.full((m, n), np.nan, dtype)
    transpose(a, out)
    assert np.array_equal(out, a.T)


@pytest.mark.parametrize("cls,opts", CELLS)
@pytest.mark.parametrize("seq", [False, True])
def test_inference_keeps_one_step_and_gives_the_same_bits(cls, opts, seq, rng):
    """forward(training=False) keeps one step's gates (and two cell states) instead of
    all T: the same outputs bit for bit, the same final state for `step`, and backward
    refuses to run on it rather than use another step's gates."""
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    layer = make(cls, np.float32, T=5, return_sequences=seq, **opts)
    trained = layer.forward(x, training=True)
    state_trained = layer.final_state()
    inferred = layer.forward(x, training=False)
    assert np.array_equal(trained, inferred)
    for a, b in zip(state_trained, layer.final_state()):
        assert np.array_equal(a, b)
    if cls is not RNN:
        assert layer.gates.shape[0] == 1
    layer.XP_CHUNK_BYTES = 1  # the input projection two steps at a time: chunks of 2, 2, 1
    chunked = layer.forward(x, training=False)
    np.testing.assert_allclose(chunked, trained, rtol=1e-6, atol=1e-7)
    for a, b in zip(state_trained, layer.final_state()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert layer._buffers["xp_chunk"].shape[0] == 2
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(np.ones_like(inferred))
    layer.forward(x, training=True)
    layer.backward(np.ones_like(inferred))  # a training forward again: backward runs


@pytest.mark.parametrize("cls,opts", CELLS)
def test_results_do_not_depend_on_shards(cls, opts, rng):
    """Same bits with 1, 2 or 3 shards (batch 10: ragged tiles at different rows), so a
    seeded run repeats whatever the thread count."""
    x = rng.standard_normal((10, 4, 3)).astype(np.float32)
    dy = rng.standard_normal((10, 4, 7)).astype(np.float32)
    results = []
    for shards in (1, 2, 3):
        layer = make(cls, np.float32, T=4, shards=shards, return_sequences=True, **opts)
        y = layer.forward(x, training=True)
        dx = layer.backward(dy)
        results.append((y, dx, *[g.copy() for g in layer.grads.values()]))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("cls,opts", CELLS)
def test_outputs_survive_the_next_call(cls, opts, rng):
    """Layers keep their buffers between calls; what they return must not be one of them
    (with batch 1 a transposed buffer is already contiguous, so a lazy copy would alias)."""
    layer = make(cls, np.float32, T=4, return_sequences=True, **opts)
    x1, x2 = (rng.standard_normal((1, 4, 3)).astype(np.float32) for _ in range(2))
    y1 = layer.forward(x1, training=True)
    dx1 = layer.backward(np.ones_like(y1))
    kept = y1.copy(), dx1.copy()
    y2 = layer.forward(x2, training=True)
    layer.backward(2 * np.ones_like(y2))
    assert np.array_equal(y1, kept[0]) and np.array_equal(dx1, kept[1])
    assert not np.array_equal(y1, y2)


def test_shards_split_rows_evenly():
    from dlcli.runtime import shard_bounds

    assert shard_bounds(5, 2) == [(0, 2), (2, 5)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2)]
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(1, 2) == [(0, 1)]
    assert shard_bounds(32, 2) == [(0, 16), (16, 32)]
    assert shard_bounds(32, 1) == [(0, 32)]


# ---------------------------------------------------------------- datasets


def test_adding_problem():
    from dlcli.datasets import BUILTIN

    g = BUILTIN["adding"].generate({"length": 20, "samples": 4000}, np.random.default_rng(0))
    assert g.x.shape == (4000, 20, 2) and g.y.shape == (4000, 1)
    assert np.all(g.x[:, :, 1].sum(1) == 2)
    marked = (g.x[:, :, 0] * g.x[:, :, 1]).sum(1)
    np.testing.assert_allclose(marked, g.y[:, 0], rtol=1e-6)
    assert np.mean((g.y - 1.0) ** 2) == pytest.approx(1 / 6, abs=0.01)


def test_temporal_order_and_sine_next():
    from dlcli.datasets import BUILTIN

    g = BUILTIN["temporal_order"].generate({"length": 12, "samples": 400, "noise": 0.0}, np.random.default_rng(0))
    assert g.x.shape == (400, 12, 6) and set(np.unique(g.y)) == {0, 1, 2, 3}
    sym = g.x.argmax(2)
    first, second = [], []
    for row in sym:
        pos = np.flatnonzero(row < 2)
        first.append(row[pos[0]])
        second.append(row[pos[1]])
    np.testing.assert_array_equal(g.y, 2 * np.array(first) + np.array(second))
    s = BUILTIN["sine_next"].generate(
        {"length": 10, "samples": 50, "noise": 0.0, "seq2seq": False}, np.random.default_rng(0)
    )
    assert s.x.shape == (50, 10, 1) and s.y.shape == (50, 1)
    s2 = BUILTIN["sine_next"].generate(
        {"length": 10, "samples": 50, "noise": 0.0, "seq2seq": True}, np.random.default_rng(0)
    )
    assert s2.y.shape == (50, 10, 1)
    np.testing.assert_allclose(s2.y[:, :-1, 0], s2.x[:, 1:, 0], atol=1e-6)
    np.testing.assert_allclose(s2.y[:, -1], s.y, atol=1e-6)


# ---------------------------------------------------------------- end to end


def test_train_through_cli(write_spec, tmp_path):
    from click.testing import CliRunner

    from dlcli.cli import main

    spec = write_spec(
        """
name: tiny_lstm
seed: 0
data:
  source: builtin:adding
  options: {length: 6, samples: 64}
model:
  input: [6, 2]
  layers:
    - gru: {units: 4, return_sequences: true}
    - lstm: {units: 4}
    - dense: 1
loss: mse
optimizer: {name: adam, lr: 0.01}
train: {epochs: 1, batch_size: 16, clip_norm: 1.0}
"""
    )
    out = tmp_path / "tiny.npz"
    result = CliRunner().invoke(main, ["train", str(spec), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert out.exists()
    again = tmp_path / "again.npz"
    assert CliRunner().invoke(main, ["train", str(spec), "-o", str(again), "-q"]).exit_code == 0
    with np.load(out, allow_pickle=False) as f, np.load(again, allow_pickle=False) as g:
        assert f["param.layers.1.w_recurrent"].shape == (4, 16)
        params = [k for k in f.files if k.startswith("param.")]
        assert params and all(np.array_equal(f[k], g[k]) for k in params)  # the seed makes it repeatable
