"""Convolution arithmetic: im2col/col2im in Numba around one BLAS GEMM per batch.

Layout: activations are NCHW (conv1d is conv2d with H = 1). Inside the layer the batch axis
goes last: the input is first transposed to "CHWN" (C, H, W, B), and the column matrix is
(C*KH*KW, OH*OW*B) with column (p*OW + q)*B + b. The forward product W (Cout, C*KH*KW) @ cols
gives the output as (Cout, OH*OW*B); a pass moves it to NCHW while adding the bias
(and applying a fused ReLU); the backward pass does the reverse move, fused with the ReLU mask
and the bias gradient. The products themselves are NumPy `matmul` calls made by the layer.

Threads: each pass is a serial nogil kernel over a range of tasks (`_name(..., lo, hi)`),
and its public wrapper cuts the tasks into one range per core (`runtime.sharded`). Tasks
write disjoint outputs, so the result is the same for any thread count. As Numba
`parallel=True` kernels these passes took 0.8-2.6 s each to compile from an empty cache,
against 0.3-0.9 s serial, and their OpenMP workers took turns with BLAS's threads.

Why batch-last: with stride 1, one (row, output row p) of the column matrix is a single
contiguous run of OW*B elements of the CHWN input (512 floats for 16->32 5x5 on 12x12,
batch 64), so im2col and col2im are long vectorised copies/adds instead of runs of OW = 8.
Measured for that layer: im2col 2.3 -> 0.5 ms, col2im 3.8 -> 0.7 ms; the two transposes it
costs are over the (small) input and output only.

Index convention: input row ih = oh * stride_h - pad_top + kh * dilation_h (and the same for
columns); positions outside the input read zero (padding after the input is implicit).
"""

import numpy as np
from numba import njit

from ..runtime import sharded
from . import FAST, SHARD
from .simd import (
    VECTOR_BYTES,
    WINDOW_ROWS,
    WINDOW_TAPS,
    lanes,
    row_groups,
    window_1x2,
    window_4x2,
    window_6x2,
    window_dots_4x3,
)

SIMD_SOURCE = "40cfb9f548f229e9"  # simd.py's hash, as in recurrent.py: a change there must rewrite this file

# Indexing note: Numba wraps negative indices, so an index computed as `o + k` costs a
# compare-and-select per element that stops LLVM vectorising (a 512-float copy loop measured
# 5.5x slower than the same loop over views). Hot loops here therefore index small views
# (one slice per task, not per element run) with plain loop counters starting at 0.

# Positions per block in the NCHW <-> batch-last transposes: 16 float32 = one cache line
# of each of the B output rows, while the block's (16*B)-element source stays in L1.
_TBLK = 16


@njit(inline="always", **FAST)
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


def to_batch_last(x, xt):
    """xt[c, t, b] = x[b, c, t]: (B, C, P) -> (C, P, B), in blocks of positions."""
    nblk = (x.shape[2] + _TBLK - 1) // _TBLK
    sharded(_to_batch_last, x.shape[1] * nblk, x, xt, work=x.size)


@njit(**SHARD)
def _to_batch_last(x, xt, lo, hi):
    nb, nc, npos = x.shape
    nblk = (npos + _TBLK - 1) // _TBLK
    for task in range(lo, hi):
        c = task // nblk
        t0 = (task % nblk) * _TBLK
        t1 = min(t0 + _TBLK, npos)
        src = x[:, c, t0:t1]
        dst = xt[c, t0:t1, :]
        for b in range(nb):  # contiguous reads; the strided writes stay in one L1-sized block
            for t in range(t1 - t0):
                dst[t, b] = src[b, t]


@njit(inline="always", **FAST)
def _copy(dst, src):
    for k in range(dst.shape[0]):
        dst[k] = src[k]


@njit(inline="always", **FAST)
def _add(dst, src):
    for k in range(dst.shape[0]):
        dst[k] += src[k]


