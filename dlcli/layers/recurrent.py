"""Recurrent layers: rnn (tanh or relu), lstm, gru. Input (batch, time, features).

Parameters (gate blocks of `units` columns, orders documented in the README):
  w_input (F, G*H)      Glorot uniform over the whole matrix
  w_recurrent (H, G*H)  orthogonal, one H x H block per gate
  bias (G*H,)           zeros; the LSTM forget-gate block starts at 1
  bias_hn (H,)          GRU only: the recurrent bias of the candidate, inside r * (...)
The initial state is zero. `return_sequences` gives every h_t, shape (T, H); otherwise
the last one, shape (H,).

`record_time_grads = True` makes `backward` store `time_grad_norms`, shape (T,), float64:
entry t is the L2 norm over batch and units of the total dL/dh_t (from the layer's output
at t plus from step t+1). When False nothing extra is computed.
"""

import numpy as np

from ..spec import REQUIRED, Opt, boolean, choice, positive_int
from .base import Layer, glorot_uniform

# Below this batch size the whole-sequence kernels (time loop in one jitted function,
# serial gate math) beat per-step parallel gate kernels driven from Python: the per-step
# call and thread hand-off costs more than the gate math saves. Measured; see README.
SERIAL_BELOW = 64


def orthogonal(rng, n, dtype):
    a = rng.standard_normal((n, n))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # a uniformly distributed orthogonal matrix
    return q.astype(dtype)


class _Recurrent(Layer):
    GATES = 1
    SHORTHAND = "units"
    OPTIONS = {
        "units": Opt(positive_int),
        "return_sequences": Opt(boolean, False, "every h_t (time, units), or only the last (units)"),
        "bias": Opt(boolean, True),
    }
    record_time_grads = False
    time_grad_norms = None
    mode = "auto"  # auto | serial | parallel: which kernel family runs the time loop

    def __init__(self, dtype=np.float32, rng=None, name=None, **options):
        # Defaults for options not given (the spec fills them; direct construction may not).
        defaults = {k: o.default for k, o in self.OPTIONS.items() if o.default is not REQUIRED}
        super().__init__(dtype=dtype, rng=rng, name=name, **{**defaults, **options})

    def build(self, input_shape):
        from ..kernels import dense as KD
        from ..kernels import recurrent as K

        self.K, self.KD = K, KD
        input_shape = tuple(input_shape)
        if len(input_shape) != 2:
            raise self.shape_error("(time, features)", input_shape)
        self.input_shape = input_shape
        T, F = input_shape
        H, G = self.options["units"], self.GATES
        self.units = H
        self.params["w_input"] = glorot_uniform(self.rng, F, G * H, (F, G * H), self.dtype)
        self.params["w_recurrent"] = np.concatenate([orthogonal(self.rng, H, self.dtype) for _ in range(G)], axis=1)
        if self.options["bias"]:
            b = np.zeros(G * H, self.dtype)
            self.init_bias(b, H)
            self.params["bias"] = b
        self.extra_params(H)
        self.zeros_like_params()
        self.output_shape = (T, H) if self.options["return_sequences"] else (H,)
        return self.output_shape

    def init_bias(self, b, H):
        pass

    def extra_params(self, H):
        pass

    def _bias(self):
        b = self.params.get("bias")
        if b is None:
            b = np.zeros(self.GATES * self.units, self.dtype)
        return b

    def _serial(self, B):
        return self.mode == "serial" or (self.mode == "auto" and B < SERIAL_BELOW)

    # -------------------------------------------------------------- forward
    def forward(self, x, training=False):
        if x.ndim != 3 or tuple(x.shape[1:]) != self.input_shape:
            raise self.shape_error(self.input_shape, x.shape[1:])
        B, T, F = x.shape
        H, G = self.units, self.GATES
        xt = np.ascontiguousarray(x.transpose(1, 0, 2), dtype=self.dtype)  # (T, B, F)
        xp = np.empty((T, B, G * H), self.dtype)
        self.K.matmul(xt.reshape(T * B, F), self.params["w_input"], xp.reshape(T * B, G * H))
        h = np.empty((T + 1, B, H), self.dtype)
        h[0] = 0
        self.xt, self.h = xt, h
        self.cell_forward(xp, h, B, T)
        if self.options["return_sequences"]:
            return np.ascontiguousarray(h[1:].transpose(1, 0, 2))
        return h[T].copy()

    # -------------------------------------------------------------- backward
    def backward(self, dy, need_dx=True):
        B, T = self.h.shape[1], self.h.shape[0] - 1
        H, G, F = self.units, self.GATES, self.input_shape[1]
        seq = self.options["return_sequences"]
        if seq:
            dh_out = np.ascontiguousarray(dy.transpose(1, 0, 2), dtype=self.dtype)
        else:
            dh_out = np.ascontiguousarray(dy, dtype=self.dtype).reshape(1, B, H)
        record = bool(self.record_time_grads)
        norms = np.zeros(T if record else 1)
        da, dah = self.cell_backward(dh_out, seq, B, T, norms, record)
        if record:
            self.time_grad_norms = norms
        da2 = da.reshape(T * B, G * H)
        self.K.matmul_tn(self.xt.reshape(T * B, F), da2, self.grads["w_input"])
        self.K.matmul_tn(self.h[:T].reshape(T * B, H), dah.reshape(T * B, G * H), self.grads["w_recurrent"])
        if "bias" in self.grads:
            self.KD.column_sums(da2, self.grads["bias"])
        if "bias_hn" in self.grads:
            np.sum(dah.reshape(T * B, G * H)[:, 2 * H :], axis=0, out=self.grads["bias_hn"])
        if not need_dx:
            return None
        dx = np.empty((T * B, F), self.dtype)
        self.K.matmul_nt(da2, self.params["w_input"], dx)
        return np.ascontiguousarray(dx.reshape(T, B, F).transpose(1, 0, 2))

    def _add_output_grad(self, dh, dh_out, t, T, seq):
        """dh += the loss gradient that reaches h_t from the layer's output: every step's
        when returning sequences, else only the last step's."""
        if seq:
            self.K.add_into(dh, dh_out[t])
        elif t == T - 1:
            self.K.add_into(dh, dh_out[0])

    def _record_step(self, norms, t, sq, record):
        if record:
            norms[t] = np.sqrt(sq.sum())

    # -------------------------------------------------------------- description
    def flops(self):
        T, F = self.input_shape
        H, G = self.units, self.GATES
        return T * (2 * F * G * H + 2 * H * G * H + self.ELEMENTWISE * H)

    ELEMENTWISE = 4

    def describe(self):
        return f"{self.units} units" + (", sequences" if self.options["return_sequences"] else "")


