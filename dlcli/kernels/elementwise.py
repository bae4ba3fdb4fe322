"""Elementwise and reduction kernels: activations, optimizer updates, gradient norms.

They work on flat (1-D, contiguous) views; callers pass `a.reshape(-1)`. Each is a
serial nogil kernel over a range (`_name(..., lo, hi)`) and a wrapper that cuts the
range into one shard per core (`runtime.sharded`; kernels/conv.py says why not Numba's
`parallel=True`); every task writes its own outputs, so results do not depend on the
thread count.
"""

import numpy as np
from numba import njit

from ..runtime import sharded
from . import FAST, SHARD

# Flat passes: a serial nogil kernel over elements lo..hi (SHARD) and a wrapper that
# shards it. FAST's flags (kernels/__init__.py) let the compare-and-select of relu
# vectorise: without them relu's backward on random signs ran at 7 ns per element (a
# mispredicted branch each).


# Each flat kernel loops from 0 over views of its range: an index that starts at `lo`
# could be negative for all LLVM knows, and Numba's wrap-around test on it stops the loop
# from vectorising. Both operands of a select are loaded unconditionally for the same
# reason (a load under a condition cannot be vectorised).


@njit(**SHARD)
def _relu_forward(x, out, lo, hi):
    xs, os = x[lo:hi], out[lo:hi]
    for i in range(xs.size):
        v = xs[i]
        os[i] = 0 if v <= 0 else v  # NaN passes through, so the loss sees it


@njit(**SHARD)
def _relu_backward(x, dy, dx, lo, hi):
    xs, gs, ds = x[lo:hi], dy[lo:hi], dx[lo:hi]
    for i in range(xs.size):
        g = gs[i]
        ds[i] = 0 if xs[i] <= 0 else g  # as PyTorch: a NaN input passes dy


@njit(**SHARD)
def _sigmoid_forward(x, out, lo, hi):
    xs, os = x[lo:hi], out[lo:hi]
    for i in range(xs.size):
        v = xs[i]
        if v >= 0:
            os[i] = 1 / (1 + np.exp(-v))
        else:
            e = np.exp(v)
            os[i] = e / (1 + e)


@njit(**SHARD)
def _sigmoid_backward(y, dy, dx, lo, hi):
    ys, gs, ds = y[lo:hi], dy[lo:hi], dx[lo:hi]
    for i in range(ys.size):
        ds[i] = gs[i] * ys[i] * (1 - ys[i])


@njit(**SHARD)
def _tanh_forward(x, out, lo, hi):
    xs, os = x[lo:hi], out[lo:hi]
    for i in range(xs.size):
        os[i] = np.tanh(xs[i])


@njit(**SHARD)
def _tanh_backward(y, dy, dx, lo, hi):
    ys, gs, ds = y[lo:hi], dy[lo:hi], dx[lo:hi]
    for i in range(ys.size):
        ds[i] = gs[i] * (1 - ys[i] * ys[i])


@njit(**SHARD)
def _dropout_apply(x, mask, out, lo, hi):
    xs, ms, os = x[lo:hi], mask[lo:hi], out[lo:hi]
    for i in range(xs.size):
        os[i] = xs[i] * ms[i]


def relu_forward(x, out):
    sharded(_relu_forward, x.size, x, out, work=x.size)


def relu_backward(x, dy, dx):
    sharded(_relu_backward, x.size, x, dy, dx, work=x.size)


def sigmoid_forward(x, out):
    sharded(_sigmoid_forward, x.size, x, out, work=20 * x.size)  # exp: 4.6 ns per element, ~20x a copy


def sigmoid_backward(y, dy, dx):
    sharded(_sigmoid_backward, y.size, y, dy, dx, work=y.size)


def tanh_forward(x, out):
    sharded(_tanh_forward, x.size, x, out, work=20 * x.size)


def tanh_backward(y, dy, dx):
    sharded(_tanh_backward, y.size, y, dy, dx, work=y.size)


