"""Pooling arithmetic over NCHW arrays (1-D pooling is 2-D with H = 1), sharded over
batch x channels (`runtime.sharded`, as in kernels/conv.py). Windows start at p*stride with no padding; the output size is
floor((n - size) / stride) + 1, so trailing positions a window never reaches are dropped.
"""

import numpy as np
from numba import njit

from ..runtime import sharded
from . import FAST, SHARD


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _all_finite(x):
    """True when the (H, W) plane holds no NaN and no infinity: x * 0 is 0 for finite x only.
    Just 'reassoc', so the sum vectorises: with 'nsz' too, LLVM may cancel terms."""
    z = x.dtype.type(0)
    s = z
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            s += x[i, j] * z
    return s == z


@njit(**FAST)
def _maxpool_plane_nonfinite(x, kh, kw, sh, sw, y, idx):
    """A plane with a NaN or an infinity: a value takes the window when it is larger or is
    the window's first NaN, so a NaN anywhere in a window comes out (as NumPy's max and
    PyTorch's max pooling do) and the gradient goes to it. Compare-and-select with the NaN
    test does not vectorise (measured 5-10x slower than the finite planes' kernels), so
    only such planes take it."""
    w = x.shape[1]
    oh, ow = y.shape
    for p in range(oh):
        i0 = p * sh
        for q in range(ow):
            j0 = q * sw
            best = x[i0, j0]
            arg = i0 * w + j0
            for i in range(i0, i0 + kh):
                for j in range(j0, j0 + kw):
                    v = x[i, j]
                    if v > best or (v != v and best == best):
                        arg = i * w + j
                        best = v
            y[p, q] = best
            idx[p, q] = arg


@njit(inline="always", **FAST)
def _maxpool_plane(x, kh, kw, sh, sw, y, idx):
    """One (H, W) plane. Branch-free selects: on real activations `v > best` is a coin
    toss, and mispredicted branches cost more than the comparisons (measured 1.1 -> 0.8 ms)."""
    w = x.shape[1]
    oh, ow = y.shape
    for p in range(oh):
        i0 = p * sh
        for q in range(ow):
            j0 = q * sw
            best = x[i0, j0]
            arg = i0 * w + j0
            for i in range(i0, i0 + kh):
                for j in range(j0, j0 + kw):
                    v = x[i, j]
                    gt = v > best
                    arg = i * w + j if gt else arg
                    best = v if gt else best
            y[p, q] = best
            idx[p, q] = arg


@njit(inline="always", **FAST)
def _maxpool2x2_row(top, bottom, base, w, y, idx):
    """One output row of a 2x2, stride-2 pool from its two input rows, the window
    unrolled: the same selects in the same order as `_maxpool_plane` (first maximum
    wins), no inner loops with data-dependent bounds. Flat indices count from `base`
    (the top row's start in the plane)."""
    for q in range(y.shape[0]):
        a = top[2 * q]
        b = top[2 * q + 1]
        c = bottom[2 * q]
        d = bottom[2 * q + 1]
        best = a
        arg = 0
        gt = b > best
        arg = 1 if gt else arg
        best = b if gt else best
        gt = c > best
        arg = w if gt else arg
        best = c if gt else best
        gt = d > best
        arg = w + 1 if gt else arg
        best = d if gt else best
        y[q] = best
        idx[q] = base + 2 * q + arg


def maxpool_forward(x, kh, kw, sh, sw, y, idx):
    """y[b, c, p, q] = max of the window; idx keeps the argmax as a flat index into the
    (H, W) plane (the first maximum on ties, the first NaN if there is one) for the
    backward pass. The common 2x2 stride-2 case on planes of even size is its own kernel,
    so a run compiles only the kernels it uses. Planes holding a NaN or an infinity (for
    the 2x2 kernel, every plane of such a shard) are left to `_nonfinite_planes`, compiled
    only when one turns up (0.2-1 s less to compile on a first run, where data is finite)."""
    planes = x.shape[0] * x.shape[1]
    bad = np.zeros(planes, np.uint8)
    if (kh, kw, sh, sw) == (2, 2, 2, 2) and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0:
        sharded(_maxpool2x2_forward, planes, x, y, idx, bad, work=x.size)
    else:
        sharded(_maxpool_forward, planes, x, kh, kw, sh, sw, y, idx, bad, work=x.size)
    if bad.any():
        _nonfinite_planes(x, kh, kw, sh, sw, y, idx, np.flatnonzero(bad))


