"""Dense layer arithmetic around the matrix products: bias, fused ReLU, bias gradients.

The products themselves are NumPy's `np.matmul(..., out=)`, called from the layer. On
their own, NumPy's matmul and `np.dot` inside Numba (SciPy's separate OpenBLAS build)
reached about the same speed (measured when SciPy was still a dependency); inside a training step,
alternating with Numba's parallel loops, NumPy's measured faster (30.8k vs 25.0k
samples/s on the reference MLP, paired runs on 2 cores).
"""

import numpy as np
from numba import njit, prange

from . import FAST


@njit(**FAST)
def _sum_rows(partial, out):
    """out[j] = sum_b partial[b, j]: the final, serial step of a blocked column sum."""
    out[:] = partial[0]
    for b in range(1, partial.shape[0]):
        out += partial[b]


@njit(parallel=True, **FAST)
def column_sums(a, out):
    """out[j] = sum_i a[i, j], with rows split in contiguous blocks so each thread reads rows."""
    n, m = a.shape
    blocks = min(32, n)  # fixed, not get_num_threads(): that would make the kernel uncacheable
    partial = np.zeros((blocks, m), dtype=a.dtype)
    for b in prange(blocks):
        for i in range(b * n // blocks, (b + 1) * n // blocks):
            for j in range(m):
                partial[b, j] += a[i, j]
    _sum_rows(partial, out)


@njit(parallel=True, **FAST)
def relu_mask_column_sums(y, dy, out):
    """dy *= (y > 0), then out = column sums of dy: the backward of a fused dense+ReLU
    up to the products, in one pass over dy."""
    n, m = dy.shape
    blocks = min(32, n)
    partial = np.zeros((blocks, m), dtype=dy.dtype)
    for b in prange(blocks):
        for i in range(b * n // blocks, (b + 1) * n // blocks):
            for j in range(m):
                if y[i, j] <= 0:
                    dy[i, j] = 0
                else:
                    partial[b, j] += dy[i, j]
    _sum_rows(partial, out)


@njit(parallel=True, **FAST)
def relu_mask_inplace(y, dy):
    """dy *= (y > 0): the ReLU backward step when only its output y was kept."""
    flat_y = y.reshape(-1)
    flat_dy = dy.reshape(-1)
    for i in prange(flat_y.size):
        if flat_y[i] <= 0:
            flat_dy[i] = 0


@njit(parallel=True, **FAST)
def bias_act(out, b, relu):
    """out += b, then max(out, 0) when relu: one pass after the GEMM. NaN passes through."""
    n, m = out.shape
    if relu:
        for i in prange(n):
            for j in range(m):
                v = out[i, j] + b[j]
                out[i, j] = 0 if v <= 0 else v
    else:
        for i in prange(n):
            for j in range(m):
                out[i, j] += b[j]
