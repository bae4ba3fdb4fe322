"""Shape layers: flatten (any sample shape -> one vector; C-order, so NCHW flattens
channel by channel, then row by row) and permute (reorder a sample's axes)."""

import numpy as np

from ..errors import ShapeError
from ..options import REQUIRED, Opt
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


def permutation(v):
    """A list like [2, 1]: each sample axis (counted from 1, as Keras's Permute) once."""
    if (
        not isinstance(v, list)
        or not v
        or any(isinstance(d, bool) or not isinstance(d, int) for d in v)
        or sorted(v) != list(range(1, len(v) + 1))
    ):
        raise ValueError("must list every sample axis once, counted from 1, e.g. [2, 1]")
    return tuple(v)


class Permute(Layer):
    """Reorders the axes of each sample: `permute: [2, 1]` turns (time, channels) into
    (channels, time). The way to state a layout (channels-last data into a conv layer)
    instead of a reshape that would scramble the values."""

    kind = "permute"
    OPTIONS = {"dims": Opt(permutation, REQUIRED, "the new order of the sample axes, from 1")}
    SHORTHAND = "dims"
    EXAMPLE = {"options": {"dims": [2, 1]}, "input": (3, 4)}

    def build(self, input_shape):
        self.input_shape = tuple(input_shape)
        dims = self.options["dims"]
        if len(dims) != len(self.input_shape):
            raise ShapeError(
                f"{self.name}: dims {list(dims)} reorder {len(dims)} axes, but its input {self.input_shape} "
                f"has {len(self.input_shape)}"
            )
        self.axes = (0,) + tuple(dims)
        self.inverse = tuple(np.argsort(self.axes))
        self.output_shape = tuple(self.input_shape[d - 1] for d in dims)
        return self.output_shape

    def describe(self):
        return f"dims {list(self.options['dims'])}"

    def forward(self, x, training=False):
        if tuple(x.shape[1:]) != self.input_shape:
            raise self.shape_error(self.input_shape, x.shape[1:])
        return np.ascontiguousarray(x.transpose(self.axes))

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        return np.ascontiguousarray(dy.transpose(self.inverse))
