"""The command line: thin commands that parse options, call one function, render."""

from __future__ import annotations

import functools
import math
import os
import shutil
import sys

import click

from . import __version__
from .errors import DataError, DlcliError
from .options import FLOAT32_MAX


def one_line(message):
    """A message as one line: an error from a library may span several."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def stdout_console():
    """The Rich console a command prints its report on. A terminal gets the report fitted
    to its width. A pipe or a file has no width, and Rich's default of 80 columns would
    break sentences and crop table cells ("global_a…"): there, each thing printed is as
    wide as its content (a Group's parts each on their own, so that a panel is as wide as
    what it holds, not the whole line)."""
    from rich.console import Console, Group

    if sys.stdout.isatty():
        return Console()

    class AsWideAsItsContent(Console):
        def print(self, *objects, **kwargs):
            if len(objects) == 1 and isinstance(objects[0], Group):
                for part in objects[0].renderables:
                    self.print(part, **kwargs)
                return
            if objects and kwargs.get("width") is None:
                kwargs["width"] = sum(self.measure(o).maximum for o in objects) + len(objects) - 1
            super().print(*objects, **kwargs)

    return AsWideAsItsContent(width=1_000_000)


def friendly_errors(fn):
    """Turn a DlcliError into one clear line with Click's exit codes (2 = bad input)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DlcliError as e:
            from .distributed import exit_after_rank0, launch_rank

            if launch_rank() == 0:  # under mpirun every rank has the same error: rank 0 says it
                click.echo(f"Error: {one_line(e)}", err=True)
            exit_after_rank0(e.exit_code)
        except MemoryError as e:  # past the up-front memory check (another process took the memory)
            click.echo(
                f"Error: out of memory ({one_line(str(e)) or 'an allocation failed'}); any checkpoint already written is kept",
                err=True,
            )
            sys.exit(1)

    return wrapper


class OneLineErrorsGroup(click.Group):
    """Click prints a usage error as three lines (usage, hint, error); here it is one, like
    every other bad input: `Error: <what is wrong> (see 'dlcli train -h')`, exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            if e.ctx is not None:
                where = e.ctx.command_path
            else:  # Click gives no context for an option missing its value: the command is in args
                given = sys.argv[1:] if args is None else list(args)
                where = " ".join(["dlcli", *[a for a in given[:1] if a in self.commands]])
            hint = f" (see '{where} -h')"
            click.echo(f"Error: {one_line(e.format_message())}{hint}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"Error: {one_line(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:  # Ctrl-C outside training (starting up, loading data): nothing half-done
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (which compare as inside any range)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if abs(number) > FLOAT32_MAX:  # the model computes in float32
            self.fail(f"{value!r} is beyond float32's range (up to about 3.4e38)", param, ctx)
        return number


@click.group(cls=OneLineErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlcli")
def main():
    """Train and inspect neural networks on the CPU from a YAML spec."""


def single_process(command):
    """Commands other than `train` run in one process: under mpirun with several ranks, say so."""
    from .distributed import refuse_several_ranks

    refuse_several_ranks(command)


def threads_note(threads, where="--threads"):
    """Say (on stderr) when more threads are asked for than the machine has cores: the run
    goes on, slower (the extra threads take turns on the cores). A note, not an error: a
    container's CPU count may be less than what the job was given."""
    cores = os.cpu_count() or 1
    if threads is None or threads <= cores:
        return
    from .distributed import launch_rank

    if launch_rank() == 0:  # under MPI rank 0 alone speaks
        click.echo(
            f"Note: {where} {threads}, but this machine has {cores} cores: the extra threads slow the run.",
            err=True,
        )


def _threads_given(ctx, param, value):
    threads_note(value)
    return value


threads_option = click.option(
    "--threads",
    type=click.IntRange(min=1),
    callback=_threads_given,
    help="CPU cores for BLAS and dlcli's own threads (default: all).",
)


@main.command()
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False))
@click.option("--epochs", type=click.IntRange(min=1), help="Override train.epochs (the total, when resuming).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override train.batch_size.")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), help="Override optimizer.lr.")
@click.option("--seed", type=click.IntRange(min=0), help="Override the spec's seed.")
@threads_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Checkpoint path (default: runs/<name>.npz).")
@click.option(
    "--resume",
    type=click.Path(dir_okay=False),
    help="Continue this checkpoint with the settings it was trained with; options given now apply.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint at the output path.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Append metrics as JSON lines to this file.")
