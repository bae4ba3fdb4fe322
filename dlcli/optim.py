"""Optimizers over the model's flat parameter buffer, learning-rate schedules, clipping.

Each optimizer is one fused Numba pass over all parameters; its state is a few flat
arrays of the same size, which is all a checkpoint needs to store.
"""

from __future__ import annotations

import math

import numpy as np


class Optimizer:
    state_names: tuple = ()

    def __init__(self, spec, n, dtype, offsets=None):
        self.spec = spec
        self.step_count = 0
        self.state = {name: np.zeros(n, dtype) for name in self.state_names}
        offsets = np.asarray(offsets if offsets is not None else [0, n], dtype=np.int64)
        self.chunks, self.chunk_owner = segment_chunks(offsets)
        self.chunk_sumsq = np.zeros(len(self.chunks))
        self.n_segments = len(offsets) - 1

    def step(self, params, grads, lr, scale=1.0):
        """Update params from grads * scale (scalars go to the kernel in the buffer's dtype,
        so float32 loops stay float32 and vectorise); returns the sum of squares of the raw
        gradient of each segment (offsets[k]:offsets[k+1]), computed in the same pass."""
        self.step_count += 1
        self._update(params, grads, params.dtype.type, lr, scale)
        return np.bincount(self.chunk_owner, self.chunk_sumsq, minlength=self.n_segments)

    def state_dict(self):
        return {**self.state, "step": np.array(self.step_count, np.int64)}

    def load_state_dict(self, arrays):
        for name, a in self.state.items():
            if name in arrays and arrays[name].shape == a.shape:
                a[...] = arrays[name]
        if "step" in arrays:
            self.step_count = int(arrays["step"])


class SGD(Optimizer):
    """SGD with momentum, Nesterov momentum and L2 weight decay (PyTorch's semantics)."""

    state_names = ("velocity",)

    def _update(self, p, g, t, lr, scale):
        from .kernels.elementwise import sgd_update

        s = self.spec
        sgd_update(
            p,
            g,
            self.state["velocity"],
            t(lr),
            t(s.momentum),
            t(s.weight_decay),
            s.nesterov,
            t(scale),
            self.chunks,
            self.chunk_sumsq,
        )


class Adam(Optimizer):
    """Adam with bias correction; `adamw` decouples the weight decay (Loshchilov & Hutter)."""

    state_names = ("m", "v")
    decoupled = False

    def _update(self, p, g, t, lr, scale):
        from .kernels.elementwise import adam_update

        s = self.spec
        c1, c2 = 1 - s.beta1**self.step_count, 1 - s.beta2**self.step_count
        adam_update(
            p,
            g,
            self.state["m"],
            self.state["v"],
            t(lr),
            t(s.beta1),
            t(s.beta2),
            t(s.eps),
            t(s.weight_decay),
            self.decoupled,
            t(c1),
            t(c2),
            t(scale),
            self.chunks,
            self.chunk_sumsq,
        )


class AdamW(Adam):
    decoupled = True


class RMSprop(Optimizer):
    """RMSprop; `beta2` is the smoothing constant of the squared-gradient average."""

    state_names = ("square_avg", "velocity")

    def _update(self, p, g, t, lr, scale):
        from .kernels.elementwise import rmsprop_update

        s = self.spec
        rmsprop_update(
            p,
            g,
            self.state["square_avg"],
            self.state["velocity"],
            t(lr),
            t(s.beta2),
            t(s.eps),
            t(s.weight_decay),
            t(s.momentum),
            t(scale),
            self.chunks,
            self.chunk_sumsq,
        )


def segment_chunks(offsets, chunk=16384):
    """(start, end) rows covering each segment offsets[k]:offsets[k+1] in pieces of at most
    `chunk` entries, and the segment index of each row. Plain Python: run once."""
    rows, owner = [], []
    for k in range(len(offsets) - 1):
        for start in range(int(offsets[k]), int(offsets[k + 1]), chunk):
            rows.append((start, min(start + chunk, int(offsets[k + 1]))))
            owner.append(k)
    return np.array(rows, dtype=np.int64).reshape(-1, 2), np.array(owner, dtype=np.int64)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def make(spec, n, dtype=np.float32, offsets=None) -> Optimizer:
    """An optimizer for n parameters; `offsets` splits them into segments (the model's
    layers) whose gradient norms each step returns."""
    return OPTIMIZERS[spec.name](spec, n, dtype, offsets)


def for_model(spec, model) -> Optimizer:
    return make(spec, model.n_params(), model.dtype, model.layer_offsets)


def learning_rate(spec, epoch_progress: float, total_epochs: int) -> float:
    """The scheduled learning rate at a (fractional) epoch: constant, step or cosine,
    after an optional linear warm-up."""
    sched = spec.schedule
    base = spec.lr
    if sched.warmup_epochs and epoch_progress < sched.warmup_epochs:
        return base * (epoch_progress + 1e-9) / sched.warmup_epochs
    if sched.name == "step":
        return base * sched.gamma ** int(epoch_progress // sched.step_size)
    if sched.name == "cosine":
        span = max(total_epochs - sched.warmup_epochs, 1e-9)
        t = min(max(epoch_progress - sched.warmup_epochs, 0.0) / span, 1.0)
        return sched.min_lr + 0.5 * (base - sched.min_lr) * (1 + math.cos(math.pi * t))
    return base


def clip_factor(norm, max_norm):
    """The factor that scales gradients of global norm `norm` down to at most max_norm."""
    if max_norm is None or norm <= max_norm or not np.isfinite(norm):
        return 1.0
    return max_norm / (norm + 1e-12)
