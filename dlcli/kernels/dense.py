"""Dense layer arithmetic around the matrix products: bias, fused ReLU, bias gradients.

The products themselves are NumPy's `np.matmul(..., out=)`, called from the layer, and
BLAS spreads them over the cores. These passes are serial on purpose. They touch each of
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


@njit(**FAST)
def relu_mask_column_sums(y, dy, out):
    """dy *= (y > 0), then out = column sums of dy: the backward of a fused dense+ReLU
    up to the products, in one pass over dy."""
    n, m = dy.shape
    out[:] = 0
    for i in range(n):
        for j in range(m):
            v = 0 if y[i, j] <= 0 else dy[i, j]  # as PyTorch: a NaN output passes dy
            dy[i, j] = v
            out[j] += v


@njit(**FAST)
def relu_mask_inplace(y, dy):
    """dy *= (y > 0): the ReLU backward step when only its output y was kept."""
    flat_y = y.reshape(-1)
    flat_dy = dy.reshape(-1)
    for i in range(flat_y.size):
        if flat_y[i] <= 0:
            flat_dy[i] = 0


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
