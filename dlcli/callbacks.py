"""Callbacks that are not the dashboard: the metrics log, early stopping and the
checkpointer (with the best epoch's checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from . import checkpoint, jsontext
from .errors import OutputError
from .files import check_writable
from .text import scores
from .train import Callback


def _clean(v):
    return None if v is None else round(float(v), 6)


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _appendable_log(path, limit=1 << 20):
    """True if `path` is missing, empty, or starts with a JSON line of a dlcli event: the
    files `--log` may append to. A checkpoint or someone's notes are left alone."""
    try:
        with open(path, "rb") as f:
            head = f.read(limit)
    except OSError:  # missing: a new log; else check_writable has said what is wrong with it
        return True
    if not head.strip():
        return True
    try:
        first = json.loads(head.split(b"\n", 1)[0])
    except (ValueError, RecursionError):
        return False
    return isinstance(first, dict) and "event" in first


def _ends_with_newline(path):
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class MetricsLog(Callback):
    """JSON lines: one object per step ({"event": "step", ...}) and per epoch.

    Each run appends, after a start line (event, spec, output, time), so one log can hold
    several runs, told apart by their start lines; a file that is not such a log is never
    appended to. Step fields: event, epoch (1-based), step, loss, acc, lr, grad_norm, samples_per_s,
    and with `grad_norms=True` also layer_grad_norms (a name -> norm mapping).
    Epoch fields: event, epoch, step, train_loss, train_acc, val_loss, val_acc, lr,
    samples_per_s, elapsed_s. Also, once each when they happen: resume (from; epoch,
    epoch_step and step: the epochs, batches of the next epoch and steps done, so it goes
    on at step + 1; changes: {setting: [old, new]}), stop (epoch, step, reason: early stopping) and test
    (loss, acc, samples, epoch and checkpoint: the kept checkpoint's epoch and best|last).
    Text models add bits per character (`bpc`, or `bits_per_word`) and `perplexity`: per
    step, and as train_/val_ fields per epoch.
    """

    def __init__(self, path, grad_norms=False):
        self.path = Path(path)
        try:  # before training starts: a bad --log path must not cost a run
            check_writable(self.path, OutputError)
        except OutputError as e:
            raise OutputError(f"the metrics log: {e}") from None
        if not _appendable_log(self.path):
            raise OutputError(
                f"the metrics log: {self.path} exists and is not a dlcli metrics log; "
                "give --log a new file (or an earlier run's log to add to it)"
            )
        self.grad_norms = grad_norms
        self.f = None

    def on_start(self, trainer):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a")
        if self.f.tell() > 0 and not _ends_with_newline(self.path):  # cut short (kill -9, an editor)
            self.f.write("\n")  # this run's lines start on a line of their own
        output = str(trainer.output) if trainer.output is not None else None
        self._write({"event": "start", "spec": trainer.spec.name, "output": output, "time": _now()})
        self.names = [trainer.model.layers[i].name for i in trainer.model.param_layers]
        vocab = trainer.dataset.vocab
        self.text_level = vocab.level if vocab is not None else None
        if trainer.resumed:
            r = trainer.resumed
            changes = {k: list(v) for k, v in r["changes"].items()}
            self._write(
                {
                    "event": "resume",
                    "from": r["from"],
                    "epoch": r["epoch"],
                    "epoch_step": r["epoch_step"],
                    "step": r["step"],
                    "changes": changes,
                    **({"lr_next": list(r["lr_moves"])} if r.get("lr_moves") else {}),  # [was going to be, is]
                }
            )

    def _text_scores(self, loss, prefix=""):
        if self.text_level is None:
            return {}
        return {k: _clean(v) for k, v in scores(loss, self.text_level, prefix).items()}

    def _write(self, obj):
        self.f.write(jsontext.dumps(obj) + "\n")

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
            **self._text_scores(e.loss),
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
                **self._text_scores(e.train_loss, "train_"),
                **self._text_scores(e.val_loss, "val_"),
            }
        )
        self.f.flush()

    def on_end(self, trainer, result):
        if result.stopped != "finished":  # early stopping, Ctrl-C, or a NaN: the log says which, and why
            self._write(
                {
                    "event": "stop",
                    "stopped": result.stopped,
                    "epoch": result.epochs_done,
                    "step": result.step,
                    "reason": result.message,
                }
            )
        if result.test is not None:
            self._write(
                {"event": "test", **{k: _clean(v) if k in ("loss", "acc") else v for k, v in result.test.items()}}
            )
        self.close()

    def close(self):
        if self.f is not None:
            self.f.close()  # flushes: the steps before a crash are in the log
            self.f = None


class Monitor:
    """Whether a validation metric improved: val_loss must fall, val_acc rise, each by
    more than min_delta."""

    def __init__(self, name, min_delta=0.0):
        self.name, self.min_delta = name, min_delta
        self.sign = -1.0 if name.endswith("loss") else 1.0

    def value(self, event):
        return getattr(event, self.name)

    def improved(self, value, best):
        return best is None or self.sign * (value - best) > self.min_delta