@click.option("--log-grad-norms", is_flag=True, help="Also record per-layer gradient norms each step in --log.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the final result.")
@friendly_errors
def train(spec_file, epochs, batch_size, lr, seed, threads, output, resume, overwrite, log_path, log_grad_norms, quiet):
    """Train the model SPEC_FILE describes and write a checkpoint.

    A new run never replaces an existing checkpoint: the default runs/<name>.npz moves on to
    runs/<name>-2.npz, and an existing -o path is refused unless --overwrite. With --resume
    and no SPEC_FILE, the checkpoint's own settings (command-line overrides included) go on.
    """
    from . import distributed, run

    if log_grad_norms and log_path is None:
        raise click.UsageError("--log-grad-norms records into the metrics log: give --log FILE too")
    if spec_file is None:
        if resume is None:
            raise click.UsageError("give a SPEC_FILE, or --resume CHECKPOINT")
        s, _ = run.spec_or_checkpoint(resume, checkpoint_only=True)
    else:
        s = run.load_spec(spec_file)
        if threads is None:
            threads_note(s.train.threads, "train.threads")
    s = run.apply_overrides(s, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, threads=threads)
    sync = distributed.world()  # None unless launched by mpirun/srun as several ranks
    with distributed.failing_together(sync):  # from here an error on one rank ends every rank
        code = _train(sync, s, output, resume, overwrite, log_path, log_grad_norms, quiet, epochs is not None)
        if sync is not None:  # no rank exits (non-zero ends the job) before rank 0 has written and said all
            sync.barrier()
    sys.exit(code)


def _train(sync, s, output, resume, overwrite, log_path, log_grad_norms, quiet, more_epochs=False):
    """The train command's body after the spec; returns its exit code (0, 130 interrupted,
    143 terminated, 1 diverged)."""
    from . import run
    from .dashboard import Dashboard, PlainProgress

    speaks = sync is None or sync.rank == 0  # under MPI rank 0 alone prints
    if quiet or not speaks:
        display = None
    elif sys.stdout.isatty():
        display = Dashboard()
    else:
        display = PlainProgress(_echo_while_read)
    try:
        result, saved, trainer = run.train(
            s,
            output=output,
            resume=resume,
            log=log_path,
            log_grad_norms=log_grad_norms,
            display=display,
            overwrite=overwrite,
            sync=sync,
            more_epochs=more_epochs,
        )
    except KeyboardInterrupt as e:  # a second Ctrl-C while the stopped run saved: say what is kept
        kept = getattr(e, "kept", None)
        if not kept or sync is not None:  # under MPI, `failing_together` ends every rank
            raise
        _say_stopped("Interrupted. The last checkpoint written is kept.", kept, log_path, log_grad_norms)
        return 130
    code = {"interrupted": 130, "diverged": 1}.get(result.stopped, 0)
    if result.stopped == "interrupted" and trainer.interrupt.get("signal") == "SIGTERM":
        code = 143  # 128 + SIGTERM, as a shell reports a terminated command
    if not speaks:
        return code
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    for line in final_lines(result, saved, trainer, width):
        _echo_while_read(line)
    kept = saved or resume  # a resumed run that wrote nothing yet leaves the checkpoint it came from
    if result.stopped == "interrupted":
        _say_stopped(f"Stopped: {result.message}.", kept, log_path, log_grad_norms)
    if result.stopped == "diverged":
        what = f"the last good checkpoint, {kept}, is kept" if kept else "no checkpoint was written yet"
        click.echo("Error: " + result.message.replace("the last good checkpoint is kept", what), err=True)
    return code


def _echo_while_read(line):
    """click.echo to stdout until its reader has gone (`train ... | tail`, tail ended by the
    same Ctrl-C): then nothing more goes there, and the run goes on to save its checkpoint
    and say on stderr what is kept, instead of ending in a BrokenPipeError."""
    try:
        click.echo(line)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _say_stopped(sentence, kept, log_path=None, log_grad_norms=False):
    """The sentence (on stderr, broken between words to fit a terminal), then the command
    that resumes the run on a line of its own: the one line a user copies, never broken
    inside the path by a wrap that happened to fall there. It keeps the run's --log (a
    resume without it would record nothing more there)."""
    import shlex
    import textwrap

    width = shutil.get_terminal_size().columns if sys.stderr.isatty() else None
    for line in textwrap.wrap(sentence, width, break_on_hyphens=False) if width else [sentence]:
        click.echo(line, err=True)
    if kept:
        command = f"dlcli train --resume {shlex.quote(str(kept))}"
        if log_path:
            command += f" --log {shlex.quote(str(log_path))}" + (" --log-grad-norms" if log_grad_norms else "")
        click.echo(f"Resume with: {command}", err=True)


