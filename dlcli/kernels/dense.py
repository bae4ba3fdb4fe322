"""Dense layer arithmetic around the matrix products: bias, fused ReLU, bias gradients.

The products themselves are BLAS's, called from the layer through `runtime.matmul`,
which spreads them over the cores in shape-fixed blocks. These passes are serial on purpose. They touch each of
the n x m outputs once, while the product beside them does fan_in multiply-adds per
output, so on two cores they are a few per cent of a step. As `parallel=True` kernels they
cost three ways:
- Numba's OpenMP workers and OpenBLAS's threads took turns on the same cores, so the
  reference MLP gained 1.36x from 1 to 2 threads while its products alone gained 1.6-1.7x;
- each parallel kernel took 1.2-5.2 s to compile in a cold cache, against 0.2-0.4 s serial
  (12.3 s to the first step of the reference MLP, 8.8 s of it these kernels);
- a parallel reduction's order depends on the thread count.
"""

from numba import njit

from . import FAST


@njit(**FAST)
def column_sums(a, out):
    """out[j] = sum_i a[i, j], row after row: contiguous and vectorised along j."""
    n, m = a.shape
    out[:] = 0
    for i in range(n):
        for j in range(m):
            out[j] += a[i, j]


# The ReLU masks below store a select of two unconditional loads on every element: a
# store under a condition (`if y <= 0: dy = 0`) did not vectorise, 16.7 against 3.5 us over
# 128 x 256 float32. Masking a row and then summing it keeps both loops vectorised; one
# fused loop ran at 14.7 us against 5.9.


@njit(**FAST)
def relu_mask_column_sums(y, dy, out):
    """dy *= (y > 0), then out = column sums of dy: the backward of a fused dense+ReLU
    up to the products, one row at a time while it is in cache."""
    n, m = dy.shape
    out[:] = 0
    for i in range(n):
        yr, dr = y[i], dy[i]
        for j in range(m):
            dr[j] = 0 if yr[j] <= 0 else dr[j]  # as PyTorch: a NaN output passes dy
        for j in range(m):
            out[j] += dr[j]


@njit(**FAST)
def relu_mask_inplace(y, dy):
    """dy *= (y > 0): the ReLU backward step when only its output y was kept."""
    flat_y = y.reshape(-1)
    flat_dy = dy.reshape(-1)
    for i in range(flat_y.size):
        flat_dy[i] = 0 if flat_y[i] <= 0 else flat_dy[i]


@njit(**FAST)
def relu_mask_into(y, dy, out):
    """out = dy * (y > 0), dy untouched: a merge's ReLU backward when dy is shared."""
    flat_y, flat_dy, flat_out = y.reshape(-1), dy.reshape(-1), out.reshape(-1)
    for i in range(flat_y.size):
        flat_out[i] = 0 if flat_y[i] <= 0 else flat_dy[i]


@njit(**FAST)
def add_act(a, b, out, relu):
    """out = a + b, then max(out, 0) when relu, in one pass (np.maximum took 16.7 us over
    128 x 256 float32, this whole pass ~3). NaN passes through."""
    fa, fb, fo = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    if relu:
        for i in range(fo.size):
            v = fa[i] + fb[i]
            fo[i] = 0 if v <= 0 else v
    else:
        for i in range(fo.size):
            fo[i] = fa[i] + fb[i]


@njit(**FAST)
def bias_act(out, b, relu):
    """out += b, then max(out, 0) when relu: one pass after the GEMM. NaN passes through."""
    n, m = out.shape
    if relu:
        for i in range(n):
            for j in range(m):
                v = out[i, j] + b[j]
                out[i, j] = 0 if v <= 0 else v
    else:
        for i in range(n):
            for j in range(m):
                out[i, j] += b[j]
