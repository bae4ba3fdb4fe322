"""The training loop, readable top to bottom. Everything else hangs off it as callbacks
that receive events: the dashboard, the metrics log, the checkpointer."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np

from . import optim
from .data import batches
from .errors import TrainingDiverged


@dataclass
class StepEvent:
    epoch: int  # 0-based
    step: int  # global step, 1-based
    epoch_step: int
    steps_per_epoch: int
    loss: float
    acc: float | None
    lr: float
    grad_norm: float
    layer_grad_norms: np.ndarray
    samples_per_s: float
    elapsed: float


@dataclass
class EpochEvent:
    epoch: int  # 0-based, completed
    epochs: int
    step: int
    train_loss: float
    train_acc: float | None
    val_loss: float | None
    val_acc: float | None
    lr: float
    elapsed: float
    samples_per_s: float


@dataclass
class TrainResult:
    epochs_done: int
    step: int
    history: list = field(default_factory=list)  # EpochEvents
    stopped: str = "finished"  # finished | early_stopped | interrupted | diverged
    message: str = ""
    epoch_step: int = 0  # batches done in the unfinished epoch (interrupted runs)
    clean: bool = True  # False when stopped mid-step: the parameters must not be saved
    test: dict | None = None  # the test split's score with the kept checkpoint


@contextmanager
def stop_on_interrupt(flag, terminate=True):
    """First Ctrl-C sets flag["stop"] so the loop stops between steps with consistent
    parameters; a second Ctrl-C interrupts at once. `terminate`: SIGTERM (`timeout`, a
    batch system ending a job) does the same, and flag["signal"] says which came first.
    (Under MPI the launcher's SIGTERM ends the ranks as before: a rank stopping on its own
    would wait for the others in the next allreduce.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.get("stop"):
            raise KeyboardInterrupt
        flag["stop"] = True
        flag.setdefault("signal", signal.Signals(signum).name)

    caught = [signal.SIGINT] + ([signal.SIGTERM] if terminate else [])
    previous = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


class Callback:
    def on_start(self, trainer): ...
    def on_step(self, trainer, event: StepEvent): ...
    def on_epoch(self, trainer, event: EpochEvent): ...
    def on_end(self, trainer, result: TrainResult): ...
    def close(self):
        """Give back what on_start took (the terminal, a file); runs however the run ended."""


def train_step(model, loss_fn, optimizer, xb, yb, lr, clip_norm=None, sync=None, global_rows=None, stop=False):
    """One step: forward, loss, backward, (under MPI) combine the ranks' gradients, clip,
    update. Returns (loss, hits, global grad norm, per-layer grad norms); a non-finite loss
    or gradient returns before the update, so the parameters stay the last good ones.
    `sync` (a distributed.World) makes xb this rank's share of a global batch of
    `global_rows` and takes the step from the loss on: the loss and the gradients become
    the global batch's on every rank; `stop` (this rank was asked to stop) is shared with
    the loss (`sync.stop_agreed`)."""
    out = model.forward(xb, training=True)
    loss, dout, hits = loss_fn(out, yb)
    if sync is not None:
        return sync.train_step(model, optimizer, loss, dout, hits, len(xb), global_rows, lr, clip_norm, stop)
    if not np.isfinite(loss):
        return loss, hits, float("nan"), None
    model.backward(dout)
    return step_result(loss, hits, *update(model, optimizer, lr, clip_norm))


def step_result(loss, hits, grad_norm, layer_norms):
    """What a step returns: a gradient norm that is not finite makes the loss NaN (the
    parameters are spoilt or were not updated), so the trainer stops without saving."""
    return (loss if np.isfinite(grad_norm) else float("nan")), hits, grad_norm, layer_norms


def update(model, optimizer, lr, clip_norm=None):
    """Clip and update from the gradient in grads_flat: (global grad norm, per-layer grad
    norms); a non-finite norm means nothing was updated (when clipping) or the parameters
    are spoilt (the update overflowed), and training must stop without saving them."""
    scale = 1.0
    if clip_norm is not None:  # clipping needs the norm before the update: one extra pass
        layer_norms = model.layer_grad_norms()
        grad_norm = float(np.sqrt(np.sum(layer_norms**2)))
        if not np.isfinite(grad_norm):
            return grad_norm, layer_norms
        scale = optim.clip_factor(grad_norm, clip_norm)
    # The update pass also sums each layer's squared gradient: the norms come for free.
    layer_norms = np.sqrt(optimizer.step(model.params_flat, model.grads_flat, lr, scale))
    return float(np.sqrt(np.sum(layer_norms**2))), layer_norms


def epoch_rate(rows, seconds, first_rows=0, first_s=0.0):
    """Samples/s of an epoch, leaving out the run's first step when the epoch had others:
    that step may wait seconds for the kernel compiler (a 1-epoch spirals run read 1,069
    samples/s beside steps at 157,309)."""
    if rows > first_rows and seconds > first_s:
        return (rows - first_rows) / max(seconds - first_s, 1e-9)
    return rows / max(seconds, 1e-9)


class Trainer:
    def __init__(self, model, loss, optimizer, dataset, spec, callbacks=(), start_epoch=0, skip_steps=0, sync=None):
        self.model, self.loss, self.optimizer, self.dataset, self.spec = model, loss, optimizer, dataset, spec
        self.sync = sync  # a distributed.World under MPI: this rank trains on its share of each batch
        self.callbacks = list(callbacks)
        self.start_epoch = start_epoch
        self.skip_steps = skip_steps  # batches of start_epoch already done (resuming an interrupted run)
        self.interrupt = {}
        self.epochs = spec.train.epochs
        self.batch_size = spec.train.batch_size
        self.steps_per_epoch = -(-len(dataset.x_train) // self.batch_size)
        self.step = optimizer.step_count
        self.history = []
        self.state = {}  # JSON-able state of callbacks and schedules, saved in checkpoints
        self.stop_reason = None  # a callback sets it to end training after this epoch
        self.best_params = None  # the best epoch's parameters (keep_best)
        self.resumed = None  # {"from", "epoch", "epoch_step", "step", "changes"} when continuing a checkpoint
        self.output = None  # the checkpoint path
        self.compiling = []  # layer kinds whose kernels the first step compiles (empty cache)
        self.compile_shared = ""  # who shares that work: "2 processes" (dlcli/precompile.py), "2 ranks" (MPI)
        self.schedule = optim.schedule(spec.optimizer)

    def _emit(self, name, *args):
        for cb in self.callbacks:
            getattr(cb, name)(self, *args)

    def train_step(self, xb, yb, lr, global_rows=None):
        clip = self.spec.train.clip_norm
        stop = bool(self.interrupt.get("stop"))
        return train_step(self.model, self.loss, self.optimizer, xb, yb, lr, clip, self.sync, global_rows, stop)

    def stop_requested(self):
        """Ctrl-C was pressed. Under MPI: on any rank, as the last step's loss allreduce
        told every rank alike (so they stop at the same step, one step after the key)."""
        if self.sync is not None:
            return self.sync.stop_agreed
        return bool(self.interrupt.get("stop"))

    def evaluate(self, x, y, batch_size=1024):
        """Mean loss and accuracy (None for regression) over a whole split (under MPI each
        rank evaluates its share and the sums are combined)."""
        n = len(x)
        if n == 0:
            return None, None
        if self.sync is not None:
            lo, hi = self.sync.share(n)
            x, y = x[lo:hi], y[lo:hi]
        total, hits, items = 0.0, 0, 0
        for xb, yb in batches(x, y, batch_size):
            out = self.model.forward(xb, training=False)
            loss, _, h = self.loss(out, yb)
            total += loss * len(xb)
            if h is not None:
                hits += h
                items += yb.size
        if self.sync is not None:
            total, hits, items = self.sync.sum(total, hits, items)
        acc = hits / items if items else None
        return total / n, acc

    def fit(self) -> TrainResult:
        """Run the loop. Every callback's `close` runs on the way out, also when an
        exception escapes: the terminal leaves Live mode and the metrics log is flushed."""
        with ExitStack() as closing:
            for cb in self.callbacks:
                closing.callback(cb.close)
            self.state.setdefault("schedule", {})
            self.first_step = self.step  # where this run starts (a resumed run: past 0)
            self._emit("on_start")
            t0 = time.perf_counter()
            result = TrainResult(self.start_epoch, self.step)
            try:
                with stop_on_interrupt(self.interrupt, terminate=self.sync is None):
                    self._loop(result, t0)
            except KeyboardInterrupt:  # a second Ctrl-C, mid-step: the parameters may be torn
                self.interrupt["stop"] = True
                result.clean = False
            except TrainingDiverged as e:
                result.stopped = "diverged"
                result.message = str(e)
            if self.interrupt.get("stop") and result.stopped == "finished" and result.epochs_done < self.epochs:
                result.stopped = "interrupted"
                how = "terminated (SIGTERM)" if self.interrupt.get("signal") == "SIGTERM" else "interrupted"
                result.message = f"{how} at epoch {result.epochs_done + 1}, step {self.step}"
            result.history = self.history
            result.step = self.step
            if result.stopped in ("finished", "early_stopped") and self.dataset.x_test is not None:
                result.test = self.score_test()
            self._emit("on_end", result)
            return result

    def score_test(self):
        """The test split's loss and accuracy with the checkpoint that is kept: the best
        epoch's with keep_best, else the last. Scored once, after training."""
        d = self.dataset
        best = self.best_params is not None
        if best:  # scored from a private copy: the parameters themselves stay as trained
            # (under MPI they may be memory the node's ranks share, which rank 0 may still
            # be reading to write the last checkpoint)
            trained = self.model.params_flat, self.model.grads_flat
            self.model.use_buffers(trained[0].copy(), trained[1], copy=False)
            self.model.load_state(self.best_params)
        try:
            loss, acc = self.evaluate(d.x_test, d.y_test)
        finally:
            if best:
                self.model.use_buffers(*trained, copy=False)
        epoch = self.state["best"]["epoch"] if best else len(self.history) + self.start_epoch
        return {
            "loss": loss,
            "acc": acc,
            "samples": len(d.x_test),
            "epoch": epoch,
            "checkpoint": "best" if best else "last",
        }

    def _what_diverged(self, loss, gnorm, layer_norms):
        """'loss became NaN on rank 1' or, when the loss was finite and its gradients were
        not (`train_step` then returns the loss as NaN, with the layers' norms), 'the
        gradients became infinite' (under MPI: their sum over the ranks)."""
        if layer_norms is None:  # the loss itself: no backward ran
            where = self.sync.where() if self.sync is not None else ""
            return f"loss became {'NaN' if np.isnan(loss) else 'infinite'}{where}"
        summed = " (summed over the ranks)" if self.sync is not None else ""
        return f"the gradients{summed} became {'NaN' if np.isnan(gnorm) else 'infinite'}"

    def _check_finite(self, epoch, val_loss):
        """The last step's update may overflow, or leave a NaN that a ReLU hides from the
        loss: check the parameters (and the validation loss) before they are saved."""
        from .kernels.elementwise import all_finite

        params_ok = all_finite(self.model.params_flat)
        if not params_ok or (val_loss is not None and not np.isfinite(val_loss)):
            what = "the validation loss" if params_ok else "the parameters"
            raise TrainingDiverged(
                f"{what} became NaN or infinite at epoch {epoch + 1}, step {self.step}; training stopped "
                "and the last good checkpoint is kept. Try a smaller learning rate, or clip_norm under train."
            )

    def _loop(self, result, t0):
        d, spec = self.dataset, self.spec
        random_layers = [(i, layer) for i, layer in enumerate(self.model.layers) if layer.DRAWS_RANDOM]
        for epoch in range(self.start_epoch, self.epochs):
            rng = np.random.default_rng([spec.seed, 2, epoch]) if spec.data.shuffle else None
            rank = [self.sync.rank] if self.sync is not None else []  # each rank its own masks
            sum_loss, sum_hits, seen, items = 0.0, 0, 0, 0
            first_rows, first_s = 0, 0.0  # the run's first step, which may wait for the compiler
            epoch_t0 = time.perf_counter()
            share = self.sync.share if self.sync is not None else None
            for j, (xb, yb) in enumerate(batches(d.x_train, d.y_train, self.batch_size, rng, share)):
                if epoch == self.start_epoch and j < self.skip_steps:
                    continue
                if self.stop_requested():
                    self.interrupt["stop"] = True  # under MPI perhaps pressed on another rank
                    self._check_finite(epoch, None)  # the checkpointer saves these parameters next
                    result.epoch_step = j
                    return
                for i, layer in random_layers:  # the same masks whether or not the run stopped
                    layer.rng = np.random.default_rng([spec.seed, 3, epoch, j, i, *rank])
                lr = self.schedule(
                    spec.optimizer.lr, epoch + j / self.steps_per_epoch, self.epochs, self.state["schedule"]
                )
                n = min(self.batch_size, len(d.x_train) - j * self.batch_size)  # the global batch's rows
                ts = time.perf_counter()
                loss, hits, gnorm, layer_norms = self.train_step(xb, yb, lr, n)
                if not np.isfinite(loss):
                    raise TrainingDiverged(
                        f"{self._what_diverged(loss, gnorm, layer_norms)} at epoch {epoch + 1}, "
                        f"step {self.step + 1}; training stopped and the last good checkpoint is kept. "
                        "Try a smaller learning rate, or clip_norm under train."
                    )
                self.step += 1
                sum_loss += loss * n
                seen += n
                batch_items = n * int(np.prod(yb.shape[1:]))  # targets in the global batch
                if hits is not None:
                    sum_hits += hits
                    items += batch_items
                now = time.perf_counter()
                if self.step == self.first_step + 1:
                    first_rows, first_s = n, now - ts
                self._emit(
                    "on_step",
                    StepEvent(
                        epoch,
                        self.step,
                        j + 1,
                        self.steps_per_epoch,
                        loss,
                        hits / batch_items if hits is not None else None,
                        lr,
                        gnorm,
                        layer_norms,
                        n / max(now - ts, 1e-9),
                        now - t0,
                    ),
                )
            train_time = time.perf_counter() - epoch_t0
            val_loss, val_acc = self.evaluate(d.x_val, d.y_val)
            self._check_finite(epoch, val_loss)  # before on_epoch: a spoilt model is never saved
            event = EpochEvent(
                epoch,
                self.epochs,
                self.step,
                sum_loss / max(seen, 1),
                sum_hits / items if items else None,
                val_loss,
                val_acc,
                lr,
                time.perf_counter() - t0,
                epoch_rate(seen, train_time, first_rows, first_s),
            )
            self.history.append(event)
            metrics = {
                "val_loss": val_loss,
                "val_acc": val_acc,
                "train_loss": event.train_loss,
                "train_acc": event.train_acc,
            }
            self.schedule.epoch_end(self.state["schedule"], epoch, metrics)  # before the checkpoint saves it
            result.epochs_done = epoch + 1
            result.step = self.step
            self._emit("on_epoch", event)
            if self.stop_reason:
                result.stopped, result.message = "early_stopped", self.stop_reason
                return
