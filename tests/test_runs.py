"""Runs and checkpoints (issue 11): resume keeps the effective settings, no run is
overwritten, unsafe output paths are refused, stale temporaries are cleaned up, data paths
resolve beside the spec; the test split, keep_best and early stopping."""

import fcntl
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dlcli import checkpoint
from dlcli.cli import main

TEXT = """\
name: runs
seed: 1
data: {source: builtin:moons, options: {samples: 200}}
model: {input: [2], layers: [{dense: 8}, relu, {dense: 2}]}
optimizer: {name: adam, lr: 0.02}
train: {epochs: 1, batch_size: 32}
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(out):
    assert out.exit_code == 0, out.output
    return out.output


def one_line_error(out, code=2):
    assert out.exit_code == code, out.output
    errors = [ln for ln in out.output.strip().splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in out.output, out.output
    return errors[0]


def log_rows(path):
    return [json.loads(ln) for ln in open(path)]


# ---------------------------------------------------------------- bug 1: resume keeps the command line


def test_resume_keeps_the_command_line_overrides(write_spec):
    p = write_spec(TEXT)
    ok(invoke("train", p, "--lr", 0.005, "--batch-size", 64, "--seed", 7, "-o", "r.npz", "-q"))
    s = checkpoint.load("r.npz").spec()
    assert (s.optimizer.lr, s.train.batch_size, s.seed, s.name) == (0.005, 64, 7, "runs")
    assert checkpoint.load("r.npz").meta["overrides"] == {"lr": 0.005, "batch_size": 64, "seed": 7}
    # `summary CKPT` reports the settings the run had
    summary = ok(invoke("summary", "r.npz", "--no-data"))
    assert "lr 0.005" in summary and "batch size: 64" in summary and "seed: 7" in summary
    inspected = json.loads(ok(invoke("inspect-gradients", "r.npz", "--json", "--batches", 1)))
    assert (inspected["lr"], inspected["batch_size"]) == (0.005, 64)
    ok(invoke("train", "--resume", "r.npz", "--epochs", 2, "--log", "m.jsonl", "-q"))
    rows = log_rows("m.jsonl")
    steps = [r for r in rows if r["event"] == "step"]
    assert all(r["lr"] == 0.005 for r in steps)
    assert len(steps) == 3  # 160 training samples in batches of 64
    assert checkpoint.load("r.npz").meta["step"] == 6  # ends at the step an uninterrupted run would
    # the same split as the first session: a straight 2-epoch run gives the same model
    ok(invoke("train", p, "--lr", 0.005, "--batch-size", 64, "--seed", 7, "--epochs", 2, "-o", "s.npz", "-q"))
    a, b = checkpoint.load("r.npz").params, checkpoint.load("s.npz").params
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7)


def test_resume_applies_a_new_option_and_says_what_changed(write_spec):
    p = write_spec(TEXT)
    ok(invoke("train", p, "--lr", 0.005, "-o", "r.npz", "-q"))
    out = ok(invoke("train", "--resume", "r.npz", "--epochs", 2, "--lr", 0.001, "--log", "m.jsonl"))
    assert "resuming r.npz after epoch 1; changed:" in out
    assert "optimizer.lr 0.005 -> 0.001" in out and "train.epochs 1 -> 2" in out
    resume = [r for r in log_rows("m.jsonl") if r["event"] == "resume"]
    assert resume == [
        {
            "event": "resume",
            "from": "r.npz",
            "epoch": 1,
            "epoch_step": 0,
            "step": 5,
            "changes": {"optimizer.lr": [0.005, 0.001], "train.epochs": [1, 2]},
        }
    ]
    assert checkpoint.load("r.npz").spec().optimizer.lr == 0.001
    # a new seed would re-split the data and leak validation samples into training
    line = one_line_error(invoke("train", "--resume", "r.npz", "--epochs", 3, "--seed", 9))
    assert "cannot resume with seed 9" in line and "leak" in line


def test_resume_refusals_name_what_matters(write_spec):
    """Another data source differs in its options too: the source is named, not an option;
    a finished run resumed with too few --epochs says that --epochs asked for no more."""
    p = write_spec(TEXT)
    ok(invoke("train", p, "-o", "r.npz", "-q"))
    other = write_spec(TEXT.replace("builtin:moons, options: {samples: 200}", "builtin:spirals, options: {classes: 2}"))
    line = one_line_error(invoke("train", other, "--resume", "r.npz", "-o", "s.npz"))
    assert "cannot resume with data.source builtin:spirals: it was trained with builtin:moons" in line, line
    line = one_line_error(invoke("train", "--resume", "r.npz", "--epochs", 1))
    assert "already trained 1 epoch, --epochs 1 asks for no more; pass --epochs N with N > 1" in line, line


GRAPH = """\
name: wired
seed: 0
data: {source: builtin:moons, options: {samples: 200}}
model:
  input: [2]
  layers:
    - {dense: 4, name: a}
    - {dense: 3, name: b}
    - {concat: null, input: [a, b], name: both}
    - dense: 2