def final_lines(result, saved, trainer, width=None):
    """What `train` prints at the end: the last epoch, why it stopped early, the test score
    and where the checkpoints are. With `width` (a terminal's), a longer line breaks
    between its figures, never inside one (the terminal would cut '0.3353' after its 0)."""
    from .dashboard import fmt, fmt_metric

    out = []
    last = result.history[-1] if result.history else None
    if last is not None:
        parts = [f"final: epoch {last.epoch + 1}/{last.epochs}", f"train_loss {fmt(last.train_loss)}"]
        if last.val_loss is not None:
            parts.append(f"val_loss {fmt(last.val_loss)}")
        if last.val_acc is not None:
            parts.append(f"val_acc {last.val_acc:.4f}")
        if result.stopped == "interrupted" and result.step > last.step:  # partway through the next epoch
            parts.insert(1, f"(stopped in epoch {last.epoch + 2} at step {result.step})")
        out.extend(_wrapped(parts, width))
    if result.stopped == "early_stopped":
        out.append(f"stopped: {result.message}")
    best = trainer.state.get("best")
    if saved and best and best.get("epoch"):
        from .run import best_path

        out.append(
            f"best: epoch {best['epoch']}, {best['monitor']} {fmt_metric(best['monitor'], best['value'])} -> {best_path(saved)}"
        )
    if result.test is not None:
        t = result.test
        acc = f" test_acc {t['acc']:.4f}" if t["acc"] is not None else ""
        out.append(
            f"test: test_loss {fmt(t['loss'])}{acc} ({t['samples']} samples, {t['checkpoint']} epoch {t['epoch']})"
        )
    if saved:
        out.append(f"checkpoint: {saved}")
    return out


def _options_text(overrides):
    """{'epochs': 30, 'batch_size': 64} as '--epochs 30 --batch-size 64', as it was typed."""
    if not isinstance(overrides, dict):
        return str(overrides)
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in overrides.items())


def _wrapped(pieces, width):
    """The pieces joined by spaces: one line, or lines of at most `width` cells broken
    between pieces (the later ones indented)."""
    lines = [pieces[0]]
    for piece in pieces[1:]:
        if width is not None and len(lines[-1]) + 1 + len(piece) > width:
            lines.append("  " + piece)
        else:
            lines[-1] += " " + piece
    return lines


@main.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--no-data", is_flag=True, help="Do not load the dataset (faster for big files).")
@friendly_errors
def summary(source, no_data):
    """Validate a spec (or read a checkpoint) and show the model: layers, shapes,
    parameters and FLOPs. Errors are exactly those `train` would give."""
    single_process("summary")
    from . import data, run
    from .dashboard import fmt_metric, summary_table

    s, ckpt = run.spec_or_checkpoint(source)
    model, loss = run.build(s, checkpoint=ckpt)
    console = stdout_console()
    console.print(summary_table(model, title=f"model: {s.name}  (input {list(s.model.input)})"))
    console.print(
        f"loss: {s.loss}   optimizer: {s.optimizer.name} (lr {s.optimizer.lr})   "
        f"epochs: {s.train.epochs}   batch size: {s.train.batch_size}   seed: {s.seed}"
    )
    if ckpt is not None:
        meta = ckpt.meta
        best = meta.get("best")
        console.print(
            f"checkpoint: {meta.get('epochs_done', 0)} epoch{'' if meta.get('epochs_done') == 1 else 's'}, "
            f"step {meta.get('step', 0)}, "
            f"dlcli {meta.get('dlcli_version')}"
            + (f"; the best epoch ({best['monitor']} {fmt_metric(best['monitor'], best['value'])})" if best else "")
            + ("; set on the command line: " + _options_text(meta["overrides"]) if meta.get("overrides") else "")
        )
    if not no_data:
        try:
            d = data.load(s, loss, model.output_shape, vocab=run.vocabulary_of(ckpt))
        except DataError as e:
            if ckpt is None:  # a spec: the error train would give
                raise
            # a checkpoint reads without its data (its vocabulary and classes are inside)
            console.print(f"data: {e} (only --resume needs them)", style="yellow", markup=False)
            d = None
        what = run.data_difference(ckpt, d) if d is not None and ckpt is not None else None
        if what is not None:
            console.print(f"note: {source}: --resume would refuse: " + run.DATA_DIFFER.format(what=what), markup=False)
    if not no_data and d is not None:
        console.print(
            f"data: {d.description}; train {list(d.x_train.shape)}, validation {list(d.x_val.shape)}"
            + (f", test {list(d.x_test.shape)}" if d.x_test is not None else "")
            + ", "
            f"targets {list(d.y_train.shape[1:]) or 'scalar'} {d.y_train.dtype}"
            + (f", {len(d.classes)} classes" if d.classes else "")
        )
    console.print("[green]spec OK[/green]")


