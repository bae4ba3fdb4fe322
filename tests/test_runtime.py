"""The shard threads (`runtime.run_shards`, `runtime.sharded`): results independent of
the thread count, errors carried back, and calls that meet busy workers (from another
thread, or from inside a shard) run serially instead of waiting forever. And the
process-wide malloc settings (`runtime.keep_freed_memory`)."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from dlcli import runtime


@pytest.fixture
def two_threads():
    before = runtime.threads()
    runtime.set_threads(2)
    yield
    runtime.set_threads(before)


def test_sharded_passes_give_the_same_bits_for_any_thread_count(rng):
    from dlcli.kernels import elementwise as E
    from dlcli.optim import segment_chunks

    n = 3 * runtime.SHARD_MIN_WORK + 5  # large enough to be sharded
    x = rng.standard_normal(n).astype(np.float32)
    p0 = rng.standard_normal(n).astype(np.float32)
    chunks, _ = segment_chunks(np.array([0, n // 3, n]))
    results = []
    for threads in (1, 2, 3):
        runtime.set_threads(threads)
        y = np.empty_like(x)
        E.sigmoid_forward(x, y)
        p, velocity = p0.copy(), np.zeros_like(p0)
        sums = np.zeros(len(chunks))
        E.sgd_update(
            p, x, velocity, np.float32(0.1), np.float32(0.9), np.float32(0), False, np.float32(1), chunks, sums
        )
        results.append((y, p, sums))
    runtime.set_threads(None)
    for y, p, sums in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(p, results[0][1])
        np.testing.assert_array_equal(sums, results[0][2])


def test_an_error_in_a_worker_shard_is_raised_and_the_workers_go_on(two_threads):
    def fn(k):
        if k == 1:
            raise ValueError("shard 1 failed")
        return k

    with pytest.raises(ValueError, match="shard 1 failed"):
        runtime.run_shards(fn, 2)
    assert runtime.run_shards(lambda k: k * 10, 2) == [0, 10]


def test_a_shard_that_shards_again_runs_its_inner_shards_serially(two_threads):
    inner = []

    def fn(k):
        inner.append(runtime.run_shards(lambda j: (k, j), 2))  # the workers are busy: serial
        return k

    assert runtime.run_shards(fn, 2) == [0, 1]
    assert sorted(inner) == [[(0, 0), (0, 1)], [(1, 0), (1, 1)]]


def test_two_python_threads_may_shard_at_once(two_threads):
    out = {}

    def work(name):
        out[name] = [runtime.run_shards(lambda k: (time.sleep(0.001), name, k)[1:], 2) for _ in range(200)]

    threads = [threading.Thread(target=work, args=(name,)) for name in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    for name in "ab":
        assert out[name] == [[(name, 0), (name, 1)]] * 200


# Training steps allocate and free arrays of a few MB (a conv layer's output at batch 64 is
# 2.4 MB); glibc's adaptive thresholds handed that memory back to the kernel every time
# (the batch-norm CNN benchmark: 627 page faults a step, 13 % of its time). The script
# counts page faults over steps of that allocation pattern, with dlcli's malloc settings or
# (argument "off") without them.
_FAULTS_SCRIPT = """
import resource, sys
import numpy as np
from dlcli import runtime
if sys.argv[1] == "off":
    runtime.keep_freed_memory = lambda: None
runtime.set_threads(1)  # what every command does first
def step():
    a = np.ones((64, 16, 24, 24), np.float32)
    b = a * 2
    c = np.empty_like(b)
    c[...] = b
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_training_steps_reuse_freed_memory_instead_of_faulting_in_new_pages():
    def faults_per_step(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return float(out.stdout.split()[-1])

    kept, default = faults_per_step("on"), faults_per_step("off")
    assert kept <= 5, kept
    assert default > 100, default  # what the setting is for: glibc alone faults in every step


def test_matmul_in_fixed_blocks_gives_the_same_bits_for_any_thread_count():
    """Deterministic mode (the default): the blocks depend on the shape alone, each is a
    one-thread BLAS call, so 1, 2 or 3 threads give the same bits, close to NumPy's product."""
    import numpy as np

    rng = np.random.default_rng(0)
    cases = [((128, 784), (784, 512), False), ((784, 128), (128, 512), True), ((32, 400), (400, 4096), False)]
    try:
        for sa, sb, transposed in cases:
            a = rng.standard_normal(sa[::-1] if transposed else sa).astype(np.float32)
            a = a.T if transposed else a  # a strided operand, as a weight gradient's x.T
            b = rng.standard_normal(sb).astype(np.float32)
            results = []
            for n in (1, 2, 3):
                runtime.set_threads(n, deterministic=True)
                results.append(runtime.matmul(a, b, np.empty((sa[0], sb[1]), np.float32)).copy())
            for other in results[1:]:
                assert np.array_equal(results[0], other), (sa, sb)
            np.testing.assert_allclose(results[0], a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
        assert runtime.product_blocks(128, 512, 784) == (False, [(0, 256), (256, 512)])  # the longer side
        assert runtime.product_blocks(784, 512, 128) == (True, [(0, 392), (392, 784)])
        assert runtime.product_blocks(128, 300, 784)[0] is True  # 300 columns cannot be halved: rows
        assert len(runtime.product_blocks(1024, 1024, 1024)[1]) == 8  # large: more blocks, for more cores
        assert runtime.product_blocks(1, 512, 784) == (False, [(0, 512)])  # a batch-1 product: one call
    finally:
        runtime.set_threads(None)


def test_matmuls_gives_each_product_the_bits_of_matmul_and_hands_small_ones_over_never(monkeypatch):
    import numpy as np

    rng = np.random.default_rng(1)
    x, dy, w = (rng.standard_normal(s).astype(np.float32) for s in ((128, 512), (128, 256), (512, 256)))
    try:
        for n in (1, 2, 3):
            runtime.set_threads(n, deterministic=True)
            dw, dx = np.empty((512, 256), np.float32), np.empty((128, 512), np.float32)
            runtime.matmuls((x.T, dy, dw), (dy, w.T, dx))  # a dense layer's two gradients at once
            alone = [runtime.matmul(x.T, dy, np.empty_like(dw)), runtime.matmul(dy, w.T, np.empty_like(dx))]
            assert np.array_equal(dw, alone[0]) and np.array_equal(dx, alone[1]), n
            if n == 1:
                first = dw.copy(), dx.copy()
            assert np.array_equal(dw, first[0]) and np.array_equal(dx, first[1]), n
        calls = []
        monkeypatch.setattr(runtime, "run_shards", lambda fn, k: calls.append(k) or [fn(i) for i in range(k)])
        runtime.set_threads(2, deterministic=True)
        small = [(rng.standard_normal((4, 8)).astype(np.float32), w[:8, :8].copy(), np.empty((4, 8), np.float32))] * 2
        runtime.matmuls(*small)
        assert calls == []  # two tiny products: done here, no hand-over
        runtime.matmuls((x.T, dy, dw), (dy, w.T, dx))
        assert calls == [2]  # one hand-over for both
    finally:
        runtime.set_threads(None)