def im2col(xt, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols):
    """cols[(c*KH + i)*KW + j, (p*OW + q)*B + b] = xt[c, p*sh - ph + i*dh, q*sw - pw + j*dw, b].

    xt is the batch-last input (C, H, W, B). Sharded over rows of cols; with sw == 1 each
    (row, output row p) is one contiguous copy of (valid q) * B elements, zeros around it.
    (At batch 1 the runs are short and the loop's overhead is the cost: 25 us for the
    reference CNN's second layer, 3,200 runs of 8 elements.)"""
    sharded(_im2col, cols.shape[0], xt, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols, work=cols.size)


@njit(**SHARD)
def _im2col(xt, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols, lo, hi):
    nc, h, w, nb = xt.shape
    run = ow * nb
    xf = xt.reshape(-1)
    for row in range(lo, hi):  # one row of cols per task: its (c, i, j) and valid q once
        c = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        iw0 = j * dw - pw
        q_lo, q_hi = _valid_range(ow, w, sw, iw0)
        crow = cols[row]  # one view per row; offsets into it per p (a view per p cost 25 %)
        for p in range(oh):
            d = p * run
            ih = p * sh - ph + i * dh
            if ih < 0 or ih >= h:
                crow[d : d + run] = 0
                continue
            if q_lo > 0:
                crow[d : d + q_lo * nb] = 0
            if q_hi < ow:
                crow[d + q_hi * nb : d + run] = 0
            src = (c * h + ih) * w * nb
            if sw == 1:
                s = src + (q_lo + iw0) * nb
                _copy(crow[d + q_lo * nb : d + q_hi * nb], xf[s : s + (q_hi - q_lo) * nb])
            else:
                for q in range(q_lo, q_hi):
                    s = src + (q * sw + iw0) * nb
                    _copy(crow[d + q * nb : d + (q + 1) * nb], xf[s : s + nb])


def col2im(dcols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, dxt, dx):
    """The adjoint of im2col, written out as NCHW: dxt (C, H, W, B) is scratch,
    dxt = 0, then dxt[c, ih, iw, b] += dcols[row, col] over all windows, then dx[b, c] = dxt[c, ..., b].

    Sharded over channels: a task owns dxt[c] (H*W*B elements, cache-resident) and dx[:, c];
    with sw == 1 each (row, p) adds one contiguous run."""
    sharded(_col2im, dxt.shape[0], dcols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, dxt, dx, work=dcols.size)


@njit(**SHARD)
def _col2im(dcols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, dxt, dx, lo, hi):
    nc, h, w, nb = dxt.shape
    run = ow * nb
    for c in range(lo, hi):
        plane = dxt[c].reshape(-1)
        plane[:] = 0
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                iw0 = j * dw - pw
                q_lo, q_hi = _valid_range(ow, w, sw, iw0)
                for p in range(oh):
                    ih = p * sh - ph + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    o = p * run
                    dst = ih * w * nb
                    if sw == 1:
                        d = dst + (q_lo + iw0) * nb
                        n = (q_hi - q_lo) * nb
                        _add(plane[d : d + n], dcols[row, o + q_lo * nb : o + q_hi * nb])
                    else:
                        for q in range(q_lo, q_hi):
                            d = dst + (q * sw + iw0) * nb
                            _add(plane[d : d + nb], dcols[row, o + q * nb : o + (q + 1) * nb])
        src = plane.reshape((h * w, nb))
        out = dx[:, c, :]
        for b in range(nb):
            for t in range(h * w):
                out[b, t] = src[t, b]


def conv_output(ycn, bias, relu, out):
    """out[b, co, p] = ycn[co, p*B + b] + bias[co], then max(., 0) when relu: batch-last -> NCHW.
    out is (B, Cout, P) (the output viewed with its spatial axes flattened)."""
    nblk = (out.shape[2] + _TBLK - 1) // _TBLK
    sharded(_conv_output, out.shape[1] * nblk, ycn, bias, relu, out, work=out.size)


