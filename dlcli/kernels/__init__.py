"""Numba kernels only: module-level functions over arrays, `cache=True`.

Importing `dlcli` does not import this package's modules; layers import them on first
use, so `dlcli --help` compiles nothing. Every kernel works for float32 and float64
and has a plain-NumPy twin in `tests/reference.py`.
"""

# Options for kernels whose loops should vectorise: Numba's default error model checks
# every division for zero, which blocks LLVM's vectoriser, and strict IEEE order forbids
# vectorising a reduction. Of the fast-math flags we keep only those that cannot hide a
# NaN or an infinity: 'reassoc' (reorder sums: a NaN or Inf term still reaches the sum),
# 'contract' (fused multiply-add), 'nsz' (the sign of zero), 'arcp' (x / y as x * (1 / y)).
# Never 'nnan'/'ninf' (they let LLVM assume no NaN/Inf and drop the comparisons that carry
# one through a max or a clamp) nor 'afn' (approximate libm calls, undefined on NaN).
# Reordering is fixed at compile time and every kernel's loops run over ranges that do not
# depend on the thread count, so results stay bitwise the same for any --threads.
FAST_FLAGS = frozenset({"reassoc", "contract", "nsz", "arcp"})
FAST = dict(cache=True, error_model="numpy", fastmath=set(FAST_FLAGS))
