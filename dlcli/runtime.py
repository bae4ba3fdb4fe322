"""Process-wide settings: how many cores BLAS and our own shard threads may use, and the
shard threads themselves. No kernel uses Numba's `parallel=True` (kernels/conv.py says
why): each is a serial nogil kernel over a range of tasks, and `sharded` runs one range
per core in these threads."""

import functools
import os
import threading
import time
from pathlib import Path

_blas_limit = None
_threads = None
_serial = False  # True while `serial(True)` holds BLAS and the shards to one thread
_deterministic = True  # `matmul` in fixed blocks of one-thread BLAS calls (train.deterministic)
_cores = None  # the cores this process may keep busy, when not all it may run on (set_threads)


def set_threads(n=None, deterministic=None, cores=None):
    """Use n cores (all when None) for BLAS and the shard threads. `deterministic` (None:
    as before) makes `matmul` give the same bits for any n: BLAS then runs one thread per
    call and the products' blocks are spread over the shard threads. `cores`: how many
    this process may keep busy (the node's, divided among its MPI ranks; default all it
    may run on): more threads than that never poll for work (`_spin`)."""
    global _blas_limit, _threads, _serial, _deterministic, _cores
    from threadpoolctl import threadpool_limits

    keep_freed_memory()
    _cores = cores
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
    hand-over, each block a one-thread BLAS call from a nogil kernel (kernels/blas.py)."""
    import numpy as np

    if not _deterministic:
        for a, b, out in products:
            np.matmul(a, b, out=out)
        return
    gemm = _gemm_functions()
    if not gemm:
        return _numpy_blocks(products)
    from dlcli.kernels import blas

    rows, works, kept = [], [], []  # kept: operand copies the rows point into, alive until done
    for a, b, out in products:
        by_rows, blocks, block_works = _cuts(a.shape[0], b.shape[1], a.shape[1])
        block_rows = blas.task_rows(a, b, out, by_rows, blocks, kept, gemm)
        if block_rows is None:  # an output BLAS cannot write in place, other dtypes, an empty product
            np.matmul(a, b, out=out)
        else:
            rows += block_rows
            works += block_works
    n = min(threads(), len(rows))
    if n < 2 or sum(works) < SMALL_PRODUCT or not _busy.acquire(blocking=False):
        if rows:  # small: a hand-over costs more; or the threads are busy (a call from a shard)
            blas.run_tasks(np.array(rows, np.int64), len(rows))
        return
    try:
        shares, loads = [[] for _ in range(n)], [0] * n
        for i in sorted(range(len(rows)), key=lambda i: -works[i]):  # the largest first, to the least loaded
            least = loads.index(min(loads))
            shares[least].append(rows[i])
            loads[least] += works[i]
        if max(len(share) for share in shares) > MOST_ROWS:  # more than a worker's table holds
            blas.run_tasks(np.array(rows, np.int64), len(rows))
            return
        workers = _workers_for(n)
        for worker, share in zip(workers, shares[1:]):
            worker.start_products(share)
        try:
            blas.run_tasks(np.array(shares[0], np.int64), len(shares[0]))
        finally:
            for worker in workers:
                worker.wait()
    finally:
        _busy.release()


@functools.lru_cache(maxsize=256)
def _cuts(m, n, k):
    """`product_blocks` with each block's multiply-adds, kept per shape (3 us a call)."""
    rows, blocks = product_blocks(m, n, k)
    other = n if rows else m
    return rows, blocks, [(hi - lo) * other * k for lo, hi in blocks]


_gemm = None  # (sgemm, dgemm) addresses once looked up; False: NumPy's BLAS has none


def _gemm_functions():
    """kernels/blas.py's (sgemm, dgemm) addresses, looked up once; False if there are none."""
    global _gemm
    if _gemm is None:
        from dlcli.kernels import blas

        _gemm = blas.gemm_functions() or False
    return _gemm


def _numpy_blocks(products):
    """`matmuls` where NumPy's BLAS has no CBLAS for kernels/blas.py to call: the same
    blocks as NumPy calls, handed to the shard threads as Python tasks."""
    tasks = []
    for a, b, out in products:
        rows, blocks = product_blocks(a.shape[0], b.shape[1], a.shape[1])
        other = b.shape[1] if rows else a.shape[0]
        tasks += [((hi - lo) * other * a.shape[1], (a, b, out, rows, lo, hi)) for lo, hi in blocks]
    n = min(threads(), len(tasks))
    if n < 2 or sum(work for work, _ in tasks) < SMALL_PRODUCT:
        for _, task in tasks:
            _block(*task)
        return
    shares, loads = [[] for _ in range(n)], [0] * n
    for work, task in sorted(tasks, key=lambda t: -t[0]):
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


