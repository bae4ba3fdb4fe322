"""Shape layers: flatten (any sample shape -> one vector; C-order, so NCHW flattens
channel by channel, then row by row)."""

import numpy as np

from .base import Layer


class Flatten(Layer):
    kind = "flatten"
    EXAMPLE = {"options": {}, "input": (2, 3, 4)}

    def build(self, input_shape):
        self.input_shape = tuple(input_shape)
        self.output_shape = (int(np.prod(self.input_shape)),)
        return self.output_shape

    def forward(self, x, training=False):
        if tuple(x.shape[1:]) != self.input_shape:
            raise self.shape_error(self.input_shape, x.shape[1:])
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        return dy.reshape((dy.shape[0],) + self.input_shape)
