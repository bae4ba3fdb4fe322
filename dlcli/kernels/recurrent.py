"""Recurrent cells (rnn, lstm, gru): forward and backward through time.

Layout: everything is time-major inside the kernels, (T, B, ...), so the state at one
step is a contiguous (B, H) matrix that BLAS takes directly. The layer does the big
products around the time loop:

- forward: `xp = x @ W_ih` for all T*B rows at once (one GEMM), then per step only
  `hh = h_{t-1} @ W_hh` and one fused gate pass (bias, all nonlinearities, cell update);
- backward: per step one fused pass that turns dL/dh_t into the gate pre-activation
  gradients `da_t` (stored for all steps), then `dh_{t-1} = da_t @ W_hh^T`; after the sweep
  the weight gradients are two GEMMs over all T*B rows and dx is one more.

Each cell comes in two shapes: a per-step gate kernel, `parallel=True` with `prange` over
the batch, driven from Python (`*_step_*`), and a whole-sequence kernel (`*_seq_*`) that
runs the time loop itself with `np.dot` (BLAS, multi-threaded) and the gate math serially,
which avoids a Python call and a thread hand-off per step. The layer picks one by batch
size (see dlcli/layers/recurrent.py). A parallel kernel is never called from another
jitted function (that would make it uncacheable).

Tried and dropped (2026-11): a batch-split whole-sequence kernel, `prange` over 2 batch
halves, each running the whole time loop with single-threaded BLAS (threadpoolctl around
the call) and its own gate math. It passed the reference tests but was slower on this
2-core machine, full training step at batch 32, in alternation with the serial kernels:
lstm 1131 vs 1914 samples/s, gru 1210 vs 2076 (quiet machine); two half-batch sequences
in parallel took 10.2 ms forward against 7.3 ms for one full-batch sequence on one thread.

tanh and the logistic function use `_tanh`, a rational approximation (our own fit,
|error| < 4e-7) that LLVM can vectorise, unlike libm's tanh/exp; the logistic
is 0.5 + 0.5 tanh(x/2). Backward uses the stored activations, so it matches the forward
exactly as the chain rule needs (the gradient checks confirm it in float64).

Gate orders (columns of W_ih, W_hh and bias, in blocks of H):
  lstm: i, f, g, o    gru: r, z, n    rnn: one block.
"""

import numpy as np
from numba import njit, prange


# ---------------------------------------------------------------- nonlinearities


# Coefficients of tanh(x) ~ x * P(x^2) / Q(x^2) on [-9, 9]: a weighted least-squares rational
# fit made for dlcli (max relative error 2.1e-8 with these float64 values; ~3e-7 absolute
# once rounded to float32). They are float32 constants on purpose: Numba types a Python
# float as float64, which would make the float32 kernels compute in float64, half as many
# lanes per vector instruction. float64 inputs still compute in float64. Every kernel here
# uses error_model="numpy": with Numba's default ("python") a float division carries a
# ZeroDivisionError check that stops LLVM from vectorising the loop (measured: 10x slower).
_P0, _P1, _P2, _P3 = np.float32(0.9999999973184098), np.float32(0.1309073509190021), np.float32(0.0031114640765683623), np.float32(1.123282316882116e-05)
_P4, _P5, _P6 = np.float32(-2.0544165387458564e-08), np.float32(5.431962247112973e-11), np.float32(-8.885725876705905e-14)
_Q1, _Q2, _Q3 = np.float32(0.464240640838599), np.float32(0.02452508616598348), np.float32(0.00025570758472700746)
_ZERO, _ONE, _HALF, _CLAMP = np.float32(0.0), np.float32(1.0), np.float32(0.5), np.float32(9.0)


@njit(cache=True, fastmath=True, error_model="numpy")
def _tanh(x):
    """tanh(x) as x * P(x^2) / Q(x^2), clamped to [-9, 9] (tanh(9) = 1 - 3e-8)."""
    x = _CLAMP if x > _CLAMP else x
    x = -_CLAMP if x < -_CLAMP else x
    s = x * x
    p = (((((_P6 * s + _P5) * s + _P4) * s + _P3) * s + _P2) * s + _P1) * s + _P0
    q = ((_Q3 * s + _Q2) * s + _Q1) * s + _ONE
    y = x * p / q
    y = _ONE if y > _ONE else y
    return -_ONE if y < -_ONE else y


@njit(cache=True, fastmath=True, error_model="numpy")
def _sigmoid(x):
    return _HALF + _HALF * _tanh(_HALF * x)


@njit(cache=True, fastmath=True, error_model="numpy")
def tanh_approx(x, out):
    """out = tanh(x) through `_tanh`, flat arrays (for tests and references)."""
    for i in range(x.size):
        out[i] = _tanh(x[i])


