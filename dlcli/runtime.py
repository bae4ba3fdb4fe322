"""Process-wide settings: how many cores BLAS and our own shard threads may use, and the
shard threads themselves. No kernel uses Numba's `parallel=True` (kernels/conv.py says
why): each is a serial nogil kernel over a range of tasks, and `sharded` runs one range
per core in these threads."""

import os
import threading
from pathlib import Path

_blas_limit = None
_threads = None
_serial = False  # True while `serial(True)` holds BLAS and the shards to one thread
_deterministic = True  # `matmul` in fixed blocks of one-thread BLAS calls (train.deterministic)


def set_threads(n=None, deterministic=None):
    """Use n cores (all when None) for BLAS and the shard threads. `deterministic` (None:
    as before) makes `matmul` give the same bits for any n: BLAS then runs one thread per
    call and the products' blocks are spread over the shard threads."""
    global _blas_limit, _threads, _serial, _deterministic
    from threadpoolctl import threadpool_limits

    keep_freed_memory()
    if deterministic is not None:
        _deterministic = bool(deterministic)
    n = n or os.cpu_count() or 1
    _blas_limit = threadpool_limits(limits=1 if _deterministic else n, user_api="blas")
    _threads = n
    _serial = False
    return n


# Products of fewer multiply-adds than this are one block: handing half of a batch-1
# product (1 x 784 x 512) to another thread took its time from 54 to 116 us.
SMALL_PRODUCT = 1 << 22
# Each block of a larger product does at least this many multiply-adds (2, 4 or 8 blocks).
# Every block packs the whole of the operand it does not cut, so more blocks repeat that
# work: the reference MLP's five products at 2 threads took 2.72 ms in blocks of 64 rows
# (up to 8), 2.4 ms in two blocks, 2.34 ms as OpenBLAS's own threaded calls.
BLOCK_WORK = 1 << 24
MOST_BLOCKS = 8
ROW_BLOCK, COLUMN_BLOCK = 64, 256  # the fewest rows or columns in a block


def product_blocks(m, n, k):
    """How `matmul` cuts an (m x k) @ (k x n) product in deterministic mode: (by rows?,
    [(lo, hi)]). A function of the shape alone, never of the thread count: OpenBLAS sums a
    block the same way whichever thread computes it, but not a whole product split its own
    way across another number of threads. The cut runs along the longer side of the output
    when it can (a block packs all of the other operand, the smaller one then), in blocks
    of at least 64 rows or 256 columns (narrower column blocks ran slower); small products
    (below SMALL_PRODUCT) are one block, larger ones 2, 4 or 8 of at least BLOCK_WORK."""
    work = m * n * k
    rows_cut, columns_cut = m >= 2 * ROW_BLOCK, n >= 2 * COLUMN_BLOCK  # each side can be halved
    rows = m >= n if rows_cut and columns_cut else rows_cut
    size, least = (m, ROW_BLOCK) if rows else (n, COLUMN_BLOCK)
    count = 1 if work < SMALL_PRODUCT or size < 2 * least else 2
    while count < MOST_BLOCKS and size // (2 * count) >= least and work // (2 * count) >= BLOCK_WORK:
        count *= 2
    edges = [size * i // count for i in range(count + 1)]
    return rows, list(zip(edges[:-1], edges[1:]))


def matmul(a, b, out):
    """out = a @ b for 2-D arrays: NumPy's BLAS product, or in deterministic mode the same
    product in `product_blocks`, each a one-thread BLAS call, spread over the shard threads,
    so a seeded run repeats bit for bit with any --threads (at 0.9-1.0x the speed of
    OpenBLAS's own threaded product on this machine's reference shapes)."""
    matmuls((a, b, out))
    return out


def matmuls(*products):
    """`matmul` of each (a, b, out), independent products (a layer's weight and input
    gradients): in deterministic mode all their blocks go to the shard threads in one
    hand-over (~20 us each on this machine, a sixth of a 64 x 256 x 256 block)."""
    import numpy as np

    if not _deterministic:
        for a, b, out in products:
            np.matmul(a, b, out=out)
        return
    tasks = []
    for a, b, out in products:
        rows, blocks = product_blocks(a.shape[0], b.shape[1], a.shape[1])
        other = b.shape[1] if rows else a.shape[0]
        tasks += [((hi - lo) * other * a.shape[1], (a, b, out, rows, lo, hi)) for lo, hi in blocks]
    n = min(threads(), len(tasks))
    if n < 2 or sum(work for work, _ in tasks) < SMALL_PRODUCT:  # small: a hand-over costs more
        for _, task in tasks:
            _block(*task)
        return
    shares, loads = [[] for _ in range(n)], [0] * n
    for work, task in sorted(tasks, key=lambda t: -t[0]):  # the largest first, to the least loaded
        least = loads.index(min(loads))
        shares[least].append(task)
        loads[least] += work
    run_shards(lambda k: [_block(*task) for task in shares[k]], n)


def _block(a, b, out, rows, lo, hi):
    import numpy as np

    if rows:
        np.matmul(a[lo:hi], b, out=out[lo:hi])
    else:
        np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])


