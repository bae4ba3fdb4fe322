"""What the commands do, without the command line: load, build, train, summarise."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from . import spec as spec_mod
from .errors import CheckpointError, OutputError
from .files import check_writable


def load_spec(path):
    """A spec from its file (errors name the file, line and field)."""
    return spec_mod.load(path)


def apply_overrides(s, epochs=None, batch_size=None, lr=None, seed=None, threads=None):
    """The spec with command-line overrides applied (each None leaves the spec's value)."""
    train = replace(
        s.train,
        epochs=epochs if epochs is not None else s.train.epochs,
        batch_size=batch_size if batch_size is not None else s.train.batch_size,
        threads=threads if threads is not None else s.train.threads,
    )
    optimizer = replace(s.optimizer, lr=lr) if lr is not None else s.optimizer
    return replace(s, train=train, optimizer=optimizer, seed=seed if seed is not None else s.seed)


def build(s, dtype=np.float32, fuse=True, checkpoint=None):
    """(model, loss) for a spec; shape errors name the layer and both shapes. With a
    checkpoint, its parameters are loaded and each one checked against the model."""
    from . import losses
    from .model import Model

    loss = losses.make(s.loss)
    model = Model.from_spec(s.model, dtype=dtype, seed=s.seed, loss=s.loss, fuse=fuse)
    if checkpoint is not None:
        model.load_state(checkpoint.params, source=checkpoint.path)
    return model, loss


def default_checkpoint_path(s):
    return Path(s.train.checkpoint) if s.train.checkpoint else Path("runs") / f"{s.name}.npz"


def train(s, output=None, resume=None, log=None, log_grad_norms=False, display=None, callbacks=()):
    """Train a spec; returns (TrainResult, checkpoint path, trainer)."""
    from . import checkpoint, data, optim, runtime
    from .callbacks import Checkpointer, MetricsLog
    from .train import Trainer

    runtime.set_threads(s.train.threads)
    model, loss = build(s)
    dataset = data.load(s, loss, model.output_shape)
    optimizer = optim.for_model(s.optimizer, model)
    start_epoch = skip = 0
    if resume is not None:
        ckpt = checkpoint.load(resume)
        model.load_state(ckpt.params, source=str(resume))
        if ckpt.optimizer:
            optimizer.load_state_dict(ckpt.optimizer, source=str(resume))
        start_epoch = int(ckpt.meta.get("epochs_done", 0))
        skip = int(ckpt.meta.get("epoch_step", 0))
        if start_epoch >= s.train.epochs:
            raise CheckpointError(
                f"{resume}: already trained {start_epoch} epochs, as many as the spec asks for; "
                f"pass --epochs N with N > {start_epoch} to train further"
            )
    if output:
        output = Path(output)
    else:  # a resumed run goes on writing the checkpoint it continues
        output = Path(resume) if resume is not None else default_checkpoint_path(s)
    check_writable(output, OutputError)
    cbs = list(callbacks)
    if display is not None:
        cbs.insert(0, display)
    if log:
        cbs.append(MetricsLog(log, grad_norms=log_grad_norms))
    checkpointer = Checkpointer(output, s.text)
    cbs.append(checkpointer)
    trainer = Trainer(model, loss, optimizer, dataset, s, cbs, start_epoch=start_epoch, skip_steps=skip)
    result = trainer.fit()
    return result, checkpointer.saved, trainer


def spec_or_checkpoint(path):
    """A spec file or a checkpoint (.npz): returns (spec, checkpoint or None)."""
    from . import checkpoint

    if str(path).endswith(".npz"):
        ckpt = checkpoint.load(path)
        return ckpt.spec(), ckpt
    return spec_mod.load(path), None
