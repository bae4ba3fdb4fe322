"""The layer contract (see DESIGN.md).

- `build(input_shape) -> output_shape` creates `params` (seeded initialisation).
- `forward(x, training) -> y` keeps what backward needs.
- `backward(dy, need_dx=True) -> dx` may overwrite `dy`, and writes each `grads[name]` *in place*: after
  `Model.build` the params and grads are views into the model's two flat buffers, which
  is what lets the optimizer (and, later, an allreduce) treat them as one array.
Shapes exclude the batch dimension. Layers hold the bookkeeping; kernels do arithmetic.
"""

import numpy as np

from ..errors import ShapeError
from ..options import defaults


class Layer:
    kind = "layer"
    OPTIONS: dict = {}
    SHORTHAND = None  # option set by `kind: value`, e.g. `dense: 64`
    # A representative configuration for `dlcli gradcheck --all`/`--layer`: options and
    # the input shape of one sample (every layer type must have one; a test checks).
    EXAMPLE = {"options": {}, "input": (5,)}

    def __init__(self, dtype=np.float32, rng=None, name=None, **options):
        self.dtype = np.dtype(dtype)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.name = name or self.kind
        self.options = {**defaults(self.OPTIONS), **options}  # the spec gives all; direct construction may not
        self.params: dict = {}
        self.grads: dict = {}
        self.input_shape = None
        self.output_shape = None

    # -- contract ------------------------------------------------------------
    def build(self, input_shape):
        self.input_shape = self.output_shape = tuple(input_shape)
        return self.output_shape

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy, need_dx=True):
        raise NotImplementedError

    # -- description ---------------------------------------------------------
    def flops(self):
        """Forward floating-point operations per sample (multiply-add = 2)."""
        return 0

    def n_params(self):
        return sum(p.size for p in self.params.values())

    def describe(self):
        """A short description of the options for the summary, e.g. '64 units'."""
        return ""

    # -- helpers -------------------------------------------------------------
    def shape_error(self, expected, got):
        return ShapeError(f"{self.name}: expects input of shape {expected}, got {tuple(got)}")

    def check_spatial_input(self, input_shape, ndim):
        """One sample as (channels, length) or (channels, height, width), or a ShapeError."""
        input_shape = tuple(input_shape)
        if len(input_shape) != ndim + 1:
            layout = "(channels, height, width)" if ndim == 2 else "(channels, length)"
            raise ShapeError(f"{self.name}: expects one sample of shape {layout}, got {input_shape}")
        return input_shape

    def zeros_like_params(self):
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}


def glorot_uniform(rng, fan_in, fan_out, shape, dtype):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def he_normal(rng, fan_in, shape, dtype):
    return (rng.standard_normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def lecun_normal(rng, fan_in, shape, dtype):
    return (rng.standard_normal(size=shape) * np.sqrt(1.0 / fan_in)).astype(dtype)


def initialise(rng, init, fan_in, fan_out, shape, dtype):
    if init == "he":
        return he_normal(rng, fan_in, shape, dtype)
    if init == "lecun":
        return lecun_normal(rng, fan_in, shape, dtype)
    return glorot_uniform(rng, fan_in, fan_out, shape, dtype)


INITS = ("auto", "glorot", "he", "lecun")
