"""Convolution layers, NCHW / NCW: conv2d and conv1d (conv1d runs as conv2d with H = 1).

Weights are (filters, in_channels, *kernel), as in PyTorch; the bias is (filters,).
Two paths. Stride 1 with little waste (`direct`, see DIRECT_MAX_WASTE): vector tiles over
shifted windows of the zero-padded input, forward and weight gradient, no column matrix;
in evaluation such a layer also applies the max pool after it. Otherwise: the input
transposed batch-last (C, H, W, B), im2col over the whole batch, one GEMM, one pass back to
NCHW adding the bias (and a fused ReLU when the model fuses the next relu layer into this
one). kernels/conv.py says why batch-last.

The three products per step go to BLAS through NumPy's `matmul(out=)`, called from here
between the Numba passes: for these short-and-wide shapes (e.g. (400, 16) x (16, 4096)
transposed) NumPy's OpenBLAS measured 2-15x faster than `np.dot` inside Numba, which
goes through SciPy's separately bundled OpenBLAS.
"""

import math

import numpy as np

from .. import runtime
from ..errors import ShapeError
from ..options import Opt, boolean, choice, int_tuple, positive_int
from .base import INITS, Layer, initialise

# A stride-1 convolution trains through the direct kernels (no im2col) when its wide rows
# (the output row plus (KW-1)*dw columns the kernels compute and drop) are at most
# DIRECT_MAX_WASTE times the output row, and a sample's padded input planes fit in a
# core's second-level cache. The reference CNN's second layer (16 -> 32, 5x5 on 12x12,
# wide rows 1.5x) at batch 64, two threads: forward 1.36 ms against 2.24 through im2col +
# GEMM; weight gradient 1.0 ms against 1.06 for the GEMM alone (2026-11).
DIRECT_MAX_WASTE = 1.5
DIRECT_MAX_PLANE_BYTES = 256 << 10
# Largest C_in * KH * KW whose input gradient the direct kernels scatter themselves (the
# reference CNN's first layer, 3x3 kernels on RGB); a layer with more taps takes the
# input gradient through GEMM + col2im, which the scatter loop cannot match.
DIRECT_MAX_TAPS = 32
# In evaluation and prediction, batches up to this size run every stride-1 convolution
# directly: no column matrix to write, no batch-last transposes. The reference CNN's
# second layer (16 -> 32, 5x5) at batch 1: 31 us against 63-70 us through im2col + GEMM;
# at batch 64 the two were level on one core (2026-11).
DIRECT_INFERENCE_BATCH = 16


def padding(n):
    """`valid`, `same`, an integer >= 0, or a list of n integers (padding on both sides)."""

    def parse(v):
        if v in ("valid", "same"):
            return v
        values = [v] * n if isinstance(v, int) and not isinstance(v, bool) else v
        if (
            not isinstance(values, list)
            or len(values) != n
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in values)
        ):
            what = "an integer" if n == 1 else f"an integer or a list of {n} integers"
            raise ValueError(f"must be 'valid', 'same', or {what} >= 0")
        return tuple(values)

    parse.__name__ = "padding"
    return parse


def resolve_padding(padding_opt, size, kernel, stride, dilation):
    """(before, after, output size) along one axis. `same` gives ceil(size / stride) outputs
    with the total padding split as evenly as possible, the extra one after (as TensorFlow)."""
    span = dilation * (kernel - 1) + 1
    if padding_opt == "valid":
        before = after = 0
    elif padding_opt == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + span - size, 0)
        before, after = total // 2, total - total // 2
    else:
        before = after = padding_opt
    padded = size + before + after
    if padded < span:
        return before, after, 0
    return before, after, (padded - span) // stride + 1