train: {epochs: 1, batch_size: 32}
"""


def test_resume_refuses_a_rewired_graph(write_spec):
    """A concat's inputs reordered, or a layer fed from elsewhere, is another model: the
    next layer's weights would meet other features (a tester saw val_acc 0.90 -> 0.37)."""
    ok(invoke("train", write_spec(GRAPH), "-o", "g.npz", "-q"))
    reordered = write_spec(GRAPH.replace("input: [a, b]", "input: [b, a]"))
    line = one_line_error(invoke("train", reordered, "--resume", "g.npz", "--epochs", 2, "-o", "g2.npz"))
    assert "cannot resume with model.layers[2].input ['layers[1]', 'layers[0]']: it was trained with" in line, line
    rewired = write_spec(GRAPH.replace("{dense: 3, name: b}", "{dense: 3, name: b, input: input}"))
    line = one_line_error(invoke("train", rewired, "--resume", "g.npz", "--epochs", 2, "-o", "g3.npz"))
    assert "cannot resume with model.layers[1].input [input]: it was trained with" in line, line
    renamed = write_spec(GRAPH.replace("name: both", "name: joined"))  # a name alone changes nothing
    ok(invoke("train", renamed, "--resume", "g.npz", "--epochs", 2, "-o", "g4.npz", "-q"))