def dropout_apply(x, mask, out):
    sharded(_dropout_apply, x.size, x, mask, out, work=x.size)


@njit(**SHARD)
def _softmax_rows(x, out, lo, hi):
    n, c = x.shape
    for i in range(lo, hi):
        m = x[i, 0]
        for j in range(1, c):
            m = max(m, x[i, j])
        s = 0.0
        for j in range(c):
            e = np.exp(x[i, j] - m)
            out[i, j] = e
            s += e
        for j in range(c):
            out[i, j] /= s


def softmax_rows(x, out):
    """Row-wise softmax of a 2-D array, max-subtracted for stability."""
    sharded(_softmax_rows, x.shape[0], x, out, work=20 * x.size)


@njit(**SHARD)
def _softmax_rows_backward(y, dy, dx, lo, hi):
    n, c = y.shape
    for i in range(lo, hi):
        dot = 0.0
        for j in range(c):
            dot += dy[i, j] * y[i, j]
        for j in range(c):
            dx[i, j] = y[i, j] * (dy[i, j] - dot)


def softmax_rows_backward(y, dy, dx):
    sharded(_softmax_rows_backward, y.shape[0], y, dy, dx, work=y.size)


# ---------------------------------------------------------------- gradient norms


def chunk_sums_of_squares(a, chunks, out):
    """out[c] = sum of squares of a[chunks[c, 0]:chunks[c, 1]], the chunks sharded. With
    the chunks of `optim.segment_chunks` their sums per segment are the per-layer norms
    (the same cut as the optimizer's pass, so a big layer is spread over the cores)."""
    sharded(_chunk_sums_of_squares, chunks.shape[0], a, chunks, out, work=a.size)


@njit(**SHARD)
def _chunk_sums_of_squares(a, chunks, out, lo, hi):
    for c in range(lo, hi):
        part = a[chunks[c, 0] : chunks[c, 1]]
        s = 0.0
        for i in range(part.size):
            s += part[i] * part[i]
        out[c] = s


@njit(cache=True)
def all_finite(a):
    for i in range(a.size):
        if not np.isfinite(a[i]):
            return False
    return True


# ---------------------------------------------------------------- optimizer updates
# One fused parallel pass over the flat parameter buffer; the semantics follow PyTorch's.
# The buffer is cut into chunks that never straddle two segments (one segment per layer,
# see `optim.segment_chunks`), so a single parallel loop over chunks also yields, in
# `chunk_sumsq`, the raw gradient's sum of squares per chunk; summed per segment these are
# the per-layer gradient norms, for free. `scale` multiplies the gradient first (clipping).
# Each chunk runs a serial loop that LLVM vectorises: the branches are hoisted out of the
# loops, scalars come in the arrays' dtype, and the reduction may be reassociated
# (measured 1.0 ms -> 0.09 ms for 536k float32 parameters on 2 cores).


@njit(inline="always", **FAST)
def _sgd_chunk(p, g, velocity, lr, momentum, weight_decay, nesterov, scale):
    s = g.dtype.type(0)
    if momentum == 0:
        for i in range(p.size):
            gi = g[i]
            s += gi * gi
            p[i] -= lr * (scale * gi + weight_decay * p[i])
    elif nesterov:
        for i in range(p.size):
            gi = g[i]
            s += gi * gi
            d = scale * gi + weight_decay * p[i]
            v = momentum * velocity[i] + d
            velocity[i] = v
            p[i] -= lr * (d + momentum * v)
    else:
        for i in range(p.size):
            gi = g[i]
            s += gi * gi
            v = momentum * velocity[i] + scale * gi + weight_decay * p[i]
            velocity[i] = v
            p[i] -= lr * v
    return s


def sgd_update(p, g, velocity, lr, momentum, weight_decay, nesterov, scale, chunks, chunk_sumsq):
    args = (p, g, velocity, lr, momentum, weight_decay, nesterov, scale, chunks, chunk_sumsq)
    sharded(_sgd_update, chunks.shape[0], *args, work=2 * p.size)


