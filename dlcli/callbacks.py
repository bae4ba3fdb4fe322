"""Callbacks that are not the dashboard: the metrics log and the checkpointer."""

from __future__ import annotations

import json
from pathlib import Path

from . import checkpoint
from .errors import OutputError
from .files import check_writable
from .train import Callback


def _clean(v):
    return None if v is None else round(float(v), 6)


class MetricsLog(Callback):
    """JSON lines: one object per step ({"event": "step", ...}) and per epoch.

    Step fields: event, epoch (1-based), step, loss, acc, lr, grad_norm, samples_per_s,
    and with `grad_norms=True` also layer_grad_norms (a name -> norm mapping).
    Epoch fields: event, epoch, step, train_loss, train_acc, val_loss, val_acc, lr,
    samples_per_s, elapsed_s.
    """

    def __init__(self, path, grad_norms=False):
        self.path = Path(path)
        try:  # before training starts: a bad --log path must not cost a run
            check_writable(self.path, OutputError)
        except OutputError as e:
            raise OutputError(f"the metrics log: {e}") from None
        self.grad_norms = grad_norms
        self.f = None

    def on_start(self, trainer):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a")
        self.names = [trainer.model.layers[i].name for i in trainer.model.param_layers]

    def _write(self, obj):
        self.f.write(json.dumps(obj) + "\n")

    def on_step(self, trainer, e):
        row = {
            "event": "step",
            "epoch": e.epoch + 1,
            "step": e.step,
            "loss": _clean(e.loss),
            "acc": _clean(e.acc),
            "lr": e.lr,
            "grad_norm": _clean(e.grad_norm),
            "samples_per_s": round(e.samples_per_s, 1),
        }
        if self.grad_norms:
            row["layer_grad_norms"] = {n: _clean(v) for n, v in zip(self.names, e.layer_grad_norms)}
        self._write(row)

    def on_epoch(self, trainer, e):
        self._write(
            {
                "event": "epoch",
                "epoch": e.epoch + 1,
                "step": e.step,
                "train_loss": _clean(e.train_loss),
                "train_acc": _clean(e.train_acc),
                "val_loss": _clean(e.val_loss),
                "val_acc": _clean(e.val_acc),
                "lr": e.lr,
                "samples_per_s": round(e.samples_per_s, 1),
                "elapsed_s": round(e.elapsed, 3),
            }
        )
        self.f.flush()

    def on_end(self, trainer, result):
        self.close()

    def close(self):
        if self.f is not None:
            self.f.close()  # flushes: the steps before a crash are in the log
            self.f = None


class Checkpointer(Callback):
    """Writes the checkpoint after every epoch and at a clean stop; never after a NaN."""

    def __init__(self, path, spec_text):
        self.path = Path(path)
        self.spec_text = spec_text
        self.saved = None

    def _save(self, trainer, epochs_done, epoch_step, metrics):
        meta = {"epochs_done": epochs_done, "epoch_step": epoch_step, "step": trainer.step, "metrics": metrics}
        checkpoint.save(self.path, self.spec_text, trainer.model, trainer.optimizer, meta, trainer.dataset)
        self.saved = self.path

    def on_epoch(self, trainer, e):
        metrics = {"train_loss": e.train_loss, "train_acc": e.train_acc, "val_loss": e.val_loss, "val_acc": e.val_acc}
        self._save(trainer, e.epoch + 1, 0, metrics)

    def on_end(self, trainer, result):
        if result.stopped == "interrupted" and result.clean:
            last = result.history[-1] if result.history else None
            metrics = {"val_loss": last.val_loss, "val_acc": last.val_acc} if last else {}
            self._save(trainer, result.epochs_done, result.epoch_step, metrics)
