"""Numba kernels: module-level functions over arrays, `cache=True`, serial. A kernel
worth sharing over the cores takes a task range (lo, hi) and releases the GIL; a Python
wrapper with the public name runs one range per core through `runtime.sharded`.

Importing `dlcli` does not import this package's modules; layers import them on first
use, so `dlcli --help` compiles nothing. Every kernel works for float32 and float64
and has a plain-NumPy twin in `tests/reference.py`.
"""

# Options for kernels whose loops should vectorise: Numba's default error model checks
# every division for zero, which blocks LLVM's vectoriser, and strict IEEE order forbids
# vectorising a reduction. Of the fast-math flags we keep only those that do not let LLVM
# assume values are finite: 'reassoc' (reorder sums), 'contract' (fused multiply-add),
# 'nsz' (the sign of zero), 'arcp' (x / y as x * (1 / y)). Never 'nnan'/'ninf' (they let
# LLVM drop the comparisons that carry a NaN through a max or a clamp) nor 'afn'
# (approximate libm calls). One caveat, measured: 'reassoc' with 'nsz' lets LLVM cancel
# `x - x` to 0 even when x is NaN or Inf, so no kernel subtracts a value from itself (a
# finiteness test sums x * 0 under 'reassoc' alone: pool._all_finite). tests/test_nan.py
# checks every layer type's compiled kernels against NumPy with NaN and Inf placed anywhere.
# Reordering is fixed at compile time and no kernel's loop bounds depend on the thread
# count, so results stay bitwise the same for any --threads.
FAST_FLAGS = frozenset({"reassoc", "contract", "nsz", "arcp"})
FAST = dict(cache=True, error_model="numpy", fastmath=set(FAST_FLAGS))
# A helper that only kernels with its own flags call is inlined by Numba
# (`inline="always"`) rather than compiled on its own: inlined code takes the caller's
# flags, so never a helper whose flags differ (pool._all_finite, recurrent's IN_ORDER
# rows). For the convolution, pooling and optimizer helpers the reference CNN's first
# step from an empty cache took 0.6-1.4 s less (six paired runs) and 0.6-3.2 s less again
# (three), with the kernels at the same speed and bits (in-process A/B). With the
# recurrent row helpers inlined too, the LSTM's first step took ~0.5 s longer: not done.
# FAST for kernels that run in shard threads (`runtime.sharded`, `runtime.run_shards`):
# they must release the GIL for the shards to overlap.
SHARD = dict(FAST, nogil=True)