class EarlyStopping(Callback):
    """Stops training when `monitor` has not improved for `patience` epochs (Keras's
    EarlyStopping). Its state lives in `trainer.state`, so a resumed run goes on counting."""

    def __init__(self, spec):
        self.spec = spec
        self.monitor = Monitor(spec.monitor, spec.min_delta)

    def on_start(self, trainer):
        state = trainer.state.setdefault("early_stopping", {"best": None, "best_epoch": None, "wait": 0})
        if state.pop("stopped", None):  # resuming a run it stopped (--epochs): fresh patience
            state["wait"] = 0
            state["since"] = trainer.start_epoch

    def on_epoch(self, trainer, e):
        state = trainer.state["early_stopping"]
        value = self.monitor.value(e)
        if self.monitor.improved(value, state["best"]):
            state.update(best=value, best_epoch=e.epoch + 1, wait=0)
            state.pop("since", None)
            return
        state["wait"] += 1
        if state["wait"] >= self.spec.patience and e.epoch + 1 < e.epochs:
            from .dashboard import fmt_metric

            state["stopped"] = True
            since = f" since the resume after epoch {state['since']}" if "since" in state else ""
            trainer.stop_reason = (
                f"early stopping: {self.spec.monitor} has not improved for {self.spec.patience} epochs{since} "
                f"(best {fmt_metric(self.spec.monitor, state['best'])} at epoch {state['best_epoch']})"
            )


class Checkpointer(Callback):
    """Writes the checkpoint after every epoch and at a clean stop; never after a NaN.
    With `best`, also writes the best epoch's checkpoint there (keep_best) and keeps its
    parameters for the test score. With `write=False` (MPI ranks other than 0) it keeps
    the same bookkeeping and writes nothing."""

    def __init__(self, path, spec, best=None, write=True):
        self.path = Path(path)
        self.spec = spec
        self.write = write
        self.best = Path(best) if best is not None else None
        self.monitor = Monitor(spec.train.keep_best) if spec.train.keep_best else None
        self.saved = None
        self.saved_at = None  # (epochs done, step) of the last checkpoint this run wrote

    def _meta(self, trainer, epochs_done, epoch_step, metrics):
        return {
            "epochs_done": epochs_done,
            "epoch_step": epoch_step,
            "epoch_samples": min(epoch_step * trainer.batch_size, len(trainer.dataset.x_train)),
            "step": trainer.step,
            "metrics": metrics,
            "overrides": self.spec.overrides,
            "name": self.spec.name,  # a spec without name: takes its file's, which the checkpoint's is not
            "spec_path": str(Path(self.spec.path).resolve()) if Path(self.spec.path).is_file() else None,
            "state": trainer.state,
        }

    def _save(self, trainer, path, meta):
        if not self.write:
            return
        checkpoint.save(path, self.spec.text, trainer.model, trainer.optimizer, meta, trainer.dataset)

    def on_epoch(self, trainer, e):
        metrics = {"train_loss": e.train_loss, "train_acc": e.train_acc, "val_loss": e.val_loss, "val_acc": e.val_acc}
        if self.monitor is not None:
            best = trainer.state.setdefault("best", {"monitor": self.monitor.name, "value": None, "epoch": None})
            value = self.monitor.value(e)
            if self.monitor.improved(value, best["value"]):
                best.update(value=value, epoch=e.epoch + 1)
                meta = self._meta(trainer, e.epoch + 1, 0, metrics)
                meta["best"] = dict(best)
                self._save(trainer, self.best, meta)
                trainer.best_params = {k: v.copy() for k, v in trainer.model.state().items()}
        self._save(trainer, self.path, self._meta(trainer, e.epoch + 1, 0, metrics))
        self.saved, self.saved_at = self.path, (e.epoch + 1, trainer.step)

    def on_end(self, trainer, result):
        if result.stopped == "interrupted" and result.clean:
            last = result.history[-1] if result.history else None
            metrics = {"val_loss": last.val_loss, "val_acc": last.val_acc} if last else {}
            self._save(trainer, self.path, self._meta(trainer, result.epochs_done, result.epoch_step, metrics))
            self.saved = self.path
        elif result.stopped == "interrupted":  # a second Ctrl-C mid-step: nothing of this epoch is saved
            kept = (
                f"the checkpoint keeps the end of epoch {self.saved_at[0]} (step {self.saved_at[1]})"
                if self.saved is not None
                else "no checkpoint of this run was written"
            )
            result.message += f" by a second Ctrl-C, mid-step: the steps since are lost and {kept}"


class SigintAtStep(Callback):
    """Tests only (DLCLI_TEST_SIGINT_AT_STEP=N): the process sends itself a Ctrl-C right
    after global step N, so a test stops a run at an exact step through the real handler."""

    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, e):
        if e.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class CompileTogether(Callback):
    """Under MPI with an empty kernel cache: the node's ranks compile the run's kernels
    together once the display is up (it shows the compile notice meanwhile)."""

    def __init__(self, world, spec, model):
        self.world, self.spec, self.model = world, spec, model

    def on_start(self, trainer):
        self.world.compile_together(self.spec, self.model)
