"""Optimizers over the model's flat parameter buffer, learning-rate schedules, clipping.

Each optimizer is one fused Numba pass over all parameters; its state is a few flat
arrays of the same size, which is all a checkpoint needs to store.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import CheckpointError
from .options import Opt, boolean, choice, fraction, non_negative_float, non_negative_int, positive_float, positive_int


class Optimizer:
    """Every optimizer has `name` and `lr` (the spec's own fields); OPTIONS are the rest,
    validated like a layer's: an option the chosen optimizer does not use is an error."""

    OPTIONS: dict = {"weight_decay": Opt(non_negative_float, 0.0, "L2 (adamw: decoupled)")}
    state_names: tuple = ()

    def __init__(self, spec, n, dtype, offsets=None):
        self.spec = spec
        self.options = spec.options
        self.step_count = 0
        self.state = {name: np.zeros(n, dtype) for name in self.state_names}
        self.offsets = np.asarray(offsets if offsets is not None else [0, n], dtype=np.int64)
        self.restrict(0, n)
        self.n_segments = len(self.offsets) - 1

    def restrict(self, lo, hi):
        """Update only parameters lo:hi from now on (a rank's part of a buffer that ranks on
        one node share); `step` then returns each segment's sum of squares within that part."""
        self.chunks, self.chunk_owner = segment_chunks(self.offsets, lo=lo, hi=hi)
        self.chunk_sumsq = np.zeros(len(self.chunks))

    def use_state(self, arrays, copy=True):
        """Keep the state in these flat arrays from now on (memory that ranks on one node
        share); the current values move there unless `copy` is False (another rank copies)."""
        for name, a in arrays.items():
            if copy:
                a[...] = self.state[name]
            self.state[name] = a

    def step(self, params, grads, lr, scale=1.0):
        """Update params from grads * scale (scalars go to the kernel in the buffer's dtype,
        so float32 loops stay float32 and vectorise); returns the sum of squares of the raw
        gradient of each segment (offsets[k]:offsets[k+1]), computed in the same pass."""
        self.step_count += 1
        self._update(params, grads, params.dtype.type, lr, scale)
        return np.bincount(self.chunk_owner, self.chunk_sumsq, minlength=self.n_segments)

    def state_dict(self):
        return {**self.state, "step": np.array(self.step_count, np.int64)}

    def load_state_dict(self, arrays, source="checkpoint"):
        """Restore the state a checkpoint stored; a state the checkpoint lacks (another
        optimizer wrote it) starts fresh, but a damaged one is refused."""
        for name, a in self.state.items():
            if name not in arrays:
                continue
            stored = arrays[name]
            if stored.shape != a.shape or stored.dtype.kind not in "fiu" or not np.isfinite(stored).all():
                raise CheckpointError(
                    f"{source}: optimizer state {name} ({stored.dtype}, shape {stored.shape}) does not fit "
                    f"the model's {a.size} parameters or is not finite"
                )
            a[...] = stored
        if "step" in arrays:
            step = arrays["step"]
            if step.shape != () or step.dtype.kind not in "iu" or step < 0:
                raise CheckpointError(f"{source}: optimizer step ({step.dtype}, shape {step.shape}) is not a count")
            self.step_count = int(step)


class SGD(Optimizer):
    """SGD with momentum, Nesterov momentum and L2 weight decay (PyTorch's semantics)."""

    OPTIONS = {**Optimizer.OPTIONS, "momentum": Opt(fraction, 0.0), "nesterov": Opt(boolean, False)}
    state_names = ("velocity",)

    def _update(self, p, g, t, lr, scale):
        from .kernels.elementwise import sgd_update

        o = self.options
        sgd_update(
            p,
            g,
            self.state["velocity"],
            t(lr),
            t(o["momentum"]),
            t(o["weight_decay"]),
            o["nesterov"],
            t(scale),
            self.chunks,
            self.chunk_sumsq,
        )


class Adam(Optimizer):
    """Adam with bias correction; `adamw` decouples the weight decay (Loshchilov & Hutter)."""

    OPTIONS = {
        **Optimizer.OPTIONS,
        "beta1": Opt(fraction, 0.9),
        "beta2": Opt(fraction, 0.999),
        "eps": Opt(positive_float, 1e-8),
    }
    state_names = ("m", "v")
    decoupled = False

    def _update(self, p, g, t, lr, scale):
        from .kernels.elementwise import adam_update

        o = self.options
        c1, c2 = 1 - o["beta1"] ** self.step_count, 1 - o["beta2"] ** self.step_count
        adam_update(
            p,
            g,
            self.state["m"],
            self.state["v"],
            t(lr),
            t(o["beta1"]),
            t(o["beta2"]),
            t(o["eps"]),
            t(o["weight_decay"]),
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

    OPTIONS = {
        **Optimizer.OPTIONS,
        "momentum": Opt(fraction, 0.0),
        "beta2": Opt(fraction, 0.999, "smoothing of the squared-gradient average"),
        "eps": Opt(positive_float, 1e-8),
    }
    state_names = ("square_avg", "velocity")

    def _update(self, p, g, t, lr, scale):
        from .kernels.elementwise import rmsprop_update

        o = self.options
        rmsprop_update(
            p,
            g,
            self.state["square_avg"],
            self.state["velocity"],
            t(lr),
            t(o["beta2"]),
            t(o["eps"]),
            t(o["weight_decay"]),
            t(o["momentum"]),
            t(scale),
            self.chunks,
            self.chunk_sumsq,
        )


def segment_chunks(offsets, chunk=16384, lo=0, hi=None):
    """(start, end) rows covering each segment offsets[k]:offsets[k+1] (within lo:hi) in
    pieces of at most `chunk` entries, and the segment index of each row. Plain Python:
    run once."""
    hi = int(offsets[-1]) if hi is None else hi
    rows, owner = [], []
    for k in range(len(offsets) - 1):
        a, b = max(int(offsets[k]), lo), min(int(offsets[k + 1]), hi)
        for start in range(a, b, chunk):
            rows.append((start, min(start + chunk, b)))
            owner.append(k)
    return np.array(rows, dtype=np.int64).reshape(-1, 2), np.array(owner, dtype=np.int64)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def make(spec, n, dtype=np.float32, offsets=None) -> Optimizer:
    """An optimizer for n parameters; `offsets` splits them into segments (the model's
    layers) whose gradient norms each step returns."""
    return OPTIMIZERS[spec.name](spec, n, dtype, offsets)


def for_model(spec, model) -> Optimizer:
    return make(spec, model.n_params(), model.dtype, model.layer_offsets)


class Schedule:
    """The learning rate by (fractional) epoch. Every schedule has an optional linear
    warm-up from 0, and counts its own epochs from the end of the warm-up (as torch's
    SequentialLR([LinearLR, ...]) does); OPTIONS are its own, validated like a layer's.
    A schedule that reacts to the metrics keeps its state in a JSON-able dict the trainer
    saves in checkpoints."""

    OPTIONS: dict = {"warmup_epochs": Opt(non_negative_int, 0, "linear warm-up from 0")}

    def __init__(self, options):
        self.options = options

    def __call__(self, base, epoch_progress, total_epochs, state=None):
        warmup = self.options["warmup_epochs"]
        if warmup and epoch_progress < warmup:
            return base * (epoch_progress + 1e-9) / warmup
        return self.after_warmup(base, epoch_progress - warmup, total_epochs - warmup, state)

    def after_warmup(self, base, epochs_after_warmup, epochs_left, state):
        return base

    def epoch_end(self, state, epoch, metrics):
        """Called after each epoch with its metrics (val_loss, val_acc, train_loss, ...)."""


class Step(Schedule):
    """Multiply by `gamma` every `step_size` epochs."""

    OPTIONS = {
        **Schedule.OPTIONS,
        "step_size": Opt(positive_int, 10, "epochs between decays"),
        "gamma": Opt(positive_float, 0.1, "decay factor"),
    }

    def after_warmup(self, base, epochs_after_warmup, epochs_left, state):
        o = self.options
        return base * o["gamma"] ** int(epochs_after_warmup // o["step_size"])


class Cosine(Schedule):
    """Half a cosine from `lr` down to `min_lr` over the epochs after the warm-up."""

    OPTIONS = {**Schedule.OPTIONS, "min_lr": Opt(non_negative_float, 0.0, "final learning rate")}

    def after_warmup(self, base, epochs_after_warmup, epochs_left, state):
        min_lr = self.options["min_lr"]
        t = min(max(epochs_after_warmup, 0.0) / max(epochs_left, 1e-9), 1.0)
        return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * t))


class Plateau(Schedule):
    """Multiply the rate by `factor` when `monitor` has not improved for more than
    `patience` epochs, down to `min_lr` (torch's ReduceLROnPlateau: relative threshold,
    then `cooldown` epochs before counting again)."""

    OPTIONS = {
        **Schedule.OPTIONS,
        "monitor": Opt(choice("val_loss", "val_acc", "train_loss", "train_acc"), "val_loss", "metric to watch"),
        "factor": Opt(fraction, 0.1, "multiplies the rate on a plateau"),
        "patience": Opt(non_negative_int, 10, "epochs without improvement before reducing"),
        "threshold": Opt(non_negative_float, 1e-4, "relative change that counts as an improvement"),
        "cooldown": Opt(non_negative_int, 0, "epochs after a reduction before counting again"),
        "min_lr": Opt(non_negative_float, 0.0, "lowest learning rate"),
    }

    def after_warmup(self, base, epochs_after_warmup, epochs_left, state):
        return max(base * (state or {}).get("scale", 1.0), min(self.options["min_lr"], base))

    def epoch_end(self, state, epoch, metrics):
        o = self.options
        if epoch + 1 <= o["warmup_epochs"]:
            return
        value = metrics.get(o["monitor"])
        if value is None:
            return
        state.setdefault("scale", 1.0)
        best, bad = state.get("best"), state.get("bad_epochs", 0)
        maximise = o["monitor"].endswith("acc")
        if best is None or (value > best * (1 + o["threshold"]) if maximise else value < best * (1 - o["threshold"])):
            state.update(best=value, bad_epochs=0)
        else:
            state["bad_epochs"] = bad + 1
        if state.get("cooldown", 0) > 0:
            state["cooldown"] -= 1
            state["bad_epochs"] = 0
        if state["bad_epochs"] > o["patience"]:
            state.update(scale=state["scale"] * o["factor"], cooldown=o["cooldown"], bad_epochs=0)


SCHEDULES = {"constant": Schedule, "step": Step, "cosine": Cosine, "plateau": Plateau}


def schedule(spec) -> Schedule:
    """The schedule object of the optimizer `spec`."""
    return SCHEDULES[spec.schedule.name](spec.schedule.options)


def learning_rate(spec, epoch_progress: float, total_epochs: int, state=None) -> float:
    """The scheduled learning rate at a (fractional) epoch of the optimizer `spec`; `state`
    is the schedule's (plateau) state."""
    return schedule(spec)(spec.lr, epoch_progress, total_epochs, state)


def clip_factor(norm, max_norm):
    """The factor that scales gradients of global norm `norm` down to at most max_norm."""
    if max_norm is None or norm <= max_norm or not np.isfinite(norm):
        return 1.0
    return max_norm / (norm + 1e-12)
