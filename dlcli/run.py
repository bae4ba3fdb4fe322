"""What the commands do, without the command line: load a spec with overrides, choose
where a run writes, build, train, summarise."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from . import checkpoint, data, losses, memory, optim, precompile, runtime, text
from . import spec as spec_mod
from .callbacks import Checkpointer, CompileTogether, EarlyStopping, MetricsLog, SigintAtStep
from .errors import CheckpointError, DataError, OutputError
from .files import WriterLock, atomic_path, check_not_an_input, check_target, check_writable
from .model import Model, Plan
from .train import Trainer

# command-line option -> where it lives in the spec document
OVERRIDES = {
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("optimizer", "lr"),
    "seed": ("seed",),
    "threads": ("train", "threads"),
}


def load_spec(path):
    """A spec from its file (errors name the file, line and field)."""
    return spec_mod.load(path)


def effective_text(s, changes=None):
    """The spec's YAML with `changes` ({OVERRIDES key: value}) written in and its name
    made explicit: what a checkpoint stores, so a resumed run, `summary CKPT` and
    `inspect-gradients CKPT` see the settings the run really had."""
    doc = yaml.safe_load(s.text) if s.text else None
    if not isinstance(doc, dict):
        return s.text
    doc = {"name": s.name, **doc}
    for key, value in (changes or {}).items():
        *parents, leaf = OVERRIDES[key]
        node = doc
        for p in parents:
            if isinstance(node.get(p), str):  # `optimizer: adam` shorthand
                node[p] = {"name": node[p]}
            elif not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[leaf] = value
    return yaml.safe_dump(doc, sort_keys=False)


def apply_overrides(s, epochs=None, batch_size=None, lr=None, seed=None, threads=None):
    """The spec with command-line overrides applied (each None leaves the spec's value);
    its text becomes the effective spec and `overrides` records what the command line set."""
    given = {
        k: v
        for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, threads=threads).items()
        if v is not None
    }
    if not given:
        return s
    train = replace(
        s.train,
        epochs=given.get("epochs", s.train.epochs),
        batch_size=given.get("batch_size", s.train.batch_size),
        threads=given.get("threads", s.train.threads),
    )
    optimizer = replace(s.optimizer, lr=given["lr"]) if "lr" in given else s.optimizer
    return replace(
        s,
        train=train,
        optimizer=optimizer,
        seed=given.get("seed", s.seed),
        text=effective_text(s, given),
        overrides={**s.overrides, **given},
    )


def build(s, dtype=np.float32, fuse=True, checkpoint=None, vocab=None):
    """(model, loss) for a spec; shape errors name the layer and both shapes. With a
    checkpoint, its parameters are loaded and each one checked against the model. A text
    spec's `vocab` sizes come from `vocab` (a text.Vocabulary), else from the checkpoint's,
    else from its training text."""
    loss = losses.make(s.loss)
    if vocab is None:
        vocab = vocabulary_of(checkpoint)
    if vocab is None and s.data.text is not None:
        vocab = text.vocabulary(s)
    size = vocab.size if vocab is not None else None
    model = Model.from_spec(s.model, dtype=dtype, seed=s.seed, loss=s.loss, fuse=fuse, vocab_size=size)
    if checkpoint is not None:
        model.load_state(checkpoint.params, source=checkpoint.path)
    return model, loss


def check_memory(s, vocab=None):
    """Refuse a run that cannot fit, before allocating any of it: the model, its gradients,
    optimizer state, a batch's activations and a generated dataset, all counted."""
    plan = Plan.of_spec(s.model, vocab_size=vocab.size if vocab is not None else None)
    samples = s.data.options.get("samples") if s.data.builtin and s.data.text is None else None
    batch = min(s.train.batch_size, samples) if samples else s.train.batch_size  # no batch outgrows the data
    parts = plan.training_bytes(batch, len(optim.OPTIMIZERS[s.optimizer.name].state_names))
    if samples is not None:
        parts["dataset"] = memory.dataset_bytes(samples, s.model.input, plan.output_entries)
    memory.require(parts, "this run")


def vocabulary_of(ckpt):
    """A checkpoint's text vocabulary, or None."""
    return text.checkpoint_vocabulary(ckpt) if ckpt is not None else None


# ---------------------------------------------------------------- where a run writes


def default_checkpoint_path(s):
    return Path(s.train.checkpoint) if s.train.checkpoint else Path("runs") / f"{s.name}.npz"


def best_path(path):
    """Where keep_best puts the best epoch's checkpoint: runs/x.npz -> runs/x.best.npz."""
    path = Path(path)
    return path.with_name(path.stem + ".best" + path.suffix)


def _taken(path):
    return path.exists() or path.is_symlink() or best_path(path).exists()


def run_inputs(s):
    """(what, path) of the files a run reads: a checkpoint path must not be one of them."""
    files = [("the spec file", s.path if Path(s.path).is_file() else None)]
    return files + [(f"the data file of data.{key}", data.resolve(v, s.path)) for key, v in data.named_files(s)]


def _same_path(a, b):
    """Whether two paths name one file, existing or still to be written."""
    return Path(a).resolve() == Path(b).resolve()


def choose_output(s, output=None, resume=None, overwrite=False):
    """(checkpoint path, lock held on it). A run never replaces an existing checkpoint
    unless it continues it (--resume) or is told to (--overwrite): the default
    runs/<name>.npz moves on to runs/<name>-2.npz, -3, ... (the first free one, as
    Lightning versions its run folders); an explicit path that exists is refused. A path
    another run is writing is refused too (an advisory lock beside it)."""

    if output is None and resume is not None:
        if Path(resume).name.lower().endswith(".best.npz"):  # keep_best's copy: never written over unasked
            raise OutputError(
                f"--resume {resume}: this is a run's best-epoch copy (keep_best); continuing would write over it. "
                "Give -o PATH for the continued run"
            )
        output = resume
    if output is None and not s.train.checkpoint and not overwrite:
        base = default_checkpoint_path(s)
        for n in range(1, 10_000):
            path = base if n == 1 else base.with_name(f"{base.stem}-{n}{base.suffix}")
            if _taken(path):
                continue
            lock = WriterLock(path)
            if lock.try_acquire():
                return path, lock
        raise OutputError(f"no free run name beside {base}; pass -o PATH or --overwrite")
    path = Path(output) if output is not None else default_checkpoint_path(s)
    check_target(path)
    check_not_an_input(path, run_inputs(s))
    if path.suffix.lower() != ".npz":  # --resume, summary and predict know a checkpoint by it
        where = "-o" if output is not None else f"{s.where('train', 'checkpoint')}: train.checkpoint"
        raise OutputError(f"{where} {path}: a checkpoint is a .npz file; give a path ending in .npz")
    continuing = resume is not None and _same_path(path, resume)
    if not continuing and not overwrite and _taken(path):
        what = path if path.exists() or path.is_symlink() else best_path(path)
        raise OutputError(
            f"{what} already exists; pass --overwrite to replace it, --resume {path} to continue it, "
            "or -o to write elsewhere"
        )
    lock = WriterLock(path).acquire()
    if overwrite and not continuing:
        best_path(path).unlink(missing_ok=True)  # the old run's best epoch is not this run's
    return path, lock


# ---------------------------------------------------------------- resuming


def settings(s):
    """The spec's settings as a flat {dotted name: value} mapping, for comparing runs."""
    out = {"seed": s.seed, "loss": s.loss, "model.input": list(s.model.input)}
    for i, layer in enumerate(s.model.layers):
        out[f"model.layers[{i}]"] = {layer.kind: layer.options}
        inputs = list(layer.inputs or ())
        if inputs != [i - 1]:  # a graph's wiring is the model too: a concat's order, a rewired input
            out[f"model.layers[{i}].input"] = ["input" if j < 0 else f"layers[{j}]" for j in inputs]

    def flatten(prefix, mapping):
        for k, v in mapping.items():
            if isinstance(v, dict):  # an optimizer's or schedule's options read as its own fields
                flatten(prefix if k == "options" and prefix != "data" else f"{prefix}.{k}", v)
            else:
                out[f"{prefix}.{k}"] = v

    for section in ("data", "optimizer", "train"):
        flatten(section, dataclasses.asdict(getattr(s, section)))
    return out


# a change here would move samples between the splits or train another model
FIXED_ON_RESUME = ("seed", "loss", "model.", "data.")


def resume_changes(old, new, where="the checkpoint"):
    """{setting: (checkpoint's value, new value)} for what differs between the spec a
    checkpoint was trained with and the one resuming it; a CheckpointError for a change
    that would make the resumed run something else (data split, model), naming `where`."""
    a, b = settings(old), settings(new)
    changes = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    # the source first: another data set also differs in its options, which say less
    for key in sorted(changes, key=lambda k: k != "data.source"):
        if any(key == f or (f.endswith(".") and key.startswith(f)) for f in FIXED_ON_RESUME):
            before, after = changes[key]
            hint = " (it would re-split the data: validation samples would leak into training)"
            if key == "data.test":  # a test file of its own splits nothing
                hint = " (its test score would be another set's; `dlcli evaluate CHECKPOINT FILE` scores a file)"
            elif not (key == "seed" or key.startswith("data.")):
                hint = ""
            raise CheckpointError(
                f"{where}: cannot resume with {key} {spec_mod.as_yaml(after)}: it was trained with {spec_mod.as_yaml(before)}"
                + hint
            )
    return changes


def train(
    s,
    output=None,
    resume=None,
    log=None,
    log_grad_norms=False,
    display=None,
    callbacks=(),
    overwrite=False,
    sync=None,
    more_epochs=False,
):
    """Train a spec; returns (TrainResult, checkpoint path, trainer). Under MPI (`sync`, a
    distributed.World) every rank trains and rank 0 alone shows progress and writes files.
    `more_epochs`: the command line gave --epochs, so a resumed run that early stopping
    ended may go on (with fresh patience); without it, such a run is finished."""
    ckpt = checkpoint.load(resume) if resume is not None else None
    changes = resume_changes(ckpt.spec(), s, resume) if ckpt is not None else {}
    runtime.set_threads(
        s.train.threads or (sync.default_threads() if sync is not None else None), s.train.deterministic
    )
    vocab = vocabulary_of(ckpt)  # a resumed text model keeps its token ids
    if vocab is None and s.data.text is not None:
        vocab = text.vocabulary(s)
    check_memory(s, vocab)
    model, loss = build(s, vocab=vocab)
    compiling = runtime.uncompiled_kernels(model)  # before any kernel runs
    helper = precompile.start(s, model, compiling=compiling) if sync is None else None  # while the data loads
    lock = None
    try:
        dataset = data.load(s, loss, model.output_shape, vocab=vocab)
        if ckpt is not None:
            check_same_data(ckpt, dataset, resume)
        _check_monitors(s, dataset)
        optimizer = optim.for_model(s.optimizer, model)
        if sync is not None:  # ranks on one node may share the parameters: before loading them
            sync.prepare(model, optimizer)
        start_epoch = skip = 0
        state = {}
        if ckpt is not None:
            model.load_state(ckpt.params, source=str(resume))
            if ckpt.optimizer:
                optimizer.load_state_dict(ckpt.optimizer, source=str(resume))
            start_epoch = int(ckpt.meta.get("epochs_done", 0))
            samples = ckpt.meta.get("epoch_samples", int(ckpt.meta.get("epoch_step", 0)) * ckpt.spec().train.batch_size)
            skip = -(-int(samples) // s.train.batch_size)
            state = dict(ckpt.meta.get("state") or {})
            if start_epoch >= s.train.epochs:
                asked = f"--epochs {s.train.epochs} asks for no more" if more_epochs else "as many as the spec asks for"
                raise CheckpointError(
                    f"{resume}: already trained {start_epoch} epoch{'s' if start_epoch != 1 else ''}, {asked}; "
                    f"pass --epochs N with N > {start_epoch} (the total) to train further"
                )
            stopped = (state.get("early_stopping") or {}).get("stopped")
            if stopped and not more_epochs and s.train.early_stopping is not None:
                raise CheckpointError(
                    f"{resume}: early stopping ended this run after epoch {start_epoch} "
                    f"({s.train.early_stopping.monitor} best at epoch {state['early_stopping'].get('best_epoch')}); "
                    f"pass --epochs N with N > {start_epoch} to train further, with fresh patience"
                )
        writer = sync is None or sync.rank == 0  # under MPI rank 0 alone writes files
        if writer:
            output, lock = choose_output(s, output, resume, overwrite)
        if sync is not None:  # the other ranks never write it, but read its keep_best file on resume
            output = Path(sync.from_rank0(str(output) if writer else None))
        if ckpt is not None and s.train.keep_best:
            _carry_best(resume, output, state, writer)
            if sync is not None:  # the copy is there before any rank looks for it
                sync.barrier()
        cbs = []
        if writer:
            check_writable(output, OutputError)  # after choose_output, which refuses FIFOs and devices
            cbs = list(callbacks)
            if display is not None:
                cbs.insert(0, display)
            if log:
                taken = [output, best_path(output)] if s.train.keep_best else [output]
                if any(_same_path(log, p) for p in taken):  # the checkpoint would replace it
                    raise OutputError(f"--log {log} is the checkpoint's path: give the metrics log a file of its own")
                cbs.append(MetricsLog(log, grad_norms=log_grad_norms))
        if os.environ.get("DLCLI_TEST_SIGINT_AT_STEP"):  # tests: a Ctrl-C at an exact step
            cbs.append(SigintAtStep(int(os.environ["DLCLI_TEST_SIGINT_AT_STEP"])))
        together = sync is not None and precompile.enabled() and sync.cold_node(compiling)
        if together:  # after the display: it shows the compile notice meanwhile
            cbs.append(CompileTogether(sync, s, model))
        if s.train.early_stopping is not None:  # on every rank: they stop together
            cbs.append(EarlyStopping(s.train.early_stopping))
        best = best_path(output) if s.train.keep_best else None
        checkpointer = Checkpointer(output, s, best=best, write=writer)
        cbs.append(checkpointer)
        trainer = Trainer(model, loss, optimizer, dataset, s, cbs, start_epoch=start_epoch, skip_steps=skip, sync=sync)
        trainer.state = state
        trainer.output = output if writer else None
        trainer.compiling = compiling
        if helper is not None or together:
            trainer.compile_shared = "2 processes" if helper else f"{sync.local_size} ranks"
        if ckpt is not None:
            trainer.resumed = {
                "from": str(resume),
                "epoch": start_epoch,  # epochs done
                "epoch_step": skip,  # batches of the next epoch done (an interrupted epoch)
                "step": trainer.step,  # steps done: it goes on at step + 1
                "changes": changes,
            }
            moves = _schedule_moves(ckpt.spec(), s, start_epoch + skip / trainer.steps_per_epoch, state)
            if moves is not None:
                trainer.resumed["lr_moves"] = moves
            if s.train.keep_best and best_path(output).exists():
                trainer.best_params = checkpoint.load(best_path(output)).params
        # An overflow on the way to a divergence would print NumPy's warnings (file, line,
        # source) before the one line that says what happened; the trainer finds every
        # non-finite loss and gradient norm itself and stops on it.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            try:
                result = trainer.fit()
            except KeyboardInterrupt as e:  # a Ctrl-C after the one that stopped the loop (while it saved)
                e.kept = checkpointer.saved or resume  # whole on disk: writes are atomic
                raise
    finally:
        if helper is not None:
            helper.stop()
        if lock is not None:
            lock.release()
    return result, checkpointer.saved, trainer


def data_difference(ckpt, dataset):
    """How the data differ from those the checkpoint was trained on, or None: split sizes
    that changed, else "the same sizes, other values". Checkpoints from before the
    fingerprint (no "data" in meta) are not compared."""
    before, now = ckpt.meta.get("data"), dataset.fingerprint
    if not isinstance(before, dict) or before == now:
        return None
    sizes = [
        f"{name} split {before.get(name)} -> {now[name]} samples"
        for name in data.Dataset.SPLITS
        if before.get(name) != now[name]
    ]
    return "; ".join(sizes) if sizes else "the same sizes, other values"


DATA_DIFFER = (
    "the data differ from those it was trained on ({what}); a changed file re-splits them, moving "
    "validation samples into training. Train anew, or restore the data"
)


def check_same_data(ckpt, dataset, resume):
    """A resumed run must see the data it was trained on: the same spec with an edited file
    re-splits it (the tester's CSV, 49 rows deleted, moved validation rows into training and
    scored val_acc 1.0 against a best epoch from the old split)."""
    what = data_difference(ckpt, dataset)
    if what is not None:
        raise CheckpointError(f"{resume}: cannot resume: " + DATA_DIFFER.format(what=what))


def _schedule_moves(old, new, progress, state):
    """(the lr the checkpoint's run would take next, the lr the resumed run takes) when a
    new train.epochs moves a schedule that spans the run (cosine: more epochs raise the
    lr again, fewer drop it), else None: a resume should say so, not jump unannounced."""
    if old.train.epochs == new.train.epochs:
        return None
    # the new optimizer settings on both sides: a new --lr is listed among the changes already
    before = optim.learning_rate(new.optimizer, progress, old.train.epochs, state.get("schedule"))
    after = optim.learning_rate(new.optimizer, progress, new.train.epochs, state.get("schedule"))
    return None if math.isclose(before, after, rel_tol=1e-9, abs_tol=0.0) else (before, after)


def _carry_best(resume, output, state, writer):
    """Resuming into another checkpoint path (-o): the run's best epoch so far goes with
    it (copied, the old run's file untouched), or, when its file is gone, is forgotten so
    the resumed run keeps the best of its own epochs instead of naming a file it never wrote.
    On every rank alike (only the writer copies), so all score the test split the same way."""
    src, dst = best_path(resume), best_path(output)
    if _same_path(src, dst):
        return
    if not src.is_file():
        state.pop("best", None)
        return
    if writer:
        with atomic_path(dst, OutputError) as tmp:
            shutil.copyfile(src, tmp)


def _check_monitors(s, dataset):
    """keep_best and early stopping watch the validation split: it must exist."""
    watched = [(("train", "keep_best"), s.train.keep_best)]
    if s.optimizer.schedule.name == "plateau":
        watched.append((("optimizer", "schedule", "monitor"), s.optimizer.schedule.options["monitor"]))
    if s.train.early_stopping is not None:
        watched.append((("train", "early_stopping", "monitor"), s.train.early_stopping.monitor))
    for path, monitor in watched:
        if monitor is None:
            continue
        field = ".".join(path)
        if monitor.startswith("val_") and len(dataset.x_val) == 0:
            raise DataError(
                f"{s.where(*path)}: {field} watches {monitor}, but data.validation_split leaves no validation samples"
            )
        if monitor.endswith("_acc") and not s.loss.endswith("cross_entropy"):
            raise DataError(
                f"{s.where(*path)}: {field} watches {monitor}, but a {s.loss} model has no accuracy; use val_loss"
            )


def spec_or_checkpoint(path, checkpoint_only=False):
    """A spec file or a checkpoint: returns (spec, checkpoint or None). A checkpoint is
    known by its name (.npz) or its first bytes (a zip file's), so a renamed copy
    (m.npz.bak) still reads as one; `checkpoint_only` (--resume): never a spec."""
    if checkpoint_only or str(path).lower().endswith(".npz") or _zip_file(path):
        ckpt = checkpoint.load(path)
        return ckpt.spec(), ckpt
    return spec_mod.load(path), None


def _zip_file(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:  # missing, a directory, unreadable: the spec loader says which
        return False