@njit(cache=True, error_model="numpy")
def matmul(a, b, out):
    """out = a @ b (BLAS)."""
    np.dot(a, b, out)


@njit(cache=True, error_model="numpy")
def matmul_tn(a, b, out):
    """out = a.T @ b (BLAS): weight gradients over all time steps."""
    np.dot(a.T, b, out)


@njit(cache=True, error_model="numpy")
def matmul_nt(a, b, out):
    """out = a @ b.T (BLAS): input gradients and dh_{t-1} = da_t @ W_hh^T."""
    np.dot(a, b.T, out)


# ---------------------------------------------------------------- row helpers (serial)
# One batch row of one time step. Called by the parallel step kernels (inside prange) and
# by the serial whole-sequence kernels; plain njit functions, inlined by LLVM.


@njit(cache=True, fastmath=True, error_model="numpy")
def _rnn_row_fwd(xp, hh, b, h, relu):
    for j in range(h.size):
        a = xp[j] + hh[j] + b[j]
        if relu:
            h[j] = a if a > 0 else _ZERO
        else:
            h[j] = _tanh(a)


@njit(cache=True, fastmath=True, error_model="numpy")
def _rnn_row_bwd(dh, h, da, relu):
    """da = dh * act'(a), from the stored output h."""
    for j in range(h.size):
        if relu:
            da[j] = dh[j] if h[j] > 0 else _ZERO
        else:
            da[j] = dh[j] * (_ONE - h[j] * h[j])


@njit(cache=True, fastmath=True, error_model="numpy")
def _lstm_row_fwd(xp, hh, b, c_prev, gates, c, h, tc):
    n = c.size
    for j in range(n):
        ig = _sigmoid(xp[j] + hh[j] + b[j])
        fg = _sigmoid(xp[n + j] + hh[n + j] + b[n + j])
        gg = _tanh(xp[2 * n + j] + hh[2 * n + j] + b[2 * n + j])
        og = _sigmoid(xp[3 * n + j] + hh[3 * n + j] + b[3 * n + j])
        cj = fg * c_prev[j] + ig * gg
        t = _tanh(cj)
        gates[j] = ig
        gates[n + j] = fg
        gates[2 * n + j] = gg
        gates[3 * n + j] = og
        c[j] = cj
        tc[j] = t
        h[j] = og * t


@njit(cache=True, fastmath=True, error_model="numpy")
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


@njit(cache=True, fastmath=True, error_model="numpy")
def _gru_row_fwd(xp, hh, b, bhn, h_prev, gates, hn, h):
    n = h.size
    for j in range(n):
        r = _sigmoid(xp[j] + hh[j] + b[j])
        z = _sigmoid(xp[n + j] + hh[n + j] + b[n + j])
        hnj = hh[2 * n + j] + bhn[j]
        nn = _tanh(xp[2 * n + j] + b[2 * n + j] + r * hnj)
        gates[j] = r
        gates[n + j] = z
        gates[2 * n + j] = nn
        hn[j] = hnj
        h[j] = (_ONE - z) * nn + z * h_prev[j]


@njit(cache=True, fastmath=True, error_model="numpy")
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
def _row_sq(v):
    s = 0.0
    for j in range(v.size):
        s += v[j] * v[j]
    return s


@njit(cache=True, error_model="numpy")
def _add_output_grad(dh, dh_out, t, T, seq):
    """dh += dL/dh_t coming from the layer's output (every step, or the last one only)."""
    if seq:
        dh += dh_out[t]
    elif t == T - 1:
        dh += dh_out[0]


# ---------------------------------------------------------------- parallel step kernels
# Per step, from Python: prange over the batch; the recurrent product is a separate BLAS call.


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def rnn_step_forward(xp, hh, b, h, relu):
    for i in prange(h.shape[0]):
        _rnn_row_fwd(xp[i], hh[i], b, h[i], relu)


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def rnn_step_backward(dh, h, da, relu, sq, record):
    """dh: total dL/dh_t (B, H); writes da (B, H); sq[i] = |dh[i]|^2 when record."""
    for i in prange(h.shape[0]):
        if record:
            sq[i] = _row_sq(dh[i])
        _rnn_row_bwd(dh[i], h[i], da[i], relu)


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def lstm_step_forward(xp, hh, b, c_prev, gates, c, h, tc):
    for i in prange(h.shape[0]):
        _lstm_row_fwd(xp[i], hh[i], b, c_prev[i], gates[i], c[i], h[i], tc[i])


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def lstm_step_backward(dh, dc, gates, c_prev, tc, sq, record):
    for i in prange(dh.shape[0]):
        if record:
            sq[i] = _row_sq(dh[i])
        _lstm_row_bwd(dh[i], dc[i], gates[i], c_prev[i], tc[i])


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def gru_step_forward(xp, hh, b, bhn, h_prev, gates, hn, h):
    for i in prange(h.shape[0]):
        _gru_row_fwd(xp[i], hh[i], b, bhn, h_prev[i], gates[i], hn[i], h[i])


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def gru_step_backward(dh, gates, hn, h_prev, dah, dh_prev, sq, record):
    for i in prange(dh.shape[0]):
        if record:
            sq[i] = _row_sq(dh[i])
        _gru_row_bwd(dh[i], gates[i], hn[i], h_prev[i], dah[i], dh_prev[i])


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def add_into(a, b):
    """a += b over a 2-D array, parallel over rows."""
    for i in prange(a.shape[0]):
        for j in range(a.shape[1]):
            a[i, j] += b[i, j]


