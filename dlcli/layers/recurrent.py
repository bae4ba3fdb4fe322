"""Recurrent layers: rnn (tanh or relu), lstm, gru. Input (batch, time, features).

Parameters (gate blocks of `units` columns, orders documented in the README):
  w_input (F, G*H)      Glorot uniform over the whole matrix
  w_recurrent (H, G*H)  orthogonal, one H x H block per gate
  bias (G*H,)           zeros; the LSTM forget-gate block starts at 1
  bias_hn (H,)          GRU only: the recurrent bias of the candidate, inside r * (...)
The initial state is zero. `return_sequences` gives every h_t, shape (T, H); otherwise
the last one, shape (H,).

`step(x_t, state)` runs one time step from a given state (`initial_state(batch)` is the
zero one) with the same kernels, for generating text token by token.

`record_time_grads = True` makes `backward` store `time_grad_norms`, shape (T,), float64:
entry t is the L2 norm over batch and units of the total dL/dh_t (from the layer's output
at t plus from step t+1). When False nothing extra is computed.
"""

import numpy as np

from .. import runtime
from ..options import Opt, boolean, choice, positive_int
from .base import Layer, glorot_uniform


def orthogonal(rng, n, dtype):
    a = rng.standard_normal((n, n))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # a uniformly distributed orthogonal matrix
    return q.astype(dtype)