@njit(**SHARD)
def _conv_output(ycn, bias, relu, out, lo, hi):
    nb, nco, npos = out.shape
    nblk = (npos + _TBLK - 1) // _TBLK
    for task in range(lo, hi):
        co = task // nblk
        p0 = (task % nblk) * _TBLK
        p1 = min(p0 + _TBLK, npos)
        bv = bias[co]
        src = ycn[co, p0 * nb : p1 * nb].reshape((p1 - p0, nb))
        dst = out[:, co, p0:p1]
        for b in range(nb):
            if relu:
                for p in range(p1 - p0):
                    v = src[p, b] + bv
                    dst[b, p] = 0 if v <= 0 else v  # NaN passes through
            else:
                for p in range(p1 - p0):
                    dst[b, p] = src[p, b] + bv


def conv_grad_output(dy, y, relu, dycn, dbias):
    """dycn[co, p*B + b] = dy[b, co, p] * (y[b, co, p] > 0 if relu else 1): NCHW -> batch-last,
    and dbias[co] = the sum of those over the batch and positions. dy, y are (B, Cout, P).

    Overwrites dy with the masked gradient: the mask is applied in a contiguous pass (which
    vectorises to selects; inside the transpose it compiled to mispredicted branches,
    measured 6 ms instead of 0.3 ms on 64x16x24x24), then the transpose is a plain copy."""
    sharded(_conv_grad_output, dy.shape[1], dy, y, relu, dycn, dbias, work=dy.size)


@njit(**SHARD)
def _conv_grad_output(dy, y, relu, dycn, dbias, lo, hi):
    nb, nco, npos = dy.shape
    zero = np.zeros(1, dy.dtype)[0]
    for co in range(lo, hi):
        s = zero
        for b in range(nb):
            gb = dy[b, co]  # contiguous views: the select vectorises
            ab = y[b, co]
            if relu:
                for p in range(npos):
                    v = zero if ab[p] <= 0 else gb[p]
                    gb[p] = v
                    s += v
            else:
                for p in range(npos):
                    s += gb[p]
        for p0 in range(0, npos, _TBLK):
            p1 = min(p0 + _TBLK, npos)
            src = dy[:, co, p0:p1]
            dst = dycn[co, p0 * nb : p1 * nb].reshape((p1 - p0, nb))
            for b in range(nb):
                for p in range(p1 - p0):
                    dst[p, b] = src[b, p]
        dbias[co] = s


# ---------------------------------------------------------------- direct convolution
# For stride 1 and few input values per output (C_in * KH * KW small, as a first layer on
# 1-channel images), im2col is all memory traffic: for the reference CNN's first layer
# (1 -> 16, 5x5 on 28x28, batch 64) it writes a 25-row column matrix 25x the input's size
# and the GEMM has only K = 25 to amortise it (17 GFLOP/s). The direct kernels below read
# the input where it is.
#
# "Wide" rows make each tap one contiguous loop: output position (p, q) is computed at
# t = p * Wp + q over the padded input width Wp, so tap (c, i, j) adds w * xpad[c, i*dh*Wp
# + j*dw + t] for every t in [0, OH*Wp), a run of OH*Wp elements that vectorises, and the
# q >= OW columns (computed, then dropped) cost Wp/OW - 1 extra (17% for 28 -> 24). The
# forward computes its outputs in vectors of L (8 float32) and may skip those columns: when
# whole vectors cover an output row with less to spare than the wide row (the reference
# CNN's second layer: OW = 8 in rows of Wp = 12, 1.5x), each output row takes its own
# vectors, read from its place in the wide rows (`output_vectors`). The padded planes
# (xpad, length Hp*Wp + (KW-1)*dw, zeros around the input and after it) come from the
# layer. Kernels run on one shard (lo..hi) in a thread and release the GIL.
#
# Tried and not kept (2026-11, reference CNN, paired runs): a 2x2 max pooling fused into
# direct_forward's output pass (argmax as wide offsets, the pooled gradient scattered
# straight into the wide rows) ran at 0.97-1.00x of the separate pooling layer. The
# second convolution (im2col + GEMM) cut into cache-sized sub-batches: 3.25 ms per 64
# samples as 1x64 and 2x32, 3.48 ms as 4x16.