def test_resume_refuses_data_that_changed_under_the_same_spec(write_spec, tmp_path):
    """A CSV edited between the run and its resume (49 rows deleted) re-splits the data:
    validation rows move into training (a tester saw val_acc 1.0 scored against a best
    epoch of the old split). Refused, naming what differs; the unchanged data resume."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 3))
    rows = [f"{a:.5f},{b:.5f},{c:.5f},{'pos' if a > 0 else 'neg'}" for a, b, c in x]
    data = tmp_path / "d.csv"
    data.write_text("a,b,c,cls\n" + "\n".join(rows) + "\n")
    p = write_spec(
        f"data: {{source: {data}, label: cls}}\nmodel: {{input: [3], layers: [{{dense: 4}}, {{dense: 2}}]}}\n"
        "train: {epochs: 1, batch_size: 64}\n"
    )
    ok(invoke("train", p, "-o", "d.npz"))
    assert checkpoint.load("d.npz").meta["data"]["train"] == 320
    ok(invoke("train", "--resume", "d.npz", "-o", "d2.npz", "--epochs", 2))  # the same data: goes on
    data.write_text("a,b,c,cls\n" + "\n".join(rows[49:]) + "\n")
    line = one_line_error(invoke("train", "--resume", "d.npz", "-o", "d3.npz", "--epochs", 2))
    assert "d.npz: cannot resume: the data differ" in line and "train split 320 -> 281 samples" in line, line
    data.write_text("a,b,c,cls\n" + "\n".join(rows[:-1] + ["0,0,0,neg"]) + "\n")  # same size, a row changed
    line = one_line_error(invoke("train", "--resume", "d.npz", "-o", "d3.npz", "--epochs", 2))
    assert "the same sizes, other values" in line, line
    assert not Path("d3.npz").exists()


# ---------------------------------------------------------------- bug 2: no run is overwritten


def test_a_new_run_never_overwrites_a_checkpoint(write_spec):
    p = write_spec(TEXT)
    ok(invoke("train", p, "-q"))
    first = open("runs/runs.npz", "rb").read()
    out = ok(invoke("train", p, "-q"))
    assert "checkpoint: runs/runs-2.npz" in out
    assert open("runs/runs.npz", "rb").read() == first and os.path.exists("runs/runs-2.npz")
    ok(invoke("train", p, "-o", "mine.npz", "-q"))
    mine = open("mine.npz", "rb").read()
    line = one_line_error(invoke("train", p, "-o", "mine.npz", "-q"))
    assert "mine.npz already exists" in line and "--overwrite" in line and "--resume mine.npz" in line
    assert open("mine.npz", "rb").read() == mine
    ok(invoke("train", p, "-o", "mine.npz", "--overwrite", "--seed", 3, "-q"))
    assert open("mine.npz", "rb").read() != mine


def test_a_second_run_on_a_locked_path_is_refused(write_spec):
    p = write_spec(TEXT)
    fd = os.open(".busy.npz.lock", os.O_RDWR | os.O_CREAT)  # another run holds the lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = one_line_error(invoke("train", p, "-o", "busy.npz", "-q"))
        assert "busy.npz is being written by another dlcli run" in line
        assert not os.path.exists("busy.npz")
    finally:
        os.close(fd)
    ok(invoke("train", p, "-o", "busy.npz", "-q"))
    assert not os.path.exists(".busy.npz.lock")  # released and removed


# ---------------------------------------------------------------- bug 3: only regular files are replaced


def test_output_that_is_a_symlink_or_fifo_is_refused(write_spec, tmp_path):
    p = write_spec(TEXT)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    os.symlink(target, "link.npz")
    line = one_line_error(invoke("train", p, "-o", "link.npz", "-q"))
    assert "link.npz is a symbolic link, not a regular file" in line
    assert os.path.islink("link.npz") and target.read_text() == "keep me"
    os.mkfifo("pipe.npz")
    line = one_line_error(invoke("train", p, "-o", "pipe.npz", "-q"))
    assert "pipe.npz is a FIFO" in line
    assert not os.path.isfile("pipe.npz")


def test_log_appends_only_to_a_metrics_log_and_marks_each_run(write_spec):
    p = write_spec(TEXT)
    ok(invoke("train", p, "-o", "m.npz", "-q"))
    before = open("m.npz", "rb").read()
    line = one_line_error(invoke("train", p, "--log", "m.npz", "-o", "n.npz", "-q"))
    assert "m.npz exists and is not a dlcli metrics log" in line
    assert open("m.npz", "rb").read() == before and not os.path.exists("n.npz")
    with open("notes.txt", "w") as f:
        f.write("hello\n")
    one_line_error(invoke("train", p, "--log", "notes.txt", "-o", "n.npz", "-q"))
    assert open("notes.txt").read() == "hello\n"
    # an earlier run's log takes the next run after a start line of its own
    ok(invoke("train", p, "--log", "m.jsonl", "-o", "a.npz", "-q"))
    ok(invoke("train", p, "--log", "m.jsonl", "-o", "b.npz", "-q"))
    rows = log_rows("m.jsonl")
    starts = [i for i, r in enumerate(rows) if r["event"] == "start"]
    assert starts[0] == 0 and len(starts) == 2
    assert [rows[i]["output"] for i in starts] == ["a.npz", "b.npz"] and rows[0]["spec"] == "runs"
    assert len([r for r in rows if r["event"] == "epoch"]) == 2
    open("empty.jsonl", "w").close()
    ok(invoke("train", p, "--log", "empty.jsonl", "-o", "c.npz", "-q"))
    # a log cut short (kill -9, an editor): the next run starts on a line of its own
    with open("m.jsonl", "rb+") as f:
        f.truncate(os.path.getsize("m.jsonl") - 1)
    ok(invoke("train", p, "--log", "m.jsonl", "-o", "d.npz", "-q"))
    assert [r["event"] for r in log_rows("m.jsonl")].count("start") == 3
    # the checkpoint's path as the log: the checkpoint would replace the log
    line = one_line_error(invoke("train", p, "--log", "e.npz", "-o", "e.npz", "-q"))
    assert "--log e.npz is the checkpoint's path" in line and not os.path.exists("e.npz")
    line = one_line_error(invoke("train", p, "--log-grad-norms", "-o", "e.npz", "-q"))
    assert "--log-grad-norms records into the metrics log: give --log FILE too" in line


def test_no_command_writes_over_a_file_it_reads(write_spec, tmp_path):
    """--overwrite replaces an earlier output, never an input: the spec, a data file, the
    checkpoint being exported or the file being predicted (by any name)."""
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.standard_normal((40, 2)).astype(np.float32), y=rng.integers(0, 2, 40))
    p = write_spec(f"data: {{source: {data}}}\nmodel: {{input: [2], layers: [{{dense: 2}}]}}\ntrain: {{epochs: 1}}\n")
    before = {f: open(f, "rb").read() for f in (p, data)}
    line = one_line_error(invoke("train", p, "-o", p, "--overwrite", "-q"))
    assert "is the spec file" in line
    line = one_line_error(invoke("train", p, "-o", data, "--overwrite", "-q"))
    assert "is the data file of data.source" in line
    os.symlink(data, "alias.npz")  # the same file by another name
    line = one_line_error(invoke("train", p, "-o", "alias.npz", "--overwrite", "-q"))
    assert "symbolic link" in line or "is the data file" in line
    assert all(open(f, "rb").read() == b for f, b in before.items())
    ok(invoke("train", p, "-o", "m.npz", "-q"))
    saved = open("m.npz", "rb").read()
    line = one_line_error(invoke("export", "m.npz", "-o", "m.npz", "--overwrite"))
    assert "m.npz is the checkpoint being exported" in line and open("m.npz", "rb").read() == saved
    np.save("x.npy", rng.standard_normal((5, 2)).astype(np.float32))
    line = one_line_error(invoke("predict", "m.npz", "x.npy", "-o", "x.npy"))
    assert "x.npy is the input being predicted" in line and np.load("x.npy").shape == (5, 2)


# ---------------------------------------------------------------- bug 4: stale temporaries


def test_stale_temporaries_are_removed_on_the_next_write(write_spec):
    p = write_spec(TEXT)
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.makedirs("out")
    stale = [f"out/c.npz.{dead.pid}.x1y2z3.tmp", "out/c.npz.abc123de.tmp"]  # a dead writer's; an old unnamed one
    kept = [f"out/c.npz.{os.getppid()}.live01.tmp", "out/c.npz.fresh999.tmp", "out/other.npz.abcdefgh.tmp"]
    for name in stale + kept:
        open(name, "w").write("partial")
    old = time.time() - 2 * 3600
    os.utime("out/c.npz.abc123de.tmp", (old, old))
    os.utime("out/other.npz.abcdefgh.tmp", (old, old))  # another file's: not ours to remove
    ok(invoke("train", p, "-o", "out/c.npz", "-q"))
    assert sorted(os.listdir("out")) == sorted(["c.npz"] + [os.path.basename(k) for k in kept])


# ---------------------------------------------------------------- bug 8: data paths beside the spec


def test_relative_data_paths_resolve_beside_the_spec(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    (tmp_path / "project").mkdir()
    np.savez(tmp_path / "project" / "d.npz", x=rng.standard_normal((40, 2)), y=rng.integers(0, 2, 40))
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((30, 5)), y=rng.integers(0, 2, 30))  # the working directory's
    spec = tmp_path / "project" / "spec.yaml"
    spec.write_text(TEXT.replace("{source: builtin:moons, options: {samples: 200}}", "{source: d.npz}"))
    out = ok(invoke("summary", spec))
    assert "d.npz, 40 samples" in out
    ok(invoke("train", spec, "-o", "r.npz", "-q"))
    monkeypatch.chdir(tmp_path / "project")  # resuming from elsewhere finds the same file
    ok(invoke("train", "--resume", tmp_path / "r.npz", "--epochs", 2, "-q"))


# ---------------------------------------------------------------- test split, keep_best, early stopping

WORKFLOW = """\
name: flow
seed: 0
data: {source: builtin:moons, options: {samples: 200}, validation_split: 0.2, test_split: 0.2}
model: {input: [2], layers: [{dense: 8}, relu, {dense: 2}]}
optimizer: {name: adam, lr: 0.02}
train: {epochs: 4, batch_size: 32, keep_best: val_loss}
"""


def test_test_split_and_best_checkpoint(write_spec):
    p = write_spec(WORKFLOW)
    out = ok(invoke("summary", p))
    assert "train [120, 2], validation [40, 2], test [40, 2]" in out
    out = ok(invoke("train", p, "--log", "m.jsonl"))
    rows = log_rows("m.jsonl")
    epochs = [r for r in rows if r["event"] == "epoch"]
    best_epoch = 1 + int(np.argmin([r["val_loss"] for r in epochs]))
    best = checkpoint.load("runs/flow.best.npz")
    assert best.meta["epochs_done"] == best_epoch and best.meta["best"]["epoch"] == best_epoch
    assert f"best: epoch {best_epoch}, val_loss" in out and "runs/flow.best.npz" in out
    (test,) = [r for r in rows if r["event"] == "test"]
    assert test["samples"] == 40 and test["epoch"] == best_epoch and test["checkpoint"] == "best"
    assert f"test_acc {test['acc']:.4f} (40 samples, best epoch {best_epoch})" in out
    # the score is that of the best checkpoint on the test split, as `evaluate` would compute it
    from dlcli import data, run

    s, model = checkpoint.build_model(best)
    _, loss = run.build(s)
    d = data.load(s, loss, model.output_shape)
    assert test["acc"] == pytest.approx(np.mean(model.predict_raw(d.x_test).argmax(1) == d.y_test), abs=1e-6)
    # the three splits are disjoint and cover the data
    x_all = np.concatenate([d.x_train, d.x_val, d.x_test])
    assert len(np.unique(x_all, axis=0)) == 200
    # resuming the best copy would write over it: refused unless the run goes elsewhere
    before = open("runs/flow.best.npz", "rb").read()
    refused = invoke("train", "--resume", "runs/flow.best.npz", "--epochs", "6")
    assert refused.exit_code == 2 and "best-epoch copy" in refused.output and "-o PATH" in refused.output
    assert open("runs/flow.best.npz", "rb").read() == before
    out = ok(invoke("train", "--resume", "runs/flow.best.npz", "--epochs", "6", "-o", "from_best.npz"))
    assert "from_best.best.npz" in out and open("runs/flow.best.npz", "rb").read() == before


def test_test_file_with_x_test_keys(write_spec, tmp_path):
    rng = np.random.default_rng(1)
    np.savez(
        tmp_path / "d.npz",
        x=rng.standard_normal((60, 2)),
        y=rng.integers(0, 2, 60),
        x_test=rng.standard_normal((17, 2)),
        y_test=rng.integers(0, 2, 17),
    )
    text = TEXT.replace("{source: builtin:moons, options: {samples: 200}}", "{source: d.npz, test: d.npz}")
    out = ok(invoke("train", write_spec(text), "-o", "t.npz", "--log", "m.jsonl"))
    (test,) = [r for r in log_rows("m.jsonl") if r["event"] == "test"]
    assert test["samples"] == 17 and test["checkpoint"] == "last" and "test_loss" in out


def test_early_stopping_stops_and_says_why(write_spec):
    text = WORKFLOW.replace("lr: 0.02", "lr: 1.0e-9").replace(
        "keep_best: val_loss}", "keep_best: val_loss, early_stopping: {patience: 2, min_delta: 0.01}}"
    )
    text = text.replace("epochs: 4", "epochs: 10")
    out = ok(invoke("train", write_spec(text), "--log", "m.jsonl"))
    rows = log_rows("m.jsonl")
    assert [r["epoch"] for r in rows if r["event"] == "epoch"] == [1, 2, 3]
    (stop,) = [r for r in rows if r["event"] == "stop"]
    assert stop["epoch"] == 3 and "val_loss has not improved for 2 epochs" in stop["reason"]
    assert "stopped: early stopping: val_loss has not improved for 2 epochs" in out
    assert "best: epoch 1" in out
    ck = checkpoint.load("runs/flow.npz")
    assert ck.meta["epochs_done"] == 3 and ck.meta["state"]["early_stopping"]["stopped"]
    # a run early stopping ended is finished: resuming it needs --epochs, and is then
    # told that its fresh patience counts from the resume
    before = Path("runs/flow.npz").read_bytes()
    line = one_line_error(invoke("train", "--resume", "runs/flow.npz"))
    assert "runs/flow.npz: early stopping ended this run after epoch 3" in line and "--epochs N with N > 3" in line
    assert Path("runs/flow.npz").read_bytes() == before
    out = ok(invoke("train", "--resume", "runs/flow.npz", "--epochs", "10", "--log", "m2.jsonl"))
    assert [r["epoch"] for r in log_rows("m2.jsonl") if r["event"] == "epoch"] == [4, 5]
    assert "has not improved for 2 epochs since the resume after epoch 3 (best" in out


def test_resuming_into_another_path_takes_the_best_checkpoint_along(write_spec):
    """-o elsewhere: the best epoch so far is copied beside the new checkpoint (and scores
    the test split); with its file gone, the resumed run keeps the best of its own epochs."""
    p = write_spec(WORKFLOW)
    ok(invoke("train", p, "-o", "a.npz", "-q"))
    best = checkpoint.load("a.best.npz").meta["best"]["epoch"]
    a_best = Path("a.best.npz").read_bytes()
    # an epoch that does not improve (a learning rate of 1e-9), so the best stays the old run's
    out = ok(invoke("train", "--resume", "a.npz", "--epochs", "5", "--lr", "1e-9", "-o", "b.npz", "--log", "b.jsonl"))
    assert Path("a.best.npz").read_bytes() == a_best  # the old run's file untouched
    assert checkpoint.load("b.best.npz").meta["best"]["epoch"] == best < 5
    assert f"best: epoch {best}, val_loss" in out and "b.best.npz" in out
    (test,) = [r for r in log_rows("b.jsonl") if r["event"] == "test"]
    assert test["checkpoint"] == "best" and test["epoch"] == best
    Path("a.best.npz").unlink()
    out = ok(invoke("train", "--resume", "a.npz", "--epochs", "5", "-o", "c.npz", "--log", "c.jsonl"))
    assert checkpoint.load("c.best.npz").meta["best"]["epoch"] == 5 and "best: epoch 5" in out
    (test,) = [r for r in log_rows("c.jsonl") if r["event"] == "test"]
    assert test["checkpoint"] == "best" and test["epoch"] == 5


# ---------------------------------------------------------------- bugs 6 and 7: evaluate


def test_evaluate_scores_the_test_arrays_and_says_which(write_spec, tmp_path):
    ok(invoke("train", write_spec(TEXT), "-o", "m.npz", "-q"))
    rng = np.random.default_rng(2)
    np.savez(
        tmp_path / "d.npz",
        x=rng.standard_normal((10, 2)),
        y=np.zeros(10, np.int64),
        x_test=rng.standard_normal((7, 2)),
        y_test=np.ones(7, np.int64),
    )
    out = ok(invoke("evaluate", "m.npz", "d.npz"))
    assert "x_test, y_test of d.npz: 7 samples" in out
    assert "x, y of d.npz: 10 samples" in ok(invoke("evaluate", "m.npz", "d.npz", "--split", "train"))
    assert "x, y of d.npz: 10 samples" in ok(invoke("evaluate", "m.npz", "d.npz", "--keys", "x,y"))
    as_json = json.loads(ok(invoke("evaluate", "m.npz", "d.npz", "--json")))
    assert as_json["scored"] == "x_test, y_test of d.npz" and as_json["samples"] == 7
    assert "no array named 'x_val'" in one_line_error(invoke("evaluate", "m.npz", "d.npz", "--split", "val"))


def test_evaluate_prints_a_small_loss_with_significant_digits(write_spec, tmp_path):
    spec = """\
