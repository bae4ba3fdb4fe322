"""Embedding layer (issue 18): kernels against the NumPy reference, determinism of the
scatter-add across thread counts, gradient checks; the recurrent layers' one-step path."""

import numpy as np
import pytest
import reference as ref

from dlcli import runtime
from dlcli.errors import DataError, ShapeError
from dlcli.gradcheck import assert_gradients_ok, check_kind, check_layer, check_model
from dlcli.layers import LAYERS
from dlcli.losses import CrossEntropy
from dlcli.model import Model


def embedding(vocab, dim, T, dtype=np.float64, seed=0):
    layer = LAYERS["embedding"](dtype=dtype, rng=np.random.default_rng(seed), vocab_size=vocab, dim=dim)
    Model([layer], (T,), dtype=dtype)
    return layer


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("vocab,dim,batch,T", [(5, 3, 4, 7), (1, 1, 1, 1), (17, 9, 3, 11), (40, 16, 2, 5)])
def test_forward_and_backward_match_reference(rng, dtype, vocab, dim, batch, T):
    layer = embedding(vocab, dim, T, dtype)
    ids = rng.integers(0, vocab, size=(batch, T))
    y = layer.forward(ids)
    np.testing.assert_array_equal(y, ref.embedding(layer.params["weight"], ids))
    dy = rng.standard_normal((batch, T, dim)).astype(dtype)
    assert layer.backward(dy.copy()) is None  # token ids have no gradient
    expected = ref.embedding_backward(vocab, ids, dy)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(layer.grads["weight"], expected, rtol=tol, atol=tol)


def test_rows_of_unused_tokens_get_zero_gradient(rng):
    layer = embedding(6, 4, 5)
    layer.grads["weight"][...] = 7.0  # stale values from an earlier step must not survive
    ids = np.array([[1, 1, 3, 1, 3]])
    layer.forward(ids)
    layer.backward(np.ones((1, 5, 4)))
    np.testing.assert_array_equal(layer.grads["weight"][:, 0], [0, 3, 0, 2, 0, 0])


def test_scatter_add_is_bitwise_the_same_for_any_thread_count(rng):
    # Frequent tokens (as spaces in text) gather hundreds of rows into one: the sum's order
    # must not depend on how many threads share the work.
    layer = embedding(30, 33, 64, np.float32)
    ids = np.minimum(rng.geometric(0.2, size=(64, 64)) - 1, 29)
    dy = rng.standard_normal((64, 64, 33)).astype(np.float32) * 10.0 ** rng.integers(-3, 4, size=(64, 64, 1))
    grads = []
    before = runtime.threads()
    try:
        for n in sorted({1, before}):
            runtime.set_threads(n)
            layer.forward(ids)
            layer.backward(dy.copy())
            grads.append(layer.grads["weight"].copy())
    finally:
        runtime.set_threads(before)
    for g in grads[1:]:
        np.testing.assert_array_equal(g, grads[0])


def test_gradcheck_of_the_weight_and_input_marked_not_differentiable(rng):
    layer = embedding(7, 3, 5)
    results = check_layer(layer, rng.integers(0, 7, size=(4, 5)))
    assert_gradients_ok(results)
    by_tensor = {r.tensor: r for r in results}
    assert by_tensor["weight"].status == "pass" and by_tensor["weight"].checked == 21
    (inp,) = [r for r in results if r.tensor.startswith("input")]
    assert inp.status == "n/a" and "not differentiable" in inp.tensor
    section = check_kind("embedding")
    assert [r.status for r in section.results] == ["pass", "n/a"]


def test_gradcheck_of_embedding_lstm_dense_with_sequence_cross_entropy(rng):
    layers = [
        LAYERS["embedding"](dtype=np.float64, rng=np.random.default_rng(0), vocab_size=6, dim=3),
        LAYERS["lstm"](dtype=np.float64, rng=np.random.default_rng(1), units=4, return_sequences=True),
        LAYERS["dense"](dtype=np.float64, rng=np.random.default_rng(2), units=6, bias=True, init="auto"),
    ]
    model = Model(layers, (5,), dtype=np.float64, loss="cross_entropy")
    x = rng.integers(0, 6, size=(3, 5))
    y = rng.integers(0, 6, size=(3, 5))
    results = check_model(model, CrossEntropy(), x, y)
    assert_gradients_ok(results)
    assert {r.status for r in results} == {"pass", "n/a"}


def test_bad_ids_are_one_clear_error():
    layer = embedding(5, 2, 3)
    with pytest.raises(DataError, match="token ids run from 0 to 5, but vocab_size is 5"):
        layer.forward(np.array([[0, 5, 1]]))
    with pytest.raises(DataError, match="integer token ids"):
        layer.forward(np.array([[0.5, 1, 1]]))
    layer.forward(np.array([[0.0, 4.0, 1.0]]))  # integral floats are ids (as predict passes them)


def test_embedding_must_be_the_first_layer():
    with pytest.raises(ShapeError, match="must read the model input"):
        Model(
            [
                LAYERS["dense"](units=3, bias=True, init="auto"),
                LAYERS["embedding"](vocab_size=4, dim=2),
            ],
            (5,),
        )


# ---------------------------------------------------------------- recurrent layers, one step at a time


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_by_step_gives_the_outputs_of_forward(rng, kind, dtype):
    options = {"units": 5, "return_sequences": True}
    layer = LAYERS[kind](dtype=dtype, rng=np.random.default_rng(3), **options)
    Model([layer], (6, 3), dtype=dtype)
    x = rng.standard_normal((2, 6, 3)).astype(dtype)
    full = layer.forward(x)
    state = layer.initial_state(2)
    steps = []
    for t in range(6):
        h, state = layer.step(x[:, t], state)
        steps.append(h)
    # The same kernels with T = 1: equal up to float rounding of the input projection.
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.stack(steps, axis=1), full, **tol)
    np.testing.assert_allclose(state[0], full[:, -1], **tol)