# A worker with nothing to do polls its ticket for this long before it sleeps on its lock:
# long enough for the next product of a step after a short pass between them, short
# enough to cost little on a machine busier than its cores. There, a thread that polls
# for long loses its turn to the threads doing work: with 1.5 ms of polling (load average
# 5 on 2 cores) the residual MLP trained at 0.23x the speed of workers that sleep at once.
# No polling at all when there are more threads than cores.
SPIN_SECONDS = 50e-6
WAIT_POLLS = 1 << 18  # the caller's polls between looks at Ctrl-C while a worker finishes
MOST_ROWS = 64  # task rows a worker takes at once: 3 products of 8 blocks, with room
_ticks_per_second = None


def _spin():
    """Clock ticks an idle worker polls before it sleeps (none if threads outnumber cores)."""
    global _ticks_per_second
    cores = _cores
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    if threads() > cores or SPIN_SECONDS <= 0:
        return 0
    if _ticks_per_second is None:  # the cycle counter's rate, once (~10 ms)
        from dlcli.kernels import blas

        t0, c0 = time.perf_counter(), blas.clock()
        time.sleep(0.01)
        _ticks_per_second = (blas.clock() - c0) / (time.perf_counter() - t0)
    return int(SPIN_SECONDS * _ticks_per_second)


class _Worker:
    """A shard thread. It waits for a ticket in a nogil kernel (kernels/blas.py: serve):
    a ticket of BLAS products it runs there, without the GIL; a Python task (`start`) it
    runs after returning to Python. After SPIN_SECONDS idle it sleeps on a lock, which the
    next ticket releases. Through the lock a hand-over cost 21-25 us back to back and
    74-106 us after 1 ms idle; while the worker polls, 1-2 us."""

    def __init__(self, index):
        import numpy as np

        from dlcli.kernels import blas

        self.blas = blas
        self.control = np.zeros(blas.CONTROL_SIZE, np.int64)
        self.rows = np.zeros((MOST_ROWS, blas.FIELDS), np.int64)
        self.ticket = 0
        self.wake = threading.Lock()
        self.wake.acquire()
        self.task = None
        self.result = None
        threading.Thread(target=self._loop, name=f"dlcli-shard-{index}", daemon=True).start()

    def _loop(self):
        blas, seen = self.blas, 0
        while True:
            seen, why = blas.serve(self.control, self.rows, seen, _spin())
            if why != blas.RUN_PYTHON:
                self.wake.acquire()
                continue
            try:
                self.result = (self.task(), None)
            except BaseException as e:  # handed to the caller, which raises it
                self.result = (None, e)
            self.task = None
            # A plain store, not a kernel call: returning from one would wait for the GIL
            # again. The caller reads `result` only after taking the GIL, which this
            # thread releases next (in serve): it then sees the result.
            self.control[blas.DONE] = seen

    def _post(self, kind, count=0):
        self.ticket += 1
        if self.blas.post(self.control, self.ticket, kind, count):
            self.wake.release()

    def start(self, task):
        self.task = task
        self._post(self.blas.PYTHON)

    def start_products(self, rows):
        self.rows[: len(rows)] = rows
        self._post(self.blas.PRODUCTS, len(rows))

    def wait(self):
        """The task's result (its exception raised here). A Ctrl-C while waiting is held
        until the task is done, so no task still writes into buffers after the call."""
        interrupted = None
        polls = 0
        while True:
            try:
                if self.blas.wait_done(self.control, self.ticket, WAIT_POLLS):
                    break
                polls += 1
                if polls > 4:  # a long task (~1 ms so far): look less often, leave the core
                    time.sleep(50e-6)
            except KeyboardInterrupt as e:
                interrupted = e
        if interrupted is not None:
            raise interrupted
        value, error = self.result or (None, None)
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


def _workers_for(n):
    """The first n - 1 workers (made when first needed); call with `_busy` held."""
    while len(_workers) < n - 1:
        _workers.append(_Worker(len(_workers) + 1))
    return _workers[: n - 1]


def run_shards(fn, n):
    """fn(k) for k in 0..n-1 at once and their results: shard 0 in the calling thread, the
    others in worker threads. fn must release the GIL (call a nogil Numba kernel) for the
    shards to overlap. While the workers are busy (a call from another thread, or from
    inside a shard) the shards run one after the other in the calling thread instead."""
    if n < 2 or not _busy.acquire(blocking=False):
        return [fn(k) for k in range(n)]
    try:
        workers = _workers_for(n)
        for k, worker in enumerate(workers, 1):
            worker.start(lambda k=k: fn(k))
        try:
            first = fn(0)
        finally:
            rest = []
            error = None
            for worker in workers:
                try:
                    rest.append(worker.wait())
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
    missing = {m for m in ("elementwise", "losses", "blas") if not _cached(m)}
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
