"""Recurrent cells (rnn, lstm, gru): forward and backward through time.

Layout: everything is time-major inside the kernels, (T, B, ...), so the state at one
step is a contiguous (B, H) matrix. The layer does the big products around the time
loop with BLAS on all cores:

- forward: `xp = x @ W_ih` for all T*B rows at once (one GEMM), then per step only
  `hh = h_{t-1} @ W_hh` and one fused gate pass (bias, all nonlinearities, cell update);
- backward: per step one fused pass that turns dL/dh_t into the gate pre-activation
  gradients `da_t` (stored for all steps), then `dh_{t-1} = da_t @ W_hh^T`; after the sweep
  the weight gradients are two GEMMs over all T*B rows and dx is one more.

The time loop is the sequential part. Batch rows are independent through time, so the
layer cuts the batch into one shard per core and runs each shard's whole time loop in
its own thread (`*_seq_*`, nogil), with the recurrent product in `gemm_rows_nn`: no
thread hand-off per step, no BLAS call per step.

History (measured on this 2-core machine, 2026-11, batch 32, LSTM 128 units, T=64):
- per-step parallel gate kernels driven from Python paid a call and a thread hand-off
  per step; a serial whole-sequence kernel with np.dot beat them below batch 64;
- sharding that serial kernel over `prange` with single-threaded BLAS was slower: two
  OpenBLAS calls at once from two threads ran at 0.83x of one call alone (they contend),
  and OpenBLAS repacks W_hh on every small product (38-58 GFLOP/s on one core);
- shards with our own product scale 1.92x on 2 cores; the LSTM layer's time loop went
  from 5.3 ms (forward) to about 3 ms;
- more shards than cores, taken from a queue (so a core slowed by another process does
  less): no gain with a CPU hog beside the benchmark (1,844 vs 1,868 samples/s, both
  shards slow alike under the scheduler) and 1-3% slower on a quiet machine; not kept.

tanh and the logistic function use `_tanh`, a rational approximation (our own fit,
|error| < 4e-7) that LLVM can vectorise, unlike libm's tanh/exp; the logistic
is 0.5 + 0.5 tanh(x/2). Backward uses the stored activations, so it matches the forward
exactly as the chain rule needs (the gradient checks confirm it in float64).

Gate orders (columns of W_ih, W_hh and bias, in blocks of H):
  lstm: i, f, g, o    gru: r, z, n    rnn: one block.
"""

import numpy as np
from numba import njit

from . import FAST, FAST_FLAGS, SHARD  # whole-sequence kernels run in shard threads
from .simd import VECTOR_BYTES, lanes, row_groups, tile_4x1, tile_4x3, tile_6x1, tile_6x2

# Numba's cache checks only the file of a cached function, so the kernels here would keep
# old copies of simd.py's tiles after simd.py changes. This is simd.py's hash: a test fails
# until it is updated here, and updating it rewrites this file, which recompiles them.
SIMD_SOURCE = "40cfb9f548f229e9"

# ---------------------------------------------------------------- nonlinearities


# Coefficients of tanh(x) ~ x * P(x^2) / Q(x^2) on [-9, 9]: a weighted least-squares rational
# fit made for dlcli (max relative error 2.1e-8 with these float64 values; ~3e-7 absolute
# once rounded to float32). They are float32 constants on purpose: Numba types a Python
# float as float64, which would make the float32 kernels compute in float64, half as many
# lanes per vector instruction. float64 inputs still compute in float64. Every kernel here
# uses FAST: error_model="numpy" (with Numba's default, "python", a float division carries
# a ZeroDivisionError check that stops LLVM from vectorising the loop: measured 10x slower)
# and the fast-math flags that keep NaN and Inf (see kernels/__init__.py).
_P0, _P1, _P2, _P3 = (
    np.float32(0.9999999973184098),
    np.float32(0.1309073509190021),
    np.float32(0.0031114640765683623),
    np.float32(1.123282316882116e-05),
)
_P4, _P5, _P6 = (
    np.float32(-2.0544165387458564e-08),
    np.float32(5.431962247112973e-11),
    np.float32(-8.885725876705905e-14),
)
_Q1, _Q2, _Q3 = np.float32(0.464240640838599), np.float32(0.02452508616598348), np.float32(0.00025570758472700746)
_ZERO, _ONE, _HALF, _CLAMP = np.float32(0.0), np.float32(1.0), np.float32(0.5), np.float32(9.0)