name: reg
data: {source: builtin:sine, options: {samples: 100}}
model: {input: [1], layers: [{dense: 4}, tanh, {dense: 1}]}
loss: mse
train: {epochs: 1}
"""
    ok(invoke("train", write_spec(spec), "-o", "reg.npz", "-q"))
    x = np.linspace(-1, 1, 20, dtype=np.float32).reshape(-1, 1)
    np.save(tmp_path / "x.npy", x)
    ok(invoke("predict", "reg.npz", "x.npy", "-o", "p.npy", "-q"))
    y = np.load(tmp_path / "p.npy").reshape(-1, 1) + 1e-3  # a solved regression: MSE 1e-6
    np.savez(tmp_path / "near.npz", x=x, y=y)
    out = ok(invoke("evaluate", "reg.npz", "near.npz"))
    shown = float(out.split("mse loss ")[1].split()[0])
    assert shown == pytest.approx(1e-6, rel=1e-2)


# ---------------------------------------------------------------- explicit layouts

LAYOUT = """\
name: layout
seed: 0
data: {{source: seq.npz, shuffle: false{extra}}}
model:
  input: {input}
  layers: [{layers}{{conv1d: {{filters: 3, kernel: 3}}}}, relu, flatten, {{dense: 2}}]
optimizer: {{name: adam, lr: 0.01}}
train: {{epochs: 1, batch_size: 8}}
"""


@pytest.fixture
def sequences(tmp_path):
    """(N, T, 2) samples: channels last, as most recorded signals come."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 6, 2)).astype(np.float32)
    np.savez(tmp_path / "seq.npz", x=x, y=rng.integers(0, 2, 20))
    return x