@njit(**SHARD)
def _maxpool2x2_forward(x, y, idx, bad, lo, hi):
    """Planes of even height and width laid end to end: pairs of input rows and output rows
    run on across planes, so a shard is one loop over output rows (no call and no view per
    plane: 8x8 planes spent most of their time there). A shard holding a NaN or an
    infinity is left whole to `_nonfinite_planes`, which gives finite planes the same."""
    nb, nc, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    if not _all_finite(x.reshape(nb * nc, h * w)[lo:hi]):
        for bc in range(lo, hi):
            bad[bc] = 1
        return
    pairs = x.reshape(nb * nc * oh, 2, w)
    ys = y.reshape(nb * nc * oh, ow)
    ids = idx.reshape(nb * nc * oh, ow)
    p = 0  # the output row's place in its plane
    for r in range(lo * oh, hi * oh):
        _maxpool2x2_row(pairs[r, 0], pairs[r, 1], 2 * p * w, w, ys[r], ids[r])
        p = 0 if p == oh - 1 else p + 1


@njit(**SHARD)
def _maxpool_forward(x, kh, kw, sh, sw, y, idx, bad, lo, hi):
    nc = x.shape[1]
    for bc in range(lo, hi):
        b = bc // nc
        c = bc % nc
        if _all_finite(x[b, c]):
            _maxpool_plane(x[b, c], kh, kw, sh, sw, y[b, c], idx[b, c])
        else:
            bad[bc] = 1


@njit(**FAST)
def _nonfinite_planes(x, kh, kw, sh, sw, y, idx, planes):
    nc = x.shape[1]
    for bc in planes:
        b = bc // nc
        c = bc % nc
        _maxpool_plane_nonfinite(x[b, c], kh, kw, sh, sw, y[b, c], idx[b, c])


def maxpool_backward(dy, idx, dx):
    """dx = 0, then each output's gradient goes to its window's argmax. (A 2x2 variant
    writing each input once without the zeroing pass measured 2.5x slower: stores at
    stride 2 do not vectorise.)"""
    sharded(_maxpool_backward, dx.shape[0] * dx.shape[1], dy, idx, dx, work=dx.size)


@njit(**SHARD)
def _maxpool_backward(dy, idx, dx, lo, hi):
    hw, ohw = dx.shape[2] * dx.shape[3], dy.shape[2] * dy.shape[3]
    # Per plane, flat views indexed by loop counters from 0 (an offset index, which might
    # be negative as far as Numba knows, costs a check per element and stopped the zeroing
    # loop from vectorising), zeroed just before its gradients land, while it is in cache;
    # the argmax is a flat index into the plane, so no division per output.
    dxs, dys, ids = dx.reshape(-1), dy.reshape(-1), idx.reshape(-1)
    zero = dx.dtype.type(0)
    for bc in range(lo, hi):
        plane = dxs[bc * hw : (bc + 1) * hw]
        grad = dys[bc * ohw : (bc + 1) * ohw]
        arg = ids[bc * ohw : (bc + 1) * ohw]
        for t in range(hw):
            plane[t] = zero
        for j in range(ohw):
            plane[arg[j]] += grad[j]


def avgpool_forward(x, kh, kw, sh, sw, y):
    """y[b, c, p, q] = mean of the window x[b, c, p*sh : p*sh + kh, q*sw : q*sw + kw]."""
    sharded(_avgpool_forward, x.shape[0] * x.shape[1], x, kh, kw, sh, sw, y, work=x.size)


@njit(**SHARD)
def _avgpool_forward(x, kh, kw, sh, sw, y, lo, hi):
    nb, nc, h, w = x.shape
    _, _, oh, ow = y.shape
    scale = 1.0 / (kh * kw)
    for bc in range(lo, hi):
        b = bc // nc
        c = bc % nc
        for p in range(oh):
            for q in range(ow):
                s = 0.0
                for i in range(p * sh, p * sh + kh):
                    for j in range(q * sw, q * sw + kw):
                        s += x[b, c, i, j]
                y[b, c, p, q] = s * scale


def avgpool_backward(dy, kh, kw, sh, sw, dx):
    """dx = 0, then each output's gradient spread evenly over its window."""
    sharded(_avgpool_backward, dx.shape[0] * dx.shape[1], dy, kh, kw, sh, sw, dx, work=dx.size)


@njit(**SHARD)
def _avgpool_backward(dy, kh, kw, sh, sw, dx, lo, hi):
    nb, nc, h, w = dx.shape
    _, _, oh, ow = dy.shape
    scale = 1.0 / (kh * kw)
    for bc in range(lo, hi):
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
