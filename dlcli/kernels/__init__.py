"""Numba kernels only: module-level functions over arrays, `cache=True`.

Importing `dlcli` does not import this package's modules; layers import them on first
use, so `dlcli --help` compiles nothing. Every kernel works for float32 and float64
and has a plain-NumPy twin in `tests/reference.py`.
"""