class RNN(_Recurrent):
    """h_t = act(x_t W_ih + h_{t-1} W_hh + b), act tanh or relu."""

    kind = "rnn"
    GATES = 1
    OPTIONS = {**_Recurrent.OPTIONS, "activation": Opt(choice("tanh", "relu"), "tanh")}
    EXAMPLE = {"options": {"units": 4, "return_sequences": True}, "input": (3, 2)}
    ELEMENTWISE = 8

    def cell_forward(self, xp, h, B, T):
        K, w, b = self.K, self.params["w_recurrent"], self._bias()
        relu = self.options["activation"] == "relu"
        hh = np.empty((B, self.units), self.dtype)
        if self._serial(B):
            K.rnn_seq_forward(xp, w, b, h, hh, relu)
        else:
            for t in range(T):
                K.matmul(h[t], w, hh)
                K.rnn_step_forward(xp[t], hh, b, h[t + 1], relu)

    def cell_backward(self, dh_out, seq, B, T, norms, record):
        K, w = self.K, self.params["w_recurrent"]
        relu = self.options["activation"] == "relu"
        da = np.empty((T, B, self.units), self.dtype)
        dh = np.empty((B, self.units), self.dtype)
        if self._serial(B):
            K.rnn_seq_backward(dh_out, seq, w, self.h, da, dh, relu, norms, record)
        else:
            sq = np.empty(B)
            dh[:] = 0
            for t in range(T - 1, -1, -1):
                self._add_output_grad(dh, dh_out, t, T, seq)
                K.rnn_step_backward(dh, self.h[t + 1], da[t], relu, sq, record)
                self._record_step(norms, t, sq, record)
                K.matmul_nt(da[t], w, dh)
        return da, da

    def describe(self):
        return super().describe() + f", {self.options['activation']}"