class _Recurrent(Layer):
    KERNELS = ("recurrent", "dense")
    GATES = 1
    SHORTHAND = "units"
    OPTIONS = {
        "units": Opt(positive_int),
        "return_sequences": Opt(boolean, False, "every h_t (time, units), or only the last (units)"),
        "bias": Opt(boolean, True),
    }
    RECORDS_TIME_GRADS = True
    STATEFUL = True
    shards = None  # batch shards run at once through the time loop; None: one per core
    kept = False  # the latest forward stored every step's states (training): backward may run

    def build(self, input_shape):
        from ..kernels import dense as KD
        from ..kernels import recurrent as K

        self.K, self.KD = K, KD
        self._buffers = {}
        input_shape = tuple(input_shape)
        if len(input_shape) != 2:
            raise self.shape_error("(time, features)", input_shape)
        self.input_shape = input_shape
        T, F = input_shape
        H, G = self.options["units"], self.GATES
        self.units = H
        self.add_param("w_input", (F, G * H), lambda: glorot_uniform(self.rng, F, G * H, (F, G * H), self.dtype))
        self.add_param(
            "w_recurrent",
            (H, G * H),
            lambda: np.concatenate([orthogonal(self.rng, H, self.dtype) for _ in range(G)], axis=1),
        )
        if self.options["bias"]:
            self.add_param("bias", (G * H,), lambda: self.initial_bias(G, H))
        self.extra_params(H)
        self.zeros_like_params()
        self.output_shape = (T, H) if self.options["return_sequences"] else (H,)
        return self.output_shape

    def work_entries(self, output_shape):
        """Every step's input projection and gates, states and their gradients."""
        T, F = self.input_shape
        H, G = self.options["units"], self.GATES
        return T * (3 * G * H + 6 * H + 2 * F) + super().work_entries(output_shape)

    def initial_bias(self, G, H):
        b = np.zeros(G * H, self.dtype)
        self.init_bias(b, H)
        return b

    def init_bias(self, b, H):
        pass

    def extra_params(self, H):
        pass

    def _bias(self):
        b = self.params.get("bias")
        if b is None:
            b = np.zeros(self.GATES * self.units, self.dtype)
        return b

    def _run_shards(self, fn):
        """fn(k, lo, hi) for shard k of the batch (rows lo..hi, as the forward cut them),
        all shards at once."""
        bounds = self.bounds
        return runtime.run_shards(lambda k: fn(k, *bounds[k]), len(bounds))

    def _work(self, name, shape):
        """A scratch or activation buffer kept from one call to the next: a fresh multi-MB
        array every step costs its page faults again (about 0.5 ms per LSTM forward in
        the benchmark). Valid until the next call asks for the same name."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape:
            buf = self._buffers[name] = np.empty(shape, self.dtype)
        return buf

    def _weights(self, backward=False):
        """(the matrix this pass multiplies h or da_t by, its vector panels): forward
        W_hh (H, G*H) as stored, backward W_hh^T (G*H, H) made contiguous. Shards of
        fewer rows than a tile (a batch of one: predict, generate) skip the packing."""
        w = self.params["w_recurrent"]
        if backward:
            w_t = self._work("w_hh_t", w.shape[::-1])
            self.K.transpose(w, w_t)
            w = w_t
        shape = self.K.panel_shape(w)
        if max(hi - lo for lo, hi in self.bounds) < self.K.TILE_ROWS:
            shape = (0,) + shape[1:]
        panels = self._work("w_panels_bwd" if backward else "w_panels", shape)
        self.K.pack_panels(w, panels)
        return w, panels

    # -------------------------------------------------------------- forward
    def forward(self, x, training=False):
        if x.ndim != 3 or tuple(x.shape[1:]) != self.input_shape:
            raise self.shape_error(self.input_shape, x.shape[1:])
        T = x.shape[1]
        self._sequence(np.ascontiguousarray(x.transpose(1, 0, 2), dtype=self.dtype), None, keep=training)  # (T, B, F)
        # Copies, never views: h is a buffer that the next call overwrites.
        if self.options["return_sequences"]:
            return self.h[1:].transpose(1, 0, 2).copy()
        return self.h[T].copy()

    # Without `keep`, the input projection is made XP_CHUNK_BYTES of steps at a time: a
    # batch of 1024 through the reference LSTM (64 steps, 512 gate columns) needed 134 MB
    # for it, a long sequence gigabytes.
    XP_CHUNK_BYTES = 16 << 20

    def _sequence(self, xt, state, keep=False):
        """Run the cell over xt (T, B, F) from `state` (None: zeros); fills self.h (T+1, B, H).
        `keep`: store every step's gates and cell states for backward (training). Without
        it those live in one step's buffers (a batch-256 LSTM prediction wrote 57 MB it
        never read again) and the input projection is made a chunk of steps at a time."""
        T, B, F = xt.shape
        H, G = self.units, self.GATES
        h = self._work("h", (T + 1, B, H))
        h[0] = 0 if state is None else state[0]
        self.xt, self.h = xt, h
        self.bounds = runtime.shard_bounds(B, self.shards)  # backward cuts alike
        self.kept = keep
        weights = self._weights()
        step_bytes = B * G * H * self.dtype.itemsize
        chunk = T if keep else max(2, self.XP_CHUNK_BYTES // step_bytes // 2 * 2)  # even: see LSTM
        xp = self._work("xp" if keep or chunk >= T else "xp_chunk", (min(chunk, T), B, G * H))
        for t0 in range(0, T, chunk):
            n = min(chunk, T - t0)
            runtime.matmul(xt[t0 : t0 + n].reshape(n * B, F), self.params["w_input"], xp[:n].reshape(n * B, G * H))
            self.cell_forward(xp[:n], h[t0 : t0 + n + 1], B, n, state, keep, weights, t0 == 0)

    # -------------------------------------------------------------- one step at a time
    STATES = 1  # arrays in the state: h (the LSTM adds its cell c)

    def initial_state(self, batch):
        """The zero state that `forward` starts every sequence from: (h,) or (h, c)."""
        return tuple(np.zeros((batch, self.units), self.dtype) for _ in range(self.STATES))

    def step(self, x, state):
        """One time step from `state`: x (batch, features) -> (h_t (batch, units), new state).

        For generating a sequence token by token: the state carries everything the prefix
        left, so no step re-runs it. The same kernels as `forward`, with T = 1 and the given
        state as the initial one, so stepping through a sequence gives forward's outputs."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.input_shape[1]:
            raise self.shape_error(("batch", self.input_shape[1]), x.shape)
        self._sequence(np.ascontiguousarray(x[None], dtype=self.dtype), state)
        return self.h[1].copy(), self.final_state()

    def final_state(self):
        """The state after the last step of the latest forward/step, as fresh arrays."""
        return (self.h[-1].copy(),)

    # -------------------------------------------------------------- backward
    def backward(self, dy, need_dx=True):
        if not self.kept:
            raise RuntimeError(f"{self.name}: backward needs the states of forward(training=True)")
        B, T = self.h.shape[1], self.h.shape[0] - 1
        H, G, F = self.units, self.GATES, self.input_shape[1]
        seq = self.options["return_sequences"]
        if seq:
            dh_out = np.ascontiguousarray(dy.transpose(1, 0, 2), dtype=self.dtype)
        else:
            dh_out = np.ascontiguousarray(dy, dtype=self.dtype).reshape(1, B, H)
        record = bool(self.record_time_grads)
        sq = np.zeros((len(self.bounds), T if record else 1))  # each shard's share of |dL/dh_t|^2
        da, dah = self.cell_backward(dh_out, seq, B, T, sq, record)
        if record:
            self.time_grad_norms = np.sqrt(sq.sum(axis=0))
        da2 = da.reshape(T * B, G * H)
        products = [
            (self.xt.reshape(T * B, F).T, da2, self.grads["w_input"]),
            (self.h[:T].reshape(T * B, H).T, dah.reshape(T * B, G * H), self.grads["w_recurrent"]),
        ]
        if need_dx:
            dx = self._work("dx", (T * B, F))
            products.append((da2, self.params["w_input"].T, dx))
        runtime.matmuls(*products)  # one hand-over to the shard threads for all three
        if "bias" in self.grads:
            self.KD.column_sums(da2, self.grads["bias"])
        if "bias_hn" in self.grads:
            np.sum(dah.reshape(T * B, G * H)[:, 2 * H :], axis=0, out=self.grads["bias_hn"])
        if not need_dx:
            return None
        return dx.reshape(T, B, F).transpose(1, 0, 2).copy()  # a copy: dx is a reused buffer

    # -------------------------------------------------------------- description
    def flops(self):
        T, F = self.input_shape
        H, G = self.units, self.GATES
        return T * (2 * F * G * H + 2 * H * G * H + self.ELEMENTWISE * H)

    ELEMENTWISE = 4

    def describe(self):
        return f"{self.units} unit{'' if self.units == 1 else 's'}" + (
            ", sequences" if self.options["return_sequences"] else ""
        )


