"""Process-wide settings: how many cores Numba, BLAS and our own threads may use."""

import os

_blas_limit = None
_threads = None
_pool = None


def set_threads(n=None):
    """Use n cores (all when None) for Numba's parallel loops, BLAS and shard threads."""
    global _blas_limit, _threads
    import numba
    from threadpoolctl import threadpool_limits

    n = min(n or os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    _blas_limit = threadpool_limits(limits=n, user_api="blas")
    _threads = n
    return n


def threads():
    """The number of cores set by `set_threads` (all of them if it was never called)."""
    return _threads or os.cpu_count() or 1


def shard_bounds(n_rows, n_shards=None):
    """Split rows 0..n_rows into at most n_shards (default: one per core) contiguous,
    near-equal ranges (lo, hi)."""
    s = max(1, min(n_shards or threads(), n_rows))
    edges = [n_rows * k // s for k in range(s + 1)]
    return list(zip(edges[:-1], edges[1:]))


def run_shards(fn, n):
    """fn(k) for k in 0..n-1, each in its own thread, and their results; fn must release
    the GIL (call a nogil Numba kernel) for the shards to run at once. One runs inline."""
    global _pool
    if n == 1:
        return [fn(0)]
    if _pool is None or _pool._max_workers < n:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=max(n, os.cpu_count() or 1), thread_name_prefix="dlcli-shard")
    futures = [_pool.submit(fn, k) for k in range(n)]
    return [f.result() for f in futures]