@main.command()
@click.argument("spec_file", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--layer",
    "kinds",
    multiple=True,
    metavar="KIND",
    help="Check one built-in layer type on its own (repeatable), e.g. --layer lstm.",
)
@click.option("--all", "all_kinds", is_flag=True, help="Check every layer type the engine knows.")
@click.option(
    "--eps",
    type=FiniteFloat(min=1e-10, max=1e-3),
    default=1e-6,
    show_default=True,
    help="Finite-difference step, 1e-10 to 1e-3 (larger steps see curvature as kinks, smaller ones float64 round-off).",
)
@click.option(
    "--rtol",
    type=FiniteFloat(min=0),
    default=1e-4,
    show_default=True,
    help="Relative tolerance: an entry passes if |a-n| <= atol or |a-n|/max(|a|,|n|) <= rtol.",
)
@click.option(
    "--atol", type=FiniteFloat(min=0), default=1e-6, show_default=True, help="Absolute tolerance (see --rtol)."
)
@click.option(
    "--samples",
    type=click.IntRange(min=0),
    default=30,
    show_default=True,
    help="Check N random entries (seeded) of each larger tensor; 0 checks every entry.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Samples in the random input batch."
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed for inputs, targets, sampled entries (the spec's seed still initialises the model).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of tables.")
@friendly_errors
def gradcheck(spec_file, kinds, all_kinds, eps, rtol, atol, samples, batch_size, seed, as_json):
    """Check analytic gradients against central finite differences in float64.

    With SPEC_FILE: every layer's parameters and input, and the loss, of the spec's model
    (as written and with the Dense+ReLU fusion). With --layer KIND or --all: layer types
    on their own. Exits 0 when every tensor passes (or only hits kinks), 1 when any fails.
    """
    single_process("gradcheck")
    from . import gradcheck as gc
    from . import jsontext

    if (spec_file is not None) + bool(kinds) + all_kinds != 1:
        raise click.UsageError("give exactly one of SPEC_FILE, --layer KIND or --all")
    opts = dict(eps=eps, rtol=rtol, atol=atol, samples=samples or None, batch_size=batch_size, seed=seed)
    if spec_file is not None:
        from . import run

        report = gc.check_spec(run.load_spec(spec_file), **opts)
    else:
        from .layers import LAYERS

        report = gc.check_kinds(list(LAYERS) if all_kinds else list(kinds), **opts)
    if as_json:
        click.echo(jsontext.dumps(report.to_dict(), indent=2))
    else:
        console = stdout_console()
        for table in gc.report_tables(report):
            console.print(table)
        from rich.text import Text

        from .dashboard import pack

        style = "green" if report.passed else "bold red"
        for line in pack([Text(p) for p in report.summary_pieces()], console.width, sep=" "):
            console.print(line, style=style)
    sys.exit(0 if report.passed else 1)


def _progress(enabled, description):
    """A Rich progress bar on stderr when it is a terminal: (context manager, callback or None)."""
    import contextlib

    if not enabled or not sys.stderr.isatty():
        return contextlib.nullcontext(), None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(description, total=None)

    def update(done, total):
        bar.update(task, completed=done, total=total)

    return bar, update


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("input_file", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write to this file; .csv, .json or .npy by its extension (default: CSV on stdout).",
)
@click.option("--proba", is_flag=True, help="Class probabilities instead of labels.")
@click.option(
    "--top-k", type=click.IntRange(min=1), metavar="K", help="The K likeliest classes with their probabilities."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Samples per forward pass (bounds memory).",
)
@click.option("--label", help="CSV label column to drop, if present (default: the spec's data.label).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file at the output path.")
@threads_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@friendly_errors
def predict(model, input_file, output, proba, top_k, batch_size, label, overwrite, threads, quiet):
    """Predict INPUT (.npy, .npz with key x, or .csv) with the checkpoint MODEL.

    Classifiers give class labels (names when the training data had them), --proba the
    probability of each class, --top-k the K likeliest; regression models their outputs.
    .npy inputs are memory-mapped and processed batch by batch.
    """
    single_process("predict")
    from . import predict as predict_mod
    from . import runtime

    if threads:
        runtime.set_threads(threads)
    bar, update = _progress(not quiet, "predicting")
    try:
        with bar:
            result = predict_mod.predict(
                model,
                input_file,
                output=output,
                stream=sys.stdout,
                proba=proba,
                top_k=top_k,
                batch_size=batch_size,
                label=label,
                progress=update,
                overwrite=overwrite,
            )
    except BrokenPipeError:  # e.g. `dlcli predict ... | head`
        sys.stderr.close()
        sys.exit(0)
    if output and not quiet:
        click.echo(
            f"wrote {result.rows} predictions ({', '.join(result.columns[:6])}"
            f"{', ...' if len(result.columns) > 6 else ''}) to {output}"
        )


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data_file", metavar="DATA", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Samples per forward pass (bounds memory).",
)
@click.option("--label", help="CSV label column (default: the spec's data.label, else 'label').")
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test"]),
    help="Arrays of a .npz to score: train (x, y), val (x_val, y_val), test (x_test, y_test). "
    "Default: test when the file has x_test and y_test, else x, y.",
)
@click.option("--keys", metavar="X,Y", help="Score these two arrays of a .npz, e.g. --keys inputs,labels.")
@threads_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def evaluate(model, data_file, as_json, batch_size, label, split, keys, threads, quiet):
    """Loss, accuracy, per-class precision/recall and confusion matrix of the checkpoint
    MODEL on labelled DATA (.npz with arrays x and y, or x_test and y_test, or .csv with
    the label column). The output names the arrays it scored."""
    single_process("evaluate")
    from . import jsontext, runtime
    from . import predict as predict_mod

    if split and keys:
        raise click.UsageError("give --split or --keys, not both")
    key_pair = None
    if keys is not None:
        key_pair = tuple(k.strip() for k in keys.split(","))
        if len(key_pair) != 2 or not all(key_pair):
            raise click.BadParameter("give two array names, e.g. --keys inputs,labels", param_hint="--keys")
    if threads:
        runtime.set_threads(threads)
    bar, update = _progress(not as_json and not quiet, "evaluating")
    with bar:
        r = predict_mod.evaluate(
            model, data_file, batch_size=batch_size, label=label, progress=update, split=split, keys=key_pair
        )
    if as_json:
        click.echo(jsontext.dumps(r.as_dict(), indent=2))
        return
    console = stdout_console()
    for renderable in predict_mod.evaluation_report(r, console.width if sys.stdout.isatty() else None):
        console.print(renderable)