@njit(**FAST)
def _tanh(x):
    """tanh(x) as x * P(x^2) / Q(x^2), x clamped to [-9, 9] (tanh(9) = 1 - 3e-8), the
    result to [-1, 1]. min/max (vminps/vmaxps) rather than compare-and-select: tanh 20%
    faster; a NaN still comes out NaN."""
    x = min(max(x, -_CLAMP), _CLAMP)
    s = x * x
    p = (((((_P6 * s + _P5) * s + _P4) * s + _P3) * s + _P2) * s + _P1) * s + _P0
    q = ((_Q3 * s + _Q2) * s + _Q1) * s + _ONE
    return min(max(x * p / q, -_ONE), _ONE)


@njit(**FAST)
def _sigmoid(x):
    return _HALF + _HALF * _tanh(_HALF * x)


@njit(**FAST)
def tanh_approx(x, out):
    """out = tanh(x) through `_tanh`, flat arrays (for tests and references)."""
    for i in range(x.size):
        out[i] = _tanh(x[i])


# ---------------------------------------------------------------- row helpers
# One batch row of one time step, called by the whole-sequence kernels; plain njit
# functions, inlined by LLVM.


@njit(**FAST)
def _rnn_row_fwd(xp, hh, b, h, relu):
    for j in range(h.size):
        a = xp[j] + hh[j] + b[j]
        if relu:
            h[j] = _ZERO if a <= 0 else a  # NaN passes through
        else:
            h[j] = _tanh(a)


@njit(**FAST)
def _rnn_row_bwd(dh, h, da, relu):
    """da = dh * act'(a), from the stored output h."""
    for j in range(h.size):
        if relu:
            da[j] = _ZERO if h[j] <= 0 else dh[j]
        else:
            da[j] = dh[j] * (_ONE - h[j] * h[j])


@njit(**FAST)
def _lstm_row_fwd(xp, hh, b, c_prev, gates, c, h, tc):
    """Two loops, the four gates and then the cell: in one loop the five rational
    functions' constants and temporaries outgrew the 16 vector registers and the pass ran
    at 1.13-1.25 ns a gate value, in two at 0.90-1.00 (one core, 64 rows of 128 units)."""
    n = c.size
    for j in range(n):
        gates[j] = _sigmoid(xp[j] + hh[j] + b[j])
        gates[n + j] = _sigmoid(xp[n + j] + hh[n + j] + b[n + j])
        gates[2 * n + j] = _tanh(xp[2 * n + j] + hh[2 * n + j] + b[2 * n + j])
        gates[3 * n + j] = _sigmoid(xp[3 * n + j] + hh[3 * n + j] + b[3 * n + j])
    for j in range(n):
        cj = gates[n + j] * c_prev[j] + gates[j] * gates[2 * n + j]
        t = _tanh(cj)
        c[j] = cj
        tc[j] = t
        h[j] = gates[3 * n + j] * t


@njit(**FAST)
def _lstm_row_bwd(dh, dc, gates, c_prev, tc):
    """In: dh (total dL/dh_t), dc (dL/dc_t from step t+1), the stored gates. Out: gates is
    overwritten with the pre-activation gradients da (i, f, g, o); dc becomes dL/dc_{t-1}."""
    n = dc.size
    for j in range(n):
        ig, fg, gg, og = gates[j], gates[n + j], gates[2 * n + j], gates[3 * n + j]
        t = tc[j]
        d = dh[j]
        dcj = dc[j] + d * og * (_ONE - t * t)
        gates[j] = dcj * gg * ig * (_ONE - ig)
        gates[n + j] = dcj * c_prev[j] * fg * (_ONE - fg)
        gates[2 * n + j] = dcj * ig * (_ONE - gg * gg)
        gates[3 * n + j] = d * t * og * (_ONE - og)
        dc[j] = dcj * fg


