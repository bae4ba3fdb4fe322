"""The command line: thin commands that parse options, call one function, render."""

from __future__ import annotations

import functools
import sys

import click

from . import __version__
from .errors import DlcliError


def friendly_errors(fn):
    """Turn a DlcliError into one clear line with Click's exit codes (2 = bad input)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DlcliError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(e.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlcli")
def main():
    """Train and inspect neural networks on the CPU from a YAML spec."""


threads_option = click.option(
    "--threads", type=click.IntRange(min=1), help="CPU cores for Numba and BLAS (default: all)."
)


@main.command()
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False))
@click.option("--epochs", type=click.IntRange(min=1), help="Override train.epochs (the total, when resuming).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override train.batch_size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Override optimizer.lr.")
@click.option("--seed", type=click.IntRange(min=0), help="Override the spec's seed.")
@threads_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Checkpoint path (default: runs/<name>.npz).")
@click.option("--resume", type=click.Path(dir_okay=False), help="Continue from this checkpoint.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Append metrics as JSON lines to this file.")
@click.option("--log-grad-norms", is_flag=True, help="Also record per-layer gradient norms each step in --log.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the final result.")
@friendly_errors
def train(spec_file, epochs, batch_size, lr, seed, threads, output, resume, log_path, log_grad_norms, quiet):
    """Train the model SPEC_FILE describes and write a checkpoint.

    With --resume and no SPEC_FILE, the spec stored in the checkpoint is used.
    """
    from . import run
    from .dashboard import Dashboard, PlainProgress

    if spec_file is None:
        if resume is None:
            raise click.UsageError("give a SPEC_FILE, or --resume CHECKPOINT")
        s, _ = run.spec_or_checkpoint(resume)
    else:
        s = run.spec_mod.load(spec_file)
    s = run.apply_overrides(s, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, threads=threads)
    if quiet:
        display = None
    elif sys.stdout.isatty():
        display = Dashboard()
    else:
        display = PlainProgress(click.echo)
    result, saved, trainer = run.train(s, output=output, resume=resume, log=log_path,
                                       log_grad_norms=log_grad_norms, display=display)
    last = result.history[-1] if result.history else None
    if last is not None:
        parts = [f"final: epoch {last.epoch + 1}/{last.epochs}", f"train_loss {last.train_loss:.4f}"]
        if last.val_loss is not None:
            parts.append(f"val_loss {last.val_loss:.4f}")
        if last.val_acc is not None:
            parts.append(f"val_acc {last.val_acc:.4f}")
        click.echo(" ".join(parts))
    if saved:
        click.echo(f"checkpoint: {saved}")
    if result.stopped == "interrupted":
        click.echo(f"Stopped: {result.message}." + (f" Resume with: dlcli train --resume {saved}" if saved else ""), err=True)
        sys.exit(130)
    if result.stopped == "diverged":
        if not saved:
            click.echo("Error: " + result.message.replace("the last good checkpoint is kept", "no checkpoint was written yet"), err=True)
        else:
            click.echo(f"Error: {result.message}", err=True)
        sys.exit(1)


@main.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--no-data", is_flag=True, help="Do not load the dataset (faster for big files).")
@friendly_errors
def summary(source, no_data):
    """Validate a spec (or read a checkpoint) and show the model: layers, shapes,
    parameters and FLOPs. Errors are exactly those `train` would give."""
    from rich.console import Console

    from . import data, run
    from .dashboard import summary_table

    s, ckpt = run.spec_or_checkpoint(source)
    model, loss = run.build(s)
    console = Console()
    console.print(summary_table(model, title=f"model: {s.name}  (input {list(s.model.input)})"))
    console.print(f"loss: {s.loss}   optimizer: {s.optimizer.name} (lr {s.optimizer.lr})   "
                  f"epochs: {s.train.epochs}   batch size: {s.train.batch_size}   seed: {s.seed}")
    if ckpt is not None:
        meta = ckpt.meta
        console.print(f"checkpoint: {meta.get('epochs_done', 0)} epochs, step {meta.get('step', 0)}, "
                      f"dlcli {meta.get('dlcli_version')}")
    if not no_data:
        d = data.load(s, loss, model.output_shape)
        console.print(
            f"data: {d.description}; train {list(d.x_train.shape)}, validation {list(d.x_val.shape)}, "
            f"targets {list(d.y_train.shape[1:]) or 'scalar'} {d.y_train.dtype}"
            + (f", {len(d.classes)} classes" if d.classes else "")
        )
    console.print("[green]spec OK[/green]")


if __name__ == "__main__":
    main()