def test_a_reshape_that_would_scramble_the_data_is_refused(write_spec, sequences):
    p = write_spec(LAYOUT.format(extra="", input="[2, 6]", layers=""))
    line = one_line_error(invoke("summary", p))
    assert "samples have shape (6, 2), but model.input is [2, 6]" in line
    assert "data.layout: channels_last" in line and "permute" in line
    assert "spec OK" not in invoke("summary", p).output


def test_channels_last_layout_transposes(write_spec, sequences):
    from dlcli import data, run

    p = write_spec(LAYOUT.format(extra=", layout: channels_last, validation_split: 0", input="[2, 6]", layers=""))
    s = run.load_spec(p)
    model, loss = run.build(s)
    d = data.load(s, loss, model.output_shape)
    np.testing.assert_array_equal(d.x_train, sequences.transpose(0, 2, 1))
    ok(invoke("train", p, "-o", "c.npz", "-q"))
    # predict applies the same layout to channels-last input
    np.save("seq.npy", sequences[:4])
    assert len(ok(invoke("predict", "c.npz", "seq.npy", "-q")).splitlines()) == 5


def test_permute_layer_states_the_layout_in_the_model(write_spec, sequences):
    from dlcli import gradcheck as gc
    from dlcli.layers import LAYERS

    p = write_spec(LAYOUT.format(extra="", input="[6, 2]", layers="{permute: [2, 1]}, "))
    out = ok(invoke("summary", p))
    assert "permute (dims [2, 1])" in out and "[2, 6]" in out
    layer = LAYERS["permute"](dtype=np.float64, dims=(3, 1, 2))
    layer.build((2, 3, 4))
    x = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(layer.forward(x), x.transpose(0, 3, 1, 2))
    gc.assert_gradients_ok(gc.check_layer(layer, np.random.default_rng(0).standard_normal((2, 2, 3, 4))))
    ok(invoke("train", p, "-o", "p.npz", "-q"))