@njit(**FAST)
def _gru_row_fwd(xp, hh, b, bhn, h_prev, gates, hn, h):
    """Two loops, as the LSTM's: the r and z gates (and hn), then the candidate and h. The
    same bits as one loop, 1.08x faster over a sequence (15 paired rounds, 2 shards)."""
    n = h.size
    for j in range(n):
        gates[j] = _sigmoid(xp[j] + hh[j] + b[j])
        gates[n + j] = _sigmoid(xp[n + j] + hh[n + j] + b[n + j])
        hn[j] = hh[2 * n + j] + bhn[j]
    for j in range(n):
        nn = _tanh(xp[2 * n + j] + b[2 * n + j] + gates[j] * hn[j])
        z = gates[n + j]
        gates[2 * n + j] = nn
        h[j] = (_ONE - z) * nn + z * h_prev[j]


@njit(**FAST)
def _gru_row_bwd(dh, gates, hn, h_prev, dah, dh_prev):
    """In: dh (total dL/dh_t), stored gates r, z, n and hn = W_hn h + b_hn. Out: gates is
    overwritten with the input-side gradients (da_r, da_z, da_n); dah with the
    recurrent-side ones (da_r, da_z, da_n * r); dh_prev with the direct term dh * z."""
    n = dh.size
    for j in range(n):
        r, z, nn = gates[j], gates[n + j], gates[2 * n + j]
        d = dh[j]
        dan = d * (_ONE - z) * (_ONE - nn * nn)
        dar = dan * hn[j] * r * (_ONE - r)
        daz = d * (h_prev[j] - nn) * z * (_ONE - z)
        gates[j] = dar
        gates[n + j] = daz
        gates[2 * n + j] = dan
        dah[j] = dar
        dah[n + j] = daz
        dah[2 * n + j] = dan * r
        dh_prev[j] = d * z


@njit(cache=True, error_model="numpy")
def _rows_sq(v, lo, hi):
    """Sum of squares of rows lo..hi of a 2-D array."""
    s = 0.0
    for i in range(lo, hi):
        for j in range(v.shape[1]):
            s += v[i, j] * v[i, j]
    return s


@njit(cache=True, error_model="numpy")
def _incoming_grad(dh, dh_out, t, T, seq, sq, record, lo, hi):
    """dh (holding what came back from step t+1) += dL/dh_t from the layer's output (every
    step's, or the last one's only), so dh is the total dL/dh_t; sq[t] = its squared norm
    over rows lo..hi when record."""
    src = 0 if not seq else t
    if seq or t == T - 1:
        for i in range(lo, hi):
            for j in range(dh.shape[1]):
                dh[i, j] += dh_out[src, i, j]
    if record:
        sq[t] = _rows_sq(dh, lo, hi)


# ---------------------------------------------------------------- recurrent product
# The per-step product is small (batch x 128 by 128 x 512 in the benchmark) and runs 64
# times per pass with the same weights. OpenBLAS packs the whole weight matrix on every
# call, which caps it at 38-58 GFLOP/s on one core here. Dot products of rows of h with
# rows of W^T in 4x2 tiles (8 scalar accumulators, each ending in a horizontal sum)
# reached 60 (K = 128) to 79 (K = 512). The vector tiles of kernels/simd.py keep a 6 x 16
# block of the output in registers and read W from panels packed once per pass: 95-97
# (measured 2026-11, one core).


# The kernels below keep each output's sum in the tiles' order (k = 0, 1, ..., one fused
# multiply-add each): without 'reassoc', LLVM may not reorder it.
IN_ORDER = dict(SHARD, fastmath=set(FAST_FLAGS - {"reassoc"}))


@njit(**IN_ORDER)
def _edge_columns(a, b, out, r0, r1, j0):
    """out[r0:r1, j0:] = a[r0:r1] @ b[:, j0:]: the last columns, fewer than a vector."""
    K, N = b.shape
    for r in range(r0, r1):
        for j in range(j0, N):
            s = out.dtype.type(0)
            for k in range(K):
                s += a[r, k] * b[k, j]
            out[r, j] = s


@njit(**IN_ORDER)
def _row_nn(a, b, out):
    """out = a @ b for one row a (K,) and b (K, N): four rows of b scaled and added to out
    per pass, vectorised along N, each output still summed in k order. A row alone is
    bound by reading b, which this reads as stored: 2.7 us for 128 x 512, against 4.2 in
    a one-row tile (which walks b a column block at a time) and 4.3 as 512 dot products."""
    K, N = b.shape
    k4 = K - K % 4
    out[:] = 0
    for k in range(0, k4, 4):
        a0, a1, a2, a3 = a[k], a[k + 1], a[k + 2], a[k + 3]
        b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
        for j in range(N):
            t = out[j]
            t += a0 * b0[j]
            t += a1 * b1[j]
            t += a2 * b2[j]
            t += a3 * b3[j]
            out[j] = t
    for k in range(k4, K):
        ak, bk = a[k], b[k]
        for j in range(N):
            out[j] += ak * bk[j]