def threads():
    """The number of cores set by `set_threads` (all of them if it was never called; one
    under `serial(True)`)."""
    return 1 if _serial else _threads or os.cpu_count() or 1


def shard_bounds(n_rows, n_shards=None):
    """Split rows 0..n_rows into at most n_shards (default: one per core) contiguous,
    near-equal ranges (lo, hi)."""
    s = max(1, min(n_shards or threads(), n_rows))
    edges = [n_rows * k // s for k in range(s + 1)]
    return list(zip(edges[:-1], edges[1:]))


class _Worker:
    """A thread that runs one task at a time, handed over with two locks. Cheaper than
    an executor (futures, a queue, a condition per task): a two-shard call of a trivial
    kernel measured 16-18 us against 27-33 us through ThreadPoolExecutor, and 13-14 us
    for a Numba `prange` loop over OpenMP."""

    def __init__(self, index):
        self.go, self.done = threading.Lock(), threading.Lock()
        self.go.acquire()
        self.done.acquire()
        self.task = None
        self.result = None
        threading.Thread(target=self._loop, name=f"dlcli-shard-{index}", daemon=True).start()

    def _loop(self):
        while True:
            self.go.acquire()
            try:
                self.result = (self.task(), None)
            except BaseException as e:  # handed to the caller, which raises it
                self.result = (None, e)
            self.task = None
            self.done.release()

    def start(self, task):
        self.task = task
        self.go.release()

    def wait(self):
        """The task's result (its exception raised here). A Ctrl-C while waiting is held
        until the task is done, so no task still writes into buffers after the call."""
        interrupted = None
        while True:
            try:
                self.done.acquire()
                break
            except KeyboardInterrupt as e:
                interrupted = e
        if interrupted is not None:
            raise interrupted
        value, error = self.result
        self.result = None
        if error is not None:
            raise error
        return value


_workers = []
_busy = threading.Lock()  # held while the workers run one call's shards


def _forget_pool():
    global _workers, _busy
    _workers = []  # a forked child has none of the parent's threads: make new ones there
    _busy = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_shards(fn, n):
    """fn(k) for k in 0..n-1 at once and their results: shard 0 in the calling thread, the
    others in worker threads. fn must release the GIL (call a nogil Numba kernel) for the
    shards to overlap. While the workers are busy (a call from another thread, or from
    inside a shard) the shards run one after the other in the calling thread instead."""
    if n < 2 or not _busy.acquire(blocking=False):
        return [fn(k) for k in range(n)]
    try:
        while len(_workers) < n - 1:
            _workers.append(_Worker(len(_workers) + 1))
        for k in range(1, n):
            _workers[k - 1].start(lambda k=k: fn(k))
        try:
            first = fn(0)
        finally:
            rest = []
            error = None
            for k in range(1, n):
                try:
                    rest.append(_workers[k - 1].wait())
                except BaseException as e:
                    error = error or e
    finally:
        _busy.release()
    if error is not None:
        raise error
    return [first] + rest


# Below this much work (elements touched, weighted by the caller for costly ones such as
# exp) a pass runs on the calling thread alone. Handing a shard to another thread costs
# ~16 us, and a vectorised memory-bound pass is fast: relu's backward over 131k float32
# took 31 us serial and 46 us in two shards; over 524k, 97 us and 85 us.
SHARD_MIN_WORK = 1 << 19


def sharded(kernel, n_tasks, *args, work=None):
    """kernel(*args, lo, hi) over tasks 0..n_tasks cut into one contiguous range per core
    (`shard_bounds`), the ranges at once. Every kernel called so writes disjoint outputs
    per task, so the result does not depend on the number of shards. `work` (elements
    touched) below SHARD_MIN_WORK keeps the call on this thread."""
    if n_tasks < 2 or threads() == 1 or (work is not None and work < SHARD_MIN_WORK):
        kernel(*args, 0, n_tasks)  # no ranges, no closure, no hand-off: small passes, batch 1
        return
    bounds = shard_bounds(n_tasks)
    run_shards(lambda k: kernel(*args, *bounds[k]), len(bounds))


_blas_libraries = None
_malloc_set = False

# glibc's malloc hands a large freed block back to the kernel once the free space at the
# top of its heap passes a threshold that it adapts as the program runs; the next array
# of that size then takes fresh pages, each a page fault and a zeroed page. A step of the
# batch-norm CNN benchmark (conv 16 channels at 24x24, batch 64: 2.4 MB activations
# allocated and freed each step) took 627 page faults and ran 13 % slower than with the
# memory kept (16.3 -> 14.2-14.3 ms, two runs). Fixed thresholds keep it: arrays up to
# MMAP_THRESHOLD come from the heap, and up to TRIM_THRESHOLD of free heap stays mapped.
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its adaptive threshold
TRIM_THRESHOLD = 64 << 20


def keep_freed_memory():
    """Make glibc's malloc keep freed memory for the next step's arrays (once per
    process; nothing on a C library without mallopt)."""
    global _malloc_set
    if _malloc_set:
        return
    _malloc_set = True
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def serial(on):
    """BLAS and the shards on the calling thread only (on=True), or back on the
    `set_threads` count. For work too small to share (predicting one sample) waking
    the other cores' sleeping threads costs more than they save (batch-1 forward of the
    reference CNN on a loaded 2-core machine: 10.6-63.6 ms threaded, 1.8-2.8 ms on one
    thread). A switch costs ~20 us, a third of a batch-1 MLP prediction, so it happens
    only when the mode changes: a stream of small batches switches once."""
    global _blas_libraries, _serial
    if on == _serial:
        return
    if _blas_libraries is None:
        from threadpoolctl import ThreadpoolController

        _blas_libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    _serial = on
    for lib in _blas_libraries:
        lib.set_num_threads(1 if _deterministic else threads())


def _cached(module):
    """True if Numba's cache holds compiled kernels of dlcli/kernels/<module>.py (in the
    package's __pycache__, or under NUMBA_CACHE_DIR)."""
    pattern = f"{module}.*.nbi"
    return any(next(p.rglob(pattern), None) is not None for p in kernel_cache_dirs() if p.is_dir())


def kernel_cache_dirs():
    """Where Numba keeps compiled kernels: NUMBA_CACHE_DIR when set (Numba then looks
    nowhere else, so kernels beside the sources do not count), else beside the sources."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return [Path(os.environ["NUMBA_CACHE_DIR"])]
    return [Path(__file__).parent / "kernels" / "__pycache__"]


def uncompiled_kernels(model):
    """The model's layer kinds whose kernels are not compiled yet, in model order (or
    'optimizer' when only the shared kernels are missing): an empty cache makes the first
    step wait for the compiler, and a run should say so. Imports no Numba."""
    missing = {m for m in ("elementwise", "losses") if not _cached(m)}
    kinds = []
    for layer in model.layers:
        if layer.fused:  # a relu the layer before applies: it calls no kernel of its own
            continue
        if any(not _cached(m) for m in layer.KERNELS):
            missing.update(layer.KERNELS)
            if layer.kind not in kinds:
                kinds.append(layer.kind)
    if missing and not kinds:
        kinds = ["optimizer"]
    return kinds
