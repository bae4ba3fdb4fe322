"""Optimizers over the model's flat parameter buffer, learning-rate schedules, clipping.

Each optimizer is one fused Numba pass over all parameters; its state is a few flat
arrays of the same size, which is all a checkpoint needs to store.
"""

from __future__ import annotations

import math

import numpy as np


class Optimizer:
    state_names: tuple = ()

    def __init__(self, spec, n, dtype):
        self.spec = spec
        self.step_count = 0
        self.state = {name: np.zeros(n, dtype) for name in self.state_names}

    def step(self, params, grads, lr):
        self.step_count += 1
        self._update(params, grads, lr)

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

    def _update(self, p, g, lr):
        from .kernels.elementwise import sgd_update

        s = self.spec
        sgd_update(p, g, self.state["velocity"], lr, s.momentum, s.weight_decay, s.nesterov)


class Adam(Optimizer):
    """Adam with bias correction; `adamw` decouples the weight decay (Loshchilov & Hutter)."""

    state_names = ("m", "v")
    decoupled = False

    def _update(self, p, g, lr):
        from .kernels.elementwise import adam_update

        s = self.spec
        adam_update(
            p, g, self.state["m"], self.state["v"], lr, s.beta1, s.beta2, s.eps, s.weight_decay,
            self.decoupled, self.step_count,
        )


class AdamW(Adam):
    decoupled = True


class RMSprop(Optimizer):
    """RMSprop; `beta2` is the smoothing constant of the squared-gradient average."""

    state_names = ("square_avg", "velocity")

    def _update(self, p, g, lr):
        from .kernels.elementwise import rmsprop_update

        s = self.spec
        rmsprop_update(
            p, g, self.state["square_avg"], self.state["velocity"], lr, s.beta2, s.eps, s.weight_decay, s.momentum
        )


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def make(spec, n, dtype=np.float32) -> Optimizer:
    return OPTIMIZERS[spec.name](spec, n, dtype)


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


def clip_by_global_norm(grads, norm, max_norm):
    """Scale all gradients so their global norm is at most max_norm; returns the factor."""
    if max_norm is None or norm <= max_norm or not np.isfinite(norm):
        return 1.0
    from .kernels.elementwise import scale_inplace

    factor = max_norm / (norm + 1e-12)
    scale_inplace(grads, grads.dtype.type(factor))
    return factor