TILE_ROWS = 4  # the fewest rows a tile takes: shards with fewer never read the panels


def panel_shape(b):
    """The shape of `pack_panels(b)`: (N // lanes, K, lanes)."""
    n_lanes = VECTOR_BYTES // b.itemsize
    return (b.shape[1] // n_lanes, b.shape[0], n_lanes)


@njit(**FAST)
def pack_panels(b, panels):
    """panels[p, k, l] = b[k, p * lanes + l]: b (K, N) cut into column panels one vector
    wide, each stored k after k, so a tile reads each of its vectors as one forward
    stream. Reading b as stored, a tile walks it down a column block (a 2 KB stride for
    N = 512): 78-82 GFLOP/s, against 96-100 from panels; packing costs 12-18 us per pass
    of 64 steps (measured 2026-11, one core). Columns past the last whole panel stay in b."""
    P, K, L = panels.shape
    for p in range(P):
        for k in range(K):
            for l in range(L):
                panels[p, k, l] = b[k, p * L + l]


@njit(**SHARD)
def gemm_rows_nn(a, b, panels, out, lo, hi):
    """out[lo:hi] = a[lo:hi] @ b, all C-contiguous; panels = `pack_panels(b)` (any empty
    array of that type when hi - lo < TILE_ROWS: tiles are then never used).

    Rows go six at a time through `tile_6x2` (16 float32 columns per tile), then four
    through `tile_4x3` (24 columns; `simd.row_groups` says how many of each), then one at
    a time through `_row_nn`; columns past the last whole tile take one-vector tiles, then
    a plain sum. Every part
    sums each output alone, k in order, one fused multiply-add a step, so a row gets the
    same bits however it is grouped: results do not depend on where the shards cut the
    batch, nor on the thread count. A row alone is not padded to a tile (padding made a
    batch-1 LSTM step do four times its work)."""
    N = b.shape[1]
    v = lanes(b)
    sixes, fours = row_groups(hi - lo)
    i = lo
    for _ in range(sixes):
        j = 0
        while j + 2 * v <= N:
            tile_6x2(a, panels, out, i, j)
            j += 2 * v
        while j + v <= N:
            tile_6x1(a, panels, out, i, j)
            j += v
        _edge_columns(a, b, out, i, i + 6, j)
        i += 6
    for _ in range(fours):
        j = 0
        while j + 3 * v <= N:
            tile_4x3(a, panels, out, i, j)
            j += 3 * v
        while j + v <= N:
            tile_4x1(a, panels, out, i, j)
            j += v
        _edge_columns(a, b, out, i, i + 4, j)
        i += 4
    for r in range(i, hi):
        _row_nn(a[r], b, out[r])


@njit(**FAST)
def transpose(a, out):
    """out = a.T for 2-D C-contiguous arrays, in 8x8 blocks whose fixed trip counts LLVM
    unrolls into register shuffles. The backward pass needs W_hh transposed on every call:
    NumPy's strided copy took 145 us for 128 x 512, this 22 us (measured 2026-11)."""
    n, m = a.shape
    n8, m8 = n - n % 8, m - m % 8
    for i0 in range(0, n8, 8):
        for j0 in range(0, m8, 8):
            for j in range(8):
                for i in range(8):
                    out[j0 + j, i0 + i] = a[i0 + i, j0 + j]
    for i in range(n):
        for j in range(m8 if i < n8 else 0, m):
            out[j, i] = a[i, j]


# ---------------------------------------------------------------- whole-sequence kernels
# The time loop of one shard of the batch (rows lo..hi) in one jitted call that releases
# the GIL: the layer runs one shard per core in threads, with no hand-off between them
# until the sequence is done (dlcli/runtime.py: run_shards). Buffers come from the
# caller; nothing is allocated per step. h (and c) have T+1 entries: index 0 is the
# initial (zero) state, index t+1 is step t. Forward multiplies by W_hh (H, G*H);
# backward's dh_{t-1} = da_t @ W_hh^T by w_hh_t, W_hh transposed (G*H, H), contiguous;
# w_panels is `pack_panels` of the matrix the pass multiplies by.
# sq[t] receives this shard's share of |dL/dh_t|^2 when record.


@njit(**SHARD)
def rnn_seq_forward(xp, w_hh, w_panels, b, h, hh, relu, lo, hi):
    for t in range(xp.shape[0]):
        gemm_rows_nn(h[t], w_hh, w_panels, hh, lo, hi)
        for i in range(lo, hi):
            _rnn_row_fwd(xp[t, i], hh[i], b, h[t + 1, i], relu)


@njit(**SHARD)
def rnn_seq_backward(dh_out, seq, w_hh_t, w_panels, h, da, dh, relu, sq, record, lo, hi):
    """da (T, B, H) receives the pre-activation gradients; dh (B, H) is scratch."""
    T = da.shape[0]
    dh[lo:hi] = 0.0
    for t in range(T - 1, -1, -1):
        _incoming_grad(dh, dh_out, t, T, seq, sq, record, lo, hi)
        for i in range(lo, hi):
            _rnn_row_bwd(dh[i], h[t + 1, i], da[t, i], relu)
        gemm_rows_nn(da[t], w_hh_t, w_panels, dh, lo, hi)


@njit(**SHARD)
def lstm_seq_forward(xp, w_hh, w_panels, b, h, c, gates, tc, hh, keep, lo, hi):
    """keep: gates and tc hold every step (T entries) and c every state (T+1), for backward;
    else gates and tc hold one step and c two states, used in turn (inference)."""
    for t in range(xp.shape[0]):
        s, c0, c1 = (t, t, t + 1) if keep else (0, t % 2, (t + 1) % 2)
        gemm_rows_nn(h[t], w_hh, w_panels, hh, lo, hi)
        for i in range(lo, hi):
            _lstm_row_fwd(xp[t, i], hh[i], b, c[c0, i], gates[s, i], c[c1, i], h[t + 1, i], tc[s, i])


@njit(**SHARD)
def lstm_seq_backward(dh_out, seq, w_hh_t, w_panels, c, gates, tc, dh, dc, sq, record, lo, hi):
    """gates (T, B, 4H) is overwritten with the pre-activation gradients."""
    T = gates.shape[0]
    dh[lo:hi] = 0.0
    dc[lo:hi] = 0.0
    for t in range(T - 1, -1, -1):
        _incoming_grad(dh, dh_out, t, T, seq, sq, record, lo, hi)
        for i in range(lo, hi):
            _lstm_row_bwd(dh[i], dc[i], gates[t, i], c[t, i], tc[t, i])
        gemm_rows_nn(gates[t], w_hh_t, w_panels, dh, lo, hi)


@njit(**SHARD)
def gru_seq_forward(xp, w_hh, w_panels, b, bhn, h, gates, hn, hh, keep, lo, hi):
    """keep: gates and hn hold every step (T entries), for backward; else one step's."""
    for t in range(xp.shape[0]):
        s = t if keep else 0
        gemm_rows_nn(h[t], w_hh, w_panels, hh, lo, hi)
        for i in range(lo, hi):
            _gru_row_fwd(xp[t, i], hh[i], b, bhn, h[t, i], gates[s, i], hn[s, i], h[t + 1, i])


@njit(**SHARD)
def gru_seq_backward(dh_out, seq, w_hh_t, w_panels, h, gates, hn, dah, dh, direct, sq, record, lo, hi):
    """gates (T, B, 3H) is overwritten with the input-side gradients, dah (T, B, 3H)
    receives the recurrent-side ones."""
    T = gates.shape[0]
    dh[lo:hi] = 0.0
    for t in range(T - 1, -1, -1):
        _incoming_grad(dh, dh_out, t, T, seq, sq, record, lo, hi)
        for i in range(lo, hi):
            _gru_row_bwd(dh[i], gates[t, i], hn[t, i], h[t, i], dah[t, i], direct[i])
        gemm_rows_nn(dah[t], w_hh_t, w_panels, dh, lo, hi)
        for i in range(lo, hi):
            for j in range(dh.shape[1]):
                dh[i, j] += direct[i, j]
