"""BLAS products called from nogil kernels, and the shard threads' hand-over.

`runtime.matmuls` cuts products into blocks (`runtime.product_blocks`) and spreads them
over the shard threads. Handing a block to a thread through a lock cost 21-25 us when
the thread had just finished, 46-57 us after 200 us idle and 74-106 us after 1 ms (the
sleeping thread's wake-up), against 100-200 us for a block of the reference models. Here
a worker waits for the next ticket by polling a memory word for a short while
(`runtime.SPIN_SECONDS`), and runs its blocks without returning to Python (no GIL to
take): 1-2 us while it polls (measured 2026-11-27). Then it sleeps on a lock.

The products call OpenBLAS's 64-bit-integer CBLAS (the library NumPy's wheels carry,
`scipy_cblas_[sd]gemm64_`) through its address: `gemm_functions` finds it. Each task is a
row of FIELDS int64: (the function's address, double?, transpose a?, transpose b?, m, n, k,
a, lda, b, ldb, c, ldc), pointers, and leading dimensions in elements, row-major as NumPy
stores arrays.

The control block of a worker (int64, one 64-byte line per writer): TICKET, KIND and
COUNT written by the caller, DONE by the worker, STATE by both (SPINNING or SLEEPING).
"""

import ctypes

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

FIELDS = 13
TICKET, KIND, COUNT = 0, 1, 2  # the caller's line
DONE = 8  # the worker's line
STATE = 16
CONTROL_SIZE = 24
PRODUCTS, PYTHON = 0, 1  # KIND: run the task rows here, or return to Python to run a callable
SPINNING, SLEEPING = 0, 1
# serve's reasons to return: a Python task; no work for `spin` ticks (sleep on the lock);
# the same, but the caller saw SLEEPING first and has released the lock already
RUN_PYTHON, SLEEP, SLEEP_WOKEN = 1, 2, 3
ROW_MAJOR, NO_TRANSPOSE = 101, 111  # CBLAS enums; NO_TRANSPOSE + 1 is TRANSPOSE


def _gemm_intrinsic(element):
    @intrinsic
    def call(typingctx, fn, ta, tb, m, n, k, a, lda, b, ldb, c, ldc):
        sig = types.void(*[types.int64] * 12)

        def codegen(context, builder, signature, args):
            fn, ta, tb, m, n, k, a, lda, b, ldb, c, ldc = args
            i32, i64 = ir.IntType(32), ir.IntType(64)
            ptr = element.as_pointer()
            fnty = ir.FunctionType(
                ir.VoidType(), [i32, i32, i32, i64, i64, i64, element, ptr, i64, ptr, i64, element, ptr, i64]
            )
            one, zero = ir.Constant(element, 1.0), ir.Constant(element, 0.0)
            builder.call(
                builder.inttoptr(fn, fnty.as_pointer()),
                [ir.Constant(i32, ROW_MAJOR), builder.trunc(ta, i32), builder.trunc(tb, i32), m, n, k, one,
                 builder.inttoptr(a, ptr), lda, builder.inttoptr(b, ptr), ldb, zero, builder.inttoptr(c, ptr), ldc],
            )  # fmt: skip
            return context.get_dummy_value()

        return sig, codegen

    return call


_sgemm = _gemm_intrinsic(ir.FloatType())
_dgemm = _gemm_intrinsic(ir.DoubleType())


def _word(builder, control, index):
    """Pointer to control[index] (an int64 C array) in LLVM IR."""
    return builder.gep(builder.extract_value(control, 4), [index])  # the array's data pointer


@intrinsic
def _load(typingctx, control, index):
    """control[index], read from memory every time (acquire): a plain load in a polling
    loop would be hoisted out of it."""

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_word(builder, args[0], args[1]), "acquire", 8)

    return types.int64(control, types.int64), codegen


@intrinsic
def _store(typingctx, control, index, value):
    """control[index] = value, seen by other threads in order (sequentially consistent)."""

    def codegen(context, builder, signature, args):
        builder.store_atomic(args[2], _word(builder, args[0], args[1]), "seq_cst", 8)
        return context.get_dummy_value()

    return types.void(control, types.int64, types.int64), codegen


@intrinsic
def _swap_if(typingctx, control, index, old, new):
    """control[index] = new if it holds old (atomic); 1 if it did."""

    def codegen(context, builder, signature, args):
        pair = builder.cmpxchg(_word(builder, args[0], args[1]), args[2], args[3], "seq_cst", "seq_cst")
        return builder.zext(builder.extract_value(pair, 1), ir.IntType(64))

    return types.int64(control, types.int64, types.int64, types.int64), codegen


@intrinsic
def _clock(typingctx):
    """The processor's cycle counter (the TSC on x86: constant rate), for a polling budget
    in time rather than in polls."""

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [])
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, "llvm.readcyclecounter"), [])

    return types.int64(), codegen


@njit(types.int64(), cache=True, nogil=True)
def clock():
    return _clock()


def _addresses_signature(dtype):
    """Arrays of any layout (one compiled kernel, not one per view), the operands read-only
    (writable ones convert: a checkpoint's weights are read-only, a layer's buffers not)."""
    operand = types.Array(dtype, 2, "A", readonly=True)
    return types.UniTuple(types.int64, 3)(operand, operand, types.Array(dtype, 2, "A"))


@njit([_addresses_signature(types.float32), _addresses_signature(types.float64)], cache=True)
def addresses(a, b, c):
    """The data addresses of three arrays: 0.4 us here, against 1.5-2.8 us each through
    NumPy's `ctypes.data` or `__array_interface__`."""
    return a.ctypes.data, b.ctypes.data, c.ctypes.data