class _Conv(Layer):
    KERNELS = ("conv",)
    ndim = 2
    SHORTHAND = "filters"
    FUSES_RELU = True
    FUSES_POOL = True  # in evaluation, when the direct kernels run: read off the wide rows

    def build(self, input_shape):
        from ..kernels import conv as K

        self.K = K
        input_shape = self.input_shape = self.check_spatial_input(input_shape, self.ndim)
        nd = self.ndim
        o = self.options
        kernel, stride, dilation = o["kernel"], o["stride"], o["dilation"]
        pads, outs = [], []
        for a in range(nd):
            pad_opt = o["padding"] if isinstance(o["padding"], str) else o["padding"][a]
            before, after, out = resolve_padding(pad_opt, input_shape[1 + a], kernel[a], stride[a], dilation[a])
            span = dilation[a] * (kernel[a] - 1) + 1
            if out <= 0:
                raise ShapeError(
                    f"{self.name}: kernel {list(kernel)} (dilation {list(dilation)}, span {span}) is larger "
                    f"than the padded input: input shape {input_shape}, padding {o['padding']!r}"
                )
            pads.append(before)
            outs.append(out)
        cin, cout = input_shape[0], o["filters"]
        # Internally every sample is (C, H, W); conv1d has H = 1.
        if nd == 1:
            self.k2, self.s2, self.d2, self.p2, self.o2 = (
                (1,) + kernel,
                (1,) + stride,
                (1,) + dilation,
                (0,) + tuple(pads),
                (1,) + tuple(outs),
            )
            self.in2 = (cin, 1, input_shape[1])
        else:
            self.k2, self.s2, self.d2, self.p2, self.o2 = kernel, stride, dilation, tuple(pads), tuple(outs)
            self.in2 = input_shape
        fan_in = cin * int(np.prod(kernel))
        fan_out = cout * int(np.prod(kernel))
        init = o["init"]
        if init == "auto":
            init = "he" if self.next_kind == "relu" else "glorot"
        shape = (cout, cin) + tuple(kernel)
        self.add_param("weight", shape, lambda: initialise(self.rng, init, fan_in, fan_out, shape, self.dtype))
        if o["bias"]:
            self.add_param("bias", (cout,), lambda: np.zeros(cout, self.dtype))
        self.output_shape = (cout,) + tuple(outs)
        if self.planning:
            return self.output_shape
        self.zeros_like_params()
        # Direct kernels (no im2col; kernels/conv.py: direct convolution) for stride 1 when
        # the wide rows waste little (DIRECT_MAX_WASTE above); the padded planes are
        # (KH-1)*dh rows taller and (KW-1)*dw columns wider than the output.
        self.hp = self.o2[0] + (self.k2[0] - 1) * self.d2[0]
        self.wp = self.o2[1] + (self.k2[1] - 1) * self.d2[1]
        taps = cin * self.k2[0] * self.k2[1]
        plane_bytes = cin * self.hp * self.wp * np.dtype(self.dtype).itemsize
        self.direct = (
            self.s2 == (1, 1)
            and (taps <= DIRECT_MAX_TAPS or self.wp <= DIRECT_MAX_WASTE * self.o2[1])
            and plane_bytes <= DIRECT_MAX_PLANE_BYTES
        )
        if self.s2 == (1, 1):  # the direct forward's output vectors and scratch rows
            self.vecs, self.rs, self.scratch_width = self.K.output_vectors(*self.o2, self.wp, self.dtype)
        self.scatter_input_grad = taps <= DIRECT_MAX_TAPS  # else GEMM + col2im
        self.by_direct = False  # the latest forward ran the direct kernels (always, when self.direct)
        self.zero_bias = np.zeros(cout, self.dtype)  # the GEMM output pass always adds a bias
        self.bias_scratch = np.zeros(cout, self.dtype)
        self.scratch = {}  # batch size -> cols, ycn, xt (, dcols); internal only, reused across steps
        return self.output_shape

    def work_entries(self, output_shape):
        """The im2col columns and their gradient, besides the output."""
        columns = self.in2[0] * math.prod(self.k2) * math.prod(self.o2)
        return 2 * columns + super().work_entries(output_shape) + math.prod(self.in2)

    def _scratch(self, n, make):
        """The internal buffers for key n (a batch size; ("direct", n) for the direct
        kernels'), made by make(n) the first time; a few are kept, reused across steps."""
        buf = self.scratch.get(n)
        if buf is None:
            if len(self.scratch) > 8:  # two or three kinds for each of a few batch sizes
                self.scratch.clear()
            buf = self.scratch[n] = make(n)
        return buf

    def _direct_buffers(self, n):
        """The zero-padded input planes (zeros stay around the interior each forward
        writes) and their gradient's scratch, per batch size."""
        return self._scratch(("direct", n), self._make_direct_buffers)  # apart from im2col's: a layer may run both

    def _make_direct_buffers(self, key):
        n = key[1]
        length = self.hp * self.wp + (self.k2[1] - 1) * self.d2[1] + self.K.WIDE_TILE
        xpad = np.zeros((n, self.in2[0], length), self.dtype)
        return {"xpad": xpad, "interior": self._interior(xpad)}

    def _interior(self, padded):
        """(the view of padded planes (N, C, L) that holds the input, its rows, its
        columns): the input rows and columns some window reads."""
        n, (cin, h, w), (ph, pw) = len(padded), self.in2, self.p2
        planes = padded[:, :, : self.hp * self.wp].reshape(n, cin, self.hp, self.wp)
        rows, cols = min(h, self.hp - ph), min(w, self.wp - pw)
        return planes[:, :, ph : ph + rows, pw : pw + cols], rows, cols

    def _buffers(self, n):
        """im2col's column matrix, the GEMM output and the batch-last input, per batch size."""
        return self._scratch(n, self._make_buffers)

    def _make_buffers(self, n):
        rows = self.in2[0] * self.k2[0] * self.k2[1]
        npos = n * self.o2[0] * self.o2[1]
        return {
            "cols": np.empty((rows, npos), self.dtype),
            "ycn": np.empty((self.options["filters"], npos), self.dtype),
            "xt": np.empty(self.in2 + (n,), self.dtype),  # batch-last input; col2im's scratch backward
        }

    def _args(self):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = self.k2, self.s2, self.p2, self.d2, self.o2
        return kh, kw, sh, sw, ph, pw, dh, dw, oh, ow

    def forward(self, x, training=False):
        if tuple(x.shape[1:]) != self.input_shape:
            raise self.shape_error(self.input_shape, x.shape[1:])
        n = x.shape[0]
        x4 = x.reshape((n,) + self.in2)
        if not x4.flags.c_contiguous or x4.dtype != self.dtype:
            x4 = np.ascontiguousarray(x4, dtype=self.dtype)
        self.by_direct = self._direct_at(n, training)
        self.pooled = self.pools_at(n) and not training
        if self.by_direct:
            return self._direct_forward(x4, n)
        buf = self._buffers(n)
        cols, ycn, xt = buf["cols"], buf["ycn"], buf["xt"]
        cin = self.in2[0]
        self.K.to_batch_last(x4.reshape(n, cin, -1), xt.reshape(cin, -1, n))
        self.K.im2col(xt, *self._args(), cols)
        w2 = self.params["weight"].reshape(self.options["filters"], -1)
        runtime.matmul(w2, cols, ycn)
        cout = self.options["filters"]
        out = np.empty((n, cout) + self.o2, self.dtype)
        b = self.params.get("bias", self.zero_bias)
        self.K.conv_output(ycn, b, self.fuse_relu, out.reshape(n, cout, -1))
        self.n, self.cols, self.y = n, cols, out
        return out.reshape((n,) + self.output_shape)

    def _direct_at(self, n, training):
        """Whether a forward of n samples runs the direct kernels: always when
        `self.direct`, and in evaluation for small batches at stride 1 (waste matters
        less than im2col's copy there)."""
        return self.direct or (not training and self.s2 == (1, 1) and n <= DIRECT_INFERENCE_BATCH)

    def pools_at(self, n):
        """Whether an evaluation forward of n samples applies the following pool."""
        return self.fuse_pool is not None and self._direct_at(n, training=False)

    def _direct_pass(self, buf, n, pooled):
        """(kernel, its arguments before the shard range, the output) of the direct
        forward of n samples, whose input `buf["interior"]` holds."""
        cin, cout, (dh, dw) = self.in2[0], self.options["filters"], self.d2
        weight = self.params["weight"].reshape(cout, cin, *self.k2)
        b = self.params.get("bias", self.zero_bias)
        common = (buf["xpad"], weight, b, dh, dw, self.wp, self.vecs, self.rs, self.scratch_width, self.fuse_relu)
        if pooled:
            pool = self.fuse_pool
            out = np.empty((n, cout) + pool.o2, self.dtype)
            return self.K.direct_forward_pooled, common + (*pool.k2, *pool.s2, out), out
        out = np.empty((n, cout) + self.o2, self.dtype)
        return self.K.direct_forward, common + (out,), out

    def _direct_forward(self, x4, n):
        buf = self._direct_buffers(n)
        interior, rows, cols = buf["interior"]
        interior[...] = x4[:, :, :rows, :cols]
        kernel, args, out = self._direct_pass(buf, n, self.pooled)
        runtime.sharded(kernel, n, *args)
        self.n, self.xpad, self.y = n, buf["xpad"], None if self.pooled else out
        return out.reshape((n,) + (self.fuse_pool.output_shape if self.pooled else self.output_shape))

    def evaluator(self, batch):
        """The direct evaluation forward with its own buffers and arguments bound."""
        if not self._direct_at(batch, training=False):
            return super().evaluator(batch)
        buf = self._make_direct_buffers(("direct", batch))
        interior, rows, cols = buf["interior"]
        pooled = self.pools_at(batch)
        kernel, args, out = self._direct_pass(buf, batch, pooled)
        given, shape = (batch,) + self.input_shape, (batch,) + self.in2
        y = out.reshape((batch,) + (self.fuse_pool.output_shape if pooled else self.output_shape))
        # a slice assignment took 2.3 us of a batch-1 call, a plain one 0.9
        crop = None if (rows, cols) == self.in2[1:] else (slice(None), slice(None), slice(0, rows), slice(0, cols))

        def run(x):
            if x.shape != given:
                raise self.shape_error(given, x.shape)
            if shape != given:  # conv1d: (C, L) as (C, 1, L)
                x = x.reshape(shape)
            interior[...] = x if crop is None else x[crop]
            runtime.sharded(kernel, batch, *args)
            return y

        return run

    def _direct_backward(self, dy4, need_dx):
        n, cin, cout = self.n, self.in2[0], self.options["filters"]
        (dh, dw), wp = self.d2, self.wp
        weight = self.params["weight"].reshape(cout, cin, *self.k2)
        dweight = self.grads["weight"].reshape(cout, cin, *self.k2)
        dbias = self.grads["bias"] if "bias" in self.grads else self.bias_scratch
        y, relu, xpad = self.y, self.fuse_relu, self.xpad
        buf = self._direct_buffers(n)
        acc = buf.get("grad_weight_sums")
        if acc is None:
            ntaps = cin * self.k2[0] * self.k2[1]
            acc = buf["grad_weight_sums"] = np.empty(self.K.grad_weight_sums_shape(cout, ntaps, self.dtype), self.dtype)
        groups = -(-cout // self.K.WINDOW_ROWS)
        runtime.sharded(self.K.direct_grad_weight, groups, xpad, dy4, y, relu, dh, dw, wp, acc, dweight, dbias)
        if not need_dx:
            return None
        if not self.scatter_input_grad:
            return self._input_grad_by_gemm(dy4)
        dxpad = buf.get("dxpad")
        if dxpad is None:
            dxpad = buf["dxpad"] = np.empty_like(xpad)
        runtime.sharded(self.K.direct_grad_input, n, dy4, y, relu, weight, dh, dw, wp, dxpad)
        interior, rows, cols = self._interior(dxpad)
        dx = np.zeros((n,) + self.in2, self.dtype)  # input rows no window reads get no gradient
        dx[:, :, :rows, :cols] = interior
        return dx.reshape((n,) + self.input_shape)

    def _input_grad_by_gemm(self, dy4):
        """dx of a direct layer with many taps: the im2col path's product and col2im, the
        column matrix only as scratch (the bias gradient is already summed)."""
        n, cin, cout = self.n, self.in2[0], self.options["filters"]
        rows, npos = cin * self.k2[0] * self.k2[1], n * self.o2[0] * self.o2[1]
        buf = self._scratch(
            ("direct input grad", n),
            lambda key: {
                "dycn": np.empty((cout, npos), self.dtype),
                "dcols": np.empty((rows, npos), self.dtype),
                "xt": np.empty(self.in2 + (n,), self.dtype),
            },
        )
        dycn, unused_bias_sums = buf["dycn"], np.empty(cout, self.dtype)
        y3 = self.y.reshape(n, cout, -1)
        self.K.conv_grad_output(dy4.reshape(n, cout, -1), y3, self.fuse_relu, dycn, unused_bias_sums)
        return self._input_grad_from_columns(dycn, buf["dcols"], buf["xt"])

    def _input_grad_from_columns(self, dycn, dcols, xt, weight_grad=None):
        """dx from the output gradient as GEMM columns (Cout, positions): the column
        matrix's gradient W^T @ dycn, then col2im (xt its scratch). `weight_grad`: also
        the weight gradient's product (product, its output), in the same hand-over."""
        n, cin, cout = self.n, self.in2[0], self.options["filters"]
        dcols_product = (self.params["weight"].reshape(cout, -1).T, dycn, dcols)
        runtime.matmuls(dcols_product, *([weight_grad] if weight_grad is not None else []))
        dx = np.empty((n,) + self.in2, self.dtype)
        self.K.col2im(dcols, *self._args(), xt, dx.reshape(n, cin, -1))
        return dx.reshape((n,) + self.input_shape)

    def backward(self, dy, need_dx=True):
        if (self.by_direct and not self.direct) or self.pooled:
            raise RuntimeError(f"{self.name}: backward needs the outputs of forward(training=True)")
        n, cout = self.n, self.options["filters"]
        if self.direct:
            dy4 = np.ascontiguousarray(dy.reshape((n, cout) + self.o2), dtype=self.dtype)
            return self._direct_backward(dy4, need_dx)
        dy3 = dy.reshape(n, cout, -1)
        if not dy3.flags.c_contiguous:
            dy3 = np.ascontiguousarray(dy3)
        buf = self._buffers(n)
        dycn = buf["ycn"]  # the forward's GEMM output is no longer needed: reuse it
        dbias = self.grads["bias"] if "bias" in self.grads else self.bias_scratch
        self.K.conv_grad_output(dy3, self.y.reshape(n, cout, -1), self.fuse_relu, dycn, dbias)
        weight_grad = (dycn, self.cols.T, self.grads["weight"].reshape(cout, -1))
        if not need_dx:
            runtime.matmul(*weight_grad)
            return None
        dcols = buf.get("dcols")
        if dcols is None:
            dcols = buf["dcols"] = np.empty_like(self.cols)
        return self._input_grad_from_columns(dycn, dcols, buf["xt"], weight_grad)

    def flops(self):
        cout, cin = self.params["weight"].shape[:2]
        positions = int(np.prod(self.output_shape[1:]))
        k = int(np.prod(self.options["kernel"]))
        return positions * cout * (2 * cin * k + (1 if "bias" in self.params else 0))

    def describe(self):
        o = self.options
        k = "x".join(map(str, o["kernel"]))
        parts = [f"{o['filters']} filters {k}"]
        if any(s != 1 for s in o["stride"]):
            parts.append("stride " + "x".join(map(str, o["stride"])))
        if o["padding"] != "valid":
            parts.append(f"pad {o['padding'] if isinstance(o['padding'], str) else list(o['padding'])}")
        if any(d != 1 for d in o["dilation"]):
            parts.append("dil " + "x".join(map(str, o["dilation"])))
        return ", ".join(parts) + (", relu fused in" if self.fuse_relu else "")


def _options(n):
    return {
        "filters": Opt(positive_int),
        "kernel": Opt(int_tuple(n)),
        "stride": Opt(int_tuple(n), (1,) * n),
        "padding": Opt(padding(n), "valid", "valid, same, or an integer (both sides)"),
        "dilation": Opt(int_tuple(n), (1,) * n),
        "bias": Opt(boolean, True),
        "init": Opt(choice(*INITS), "auto", "auto: He before relu, Glorot otherwise"),
    }


class Conv2D(_Conv):
    kind = "conv2d"
    ndim = 2
    OPTIONS = _options(2)
    EXAMPLE = {
        "options": {"filters": 3, "kernel": [3, 2], "stride": [2, 1], "padding": "same", "dilation": [1, 2]},
        "input": (2, 7, 6),
    }


class Conv1D(_Conv):
    kind = "conv1d"
    ndim = 1
    OPTIONS = _options(1)
    EXAMPLE = {
        "options": {"filters": 3, "kernel": 4, "stride": 2, "padding": "same", "dilation": 2},
        "input": (2, 9),
    }
