"""The layer contract (see DESIGN.md): everything the model and the tools may rely on.

Methods:
- `build(input_shape) -> output_shape` creates `params` (seeded initialisation) and `buffers`.
- `forward(x, training) -> y` keeps what backward needs. Backward follows a training forward;
  a layer may keep less when `training` is False (recurrent layers keep one step's gates)
  and then refuses backward.
- `backward(dy, need_dx=True) -> dx` may overwrite `dy`, and writes each `grads[name]` *in place*: after
  `Model.build` the params and grads are views into the model's two flat buffers, which
  is what lets the optimizer (and, later, an allreduce) treat them as one array.
- `evaluator(batch) -> fn or None`: the evaluation forward for batches of `batch` rows,
  its buffers bound once (predict's per-batch pass); None passes the input through.

Two kinds of arrays:
- `params` / `grads` (same keys): trainable. The optimizer, weight decay, clipping, gradient
  norms and gradient checks see these and only these.
- `buffers`: non-trainable state a layer updates itself (batchnorm's running statistics),
  in `forward(training=True)` only, and uses when `training` is False. Checkpoints save them
  with the parameters and resume restores them, but they live outside the flat buffers, so
  nothing that updates or measures parameters ever touches them.

Capabilities are class attributes the model reads (a new layer type sets them in its own
file; the model keeps no lists of layer kinds). Attributes the model sets while building
are declared here with their defaults. Shapes exclude the batch dimension. Layers hold the
bookkeeping; kernels do the arithmetic.
"""

import functools
import math

import numpy as np

from ..errors import ShapeError
from ..options import defaults


class Layer:
    kind = "layer"
    OPTIONS: dict = {}
    SHORTHAND = None  # option set by `kind: value`, e.g. `dense: 64`
    # EXAMPLE: a representative configuration for `dlcli gradcheck --all`/`--layer`, options
    # and the input shape of one sample. No default here: every layer type states its own
    # (a test fails for one that does not).

    # -- capabilities (read by the model and the tools) ----------------------------
    FUSES_RELU = False  # can apply a following relu in its own output pass, and its mask in backward
    # In evaluation, can apply the max pooling that follows it (after its fused relu, if
    # any) in its own output pass: `forward` then returns the pool's output and sets
    # `self.pooled`; the pool passes it through.
    FUSES_POOL = False
    POOL_FUSABLE = False  # a max pooling that a FUSES_POOL layer before it may apply
    RECORDS_TIME_GRADS = False  # recurrent: honours `record_time_grads` (see below)
    # A merge layer (add, concat) takes a list of inputs: `build(list of shapes)`,
    # `forward(list of arrays)`, and `backward(dy)` returns a list, one dx per input, none
    # of them sharing memory (each producer may overwrite the one it gets).
    MERGE = False
    KERNELS = ()  # modules of dlcli/kernels it calls: a first run says it compiles them
    # takes token ids (embedding): reads the model input; no input gradient (backward returns None)
    INTEGER_INPUT = False
    PER_TIME_STEP = False  # acts on each time step alone: `dlcli generate` runs it on one step at a time
    # Carries a state from one time step to the next (rnn, lstm, gru): `initial_state(batch)`
    # and `step(x_t, state) -> (y_t, state)`, so text is generated without re-running a prefix.
    STATEFUL = False
    # forward(training=True) draws from `self.rng` (dropout's mask): the trainer gives it a
    # fresh generator every step, seeded from (seed, epoch, step, layer index), so a run that
    # stops anywhere and resumes draws the same bits as one that never stopped.
    DRAWS_RANDOM = False

    # -- set by the model while building -------------------------------------------
    next_kind = None  # kind of the layer that consumes this one's output (`init: auto` looks ahead)
    fuse_relu = False  # FUSES_RELU layers: the relu after this layer is applied here
    fused = False  # a relu applied by the layer before it: forward and backward pass through
    fuse_pool = None  # FUSES_POOL layers: the pool after them, to apply in evaluation when they can
    pooled = False  # FUSES_POOL layers: the latest forward returned its pool's output
    pooled_by = None  # POOL_FUSABLE layers: the layer that may have applied this pool already
    label = None  # the spec's `name:` for this layer, if it has one
    input_names = ()  # what feeds each input (`input`, a layer's name): for error messages
    # RECORDS_TIME_GRADS layers: when set, `backward` stores `time_grad_norms`, one norm of
    # dL/dh_t per time step (for inspect-gradients); otherwise it costs nothing.
    record_time_grads = False
    time_grad_norms = None
    # When set, `build` only counts the entries of the parameters and buffers it would
    # create (in `planned`) and allocates nothing: the memory estimate runs it first.
    planning = False
    # When set, a checkpoint will overwrite every parameter and buffer: `build` allocates
    # zeros instead of drawing initial values (an LSTM's orthogonal init costs a second).
    loading = False

    def __init__(self, dtype=np.float32, rng=None, name=None, **options):
        self.dtype = np.dtype(dtype)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.name = name or self.kind
        self.options = {**defaults(self.OPTIONS), **options}  # the spec gives all; direct construction may not
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}  # non-trainable state: saved and restored, never optimised
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

    def evaluator(self, batch):
        """x -> forward(x, training=False) for batches of `batch` rows, for a stream of
        predictions (`Model.evaluator`). A layer may bind its buffers and kernel arguments
        here once, so that a call pays its kernels and little else; such a pass owns its
        buffers and may return the same array every call.
        None: the layer passes its input through at this batch size (a relu or pool the
        layer before applies)."""
        return functools.partial(self.forward, training=False)

    # -- description ---------------------------------------------------------
    def flops(self):
        """Forward floating-point operations per sample (multiply-add = 2)."""
        return 0

    def n_params(self):
        return sum(p.size for p in self.params.values())

    def n_buffer_entries(self):
        return sum(b.size for b in self.buffers.values())

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

    def work_entries(self, output_shape):
        """Entries per sample this layer holds while training (its output, what backward
        keeps, the gradient it passes back): the memory estimate's activations."""
        return 3 * math.prod(output_shape)

    def add_param(self, name, shape, make):
        """Parameter `name` of `shape`, its values from `make()`; when planning, only counted."""
        self._add("params", name, shape, make)

    def add_buffer(self, name, shape, make):
        """Non-trainable state `name` of `shape` (see `buffers`); when planning, only counted."""
        self._add("buffers", name, shape, make)

    def _add(self, kind, name, shape, make):
        if self.planning:  # entries by kind; Python ints, so a huge size never overflows
            self.planned[kind] = self.planned.get(kind, 0) + math.prod(int(n) for n in shape)
        elif self.loading:
            getattr(self, kind)[name] = np.zeros(shape, self.dtype)
        else:
            getattr(self, kind)[name] = make()


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
