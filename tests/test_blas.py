"""kernels/blas.py: BLAS products run from task rows (against NumPy's product), and the
shard threads' hand-over by polling (no hang when a worker has gone to sleep, with or
without polling, and Python tasks and products in any order)."""

import threading
import time

import numpy as np
import pytest

from dlcli import runtime
from dlcli.kernels import blas


def _product(a, b, rows, blocks):
    out = np.full((a.shape[0], b.shape[1]), np.nan, a.dtype)
    kept = []
    task = blas.task_rows(a, b, out, rows, blocks, kept, runtime._gemm_functions())
    blas.run_tasks(np.array(task, np.int64), len(task))
    return out


def _operand(rng, shape, dtype, kind):
    """A matrix of `shape` stored as rows, as columns (a transposed view), strided or at an
    unaligned address (the last two BLAS cannot read: copied)."""
    if kind == "rows":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "unaligned":
        item = np.dtype(dtype).itemsize
        raw = np.zeros(shape[0] * shape[1] * item + 1, np.uint8)[1:].view(dtype).reshape(shape)
        raw[...] = rng.standard_normal(shape)
        assert not raw.flags.aligned
        return raw
    if kind == "columns":
        return rng.standard_normal(shape[::-1]).astype(dtype).T
    return rng.standard_normal((shape[0], 2 * shape[1])).astype(dtype)[:, ::2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_task_rows_give_numpys_product_for_any_layout_cut_and_size(rng, dtype):
    assert runtime._gemm_functions(), "NumPy's wheel carries OpenBLAS with 64-bit CBLAS"
    for m, k, n in [(1, 1, 1), (1, 7, 5), (5, 1, 3), (64, 33, 1), (130, 70, 257)]:
        for kind_a in ("rows", "columns", "strided", "unaligned"):
            for kind_b in ("rows", "columns", "strided", "unaligned"):
                a, b = _operand(rng, (m, k), dtype, kind_a), _operand(rng, (k, n), dtype, kind_b)
                expected = a.astype(np.float64) @ b.astype(np.float64)
                tol = 1e-4 if dtype == np.float32 else 1e-12
                for rows, size in ((True, m), (False, n)):
                    cut = sorted({0, size // 3, size})
                    blocks = list(zip(cut[:-1], cut[1:])) or [(0, size)]
                    got = _product(a, b, rows, blocks)
                    np.testing.assert_allclose(
                        got, expected, rtol=tol, atol=tol, err_msg=f"{m, k, n, kind_a, kind_b, rows}"
                    )


def test_products_blas_cannot_write_in_place_are_numpys(rng):
    """An output in columns, one overlapping an operand, mixed or integer dtypes, an empty
    product: no task rows; `runtime.matmuls` then makes them with NumPy, right."""
    a = rng.standard_normal((300, 200)).astype(np.float32)
    b = rng.standard_normal((200, 300)).astype(np.float32)
    by_columns = np.empty((300, 300), np.float32, order="F")
    assert blas.task_rows(a, b, by_columns, True, [(0, 300)], [], runtime._gemm_functions()) is None
    assert (
        blas.task_rows(a, b.astype(np.float64), np.empty((300, 300)), True, [(0, 300)], [], runtime._gemm_functions())
        is None
    )
    assert (
        blas.task_rows(
            a[:, :0], b[:0], np.empty((300, 300), np.float32), True, [(0, 300)], [], runtime._gemm_functions()
        )
        is None
    )
    square = rng.standard_normal((256, 256)).astype(np.float32)
    before = square.copy()
    try:
        runtime.set_threads(2, deterministic=True)
        runtime.matmul(a, b, by_columns)
        np.testing.assert_allclose(by_columns, a @ b, rtol=1e-5, atol=1e-4)
        assert blas.task_rows(square, square, square, True, [(0, 256)], [], runtime._gemm_functions()) is None
        runtime.matmul(square, before, square)  # out is the left operand
        np.testing.assert_allclose(square, before @ before, rtol=1e-5, atol=1e-3)
        empty = np.full((300, 300), np.nan, np.float32)
        runtime.matmul(a[:, :0], b[:0], empty)
        assert not empty.any()
        ints = np.arange(6).reshape(2, 3)
        assert (runtime.matmul(ints, ints.T, np.empty((2, 2), ints.dtype)) == ints @ ints.T).all()
    finally:
        runtime.set_threads(None)


@pytest.fixture
def short_polling(monkeypatch):
    """Workers that poll only briefly, so they go to sleep between the calls below; made
    anew for the test and dropped after it."""
    monkeypatch.setattr(runtime, "SPIN_SECONDS", 2e-6)
    runtime._forget_pool()
    yield
    runtime._forget_pool()
    runtime.set_threads(None)


@pytest.mark.parametrize("threads", [2, 3])  # 3 on a 2-core machine: no polling at all
def test_hand_overs_after_any_gap_all_finish(rng, short_polling, threads):
    """Products and Python tasks after gaps shorter and longer than the workers poll: each
    call returns, with the right result (a lost wake-up would hang here)."""
    runtime.set_threads(threads, deterministic=True)
    x, w = rng.standard_normal((256, 512)).astype(np.float32), rng.standard_normal((512, 256)).astype(np.float32)
    expected = x @ w
    out = np.empty_like(expected)
    results = []

    def calls():
        for i in range(300):
            time.sleep([0, 0, 1e-5, 1e-4, 2e-3][i % 5])
            out[:] = np.nan
            runtime.matmul(x, w, out)
            results.append(np.allclose(out, expected, rtol=1e-4, atol=1e-3))
            results.append(runtime.run_shards(lambda k: k * k, threads) == [k * k for k in range(threads)])

    caller = threading.Thread(target=calls, daemon=True)
    caller.start()
    caller.join(timeout=120)
    assert not caller.is_alive(), "a hand-over never finished"
    assert len(results) == 600 and all(results)


def test_a_worker_that_has_gone_to_sleep_is_woken(short_polling):
    runtime.set_threads(2, deterministic=True)
    assert runtime.run_shards(lambda k: k, 2) == [0, 1]
    worker = runtime._workers[0]
    deadline = time.monotonic() + 10
    while worker.control[blas.STATE] != blas.SLEEPING and time.monotonic() < deadline:
        time.sleep(0.001)
    assert worker.control[blas.STATE] == blas.SLEEPING  # polling 2 us: asleep at once
    assert runtime.run_shards(lambda k: k + 10, 2) == [10, 11]


def test_threads_beyond_the_cores_never_poll():
    """Polling holds a core: with more threads than this process's cores (its share of the
    node under MPI), idle workers sleep at once."""
    try:
        runtime.set_threads(2, cores=2)
        assert runtime._spin() > 0
        runtime.set_threads(2, cores=1)  # two ranks of a 2-core node, --threads 2 each
        assert runtime._spin() == 0
        runtime.set_threads(1, cores=1)
        assert runtime._spin() > 0
    finally:
        runtime.set_threads(None)


def test_more_blocks_than_a_worker_holds_run_here(rng, monkeypatch):
    monkeypatch.setattr(runtime, "MOST_ROWS", 1)
    x, dy, w = (rng.standard_normal(s).astype(np.float32) for s in ((128, 512), (128, 256), (512, 256)))
    dw, dx = np.empty((512, 256), np.float32), np.empty((128, 512), np.float32)
    try:
        runtime.set_threads(2, deterministic=True)
        runtime.matmuls((x.T, dy, dw), (dy, w.T, dx))  # four blocks, two a thread: more than 1
    finally:
        runtime.set_threads(None)
    np.testing.assert_allclose(dw, x.T @ dy, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dx, dy @ w.T, rtol=1e-4, atol=1e-3)
