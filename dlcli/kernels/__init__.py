"""Numba kernels only: module-level functions over arrays, `cache=True`.

Importing `dlcli` does not import this package's modules; layers import them on first
use, so `dlcli --help` compiles nothing. Every kernel works for float32 and float64
and has a plain-NumPy twin in `tests/reference.py`.
"""

# Options for kernels whose loops should vectorise: Numba's default error model checks
# every division for zero, which blocks LLVM's vectoriser, and strict IEEE order forbids
# vectorising a reduction. We keep NaN/Inf semantics (no 'nnan'/'ninf'), so non-finite
# losses are still detected.
FAST = dict(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz", "arcp"})
