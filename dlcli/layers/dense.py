"""Fully connected layer: y = x @ W + b over the last axis (time-distributed on sequences)."""

import math

import numpy as np

from .. import runtime
from ..options import Opt, boolean, choice, count_or_vocab
from .base import INITS, Layer, initialise


class Dense(Layer):
    KERNELS = ("dense",)
    kind = "dense"
    SHORTHAND = "units"
    OPTIONS = {
        "units": Opt(count_or_vocab, help="or 'vocab': one output per token of the text data's vocabulary"),
        "bias": Opt(boolean, True),
        "init": Opt(choice(*INITS), "auto", "auto: He before relu, Glorot otherwise"),
    }

    EXAMPLE = {"options": {"units": 4}, "input": (5,)}
    FUSES_RELU = True
    PER_TIME_STEP = True  # on sequences it applies to each step alone

    def build(self, input_shape):
        from ..kernels import dense as K

        self.K = K
        self.input_shape = tuple(input_shape)
        fan_in, units = self.input_shape[-1], self.options["units"]
        init = self.options["init"]
        if init == "auto":
            init = "he" if self.next_kind == "relu" else "glorot"
        shape = (fan_in, units)
        self.add_param("weight", shape, lambda: initialise(self.rng, init, fan_in, units, shape, self.dtype))
        if self.options["bias"]:
            self.add_param("bias", (units,), lambda: np.zeros(units, self.dtype))
        self.zeros_like_params()
        self.output_shape = self.input_shape[:-1] + (units,)
        return self.output_shape

    def forward(self, x, training=False):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if not x2.flags.c_contiguous:
            x2 = np.ascontiguousarray(x2)
        self.x = x2
        w = self.params["weight"]
        out = np.empty((x2.shape[0], w.shape[1]), self.dtype)
        b = self.params.get("bias")
        runtime.matmul(x2, w, out)
        if b is not None:
            self.K.bias_act(out, b, self.fuse_relu)
        elif self.fuse_relu:
            np.maximum(out, 0, out=out)
        self.y = out
        return out.reshape(lead + (w.shape[1],))

    def evaluator(self, batch):
        """The evaluation forward with its output array bound."""
        w, b, relu = self.params["weight"], self.params.get("bias"), self.fuse_relu
        shape = (batch,) + self.input_shape
        rows = math.prod(shape[:-1])
        out = np.empty((rows, w.shape[1]), self.dtype)
        y = out.reshape(shape[:-1] + (w.shape[1],))

        def run(x):
            if x.shape != shape:
                raise self.shape_error(shape, x.shape)
            runtime.matmul(x.reshape(rows, -1), w, out)
            if b is not None:
                self.K.bias_act(out, b, relu)
            elif relu:
                np.maximum(out, 0, out=out)
            return y

        return run

    def backward(self, dy, need_dx=True):
        w = self.params["weight"]
        dy2 = np.ascontiguousarray(dy.reshape(-1, w.shape[1]))
        has_bias = "bias" in self.grads
        if self.fuse_relu and has_bias:
            self.K.relu_mask_column_sums(self.y, dy2, self.grads["bias"])
        elif self.fuse_relu:
            self.K.relu_mask_inplace(self.y, dy2)
        elif has_bias:
            self.K.column_sums(dy2, self.grads["bias"])
        if not need_dx:
            runtime.matmul(self.x.T, dy2, self.grads["weight"])
            return None
        dx = np.empty_like(self.x)
        runtime.matmuls((self.x.T, dy2, self.grads["weight"]), (dy2, w.T, dx))
        return dx.reshape(dy.shape[:-1] + (w.shape[0],))

    def flops(self):
        fan_in, units = self.params["weight"].shape
        positions = int(np.prod(self.input_shape[:-1], dtype=np.int64)) if len(self.input_shape) > 1 else 1
        return positions * (2 * fan_in * units + (units if "bias" in self.params else 0))

    def describe(self):
        n = self.options["units"]
        return f"{n} unit{'' if n == 1 else 's'}" + (", relu fused in" if self.fuse_relu else "")