class RNN(_Recurrent):
    """h_t = act(x_t W_ih + h_{t-1} W_hh + b), act tanh or relu."""

    kind = "rnn"
    GATES = 1
    OPTIONS = {**_Recurrent.OPTIONS, "activation": Opt(choice("tanh", "relu"), "tanh")}
    EXAMPLE = {"options": {"units": 4, "return_sequences": True}, "input": (3, 2)}
    ELEMENTWISE = 8

    def cell_forward(self, xp, h, B, T, state, keep, weights, start):
        K, b = self.K, self._bias()
        relu = self.options["activation"] == "relu"
        hh = self._work("hh", (B, self.units))
        w, wp = weights
        self._run_shards(lambda k, lo, hi: K.rnn_seq_forward(xp, w, wp, b, h, hh, relu, lo, hi))

    def cell_backward(self, dh_out, seq, B, T, sq, record):
        K, h = self.K, self.h
        w_t, wp = self._weights(backward=True)
        relu = self.options["activation"] == "relu"
        da = self._work("da", (T, B, self.units))
        dh = self._work("dh", (B, self.units))
        self._run_shards(
            lambda k, lo, hi: K.rnn_seq_backward(dh_out, seq, w_t, wp, h, da, dh, relu, sq[k], record, lo, hi)
        )
        return da, da

    def describe(self):
        return super().describe() + f", {self.options['activation']}"


class LSTM(_Recurrent):
    kind = "lstm"
    GATES = 4
    EXAMPLE = {"options": {"units": 3, "return_sequences": True}, "input": (3, 2)}
    ELEMENTWISE = 30

    STATES = 2

    def init_bias(self, b, H):
        b[H : 2 * H] = 1.0  # forget gate

    def final_state(self):
        return (self.h[-1].copy(), self.c[self.c_last].copy())

    def cell_forward(self, xp, h, B, T, state, keep, weights, start):
        """Without keep: c holds two states used in turn, so a chunk of an even number of
        steps ends where it started and the next chunk (start False) goes on from there."""
        K, b, H = self.K, self._bias(), self.units
        steps = T if keep else 1  # without keep, step t's gates and c_{t+1} overwrite step t-1's
        kind = "" if keep else "_step"  # own buffers: validation leaves training's in place
        c = self._work("c" + kind, (steps + 1, B, H))
        if start:
            c[0] = 0 if state is None else state[1]
        gates = self._work("gates" + kind, (steps, B, 4 * H))
        tc = self._work("tc" + kind, (steps, B, H))
        hh = self._work("hh", (B, 4 * H))
        w, wp = weights
        self._run_shards(lambda k, lo, hi: K.lstm_seq_forward(xp, w, wp, b, h, c, gates, tc, hh, keep, lo, hi))
        self.c, self.gates, self.tc = c, gates, tc
        self.c_last = T if keep else T % 2

    def cell_backward(self, dh_out, seq, B, T, sq, record):
        K, H, c, tc = self.K, self.units, self.c, self.tc
        w_t, wp = self._weights(backward=True)
        gates = self.gates  # overwritten with the gate gradients
        dh = self._work("dh", (B, H))
        dc = self._work("dc", (B, H))
        self._run_shards(
            lambda k, lo, hi: K.lstm_seq_backward(dh_out, seq, w_t, wp, c, gates, tc, dh, dc, sq[k], record, lo, hi)
        )
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
            self.add_param("bias_hn", (H,), lambda: np.zeros(H, self.dtype))

    def cell_forward(self, xp, h, B, T, state, keep, weights, start):
        K, b, H = self.K, self._bias(), self.units
        bhn = self.params.get("bias_hn")
        if bhn is None:
            bhn = np.zeros(H, self.dtype)
        steps = T if keep else 1  # without keep, each step's gates overwrite the last step's
        kind = "" if keep else "_step"  # own buffers: validation leaves training's in place
        gates = self._work("gates" + kind, (steps, B, 3 * H))
        hn = self._work("hn" + kind, (steps, B, H))
        hh = self._work("hh", (B, 3 * H))
        w, wp = weights
        self._run_shards(lambda k, lo, hi: K.gru_seq_forward(xp, w, wp, b, bhn, h, gates, hn, hh, keep, lo, hi))
        self.gates, self.hn = gates, hn

    def cell_backward(self, dh_out, seq, B, T, sq, record):
        K, H, h, hn = self.K, self.units, self.h, self.hn
        w_t, wp = self._weights(backward=True)
        gates = self.gates
        dah = self._work("dah", (T, B, 3 * H))
        dh = self._work("dh", (B, H))
        direct = self._work("direct", (B, H))
        self._run_shards(
            lambda k, lo, hi: K.gru_seq_backward(
                dh_out, seq, w_t, wp, h, gates, hn, dah, dh, direct, sq[k], record, lo, hi
            )
        )
        self.gates = None
        return gates, dah