class LSTM(_Recurrent):
    kind = "lstm"
    GATES = 4
    EXAMPLE = {"options": {"units": 3, "return_sequences": True}, "input": (3, 2)}
    ELEMENTWISE = 30

    def init_bias(self, b, H):
        b[H : 2 * H] = 1.0  # forget gate

    def cell_forward(self, xp, h, B, T):
        K, w, b, H = self.K, self.params["w_recurrent"], self._bias(), self.units
        c = np.empty((T + 1, B, H), self.dtype)
        c[0] = 0
        gates = np.empty((T, B, 4 * H), self.dtype)
        tc = np.empty((T, B, H), self.dtype)
        hh = np.empty((B, 4 * H), self.dtype)
        if self._serial(B):
            K.lstm_seq_forward(xp, w, b, h, c, gates, tc, hh)
        else:
            for t in range(T):
                K.matmul(h[t], w, hh)
                K.lstm_step_forward(xp[t], hh, b, c[t], gates[t], c[t + 1], h[t + 1], tc[t])
        self.c, self.gates, self.tc = c, gates, tc

    def cell_backward(self, dh_out, seq, B, T, norms, record):
        K, w, H = self.K, self.params["w_recurrent"], self.units
        gates = self.gates  # overwritten with the gate gradients
        dh = np.empty((B, H), self.dtype)
        dc = np.empty((B, H), self.dtype)
        if self._serial(B):
            K.lstm_seq_backward(dh_out, seq, w, self.c, gates, self.tc, dh, dc, norms, record)
        else:
            sq = np.empty(B)
            dh[:] = 0
            dc[:] = 0
            for t in range(T - 1, -1, -1):
                self._add_output_grad(dh, dh_out, t, T, seq)
                K.lstm_step_backward(dh, dc, gates[t], self.c[t], self.tc[t], sq, record)
                self._record_step(norms, t, sq, record)
                K.matmul_nt(gates[t], w, dh)
        self.gates = None  # no longer the activations
        return gates, gates


class GRU(_Recurrent):
    """PyTorch's variant: the reset gate multiplies (h W_hn + b_hn)."""

    kind = "gru"
    GATES = 3
    EXAMPLE = {"options": {"units": 3, "return_sequences": True}, "input": (3, 2)}
    ELEMENTWISE = 24

    def extra_params(self, H):
        if self.options["bias"]:
            self.params["bias_hn"] = np.zeros(H, self.dtype)

    def cell_forward(self, xp, h, B, T):
        K, w, b, H = self.K, self.params["w_recurrent"], self._bias(), self.units
        bhn = self.params.get("bias_hn")
        if bhn is None:
            bhn = np.zeros(H, self.dtype)
        gates = np.empty((T, B, 3 * H), self.dtype)
        hn = np.empty((T, B, H), self.dtype)
        hh = np.empty((B, 3 * H), self.dtype)
        if self._serial(B):
            K.gru_seq_forward(xp, w, b, bhn, h, gates, hn, hh)
        else:
            for t in range(T):
                K.matmul(h[t], w, hh)
                K.gru_step_forward(xp[t], hh, b, bhn, h[t], gates[t], hn[t], h[t + 1])
        self.gates, self.hn = gates, hn

    def cell_backward(self, dh_out, seq, B, T, norms, record):
        K, w, H = self.K, self.params["w_recurrent"], self.units
        gates = self.gates
        dah = np.empty((T, B, 3 * H), self.dtype)
        dh = np.empty((B, H), self.dtype)
        direct = np.empty((B, H), self.dtype)
        if self._serial(B):
            K.gru_seq_backward(dh_out, seq, w, self.h, gates, self.hn, dah, dh, direct, norms, record)
        else:
            sq = np.empty(B)
            dh[:] = 0
            for t in range(T - 1, -1, -1):
                self._add_output_grad(dh, dh_out, t, T, seq)
                K.gru_step_backward(dh, gates[t], self.hn[t], self.h[t], dah[t], direct, sq, record)
                self._record_step(norms, t, sq, record)
                K.matmul_nt(dah[t], w, dh)
                K.add_into(dh, direct)
        self.gates = None
        return gates, dah