@main.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="The .onnx file to write (default: CHECKPOINT with .onnx)."
)
@click.option(
    "--opset", type=click.IntRange(min=1), default=17, show_default=True, help="ONNX operator set (17 or later)."
)
@click.option(
    "--check",
    is_flag=True,
    help="Run onnx.checker (full check) and, when onnxruntime is installed, compare its outputs with dlcli's.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing file at the output path.")
@friendly_errors
def export(checkpoint_path, output, opset, check, overwrite):
    """Export the checkpoint CHECKPOINT as an ONNX model (needs: pip install 'dlcli[onnx]').

    The model takes the raw input `dlcli predict` takes, (batch, *model.input) float32,
    standardisation included, and gives what `predict --proba` gives (probabilities), or
    the raw outputs of a regression. Class names, the spec and the dlcli version are in
    its metadata.
    """
    single_process("export")
    from . import export as export_mod

    r = export_mod.to_onnx(checkpoint_path, output, opset=opset, run_check=check, overwrite=overwrite)
    click.echo(
        f"wrote {r.path}: opset {r.opset}, {r.nodes} nodes; output '{r.output_name}' "
        f"(batch, {', '.join(map(str, r.output_shape))}): {r.meaning}"
    )
    if r.check is not None:
        line = "onnx.checker: ok (full check)"
        if r.check.max_diff is None:
            line += "; onnxruntime not installed, outputs not compared (pip install onnxruntime)"
        else:
            line += (
                f"; ONNX Runtime {r.check.runtime_version} vs dlcli on {r.check.samples} random inputs: "
                f"largest difference {r.check.max_diff:.3g} (outputs up to {r.check.scale:.3g})"
            )
        click.echo(line)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--prompt", default="", help="Text to start from (default: the start of a line).")
