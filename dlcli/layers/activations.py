"""Parameter-free elementwise layers: relu, sigmoid, tanh, softmax, dropout."""

import numpy as np

from ..options import Opt, fraction
from .base import Layer


class _Elementwise(Layer):
    """Applies a flat kernel pair; keeps the input (relu) or the output (sigmoid, tanh)."""

    KERNELS = ("elementwise",)

    keeps = "output"
    PER_TIME_STEP = True
    EXAMPLE = {"options": {}, "input": (5,)}  # any shape does for an elementwise function

    def forward(self, x, training=False):
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        self.fwd(x.reshape(-1), y.reshape(-1))
        self.kept = x if self.keeps == "input" else y
        return y

    def evaluator(self, batch):
        y = np.empty((batch,) + self.input_shape, self.dtype)
        flat = y.reshape(-1)

        def run(x):
            if x.shape != y.shape:
                raise self.shape_error(y.shape, x.shape)
            self.fwd(np.ascontiguousarray(x, self.dtype).reshape(-1), flat)
            return y

        return run

    def backward(self, dy, need_dx=True):
        dy = np.ascontiguousarray(dy)
        dx = np.empty_like(dy)
        self.bwd(self.kept.reshape(-1), dy.reshape(-1), dx.reshape(-1))
        return dx


class ReLU(_Elementwise):
    kind = "relu"
    keeps = "input"

    def build(self, input_shape):
        from ..kernels import elementwise as K

        self.fwd, self.bwd = K.relu_forward, K.relu_backward
        return super().build(input_shape)

    def forward(self, x, training=False):
        return x if self.fused else super().forward(x, training)

    def evaluator(self, batch):
        return None if self.fused else super().evaluator(batch)

    def backward(self, dy, need_dx=True):
        return dy if self.fused else super().backward(dy, need_dx)

    def flops(self):
        return int(np.prod(self.input_shape))


class Sigmoid(_Elementwise):
    kind = "sigmoid"

    def build(self, input_shape):
        from ..kernels import elementwise as K

        self.fwd, self.bwd = K.sigmoid_forward, K.sigmoid_backward
        return super().build(input_shape)

    def flops(self):
        return 4 * int(np.prod(self.input_shape))


class Tanh(_Elementwise):
    kind = "tanh"

    def build(self, input_shape):
        from ..kernels import elementwise as K

        self.fwd, self.bwd = K.tanh_forward, K.tanh_backward
        return super().build(input_shape)

    def flops(self):
        return 4 * int(np.prod(self.input_shape))


class Softmax(Layer):
    """Softmax over the last axis. Before a cross-entropy loss the model leaves it out
    of training (the loss fuses it, stably) and applies it at prediction time."""

    KERNELS = ("elementwise",)

    kind = "softmax"
    PER_TIME_STEP = True  # over the last axis
    EXAMPLE = {"options": {}, "input": (5,)}

    def build(self, input_shape):
        from ..kernels import elementwise as K

        self.K = K
        return super().build(input_shape)

    def forward(self, x, training=False):
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        y = np.empty_like(x2)
        self.K.softmax_rows(x2, y)
        self.y = y
        return y.reshape(x.shape)

    def backward(self, dy, need_dx=True):
        dy2 = np.ascontiguousarray(dy.reshape(self.y.shape))
        dx = np.empty_like(dy2)
        self.K.softmax_rows_backward(self.y, dy2, dx)
        return dx.reshape(dy.shape)

    def flops(self):
        return 4 * int(np.prod(self.input_shape))


class Dropout(Layer):
    """Inverted dropout: scales kept units by 1/(1-rate) in training, identity otherwise.
    Its mask comes from the layer's own seeded generator (reseeded by the trainer every
    step), so runs repeat, also across a stop and a resume."""

    KERNELS = ("elementwise",)

    kind = "dropout"
    PER_TIME_STEP = True
    SHORTHAND = "rate"
    DRAWS_RANDOM = True
    OPTIONS = {"rate": Opt(fraction, 0.5)}
    EXAMPLE = {"options": {"rate": 0.3}, "input": (6,)}

    def evaluator(self, batch):
        return None  # identity in evaluation

    def forward(self, x, training=False):
        rate = self.options["rate"]
        if not training or rate == 0:
            self.mask = None
            return x
        from ..kernels import elementwise as K

        keep = 1.0 - rate
        mask = (self.rng.random(x.shape, dtype=np.float32) < keep).astype(self.dtype)
        mask *= self.dtype.type(1.0 / keep)
        self.mask = mask
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        K.dropout_apply(x.reshape(-1), mask.reshape(-1), y.reshape(-1))
        return y

    def backward(self, dy, need_dx=True):
        if self.mask is None:
            return dy
        return dy * self.mask

    def describe(self):
        return f"rate {self.options['rate']}"
