"""Dense layer arithmetic: BLAS for the products (np.dot inside Numba), fused loops around them."""

import numpy as np
from numba import njit, prange

from . import FAST


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
    for j in range(m):
        s = partial[0, j]
        for b in range(1, blocks):
            s += partial[b, j]
        out[j] = s


@njit(parallel=True, **FAST)
def dense_forward(x, w, b, out):
    """out = x @ w + b; x (n, fin), w (fin, fout), b (fout,)."""
    np.dot(x, w, out)
    n, m = out.shape
    for i in prange(n):
        for j in range(m):
            out[i, j] += b[j]


@njit(parallel=True, **FAST)
def dense_forward_relu(x, w, b, out):
    """out = max(x @ w + b, 0): a dense layer followed by ReLU, in one pass over `out`."""
    np.dot(x, w, out)
    n, m = out.shape
    for i in prange(n):
        for j in range(m):
            v = out[i, j] + b[j]
            out[i, j] = 0 if v <= 0 else v  # NaN passes through, so the loss sees it


@njit(**FAST)
def matmul_tn(a, b, out):
    """out = a.T @ b: weight gradients. (Bias gradients: `column_sums`, called beside it;
    a parallel kernel called from another jitted function cannot be cached.)"""
    np.dot(a.T, b, out)


@njit(**FAST)
def matmul_nt(a, b, out):
    """out = a @ b.T: gradients with respect to a layer's input."""
    np.dot(a, b.T, out)


@njit(**FAST)
def matmul(a, b, out):
    """out = a @ b."""
    np.dot(a, b, out)


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
    for j in range(m):
        s = partial[0, j]
        for b in range(1, blocks):
            s += partial[b, j]
        out[j] = s


@njit(parallel=True, **FAST)
def relu_mask_inplace(y, dy):
    """dy *= (y > 0): the ReLU backward step when only its output y was kept."""
    flat_y = y.reshape(-1)
    flat_dy = dy.reshape(-1)
    for i in prange(flat_y.size):
        if flat_y[i] <= 0:
            flat_dy[i] = 0