_TABLE = types.int64[:, ::1]
_CONTROL = types.int64[::1]
_I = types.int64


@njit(types.none(_TABLE, _I), cache=True, nogil=True)
def run_tasks(tasks, count):
    """The first `count` task rows, in order, on this thread."""
    for i in range(count):
        r = tasks[i]
        if r[1]:
            _dgemm(r[0], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12])
        else:
            _sgemm(r[0], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12])


@njit(types.UniTuple(_I, 2)(_CONTROL, _TABLE, _I, _I), cache=True, nogil=True)
def serve(control, tasks, seen, spin):
    """A worker's loop: run each new ticket's task rows; return (ticket, RUN_PYTHON) for a
    Python task, or a reason to sleep once `spin` clock ticks pass without a ticket. Going
    to sleep it says SLEEPING first, then looks once more, so a ticket posted meanwhile is
    never missed (the caller posts, then looks at STATE: one of the two sees the other)."""
    idle = _clock()
    while True:
        ticket = _load(control, TICKET)
        if ticket != seen:
            seen = ticket
            if _load(control, KIND) == PYTHON:
                return seen, RUN_PYTHON
            run_tasks(tasks, _load(control, COUNT))
            _store(control, DONE, seen)
            idle = _clock()
        elif _clock() - idle >= spin:
            _store(control, STATE, SLEEPING)
            if _load(control, TICKET) == seen:
                return seen, SLEEP
            if _swap_if(control, STATE, SLEEPING, SPINNING):
                idle = _clock()  # a ticket came before the caller saw SLEEPING: serve it
            else:
                return seen, SLEEP_WOKEN


@njit(_I(_CONTROL, _I, _I, _I), cache=True, nogil=True)
def post(control, ticket, kind, count):
    """Hand a worker `ticket`; 1 if it sleeps and the caller must release its lock."""
    _store(control, COUNT, count)
    _store(control, KIND, kind)
    _store(control, TICKET, ticket)
    if _load(control, STATE) == SLEEPING:
        return _swap_if(control, STATE, SLEEPING, SPINNING)
    return 0


@njit(_I(_CONTROL, _I, _I), cache=True, nogil=True)
def wait_done(control, ticket, polls):
    """1 once the worker has finished `ticket`, 0 if not within `polls` polls."""
    for _ in range(polls):
        if _load(control, DONE) == ticket:
            return 1
    return 0


def task_rows(a, b, out, rows, blocks, kept, gemm):
    """The task rows of each block of out = a @ b, cut along rows of a and out or columns
    of b and out; None when BLAS cannot write out in place, the dtypes differ or the
    product is empty (the caller calls NumPy). An operand BLAS cannot read in place (a
    strided slice, unaligned data) is copied first, into `kept`: the rows point into it.
    `gemm`: (sgemm, dgemm) addresses, `gemm_functions`."""
    m, k = a.shape
    n = b.shape[1]
    item = out.itemsize
    if (
        out.dtype.char not in "fd"
        or a.dtype != out.dtype
        or b.dtype != out.dtype
        or b.shape[0] != k
        or out.shape != (m, n)
        or 0 in (m, n, k)
        or out.strides[1] != item
        or out.strides[0] % item
        or out.strides[0] < n * item
        or not out.flags.aligned
        or np.may_share_memory(out, a)
        or np.may_share_memory(out, b)
    ):
        return None
    layout_a, layout_b = layout(a), layout(b)
    if layout_a is None:
        a = np.array(a, order="C")  # a fresh copy: rows, aligned
        layout_a = layout(a)
        kept.append(a)
    if layout_b is None:
        b = np.array(b, order="C")
        layout_b = layout(b)
        kept.append(b)
    (ta, lda), (tb, ldb) = layout_a, layout_b
    pa, pb, pc = addresses(a, b, out)
    double, ldc = int(item == 8), out.strides[0] // item
    fn = gemm[double]
    if rows:
        return [[fn, double, ta, tb, hi - lo, n, k, pa + lo * a.strides[0], lda, pb, ldb, pc + lo * out.strides[0], ldc]
                for lo, hi in blocks]  # fmt: skip
    return [[fn, double, ta, tb, m, hi - lo, k, pa, lda, pb + lo * b.strides[1], ldb, pc + lo * item, ldc]
            for lo, hi in blocks]  # fmt: skip


def layout(x):
    """(CBLAS transpose flag, leading dimension in elements) that reads the 2-D array x
    in place, or None: rows of contiguous elements (as stored) or columns of them (a
    transposed view). The stride of a dimension of size 1 is never used, whatever it is."""
    item = x.itemsize
    r, c = x.shape
    s0, s1 = x.strides
    if not x.flags.aligned or s0 % item or s1 % item:
        return None
    if c <= 1 or s1 == item:
        ld = max(1, c) if r <= 1 else s0 // item
        if ld >= max(1, c):
            return NO_TRANSPOSE, ld
    if r <= 1 or s0 == item:
        ld = max(1, r) if c <= 1 else s1 // item
        if ld >= max(1, r):
            return NO_TRANSPOSE + 1, ld
    return None


GEMM_SYMBOLS = ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_")


def gemm_functions():
    """(sgemm, dgemm) addresses in the BLAS that NumPy uses and threadpoolctl limits, or
    None when it has no 64-bit-integer CBLAS under the names above (another NumPy build):
    the products then stay NumPy calls."""
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        try:
            lib = ctypes.CDLL(info["filepath"])
            return tuple(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in GEMM_SYMBOLS)
        except (OSError, AttributeError):
            continue
    return None