@njit(inline="always", **SHARD)
def _tap_offsets(nc, kh, kw, dh, dw, wp, length):
    """Where each tap (c, i, j), in weight order, starts in a sample's flattened padded
    planes (C * length)."""
    offs = np.empty(nc * kh * kw, np.int64)
    k = 0
    for c in range(nc):
        for i in range(kh):
            for j in range(kw):
                offs[k] = c * length + i * dh * wp + j * dw
                k += 1
    return offs


# The padded planes have WIDE_TILE zeros past their end, for the last output vectors to read.
WIDE_TILE = 16


def output_vectors(oh, ow, wp, dtype):
    """(vecs, rs, width): the output vectors of a direct convolution, OH x OW outputs over
    input rows wp wide, and the rows they fill. Output (p, q) is row p * rs + q of a
    scratch `width` long, and vector v covers L of them (L = lanes) from input position
    vecs[v, 0] in the wide rows to scratch position vecs[v, 1]. When whole vectors cover a
    row with less to spare than the wide row (OW = 8 with wp = 12: 8 against 12), each
    output row is its own run of vectors (rs = OW rounded up to L); otherwise the wide rows
    are cut into vectors as they lie (rs = wp). An even number of vectors (the tiles take
    two), the last one repeated if need be: it computes the same values again."""
    n_lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    owv = -(-ow // n_lanes) * n_lanes
    if owv < wp:
        rs = owv
        starts = [(p * wp + q, p * rs + q) for p in range(oh) for q in range(0, owv, n_lanes)]
    else:
        rs = wp
        starts = [(t, t) for t in range(0, oh * wp, n_lanes)]
    if len(starts) % 2:
        starts.append(starts[-1])
    vecs = np.array(starts, np.int64)
    return vecs, rs, int(vecs[-1, 1]) + n_lanes


@njit(**SHARD)
def direct_forward(xpad, w, bias, dh, dw, wp, vecs, rs, width, relu, out, lo, hi):
    """out[b, co, p, q] = bias[co] + sum_{c,i,j} w[co, c, i, j] * xpad[b, c, (p + i*dh)*wp + q + j*dw],
    then max(., 0) when relu, for samples b in lo..hi. xpad is (B, C, L) with
    WIDE_TILE zeros past each plane; out (B, Co, OH, OW). A sample's outputs first go to a
    scratch (Co, width) of the call's own, output (p, q) at p * rs + q, filled by the
    vectors `vecs` (`output_vectors`): one scratch reused sample after sample stays in
    cache (one per sample in the batch took 38 MB for the first layer at batch 1024).

    The product of the weights (Co, taps) with windows of the input runs in vector
    register tiles (kernels/simd.py): 6 or 4 output channels by two vectors, each output
    summed over the taps in order. The reference CNN's first layer (batch 64, one core)
    took 0.82 ms with four taps at a time through a scalar accumulator row."""
    oh, ow = out.shape[2], out.shape[3]
    nco, nc, kh, kw = w.shape
    w2 = w.reshape(nco, nc * kh * kw)
    offs = _tap_offsets(nc, kh, kw, dh, dw, wp, xpad.shape[2])
    wb = np.empty((nco, width), out.dtype)
    for b in range(lo, hi):
        _window_outputs(xpad[b].reshape(-1), w2, offs, vecs, wb)
        for co in range(nco):
            bv = bias[co]
            for p in range(oh):
                row = wb[co, p * rs : p * rs + ow]
                dst = out[b, co, p]
                if relu:
                    for q in range(ow):
                        v = row[q] + bv
                        dst[q] = 0 if v <= 0 else v  # NaN passes through
                else:
                    for q in range(ow):
                        dst[q] = row[q] + bv


@njit(**SHARD)
def direct_forward_pooled(xpad, w, bias, dh, dw, wp, vecs, rs, width, relu, kh, kw, sh, sw, out, lo, hi):
    """direct_forward followed by max pooling (kh x kw windows, stride sh x sw) of its
    output: out (B, Co, PH, PW) is the pool's output, read off the scratch rows. The same
    values as the two passes: a bias added and a ReLU applied after the maximum give
    what they give before it, and a window holding a NaN gives NaN. For evaluation and
    prediction, where the pool keeps no argmax."""
    ph, pw = out.shape[2], out.shape[3]
    nco, nc, kh_w, kw_w = w.shape
    w2 = w.reshape(nco, nc * kh_w * kw_w)
    offs = _tap_offsets(nc, kh_w, kw_w, dh, dw, wp, xpad.shape[2])
    zero = out.dtype.type(0)
    wb = np.empty((nco, width), out.dtype)
    for b in range(lo, hi):
        _window_outputs(xpad[b].reshape(-1), w2, offs, vecs, wb)
        for co in range(nco):
            bv = bias[co]
            row = wb[co]
            dst = out[b, co]
            if kh == 2 and kw == 2 and sh == 2 and sw == 2:  # the common pool, unrolled: 12 -> 2 us
                for r in range(ph):
                    top = row[2 * r * rs : 2 * r * rs + 2 * pw]
                    bottom = row[(2 * r + 1) * rs : (2 * r + 1) * rs + 2 * pw]
                    for c in range(pw):
                        m = _max_nan(_max_nan(top[2 * c], top[2 * c + 1]), _max_nan(bottom[2 * c], bottom[2 * c + 1]))
                        v = m + bv
                        dst[r, c] = zero if relu and v <= zero else v  # NaN passes through
                continue
            for r in range(ph):
                for c in range(pw):
                    m = row[r * sh * rs + c * sw]
                    for i in range(kh):
                        base = (r * sh + i) * rs + c * sw
                        for j in range(kw):
                            m = _max_nan(m, row[base + j])
                    v = m + bv
                    dst[r, c] = zero if relu and v <= zero else v


@njit(**FAST)
def _max_nan(a, b):
    """The larger of a and b, NaN if either is NaN (as max pooling gives it), as selects."""
    return b if (b > a) | (b != b) else a


@njit(inline="always", **SHARD)
def _window_outputs(xb, w2, offs, vecs, wb):
    """wb (Co, width) = a sample's output vectors `vecs` without bias: the weights w2
    (Co, taps) times windows of its flattened padded planes xb, in tiles of 6 or 4
    channels by two vectors."""
    nco = w2.shape[0]
    sixes, fours = row_groups(nco)
    for v in range(0, vecs.shape[0], 2):
        i = 0
        for _ in range(sixes):
            window_6x2(w2, xb, offs, vecs, wb, i, v)
            i += 6
        for _ in range(fours):
            window_4x2(w2, xb, offs, vecs, wb, i, v)
            i += 4
        while i < nco:
            window_1x2(w2, xb, offs, vecs, wb, i, v)
            i += 1


WINDOW_CHUNK_BYTES = 16 << 10


def grad_weight_sums_shape(nco, ntaps, dtype):
    """The shape of direct_grad_weight's `acc`: (channels, taps) rounded up to whole
    tiles, one vector of partial sums each."""
    rows = -(-nco // WINDOW_ROWS) * WINDOW_ROWS
    taps = -(-ntaps // WINDOW_TAPS) * WINDOW_TAPS
    return rows, taps, VECTOR_BYTES // np.dtype(dtype).itemsize


@njit(**SHARD)
def direct_grad_weight(xpad, dy, y, relu, dh, dw, wp, acc, dwt, dbias, lo, hi):
    """dwt (Cout, C, KH, KW) and dbias for output channels in groups lo..hi of WINDOW_ROWS;
    when relu, dy is masked by y > 0 (the fused ReLU's backward). acc: scratch of
    `grad_weight_sums_shape`.

    Each channel's gradient goes to wide rows (`_wide_rows`), then vector tiles
    (simd.window_dots_4x3) add gradient times input window, 4 channels by 3 taps, lane by
    lane, over the samples in order; the lanes are summed in order at the end, so the
    result is the same for any number of shards. Samples go in chunks whose wide gradient
    (WINDOW_CHUNK_BYTES) stays in the core's first-level cache while every tap reads it.
    The reference CNN's first layer (batch 64, one core) took 1.16 ms as four taps' scalar
    dot products per gradient row."""
    nb, _, oh, ow = dy.shape
    nco, nc, kh, kw = dwt.shape
    v = lanes(acc)
    width = -(-(oh * wp) // v) * v
    ntaps = nc * kh * kw
    # Loops, not slice assignments, fill the scratch below: NumPy-style assignment made
    # Numba compile this kernel for 5 s instead of ~1.
    offs = np.zeros(acc.shape[1], np.int64)  # taps past the last: windows at 0, never read back
    taps = _tap_offsets(nc, kh, kw, dh, dw, wp, xpad.shape[2])
    for k in range(ntaps):
        offs[k] = taps[k]
    chunk = max(1, WINDOW_CHUNK_BYTES // (WINDOW_ROWS * width * dy.itemsize))
    g = np.zeros((min(chunk, nb), WINDOW_ROWS, width), dy.dtype)  # zeros past each wide row stay
    sums = np.zeros(WINDOW_ROWS, dy.dtype)
    flat_acc = acc.reshape(-1)
    group_size = WINDOW_ROWS * acc.shape[1] * acc.shape[2]
    for group in range(lo, hi):
        c0 = group * WINDOW_ROWS
        rows = min(WINDOW_ROWS, nco - c0)
        for t in range(group * group_size, (group + 1) * group_size):
            flat_acc[t] = 0
        for r in range(WINDOW_ROWS):
            sums[r] = 0
        for b in range(g.shape[0]):
            for r in range(rows, WINDOW_ROWS):
                for t in range(width):
                    g[b, r, t] = 0
        for b0 in range(0, nb, chunk):
            b1 = min(nb, b0 + chunk)
            gc = g[: b1 - b0]
            for b in range(b0, b1):
                for r in range(rows):
                    wide = gc[b - b0, r, : oh * wp].reshape(oh, wp)
                    sums[r] += _wide_rows(dy[b, c0 + r], y[b, c0 + r], relu, wide)
            xc = xpad[b0:b1]
            for j in range(0, acc.shape[1], WINDOW_TAPS):
                window_dots_4x3(gc, xc, offs, acc, c0, j)
        for r in range(rows):
            dbias[c0 + r] = sums[r]
            dwf = dwt[c0 + r].reshape(-1)
            for k in range(ntaps):
                s = acc[c0 + r, k, 0]
                for lane in range(1, v):
                    s += acc[c0 + r, k, lane]
                dwf[k] = s


@njit(inline="always", **FAST)
def _wide_rows(dy, y, relu, wide):
    """wide[p, q] = dy[p, q] (OH, OW), masked by y > 0 when relu, and zero for q >= OW;
    returns the sum. Indexed by the loop counters alone, so LLVM drops the negative-index
    checks and vectorises (an offset index p * wp + q took 4x as long)."""
    oh, ow = dy.shape
    wp = wide.shape[1]
    zero = dy.dtype.type(0)  # a literal 0 in the select made every value float64: 1.5x as slow
    s = zero
    for p in range(oh):
        for q in range(ow):
            v = dy[p, q]
            if relu:
                v = zero if y[p, q] <= zero else v
            wide[p, q] = v
            s += v
        for q in range(ow, wp):
            wide[p, q] = zero
    return s


@njit(**SHARD)
def direct_grad_input(dy, y, relu, w, dh, dw, wp, dxpad, lo, hi):
    """dxpad[b] = the adjoint of direct_forward for samples b in lo..hi (the padded planes;
    the layer crops them): every tap scatters w * g back over its run."""
    nco, nc, kh, kw = w.shape
    oh = dy.shape[2]
    run = oh * wp
    g = np.empty(run, dy.dtype)
    wide = g.reshape(oh, wp)
    for b in range(lo, hi):
        dxpad[b] = 0
        for co in range(nco):
            _wide_rows(dy[b, co], y[b, co], relu, wide)
            for c in range(nc):
                for i in range(kh):
                    for j in range(kw):
                        wv = w[co, c, i, j]
                        s = i * dh * wp + j * dw
                        dst = dxpad[b, c, s : s + run]
                        for t in range(run):
                            dst[t] += wv * g[t]
