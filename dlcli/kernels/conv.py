"""Convolution arithmetic: parallel im2col/col2im in Numba around one BLAS GEMM per batch.

Layout: activations are NCHW (conv1d is conv2d with H = 1). The column matrix is
(C*KH*KW, B*OH*OW), so the forward product is W (Cout, C*KH*KW) @ cols, giving the output
channel-major, "CNHW": (Cout, B*OH*OW). A parallel pass moves it to NCHW while adding the
bias (and applying a fused ReLU); the backward pass does the reverse move, fused with the
ReLU mask and the bias gradient. The products themselves are `matmul`, `matmul_tn`,
`matmul_nt` from kernels.dense (non-parallel njit functions that reach BLAS); parallel
kernels are never called from jitted code, the layer calls them one after the other.

Index convention: input row ih = oh * stride_h - pad_top + kh * dilation_h (and the same for
columns); positions outside the input read zero (padding after the input is implicit).
"""

import numpy as np
from numba import njit, prange

from . import FAST


@njit(**FAST)
def _valid_range(n_out, n_in, stride, offset):
    """[lo, hi) of output indices o with 0 <= o * stride + offset < n_in."""
    lo = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    hi = 0
    if n_in - offset > 0:
        hi = (n_in - offset + stride - 1) // stride
    if hi > n_out:
        hi = n_out
    if lo > hi:
        lo = hi
    return lo, hi


@njit(parallel=True, **FAST)
def im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols):
    """cols[(c*KH + i)*KW + j, b*OH*OW + p*OW + q] = x[b, c, p*sh - ph + i*dh, q*sw - pw + j*dw].

    Parallel over (row, block of the batch): each task writes one contiguous stretch of a
    row, and reads from the (small, cache-resident) input."""
    nb, nc, h, w = x.shape
    ohw = oh * ow
    ncols = cols.shape[1]
    nrows = nc * kh * kw
    nblk = min(nb, 4)
    xf = x.reshape(-1)
    cf = cols.reshape(-1)
    for task in prange(nrows * nblk):
        row = task // nblk
        blk = task % nblk
        c = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        ih0 = i * dh - ph
        iw0 = j * dw - pw
        p_lo, p_hi = _valid_range(oh, h, sh, ih0)
        q_lo, q_hi = _valid_range(ow, w, sw, iw0)
        for b in range(blk * nb // nblk, (blk + 1) * nb // nblk):
            xbase = (b * nc + c) * h * w
            rbase = row * ncols + b * ohw
            for p in range(oh):
                o = rbase + p * ow
                if p < p_lo or p >= p_hi:
                    for q in range(ow):
                        cf[o + q] = 0
                    continue
                src = xbase + (p * sh + ih0) * w + iw0
                for q in range(q_lo):
                    cf[o + q] = 0
                if sw == 1:
                    for q in range(q_lo, q_hi):
                        cf[o + q] = xf[src + q]
                else:
                    for q in range(q_lo, q_hi):
                        cf[o + q] = xf[src + q * sw]
                for q in range(q_hi, ow):
                    cf[o + q] = 0


@njit(parallel=True, **FAST)
def col2im(dcols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, dx):
    """The adjoint of im2col: dx = 0, then dx[b, c, ih, iw] += dcols[row, col] over all windows.

    Parallel over (channel, block of the batch): a task owns dx[block, c], so no two tasks
    add into the same element."""
    nb, nc, h, w = dx.shape
    ohw = oh * ow
    ncols = dcols.shape[1]
    nblk = min(nb, 8)
    xf = dx.reshape(-1)
    cf = dcols.reshape(-1)
    for task in prange(nc * nblk):
        c = task // nblk
        blk = task % nblk
        b0, b1 = blk * nb // nblk, (blk + 1) * nb // nblk
        for b in range(b0, b1):
            xbase = (b * nc + c) * h * w
            for k in range(xbase, xbase + h * w):
                xf[k] = 0
        for i in range(kh):
            ih0 = i * dh - ph
            p_lo, p_hi = _valid_range(oh, h, sh, ih0)
            for j in range(kw):
                iw0 = j * dw - pw
                q_lo, q_hi = _valid_range(ow, w, sw, iw0)
                row = (c * kh + i) * kw + j
                for b in range(b0, b1):
                    xbase = (b * nc + c) * h * w
                    rbase = row * ncols + b * ohw
                    for p in range(p_lo, p_hi):
                        o = rbase + p * ow
                        dst = xbase + (p * sh + ih0) * w + iw0
                        if sw == 1:
                            for q in range(q_lo, q_hi):
                                xf[dst + q] += cf[o + q]
                        else:
                            for q in range(q_lo, q_hi):
                                xf[dst + q * sw] += cf[o + q]


@njit(parallel=True, **FAST)
def conv_output(ycn, bias, relu, out):
    """out[b, co, p] = ycn[co, b*P + p] + bias[co], then max(., 0) when relu: CNHW -> NCHW.
    out is (B, Cout, P) (the output viewed with its spatial axes flattened)."""
    nb, nco, npos = out.shape
    for bc in prange(nb * nco):
        b = bc // nco
        co = bc % nco
        bv = bias[co]
        o = b * npos
        if relu:
            for p in range(npos):
                v = ycn[co, o + p] + bv
                out[b, co, p] = v if v > 0 else 0
        else:
            for p in range(npos):
                out[b, co, p] = ycn[co, o + p] + bv


@njit(parallel=True, **FAST)
def conv_grad_output(dy, y, relu, dycn, dbias):
    """dycn[co, b*P + p] = dy[b, co, p] * (y[b, co, p] > 0 if relu else 1): NCHW -> CNHW,
    and dbias[co] = the sum of those over the batch and positions. dy, y are (B, Cout, P)."""
    nb, nco, npos = dy.shape
    for co in prange(nco):
        s = 0.0
        for b in range(nb):
            o = b * npos
            if relu:
                for p in range(npos):
                    v = dy[b, co, p] if y[b, co, p] > 0 else 0
                    dycn[co, o + p] = v
                    s += v
            else:
                for p in range(npos):
                    v = dy[b, co, p]
                    dycn[co, o + p] = v
                    s += v
        dbias[co] = s
