"""Pooling arithmetic over NCHW arrays (1-D pooling is 2-D with H = 1), parallel over
batch x channels. Windows start at p*stride with no padding; the output size is
floor((n - size) / stride) + 1, so trailing positions a window never reaches are dropped.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def maxpool_forward(x, kh, kw, sh, sw, y, idx):
    """y[b, c, p, q] = max of the window; idx keeps the argmax as a flat index into the
    (H, W) plane (the first maximum on ties) for the backward pass."""
    nb, nc, h, w = x.shape
    _, _, oh, ow = y.shape
    for bc in prange(nb * nc):
        b = bc // nc
        c = bc % nc
        for p in range(oh):
            for q in range(ow):
                i0 = p * sh
                j0 = q * sw
                best = x[b, c, i0, j0]
                arg = i0 * w + j0
                for i in range(i0, i0 + kh):
                    for j in range(j0, j0 + kw):
                        v = x[b, c, i, j]
                        if v > best:
                            best = v
                            arg = i * w + j
                y[b, c, p, q] = best
                idx[b, c, p, q] = arg


@njit(cache=True, parallel=True)
def maxpool_backward(dy, idx, dx):
    """dx = 0, then each output's gradient goes to its window's argmax."""
    nb, nc, h, w = dx.shape
    _, _, oh, ow = dy.shape
    for bc in prange(nb * nc):
        b = bc // nc
        c = bc % nc
        for i in range(h):
            for j in range(w):
                dx[b, c, i, j] = 0
        for p in range(oh):
            for q in range(ow):
                k = idx[b, c, p, q]
                dx[b, c, k // w, k % w] += dy[b, c, p, q]


@njit(cache=True, parallel=True)
def avgpool_forward(x, kh, kw, sh, sw, y):
    """y[b, c, p, q] = mean of the window x[b, c, p*sh : p*sh + kh, q*sw : q*sw + kw]."""
    nb, nc, h, w = x.shape
    _, _, oh, ow = y.shape
    scale = 1.0 / (kh * kw)
    for bc in prange(nb * nc):
        b = bc // nc
        c = bc % nc
        for p in range(oh):
            for q in range(ow):
                s = 0.0
                for i in range(p * sh, p * sh + kh):
                    for j in range(q * sw, q * sw + kw):
                        s += x[b, c, i, j]
                y[b, c, p, q] = s * scale


@njit(cache=True, parallel=True)
def avgpool_backward(dy, kh, kw, sh, sw, dx):
    """dx = 0, then each output's gradient spread evenly over its window."""
    nb, nc, h, w = dx.shape
    _, _, oh, ow = dy.shape
    scale = 1.0 / (kh * kw)
    for bc in prange(nb * nc):
        b = bc // nc
        c = bc % nc
        for i in range(h):
            for j in range(w):
                dx[b, c, i, j] = 0
        for p in range(oh):
            for q in range(ow):
                g = dy[b, c, p, q] * scale
                for i in range(p * sh, p * sh + kh):
                    for j in range(q * sw, q * sw + kw):
                        dx[b, c, i, j] += g