def test_only_axes_of_size_one_are_added_or_removed(write_spec, tmp_path):
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "img.npz", x=rng.standard_normal((10, 5, 5)), y=rng.integers(0, 2, 10))
    text = """\
data: {{source: img.npz}}
model: {{input: {input}, layers: [flatten, {{dense: 2}}]}}
"""
    assert "spec OK" in ok(invoke("summary", write_spec(text.format(input="[1, 5, 5]"))))
    line = one_line_error(invoke("summary", write_spec(text.format(input="[25]"))))
    assert "samples have shape (5, 5), but model.input is [25]" in line and "flatten" in line


# ---------------------------------------------------------------- the first run says it compiles


def test_with_numba_cache_dir_set_only_that_folder_counts(tmp_path, monkeypatch):
    """Numba reads NUMBA_CACHE_DIR alone when it is set: kernels compiled beside the
    sources do not make an empty NUMBA_CACHE_DIR warm."""
    from dlcli import runtime

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert runtime.kernel_cache_dirs() == [tmp_path]
    assert not runtime._cached("dense")
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert [p.name for p in runtime.kernel_cache_dirs()] == ["__pycache__"]


def test_an_empty_kernel_cache_is_announced(write_spec, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from dlcli import run, runtime
    from dlcli.dashboard import Dashboard

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(runtime, "kernel_cache_dirs", lambda: [cache])
    s = run.load_spec(write_spec(TEXT.replace("[{dense: 8}, relu, {dense: 2}]", "[{dense: 8}, tanh, {dense: 2}]")))
    model, _ = run.build(s)
    assert runtime.uncompiled_kernels(model) == ["dense", "tanh"]
    relu, _ = run.build(run.load_spec(write_spec(TEXT)))  # the dense layer applies its relu: no kind of its own
    assert runtime.uncompiled_kernels(relu) == ["dense"]
    for module in ("dense", "elementwise"):
        (cache / f"{module}.f-1.py311.nbi").write_text("")
    assert runtime.uncompiled_kernels(model) == ["optimizer"]  # the loss kernels are still missing
    (cache / "losses.f-1.py311.nbi").write_text("")
    assert runtime.uncompiled_kernels(model) == []
    (cache / "dense.f-1.py311.nbi").unlink()
    # plain mode: one line before the first step
    out = ok(invoke("train", write_spec(TEXT), "-o", "a.npz"))
    assert "compiling kernels for dense (first run only)" in out
    assert out.index("compiling kernels") < out.index("epoch 1/1")

    # the dashboard: a spinner line in the frames drawn before the first step
    console = Console(file=io.StringIO(), record=True, width=120, force_terminal=True, color_system=None)
    dash = Dashboard(console=console)
    frames = []
    real_on_start = dash.on_start
    dash.on_start = lambda trainer: (real_on_start(trainer), frames.append(dash.render()))
    run.train(s, output=tmp_path / "d.npz", display=dash)

    def draw(frame):
        out = io.StringIO()
        Console(file=out, width=120, height=40, force_terminal=True, color_system=None).print(frame)
        return out.getvalue()

    before = draw(frames[0])
    assert "compiling kernels for dense (first run only)" in before
    assert any(ch in before for ch in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
    assert "compiling" not in draw(dash.render())  # gone once steps arrive

    # a narrow terminal: the aside goes to a line of its own, nothing is cropped
    narrow = Dashboard(console=Console(file=io.StringIO(), width=40, force_terminal=True, color_system=None))
    real_narrow_start = narrow.on_start
    narrow.on_start = lambda trainer: (real_narrow_start(trainer), frames.append(narrow.render()))
    run.train(s, output=tmp_path / "n.npz", display=narrow)
    out = io.StringIO()
    Console(file=out, width=40, height=40, force_terminal=True, color_system=None).print(frames[-1])
    lines = out.getvalue().splitlines()
    assert any(ln.endswith("compiling kernels for dense") for ln in lines)
    assert "(first run only)" in lines
    assert max(map(len, lines)) <= 40


def test_sample_config_stops_early_keeps_the_best_and_reports_test_accuracy():
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "sample_configs" / "moons_early_stopping.yaml"
    out = ok(invoke("train", config, "--log", "m.jsonl"))
    rows = log_rows("m.jsonl")
    (stop,) = [r for r in rows if r["event"] == "stop"]
    (test,) = [r for r in rows if r["event"] == "test"]
    assert stop["epoch"] < 100 and "early stopping" in stop["reason"]
    assert test["checkpoint"] == "best" and test["epoch"] < stop["epoch"] and test["acc"] > 0.85
    assert checkpoint.load("runs/moons_early_stopping.best.npz").meta["epochs_done"] == test["epoch"]
    assert "test_acc" in out and "lr " in out  # the plateau schedule's rate is shown per epoch


@pytest.mark.parametrize(
    "record,problem",
    [
        ({"state": "x"}, "state is not an object"),
        ({"state": {"early_stopping": {"wait": "many"}}}, "state wait is 'many'"),
        ({"overrides": [1]}, "overrides is not an object"),
        ({"epoch_samples": -3}, "epoch_samples is -3"),
    ],
)
def test_a_corrupt_run_record_is_one_line(write_spec, record, problem):
    ok(invoke("train", write_spec(TEXT), "-o", "r.npz", "-q"))
    with np.load("r.npz") as f:
        arrays = dict(f)
    meta = json.loads(str(arrays["meta"]))
    meta.update(record)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez("bad.npz", **arrays)
    line = one_line_error(invoke("train", "--resume", "bad.npz", "--epochs", 2))
    assert "metadata is corrupt" in line and problem in line


def test_a_monitor_without_its_metric_names_the_field_s_line(write_spec):
    no_val = write_spec(WORKFLOW.replace("validation_split: 0.2", "validation_split: 0"), "kb.yaml")
    line = one_line_error(invoke("train", no_val))
    assert line.startswith("Error: ") and "kb.yaml:6:" in line
    assert "train.keep_best watches val_loss, but data.validation_split leaves no validation samples" in line
    mse = "name: r\ndata: {source: builtin:sine}\nmodel: {input: [1], layers: [{dense: 1}]}\nloss: mse\n"
    line = one_line_error(invoke("train", write_spec(mse + "train:\n  early_stopping: {monitor: val_acc}\n", "r.yaml")))
    assert (
        "r.yaml:6:" in line and "train.early_stopping.monitor watches val_acc, but a mse model has no accuracy" in line
    )


def test_a_spec_without_a_name_keeps_its_run_name_in_a_renamed_checkpoint(write_spec):
    """The name of a spec without name: is its file's; the checkpoint records it, so a
    copy under another name resumes (and summarises) as the same run."""
    import shutil

    ok(invoke("train", write_spec(TEXT.replace("name: runs\n", ""), "mine.yaml"), "-o", "a.npz", "-q"))
    shutil.copy("a.npz", "copy.npz")
    ok(invoke("train", "--resume", "copy.npz", "--epochs", "2", "-q"))
    assert checkpoint.load("copy.npz").spec().name == "mine"
    assert "model: mine" in ok(invoke("summary", "copy.npz", "--no-data"))


DETERMINISTIC = """\
name: det
seed: 0
data: {source: builtin:shapes, options: {samples: 256}}
model:
  input: [1, 28, 28]
  layers: [{conv2d: {filters: 8, kernel: 5}}, relu, {maxpool2d: 2}, flatten, {dense: 512}, relu, {dense: 256}, relu, {dense: 4}]
optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
train: {epochs: 1, batch_size: 128}
"""


def test_a_seeded_run_gives_the_same_bits_on_one_thread_and_on_two(write_spec):
    """Products big enough for OpenBLAS to sum them another way on two threads (with
    train.deterministic: false this model's parameters differed by 6e-8 after one epoch
    here): by default they go in fixed blocks, so the thread count changes nothing."""
    p = write_spec(DETERMINISTIC)
    ok(invoke("train", p, "--threads", "1", "-o", "one.npz", "-q"))
    ok(invoke("train", p, "--threads", "2", "-o", "two.npz", "-q"))
    one, two = checkpoint.load("one.npz").params, checkpoint.load("two.npz").params
    for k in one:
        assert np.array_equal(one[k], two[k]), k


def test_a_checkpoint_is_known_by_its_bytes_and_resume_never_reads_a_spec(write_spec, tmp_path):
    """A renamed copy (r.npz.orig) read as a spec ("byte 0x89 ... is it a spec?"); a
    missing --resume file was a "spec file not found", a CSV given to --resume a YAML error."""
    import shutil

    ok(invoke("train", write_spec(TEXT), "-o", "r.npz", "-q"))
    shutil.copyfile("r.npz", "r.npz.orig")
    assert "dense" in ok(invoke("summary", "r.npz.orig"))
    line = one_line_error(invoke("train", "--resume", "gone.npz.bak"))
    assert "checkpoint not found: gone.npz.bak" in line, line
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    line = one_line_error(invoke("train", "--resume", str(tmp_path / "t.csv")))
    assert "t.csv" in line and "YAML" not in line and "spec" not in line, line


def test_a_new_epoch_count_that_moves_a_cosine_schedule_is_said(write_spec):
    """--epochs 6 on a 3-epoch cosine run raised the lr from 3.8e-05 back to 0.025 unannounced."""
    p = write_spec(TEXT.replace("{name: adam, lr: 0.02}", "{name: adam, lr: 0.02, schedule: cosine}"))
    ok(invoke("train", p, "-o", "c.npz", "--epochs", 3))
    out = ok(invoke("train", "--resume", "c.npz", "--epochs", 6))
    assert "changed: train.epochs 3 -> 6" in out and "the lr schedule now spans 6 epochs: the next step's lr is" in out
    plain = write_spec(TEXT)  # a constant lr: nothing moves, nothing said
    ok(invoke("train", plain, "-o", "k.npz"))
    assert "schedule now spans" not in ok(invoke("train", "--resume", "k.npz", "--epochs", 3))