@click.option(
    "--length",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Tokens to generate (characters; at word level, words and punctuation).",
)
@click.option(
    "--temperature",
    type=FiniteFloat(min=0),
    default=1.0,
    show_default=True,
    help="Below 1 more predictable, above 1 more random; 0 always takes the likeliest token.",
)
@click.option("--top-k", type=click.IntRange(min=1), metavar="K", help="Sample only among the K likeliest tokens.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for sampling.")
@click.option(
    "--unknown",
    type=click.Choice(["error", "unk"]),
    default="error",
    show_default=True,
    help="A prompt character outside the vocabulary: an error, or read as the <unk> token.",
)
@threads_option
@friendly_errors
def generate(model, prompt, length, temperature, top_k, seed, unknown, threads):
    """Write text with the language model in the checkpoint MODEL: the prompt, then each
    sampled character as it comes, carrying the recurrent state from one to the next."""
    single_process("generate")
    import itertools

    from . import generate as gen
    from . import runtime

    if threads:
        runtime.set_threads(threads)
    tm = gen.open_text_model(model)
    tokens = gen.generate(tm, prompt, length, temperature, top_k, seed, unknown)
    first = next(tokens, "")  # a bad prompt fails here, before anything is printed
    try:
        for piece in itertools.chain([prompt, first], tokens):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except BrokenPipeError:  # e.g. `dlcli generate ... | head -c 100`
        sys.stderr.close()
        sys.exit(0)


@main.command("inspect-gradients")
@click.argument("source", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--batches",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Batches of the training data to average over.",
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Override train.batch_size.")
@click.option("--seed", type=click.IntRange(min=0), help="Override the spec's seed (initialisation, batch order).")
@click.option("--compare", "other", type=click.Path(dir_okay=False), help="A second spec or checkpoint, side by side.")
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False),
    help="A metrics log from `train --log FILE --log-grad-norms`: norms over training as a heat map.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON instead of tables and charts.")
@friendly_errors
def inspect_gradients(source, batches, batch_size, seed, other, log_path, as_json):
    """Show how gradients flow through SOURCE (a spec, freshly initialised, or a checkpoint):
    per-layer gradient norms, update/weight ratios, dead and saturated units, per-time-step
    norms of recurrent layers, and a verdict (vanishing, exploding, dead ReLUs, saturation)."""
    single_process("inspect-gradients")
    from . import inspect_gradients as ig
    from . import jsontext

    if source is None and log_path is None:
        raise click.UsageError("give a SOURCE (spec or checkpoint), or --log METRICS.jsonl")
    if other is not None and source is None:
        raise click.UsageError("--compare needs a SOURCE to compare with")
    opts = dict(batches=batches, batch_size=batch_size, seed=seed)
    runs = [ig.inspect(p, **opts) for p in (source, other) if p is not None]
    log = ig.read_log(log_path) if log_path else None
    if as_json:
        out = runs[0].to_dict() if len(runs) == 1 else {}
        if len(runs) == 2:
            out = {"compare": [r.to_dict() for r in runs]}
        if log is not None:
            out["training_log"] = log.to_dict()
        click.echo(jsontext.dumps(out, indent=2))
        return
    from pathlib import Path

    from rich.panel import Panel

    console = stdout_console()
    if len(runs) == 2:
        console.print(ig.render_compare(*runs))
    elif runs:
        console.print(ig.render(runs[0]))
    if log is not None:
        console.print(
            Panel(
                ig.heat_map(log),
                title=f"gradient norm per layer over training: {Path(log_path).name}",
                title_align="left",
                border_style="blue",
            )
        )


if __name__ == "__main__":
    main()
