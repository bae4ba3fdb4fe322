"""Normalisation kernels: batchnorm and layernorm, forward and backward, ReLU fused in.

Every input is viewed as (N, C, P): N samples (batch, or batch x time for a sequence),
C channels or features (one scale and shift each), P positions per channel (1 for
dense input, length or height x width for conv input). Batchnorm averages over N and P
per channel; layernorm averages over C and P per sample.

Batchnorm's reductions run over blocks of samples, the blocks sharded over the cores
(each block reads whole contiguous rows, whatever C and P are), into float64 partial sums
that one serial step adds up in block order; the elementwise passes are sharded over
samples (`runtime.sharded`, as in kernels/conv.py). Statistics are two-pass
(mean, then the mean of squared deviations): float32 sums of x^2 lose the variance when
the mean is large.

With `relu` the output pass applies max(0, .) and backward first zeroes dy where the
output was not positive, inside the pass that reduces it: batchnorm + ReLU costs one pass
forward and two backward, like batchnorm alone.
"""

import numpy as np
from numba import njit

from ..runtime import sharded
from . import FAST, SHARD

BLOCKS = 32  # fixed (not the thread count): a cacheable kernel, and sums independent of the threads


@njit(**FAST)
def _add_blocks(partial, out):
    """out[c] = sum_b partial[b, c], serially, in block order (repeatable)."""
    for c in range(out.size):
        s = 0.0
        for b in range(partial.shape[0]):
            s += partial[b, c]
        out[c] = s


def channel_mean_var(x, mean, var):
    """Per-channel mean and (biased) variance of x (N, C, P) over N and P, in float64."""
    n, c, p = x.shape
    partial = np.zeros((min(BLOCKS, n), c))
    sharded(_block_channel_sums, len(partial), x, partial, work=x.size)
    _add_blocks(partial, mean)
    mean /= n * p
    partial[:] = 0
    sharded(_block_channel_squared_deviations, len(partial), x, mean, partial, work=x.size)
    _add_blocks(partial, var)
    var /= n * p