# ---------------------------------------------------------------- whole-sequence kernels (serial gates)
# The time loop inside one jitted function: np.dot (BLAS) for the recurrent product, the
# gate math serially. Buffers come from the caller; nothing is allocated per step.
# h (and c) have T+1 entries: index 0 is the initial (zero) state, index t+1 is step t.


@njit(cache=True, error_model="numpy")
def rnn_seq_forward(xp, w_hh, b, h, hh, relu):
    T, B = xp.shape[0], xp.shape[1]
    for t in range(T):
        np.dot(h[t], w_hh, hh)
        for i in range(B):
            _rnn_row_fwd(xp[t, i], hh[i], b, h[t + 1, i], relu)


@njit(cache=True, error_model="numpy")
def rnn_seq_backward(dh_out, seq, w_hh, h, da, dh, relu, norms, record):
    """da (T, B, H) receives the pre-activation gradients; dh (B, H) is scratch and ends
    as dL/dh_{-1} (unused); norms[t] = |dL/dh_t| when record."""
    T, B = da.shape[0], da.shape[1]
    dh[:] = 0.0
    for t in range(T - 1, -1, -1):
        _add_output_grad(dh, dh_out, t, T, seq)
        if record:
            norms[t] = np.sqrt(_row_sq(dh.reshape(-1)))
        for i in range(B):
            _rnn_row_bwd(dh[i], h[t + 1, i], da[t, i], relu)
        np.dot(da[t], w_hh.T, dh)


@njit(cache=True, error_model="numpy")
def lstm_seq_forward(xp, w_hh, b, h, c, gates, tc, hh):
    T, B = xp.shape[0], xp.shape[1]
    for t in range(T):
        np.dot(h[t], w_hh, hh)
        for i in range(B):
            _lstm_row_fwd(xp[t, i], hh[i], b, c[t, i], gates[t, i], c[t + 1, i], h[t + 1, i], tc[t, i])


@njit(cache=True, error_model="numpy")
def lstm_seq_backward(dh_out, seq, w_hh, c, gates, tc, dh, dc, norms, record):
    """gates (T, B, 4H) is overwritten with the pre-activation gradients."""
    T, B = gates.shape[0], gates.shape[1]
    dh[:] = 0.0
    dc[:] = 0.0
    for t in range(T - 1, -1, -1):
        _add_output_grad(dh, dh_out, t, T, seq)
        if record:
            norms[t] = np.sqrt(_row_sq(dh.reshape(-1)))
        for i in range(B):
            _lstm_row_bwd(dh[i], dc[i], gates[t, i], c[t, i], tc[t, i])
        np.dot(gates[t], w_hh.T, dh)


@njit(cache=True, error_model="numpy")
def gru_seq_forward(xp, w_hh, b, bhn, h, gates, hn, hh):
    T, B = xp.shape[0], xp.shape[1]
    for t in range(T):
        np.dot(h[t], w_hh, hh)
        for i in range(B):
            _gru_row_fwd(xp[t, i], hh[i], b, bhn, h[t, i], gates[t, i], hn[t, i], h[t + 1, i])


@njit(cache=True, error_model="numpy")
def gru_seq_backward(dh_out, seq, w_hh, h, gates, hn, dah, dh, direct, norms, record):
    """gates (T, B, 3H) is overwritten with the input-side gradients, dah (T, B, 3H)
    receives the recurrent-side ones."""
    T, B = gates.shape[0], gates.shape[1]
    dh[:] = 0.0
    for t in range(T - 1, -1, -1):
        _add_output_grad(dh, dh_out, t, T, seq)
        if record:
            norms[t] = np.sqrt(_row_sq(dh.reshape(-1)))
        for i in range(B):
            _gru_row_bwd(dh[i], gates[t, i], hn[t, i], h[t, i], dah[t, i], direct[i])
        np.dot(dah[t], w_hh.T, dh)
        dh += direct
