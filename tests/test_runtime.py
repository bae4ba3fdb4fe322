"""The shard threads (`runtime.run_shards`, `runtime.sharded`): results independent of
the thread count, errors carried back, and calls that meet busy workers (from another
thread, or from inside a shard) run serially instead of waiting forever."""

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