@njit(**SHARD)
def _block_channel_sums(x, partial, lo, hi):
    n, c, p = x.shape
    blocks = partial.shape[0]
    for b in range(lo, hi):
        for i in range(b * n // blocks, (b + 1) * n // blocks):
            for j in range(c):
                s = 0.0
                for k in range(p):
                    s += x[i, j, k]
                partial[b, j] += s


@njit(**SHARD)
def _block_channel_squared_deviations(x, mean, partial, lo, hi):
    n, c, p = x.shape
    blocks = partial.shape[0]
    for b in range(lo, hi):
        for i in range(b * n // blocks, (b + 1) * n // blocks):
            for j in range(c):
                m = mean[j]
                s = 0.0
                for k in range(p):
                    d = x[i, j, k] - m
                    s += d * d
                partial[b, j] += s


def channel_affine(x, scale, shift, relu, out):
    """out = x * scale[c] + shift[c] (then max(0, .) with relu): batchnorm's output pass,
    in training (scale = gamma / std, shift = beta - mean * scale) and at evaluation
    (the same with the running statistics)."""
    sharded(_channel_affine, x.shape[0], x, scale, shift, relu, out, work=x.size)


@njit(**SHARD)
def _channel_affine(x, scale, shift, relu, out, lo, hi):
    n, c, p = x.shape
    for i in range(lo, hi):
        for j in range(c):
            a = scale[j]
            b = shift[j]
            for k in range(p):
                v = x[i, j, k] * a + b
                if relu and v <= 0:
                    v = 0
                out[i, j, k] = v


def batchnorm_grad_sums(x, mean, inv_std, y, relu, dy, sum_dy, sum_dy_xhat):
    """Per channel: sum of dy and of dy * xhat, xhat = (x - mean) * inv_std. With relu,
    dy is first zeroed in place where the output y was not positive."""
    n, c, p = x.shape
    partial = np.zeros((min(BLOCKS, n), 2 * c))
    sharded(_block_grad_sums, len(partial), x, mean, inv_std, y, relu, dy, partial, work=2 * x.size)
    totals = np.empty(2 * c)
    _add_blocks(partial, totals)
    sum_dy[:] = totals[:c]
    sum_dy_xhat[:] = totals[c:]


@njit(**SHARD)
def _block_grad_sums(x, mean, inv_std, y, relu, dy, partial, lo, hi):
    n, c, p = x.shape
    blocks = partial.shape[0]
    for b in range(lo, hi):
        for i in range(b * n // blocks, (b + 1) * n // blocks):
            for j in range(c):
                m = mean[j]
                s = 0.0
                sx = 0.0
                for k in range(p):
                    g = dy[i, j, k]
                    if relu and y[i, j, k] <= 0:
                        g = 0
                        dy[i, j, k] = 0
                    s += g
                    sx += g * (x[i, j, k] - m)
                partial[b, j] += s
                partial[b, c + j] += sx * inv_std[j]


def batchnorm_input_grad(x, mean, inv_std, gamma, dy, sum_dy, sum_dy_xhat, dx):
    """dx = gamma * inv_std * (dy - sum_dy / M - xhat * sum_dy_xhat / M), M = N * P: the
    gradient through the batch statistics (dy already masked by a fused relu)."""
    sharded(_batchnorm_input_grad, x.shape[0], x, mean, inv_std, gamma, dy, sum_dy, sum_dy_xhat, dx, work=2 * x.size)


@njit(**SHARD)
def _batchnorm_input_grad(x, mean, inv_std, gamma, dy, sum_dy, sum_dy_xhat, dx, lo, hi):
    n, c, p = x.shape
    count = n * p
    for i in range(lo, hi):
        for j in range(c):
            m = mean[j]
            s = inv_std[j]
            a = gamma[j] * s
            mean_dy = sum_dy[j] / count
            mean_dy_xhat = sum_dy_xhat[j] / count
            for k in range(p):
                xhat = (x[i, j, k] - m) * s
                dx[i, j, k] = a * (dy[i, j, k] - mean_dy - xhat * mean_dy_xhat)


def layernorm_forward(x, gamma, beta, eps, relu, out, mean, inv_std):
    """Per sample i: normalise x[i] (C, P) over all its entries, then out = xhat * gamma[c]
    + beta[c] (max(0, .) with relu); keeps mean[i] and inv_std[i] for backward."""
    sharded(_layernorm_forward, x.shape[0], x, gamma, beta, eps, relu, out, mean, inv_std, work=3 * x.size)


@njit(**SHARD)
def _layernorm_forward(x, gamma, beta, eps, relu, out, mean, inv_std, lo, hi):
    n, c, p = x.shape
    count = c * p
    for i in range(lo, hi):
        s = 0.0
        for j in range(c):
            for k in range(p):
                s += x[i, j, k]
        m = s / count
        s = 0.0
        for j in range(c):
            for k in range(p):
                d = x[i, j, k] - m
                s += d * d
        r = 1.0 / np.sqrt(s / count + eps)
        mean[i] = m
        inv_std[i] = r
        for j in range(c):
            g = gamma[j] * r
            b = beta[j]
            for k in range(p):
                v = (x[i, j, k] - m) * g + b
                if relu and v <= 0:
                    v = 0
                out[i, j, k] = v


def layernorm_backward(x, mean, inv_std, gamma, y, relu, dy, dx, dgamma, dbeta):
    """dx per sample, and dgamma/dbeta summed over samples and positions, in one pass over
    blocks of samples (dy zeroed in place where a fused relu was off)."""
    n, c, p = x.shape
    partial = np.zeros((min(BLOCKS, n), 2 * c))
    args = (x, mean, inv_std, gamma, y, relu, dy, dx, partial)
    sharded(_block_layernorm_backward, len(partial), *args, work=3 * x.size)
    totals = np.empty(2 * c)
    _add_blocks(partial, totals)
    dgamma[:] = totals[:c]
    dbeta[:] = totals[c:]


@njit(**SHARD)
def _block_layernorm_backward(x, mean, inv_std, gamma, y, relu, dy, dx, partial, lo, hi):
    n, c, p = x.shape
    count = c * p
    blocks = partial.shape[0]
    for b in range(lo, hi):
        for i in range(b * n // blocks, (b + 1) * n // blocks):
            m = mean[i]
            r = inv_std[i]
            # dxhat = dy * gamma: its mean and its mean times xhat, over the sample
            s1 = 0.0
            s2 = 0.0
            for j in range(c):
                sg = 0.0
                sgx = 0.0
                for k in range(p):
                    g = dy[i, j, k]
                    if relu and y[i, j, k] <= 0:
                        g = 0
                        dy[i, j, k] = 0
                    xhat = (x[i, j, k] - m) * r
                    sg += g
                    sgx += g * xhat
                partial[b, j] += sgx
                partial[b, c + j] += sg
                s1 += sg * gamma[j]
                s2 += sgx * gamma[j]
            s1 /= count
            s2 /= count
            for j in range(c):
                a = gamma[j] * r
                for k in range(p):
                    xhat = (x[i, j, k] - m) * r
                    dx[i, j, k] = a * dy[i, j, k] - r * (s1 + xhat * s2)
