"""`dlcli train` and `dlcli summary` end to end through Click, and the cost of starting up."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dlcli import checkpoint
from dlcli.cli import main

TEXT = """\
name: cli
seed: 1
data: {source: builtin:moons, options: {samples: 200}}
model: {input: [2], layers: [{dense: 8}, relu, {dense: 2}]}
optimizer: {name: adam, lr: 0.02}
train: {epochs: 2, batch_size: 32}
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


HEAVY = ("numpy", "numba", "llvmlite", "rich", "dlcli.kernels")  # each loads on use, never for --help


def test_import_and_help_load_nothing_heavy():
    """`dlcli --help` stays instant because it imports none of HEAVY; the time itself is
    measured by benchmarks/bench_startup.py (a wall-clock assertion flakes on a busy machine)."""
    code = f"""
import sys
import dlcli
from dlcli.cli import main
for args in (["--help"], ["train", "--help"], ["summary", "--help"]):
    try:
        main(args)
    except SystemExit:
        pass
print("RESULT", [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout and "train" in out.stdout
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("RESULT")][0]
    assert line == "RESULT []", line


def test_train_end_to_end(write_spec):
    p = write_spec(TEXT)
    out = invoke("train", p)
    assert out.exit_code == 0, out.output
    assert "final: epoch 2/2" in out.output and "val_acc" in out.output
    ck = checkpoint.load("runs/cli.npz")
    assert ck.meta["epochs_done"] == 2
    final = [ln for ln in out.output.splitlines() if ln.startswith("final:")][0]
    assert float(final.split("val_acc ")[1]) == pytest.approx(ck.meta["metrics"]["val_acc"], abs=1e-4)
    losses = [
        float(ln.split("train_loss ")[1].split()[0])
        for ln in out.output.splitlines()
        if " train_loss " in ln and ln.startswith("epoch")
    ]
    assert len(losses) == 2 and losses[1] < losses[0]


def test_overrides_and_quiet(write_spec):
    p = write_spec(TEXT)
    out = invoke(
        "train",
        p,
        "--epochs",
        3,
        "--batch-size",
        50,
        "--lr",
        0.005,
        "--seed",
        4,
        "-o",
        "o.npz",
        "-q",
        "--log",
        "m.jsonl",
    )
    assert out.exit_code == 0, out.output
    assert "epoch 1/3" not in out.output and "final: epoch 3/3" in out.output  # quiet: only the result
    rows = [json.loads(ln) for ln in open("m.jsonl")]
    steps = [r for r in rows if r["event"] == "step"]
    assert len(steps) == 3 * 4  # 160 training samples in batches of 50
    assert all(r["lr"] == 0.005 for r in steps)
    assert checkpoint.load("o.npz").meta["epochs_done"] == 3


def test_metrics_log_has_the_documented_fields(write_spec):
    p = write_spec(TEXT)
    out = invoke("train", p, "--log", "logs/metrics.jsonl", "--log-grad-norms")
    assert out.exit_code == 0, out.output
    rows = [json.loads(ln) for ln in open("logs/metrics.jsonl")]
    steps = [r for r in rows if r["event"] == "step"]
    epochs = [r for r in rows if r["event"] == "epoch"]
    assert len(steps) == 2 * 5 and len(epochs) == 2
    assert set(steps[0]) == {
        "event",
        "epoch",
        "step",
        "loss",
        "acc",
        "lr",
        "grad_norm",
        "samples_per_s",
        "layer_grad_norms",
    }
    assert set(steps[0]["layer_grad_norms"]) == {"layers[0] dense", "layers[2] dense"}
    assert set(epochs[0]) == {
        "event",
        "epoch",
        "step",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "samples_per_s",
        "elapsed_s",
    }
    assert [e["epoch"] for e in epochs] == [1, 2] and [e["step"] for e in epochs] == [5, 10]
    assert [s["step"] for s in steps] == list(range(1, 11)) and steps[0]["epoch"] == 1
    norms = steps[-1]["layer_grad_norms"]
    assert steps[-1]["grad_norm"] == pytest.approx(np.hypot(*norms.values()), rel=1e-4)
    assert 0 <= epochs[-1]["val_acc"] <= 1
    # without --log-grad-norms: no per-layer norms; regression: acc is null
    reg = write_spec(
        "data: {source: builtin:sine, options: {samples: 100}}\nmodel: {input: [1], layers: [dense: 1]}\n"
        "loss: mse\ntrain: {epochs: 1}\n",
        name="reg.yaml",
    )
    assert invoke("train", reg, "--log", "r.jsonl").exit_code == 0
    rows = [json.loads(ln) for ln in open("r.jsonl")]
    assert rows[0]["event"] == "start" and rows[1]["event"] == "step"
    assert "layer_grad_norms" not in rows[1] and rows[1]["acc"] is None and rows[-1]["val_acc"] is None


def one_line_error(out, code=2):
    assert out.exit_code == code, out.output
    text = out.output.strip()
    assert "Traceback" not in text
    errors = [ln for ln in text.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, text
    return errors[0]


@pytest.mark.parametrize(
    "data,source,fragment",
    [
        (None, "missing.npz", "/missing.npz"),  # resolved beside the spec
        ({"inputs": np.zeros((8, 2), np.float32), "y": np.zeros(8, np.int64)}, "d.npz", "no array named 'x'"),
        (
            {"x": np.zeros((8, 3), np.float32), "y": np.zeros(8, np.int64)},
            "d.npz",
            "samples have shape (3,), but model.input is [2]",
        ),
    ],
)
def test_bad_data_is_one_line_exit_2(tmp_path, write_spec, data, source, fragment):
    if data is not None:
        np.savez(tmp_path / source, **data)
    p = write_spec(TEXT.replace("{source: builtin:moons, options: {samples: 200}}", "{source: " + source + "}"))
    line = one_line_error(invoke("train", p))
    assert fragment in line and (data is not None or "data file not found" in line)


def test_bad_spec_and_missing_files_are_one_line_exit_2(write_spec):
    p = write_spec(TEXT.replace("epochs: 2", "epochs: 0"))
    line = one_line_error(invoke("train", p))
    assert line == f"Error: {p}:6:17: train.epochs must be a positive integer, got 0"
    assert "spec file not found" in one_line_error(invoke("train", "nope.yaml"))
    assert "checkpoint not found" in one_line_error(invoke("train", "--resume", "nope.npz"))
    assert one_line_error(invoke("summary", p)) == line  # summary validates exactly like train


def test_huge_learning_rate_stops_with_a_clear_message(write_spec):
    p = write_spec(
        "data: {source: builtin:sine, options: {samples: 200}}\n"
        "model: {input: [1], layers: [{dense: 8}, tanh, {dense: 1}]}\nloss: mse\n"
        "optimizer: {name: sgd, lr: 10}\ntrain: {epochs: 5, batch_size: 32}\n"
    )
    out = invoke("train", p, "-o", "h.npz")
    line = one_line_error(out, code=1)
    assert (
        "became" in line
        and ("NaN" in line or "infinite" in line)
        and "the last good checkpoint, h.npz, is kept" in line
    )
    ck = checkpoint.load("h.npz")
    assert 1 <= ck.meta["epochs_done"] < 5
    assert all(np.all(np.isfinite(v)) for v in ck.params.values())
    out = invoke("train", p, "-o", "h2.npz", "--lr", 1e10)
    assert "no checkpoint was written yet" in one_line_error(out, code=1)
    # a resumed run that diverges before writing leaves the checkpoint it came from
    before = Path("h.npz").read_bytes()
    out = invoke("train", "--resume", "h.npz", "--lr", 1e10, "--epochs", 9)
    assert "the last good checkpoint, h.npz, is kept" in one_line_error(out, code=1)
    assert Path("h.npz").read_bytes() == before


def test_resume_from_the_checkpoint_alone(write_spec):
    p = write_spec(TEXT)
    assert invoke("train", p, "-o", "r.npz").exit_code == 0
    line = one_line_error(invoke("train", "--resume", "r.npz"))
    assert "already trained 2 epochs" in line and "--epochs N with N > 2" in line
    out = invoke("train", "--resume", "r.npz", "--epochs", 3)
    assert out.exit_code == 0, out.output
    assert "epoch 3/3 train_loss" in out.output and "epoch 1/3 train_loss" not in out.output
    assert checkpoint.load("r.npz").meta["epochs_done"] == 3


def test_threads_1(write_spec):
    from threadpoolctl import threadpool_info

    from dlcli import runtime

    p = write_spec(TEXT)
    try:
        out = invoke("train", p, "--threads", 1, "-o", "t.npz")
        assert out.exit_code == 0, out.output
        assert runtime.threads() == 1
        assert runtime.shard_bounds(32) == [(0, 32)]  # recurrent layers: one shard, no threads
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
        again = invoke("train", p, "--threads", 2, "-o", "t2.npz")
        assert again.exit_code == 0
        assert "but this machine has" not in again.output
        many = (os.cpu_count() or 1) + 1
        out = invoke("train", p, "--threads", many, "-o", "t3.npz", "--epochs", 1)
        assert out.exit_code == 0, out.output
        assert f"Note: --threads {many}, but this machine has" in out.output  # allowed, but said
    finally:
        runtime.set_threads(None)
    # the same seed gives the same model whatever the thread count
    a, b = checkpoint.load("t.npz").params, checkpoint.load("t2.npz").params
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert "--threads" in invoke("train", p, "--threads", 0).output  # Click rejects it: exit 2
    assert invoke("train", p, "--threads", 0).exit_code == 2


def test_summary(write_spec):
    p = write_spec(TEXT)
    out = invoke("summary", p)
    assert out.exit_code == 0, out.output
    assert "model: cli" in out.output and "spec OK" in out.output
    assert "dense (8 units" in out.output and "42" in out.output  # 2*8+8 + 8*2+2 parameters
    assert "train [160, 2], validation [40, 2]" in out.output and "2 classes" in out.output
    assert invoke("train", p, "-o", "s.npz", "--epochs", "1", "--lr", "0.05").exit_code == 0
    out = invoke("summary", "s.npz")
    assert out.exit_code == 0 and "checkpoint: 1 epoch, step" in out.output
    assert "set on the command line: --epochs 1 --lr 0.05" in " ".join(out.output.split()), out.output


def test_tiny_losses_keep_their_digits_in_the_final_and_early_stopping_lines():
    """A loss near zero prints as the epoch lines print it (4.73e-10), never 0.0000."""
    from types import SimpleNamespace

    from dlcli.callbacks import EarlyStopping
    from dlcli.cli import final_lines

    last = SimpleNamespace(epoch=229, epochs=300, train_loss=4.73e-10, val_loss=9.14e-7, val_acc=1.0)
    result = SimpleNamespace(history=[last], stopped="early_stopped", message="early stopping", test=None)
    trainer = SimpleNamespace(state={"best": {"monitor": "val_loss", "value": 2.5e-8, "epoch": 200}})
    lines = final_lines(result, "r.npz", trainer)
    assert lines[0] == "final: epoch 230/300 train_loss 4.73e-10 val_loss 9.14e-07 val_acc 1.0000"
    assert "best: epoch 200, val_loss 2.50e-08 -> r.best.npz" in lines
    # on a 60-column terminal the line breaks between figures, never inside one
    narrow = final_lines(result, "r.npz", trainer, width=60)
    assert narrow[:2] == ["final: epoch 230/300 train_loss 4.73e-10 val_loss 9.14e-07", "  val_acc 1.0000"]
    trainer.state["best"] = {"monitor": "val_acc", "value": 0.96, "epoch": 200}
    assert "best: epoch 200, val_acc 0.9600 -> r.best.npz" in final_lines(result, "r.npz", trainer)

    stop = EarlyStopping(SimpleNamespace(monitor="val_loss", min_delta=0.0, patience=1))
    trainer = SimpleNamespace(state={"early_stopping": {"best": 3.2e-9, "best_epoch": 4, "wait": 0}})
    stop.on_epoch(trainer, SimpleNamespace(val_loss=1e-8, epoch=5, epochs=10))
    assert trainer.stop_reason.endswith("(best 3.20e-09 at epoch 4)")


def test_summary_into_a_pipe_is_not_wrapped_at_80_columns(write_spec):
    """Rich would break these lines at 80 columns when stdout is not a terminal."""
    p = write_spec(TEXT.replace("name: cli", "name: a_model_with_a_rather_long_name"))
    out = invoke("summary", p)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert any(ln.startswith("loss: cross_entropy") and ln.endswith("seed: 1") for ln in lines), out.output
    assert any(ln.startswith("data: ") and ln.endswith("2 classes") for ln in lines), out.output
    assert not [ln for ln in lines if ln.endswith(" ") and not ln.startswith("model: ")], out.output


def test_a_memory_error_past_the_estimate_is_one_line(write_spec, monkeypatch):
    """Another process may take the memory after the up-front check: one line, exit 1."""
    from dlcli import run

    def starved(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.49 GiB for an array")

    monkeypatch.setattr(run, "train", starved)
    out = invoke("train", write_spec(TEXT), "-o", "m.npz")
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.output.strip() == (
        "Error: out of memory (Unable to allocate 1.49 GiB for an array); any checkpoint already written is kept"
    )


def test_ctrl_c_before_training_starts_exits_130(write_spec, monkeypatch):
    """Ctrl-C while the spec or the data loads: the documented 130, not Click's 'Aborted!' and 1."""
    from dlcli import run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "load_spec", interrupted)
    out = invoke("train", write_spec(TEXT))
    assert out.exit_code == 130 and out.output.strip() == "Interrupted."