@njit(**SHARD)
def _sgd_update(p, g, velocity, lr, momentum, weight_decay, nesterov, scale, chunks, chunk_sumsq, lo, hi):
    for c in range(lo, hi):
        a, b = chunks[c, 0], chunks[c, 1]
        chunk_sumsq[c] = _sgd_chunk(p[a:b], g[a:b], velocity[a:b], lr, momentum, weight_decay, nesterov, scale)


@njit(inline="always", **FAST)
def _adam_chunk(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, c1, c2, scale):
    s = g.dtype.type(0)
    one = g.dtype.type(1)
    if decoupled:
        for i in range(p.size):
            gi = g[i]
            s += gi * gi
            d = scale * gi
            mi = beta1 * m[i] + (one - beta1) * d
            vi = beta2 * v[i] + (one - beta2) * d * d
            m[i] = mi
            v[i] = vi
            p[i] -= lr * (weight_decay * p[i] + (mi / c1) / (np.sqrt(vi / c2) + eps))
    else:
        for i in range(p.size):
            gi = g[i]
            s += gi * gi
            d = scale * gi + weight_decay * p[i]
            mi = beta1 * m[i] + (one - beta1) * d
            vi = beta2 * v[i] + (one - beta2) * d * d
            m[i] = mi
            v[i] = vi
            p[i] -= lr * (mi / c1) / (np.sqrt(vi / c2) + eps)
    return s


def adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, c1, c2, scale, chunks, chunk_sumsq):
    """c1, c2: the bias corrections 1 - beta1**t and 1 - beta2**t."""
    args = (p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, c1, c2, scale, chunks, chunk_sumsq)
    sharded(_adam_update, chunks.shape[0], *args, work=4 * p.size)


@njit(**SHARD)
def _adam_update(
    p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, c1, c2, scale, chunks, chunk_sumsq, lo, hi
):
    for c in range(lo, hi):
        a, b = chunks[c, 0], chunks[c, 1]
        chunk_sumsq[c] = _adam_chunk(
            p[a:b], g[a:b], m[a:b], v[a:b], lr, beta1, beta2, eps, weight_decay, decoupled, c1, c2, scale
        )


@njit(inline="always", **FAST)
def _rmsprop_chunk(p, g, square_avg, velocity, lr, alpha, eps, weight_decay, momentum, scale):
    s = g.dtype.type(0)
    one = g.dtype.type(1)
    if momentum == 0:
        for i in range(p.size):
            gi = g[i]
            s += gi * gi
            d = scale * gi + weight_decay * p[i]
            a = alpha * square_avg[i] + (one - alpha) * d * d
            square_avg[i] = a
            p[i] -= lr * d / (np.sqrt(a) + eps)
    else:
        for i in range(p.size):
            gi = g[i]
            s += gi * gi
            d = scale * gi + weight_decay * p[i]
            a = alpha * square_avg[i] + (one - alpha) * d * d
            square_avg[i] = a
            step = momentum * velocity[i] + d / (np.sqrt(a) + eps)
            velocity[i] = step
            p[i] -= lr * step
    return s


def rmsprop_update(p, g, square_avg, velocity, lr, alpha, eps, weight_decay, momentum, scale, chunks, chunk_sumsq):
    args = (p, g, square_avg, velocity, lr, alpha, eps, weight_decay, momentum, scale, chunks, chunk_sumsq)
    sharded(_rmsprop_update, chunks.shape[0], *args, work=4 * p.size)


@njit(**SHARD)
def _rmsprop_update(
    p, g, square_avg, velocity, lr, alpha, eps, weight_decay, momentum, scale, chunks, chunk_sumsq, lo, hi
):
    for c in range(lo, hi):
        a, b = chunks[c, 0], chunks[c, 1]
        chunk_sumsq[c] = _rmsprop_chunk(
            p[a:b], g[a:b], square_avg[a:b], velocity[a:b], lr, alpha, eps, weight_decay, momentum, scale
        )
