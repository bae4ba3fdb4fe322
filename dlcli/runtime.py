"""Process-wide settings: how many cores Numba, BLAS and our own threads may use."""

import os
from pathlib import Path

_blas_limit = None
_threads = None
_pool = None


def set_threads(n=None):
    """Use n cores (all when None) for Numba's parallel loops, BLAS and shard threads."""
    global _blas_limit, _threads, _serial
    import numba
    from threadpoolctl import threadpool_limits

    n = min(n or os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    _blas_limit = threadpool_limits(limits=n, user_api="blas")
    _threads = n
    _serial = False
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


def _forget_pool():
    global _pool
    _pool = None  # a forked child has none of the parent's threads: make a new pool there


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_shards(fn, n):
    """fn(k) for k in 0..n-1 at once and their results: shard 0 in the calling thread, the
    others in pool threads. fn must release the GIL (call a nogil Numba kernel) for the
    shards to overlap."""
    global _pool
    if n > 1 and (_pool is None or _pool._max_workers < n - 1):
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=max(n - 1, (os.cpu_count() or 1) - 1), thread_name_prefix="dlcli-shard")
    futures = [_pool.submit(fn, k) for k in range(1, n)]
    first = fn(0)
    return [first] + [f.result() for f in futures]


_blas_libraries = None


_serial = False  # True while `serial(True)` holds Numba and BLAS to one thread


def serial(on):
    """Numba's parallel loops and BLAS on the calling thread only (on=True), or back on
    the `set_threads` count. For work too small to share (predicting one sample) waking
    the other cores' sleeping threads costs more than they save (batch-1 forward of the
    reference CNN on a loaded 2-core machine: 10.6-63.6 ms threaded, 1.8-2.8 ms on one
    thread). A switch costs ~20 us, a third of a batch-1 MLP prediction, so it happens
    only when the mode changes: a stream of small batches switches once."""
    global _blas_libraries, _serial
    if on == _serial:
        return
    import numba

    if _blas_libraries is None:
        from threadpoolctl import ThreadpoolController

        _blas_libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    n = 1 if on else threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    for lib in _blas_libraries:
        lib.set_num_threads(n)
    _serial = on


def _cached(module):
    """True if Numba's cache holds compiled kernels of dlcli/kernels/<module>.py (in the
    package's __pycache__, or under NUMBA_CACHE_DIR)."""
    pattern = f"{module}.*.nbi"
    return any(next(p.rglob(pattern), None) is not None for p in kernel_cache_dirs() if p.is_dir())


def kernel_cache_dirs():
    """Where Numba keeps compiled kernels: beside the sources, or NUMBA_CACHE_DIR."""
    places = [Path(__file__).parent / "kernels" / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        places.append(Path(os.environ["NUMBA_CACHE_DIR"]))
    return places


def uncompiled_kernels(model):
    """The model's layer kinds whose kernels are not compiled yet, in model order (or
    'optimizer' when only the shared kernels are missing): an empty cache makes the first
    step wait for the compiler, and a run should say so. Imports no Numba."""
    missing = {m for m in ("elementwise", "losses") if not _cached(m)}
    kinds = []
    for layer in model.layers:
        if any(not _cached(m) for m in layer.KERNELS):
            missing.update(layer.KERNELS)
            if layer.kind not in kinds:
                kinds.append(layer.kind)
    if missing and not kinds:
        kinds = ["optimizer"]
    return kinds
