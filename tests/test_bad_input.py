"""The bad-input corpus: specs, data files, checkpoints and command lines a careless or
hostile user might give. Each must be refused with the documented exit code and exactly
one `Error: ...` line on stderr that names what is wrong: no traceback, and no file in the
working directory changed. In-process through CliRunner (which keeps stderr apart in the
Click we depend on); a few through a real subprocess at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from badinput import (
    GOOD_SPEC,
    check_refused,
    checkpoint_bytes,
    good_data,
    invoke,
    meta_bytes,
    npy_bytes,
    npz_bytes,
    snapshot,
    spec_for,
)

MODEL = "model: {input: [2], layers: [{dense: 4}, relu, {dense: 2}]}\n"
DATA = "data: builtin:moons\n"


def spec_with(section):
    """GOOD_SPEC with one top-level line replaced by `section` (matched by its key)."""
    key = section.split(":")[0]
    lines = [ln for ln in GOOD_SPEC.splitlines() if not ln.startswith(key + ":")]
    return "\n".join(lines) + "\n" + section + "\n"


def laughs(levels=9, width=10):
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


# (id, spec text or bytes, fragments the one line must contain)
SPECS = [
    ("billion-laughs", laughs(), ["expands to", "YAML nodes"]),
    ("laughs-in-a-field", spec_with("train: " + "{epochs: 1}") + laughs(7, 10).replace("l0:", "x0:"), ["expands"]),
    ("too-many-aliases", "a: &a 1\nb: [" + ", ".join(["*a"] * 1001) + "]\n", ["aliases"]),
    ("recursive-alias", "a: &a [*a]\n", ["refers to the node that contains it"]),
    ("huge-spec", "name: x\n" + "# padding\n" * 110_000, ["larger than 1,000,000 bytes"]),
    ("binary-garbage", bytes(range(256)) * 4, ["not a text file", "spec.yaml"]),
    ("nul-bytes", b"model: \x00\x01\x02\n", ["not a text file", "spec.yaml:1:8"]),
    ("latin1", "name: caf\xe9\n".encode("latin-1"), ["not UTF-8"]),
    ("deep-nesting", "a: " + "[" * 400 + "]" * 400 + "\n", ["nests too deeply"]),
    ("empty", "", ["YAML mapping"]),
    ("only-comment", "# nothing\n", ["YAML mapping"]),
    ("a-list", "- a\n- b\n", ["YAML mapping"]),
    ("a-scalar", "hello\n", ["YAML mapping"]),
    ("unclosed-bracket", "model: {input: [2\n", ["not valid YAML", "spec.yaml:"]),
    ("tab-indent", "model:\n\tinput: [2]\n", ["not valid YAML"]),
    ("bad-indent", "data:\n  source: builtin:moons\n bad: 1\n", ["not valid YAML"]),
    ("list-as-key", "? [a, b]\n: 1\n", ["not valid YAML"]),
    ("unknown-top-key", GOOD_SPEC + "trian: {}\n", ["unknown field 'trian'", "did you mean 'train'"]),
    ("number-as-key", GOOD_SPEC + "1: 2\n", ["unknown field '1'"]),
    ("no-data", MODEL, ["'data' section"]),
    ("no-model", DATA, ["'model' section"]),
    ("lr-nan", spec_with("optimizer: {name: sgd, lr: .nan}"), ["optimizer.lr", "finite"]),
    ("lr-inf", spec_with("optimizer: {name: sgd, lr: .inf}"), ["optimizer.lr", "finite"]),
    ("lr-minus-inf", spec_with("optimizer: {name: sgd, lr: -.Inf}"), ["optimizer.lr"]),
    ("lr-negative", spec_with("optimizer: {name: sgd, lr: -1e-3}"), ["optimizer.lr", "positive"]),
    ("lr-text", spec_with("optimizer: {name: sgd, lr: fast}"), ["optimizer.lr", "must be a number"]),
    ("lr-huge-exponent", spec_with("optimizer: {name: sgd, lr: 1e999}"), ["optimizer.lr", "finite"]),
    ("momentum-one", spec_with("optimizer: {name: sgd, momentum: 1.0}"), ["optimizer.momentum", "[0, 1)"]),
    ("momentum-nan", spec_with("optimizer: {name: sgd, momentum: .NaN}"), ["optimizer.momentum"]),
    ("weight-decay-inf", spec_with("optimizer: {name: adamw, weight_decay: .inf}"), ["weight_decay"]),
    ("eps-zero", spec_with("optimizer: {name: adam, eps: 0}"), ["optimizer.eps"]),
    ("unknown-optimizer", spec_with("optimizer: {name: adagrad}"), ["optimizer.name"]),
    ("optimizer-a-number", spec_with("optimizer: 5"), ["optimizer"]),
    ("schedule-bogus", spec_with("optimizer: {name: sgd, schedule: linear}"), ["optimizer.schedule.name"]),
    ("gamma-nan", spec_with("optimizer: {name: sgd, schedule: {name: step, gamma: .nan}}"), ["gamma"]),
    ("epochs-zero", spec_with("train: {epochs: 0}"), ["train.epochs", "positive integer"]),
    ("epochs-fraction", spec_with("train: {epochs: 2.5}"), ["train.epochs"]),
    ("epochs-inf", spec_with("train: {epochs: .inf}"), ["train.epochs"]),
    ("batch-negative", spec_with("train: {batch_size: -1}"), ["train.batch_size"]),
    ("batch-text", spec_with("train: {batch_size: big}"), ["train.batch_size"]),
    ("clip-nan", spec_with("train: {clip_norm: .nan}"), ["train.clip_norm"]),
    ("threads-zero", spec_with("train: {threads: 0}"), ["train.threads"]),
    ("train-a-list", spec_with("train: [1, 2]"), ["train"]),
    ("seed-negative", spec_with("seed: -1"), ["seed"]),
    ("seed-inf", spec_with("seed: .inf"), ["seed"]),
    ("seed-text", spec_with("seed: abc"), ["seed"]),
    ("name-a-list", spec_with("name: [a]"), ["name"]),
    ("name-outside-runs", spec_with('name: "../escape"'), ["name must be a plain file name", "'../escape'"]),
    ("name-empty", spec_with('name: ""'), ["name must be a non-empty file name"]),
    ("name-nul", spec_with('name: "x\\u0000y"'), ["name must be a plain file name"]),
    ("name-too-long", spec_with("name: " + "n" * 300), ["name must be at most 200 bytes"]),
    ("loss-typo", spec_with("loss: cross_entropi"), ["loss", "did you mean 'cross_entropy'"]),
    ("loss-a-number", spec_with("loss: 3"), ["loss"]),
    ("optimizer-typo", spec_with("optimizer: {name: adm}"), ["optimizer.name", "(did you mean 'adam'?), got 'adm'"]),
    ("schedule-typo", spec_with("optimizer: {name: sgd, schedule: cosin}"), ["(did you mean 'cosine'?)"]),
    ("source-unknown-builtin", spec_with("data: builtin:spiral"), ["did you mean 'builtin:spirals'"]),
    ("source-bad-suffix", spec_with("data: data.txt"), ["data.source"]),
    ("source-a-number", spec_with("data: {source: 5}"), ["data.source"]),
    ("samples-nan", spec_with("data: {source: builtin:moons, options: {samples: .nan}}"), ["samples"]),
    ("noise-inf", spec_with("data: {source: builtin:moons, options: {noise: .inf}}"), ["noise"]),
    ("val-split-one", spec_with("data: {source: builtin:moons, validation_split: 1}"), ["validation_split"]),
    ("options-on-file", spec_with("data: {source: d.npz, options: {samples: 3}}"), ["built-in"]),
    # the missing file first: a label or targets would not make it readable
    ("csv-missing-without-label", spec_with("data: {source: d.csv}"), ["spec.yaml:6:", "data.source", "not found"]),
    ("npy-missing-without-targets", spec_with("data: {source: x.npy}"), ["spec.yaml:6:", "data.source", "not found"]),
    ("input-empty", spec_with("model: {input: [], layers: [{dense: 2}]}"), ["model.input"]),
    ("input-zero", spec_with("model: {input: [0], layers: [{dense: 2}]}"), ["model.input"]),
    ("input-text", spec_with("model: {input: abc, layers: [{dense: 2}]}"), ["model.input"]),
    ("no-layers", spec_with("model: {input: [2], layers: []}"), ["model.layers"]),
    ("unknown-layer", spec_with("model: {input: [2], layers: [{dens: 2}]}"), ["unknown layer type 'dens'"]),
    ("layer-two-keys", spec_with("model: {input: [2], layers: [{dense: 2, relu: 1}]}"), ["model.layers[0]"]),
    ("units-negative", spec_with("model: {input: [2], layers: [{dense: -4}]}"), ["units", "positive integer"]),
    ("units-nan", spec_with("model: {input: [2], layers: [{dense: .nan}]}"), ["units"]),
    ("units-fraction", spec_with("model: {input: [2], layers: [{dense: 1.5}]}"), ["units"]),
    ("dropout-nan", spec_with("model: {input: [2], layers: [{dense: 2}, {dropout: .nan}]}"), ["layers[1]"]),
    ("layer-unknown-option", spec_with("model: {input: [2], layers: [{dense: {unit: 2}}]}"), ["did you mean"]),
    (
        "conv-on-flat-input",
        spec_with("model: {input: [2], layers: [{conv2d: {filters: 2, kernel: 3}}]}"),
        ["layers[0] conv2d"],
    ),
    (
        "kernel-larger-than-input",
        spec_with("model: {input: [1, 4, 4], layers: [{conv2d: {filters: 2, kernel: 5}}, flatten, {dense: 2}]}"),
        ["kernel", "larger"],
    ),
    ("lstm-on-flat-input", spec_with("model: {input: [2], layers: [{lstm: 4}]}"), ["layers[0] lstm"]),
    ("model-extra-key", spec_with("model: {input: [2], layers: [{dense: 2}], output: 3}"), ["model.output"]),
]


@pytest.mark.parametrize("text,fragments", [c[1:] for c in SPECS], ids=[c[0] for c in SPECS])
@pytest.mark.parametrize("command", ["summary"])
def test_bad_spec(text, fragments, command):
    Path("spec.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(".")
    r = invoke([command, "spec.yaml"])
    check_refused(r, 2, fragments, before, snapshot("."))


@pytest.mark.parametrize("text,fragments", [SPECS[0][1:], SPECS[5][1:], SPECS[21][1:]], ids=["laughs", "bin", "nan"])
def test_bad_spec_refused_by_train_gradcheck_and_inspect_alike(text, fragments):
    Path("spec.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(".")
    for args in (["train", "spec.yaml"], ["gradcheck", "spec.yaml"], ["inspect-gradients", "spec.yaml"]):
        check_refused(invoke(args), 2, fragments, before, snapshot("."))


# (id, files beside the spec, command line, exit code, fragments). "S" in the command line
# stands for a spec reading the data file, "C" for a valid checkpoint written as c.npz.
X, Y = good_data()

CHECKPOINTS = [
    ("ckpt-garbage", {"bad.npz": b"garbage"}, ["not a dlcli checkpoint"]),
    ("ckpt-empty", {"bad.npz": b""}, ["not a dlcli checkpoint"]),
    ("ckpt-truncated", {"bad.npz": checkpoint_bytes()[:300]}, ["bad.npz"]),
    ("ckpt-no-spec", {"bad.npz": checkpoint_bytes(spec=None)}, ["no 'spec' entry"]),
    ("ckpt-no-meta", {"bad.npz": checkpoint_bytes(meta=None)}, ["no 'meta' entry"]),
    ("ckpt-spec-not-text", {"bad.npz": checkpoint_bytes(spec=np.zeros(3))}, ["no 'spec' entry"]),
    ("ckpt-meta-not-json", {"bad.npz": meta_bytes("{not json")}, ["metadata is corrupt"]),
    ("ckpt-meta-a-list", {"bad.npz": meta_bytes([1, 2])}, ["metadata is corrupt", "list"]),
    ("ckpt-meta-a-number", {"bad.npz": meta_bytes("3")}, ["metadata is corrupt"]),
    ("ckpt-meta-a-string", {"bad.npz": meta_bytes('"x"')}, ["metadata is corrupt"]),
    ("ckpt-meta-null", {"bad.npz": meta_bytes("null")}, ["metadata is corrupt"]),
    ("ckpt-meta-deep", {"bad.npz": meta_bytes("[" * 100_000 + "]" * 100_000)}, ["metadata is corrupt"]),
    ("ckpt-newer", {"bad.npz": meta_bytes({"format": 99, "dlcli_version": "9"})}, ["newer dlcli"]),
    ("ckpt-format-text", {"bad.npz": meta_bytes({"format": "one"})}, ["bad.npz"]),
    ("ckpt-epochs-text", {"bad.npz": meta_bytes({"format": 1, "epochs_done": "x"})}, ["epochs_done"]),
    ("ckpt-step-negative", {"bad.npz": meta_bytes({"format": 1, "step": -3})}, ["step"]),
    ("ckpt-classes-dict", {"bad.npz": meta_bytes({"format": 1, "classes": {"a": 1}})}, ["classes"]),
    ("ckpt-bad-embedded-spec", {"bad.npz": checkpoint_bytes(spec=np.array("model: [1"))}, ["embedded spec"]),
    ("ckpt-binary-embedded-spec", {"bad.npz": checkpoint_bytes(spec=np.array("\x00\x01"))}, ["embedded spec"]),
    ("ckpt-missing-param", {"bad.npz": checkpoint_bytes(param__layers__0__weight=None)}, ["missing parameter"]),
    (
        "ckpt-param-wrong-shape",
        {"bad.npz": checkpoint_bytes(param__layers__0__weight=np.zeros((3, 4), np.float32))},
        ["layers.0.weight", "shape"],
    ),
    ("ckpt-extra-param", {"bad.npz": checkpoint_bytes(param__layers__9__weight=np.zeros(2))}, ["layers.9.weight"]),
    (
        "ckpt-param-nan",
        {"bad.npz": checkpoint_bytes(param__layers__2__bias=np.array([0, np.nan], np.float32))},
        ["layers.2.bias", "non-finite"],
    ),
    (
        "ckpt-param-text",
        {"bad.npz": checkpoint_bytes(param__layers__2__bias=np.array(["a", "b"]))},
        ["layers.2.bias", "not real numbers"],
    ),
    ("not-found", {}, ["not found"]),
]
CHECKPOINT_COMMANDS = [["summary", "bad.npz"], ["evaluate", "bad.npz", "d.npz"], ["predict", "bad.npz", "d.npz"]]


@pytest.mark.parametrize("files,fragments", [c[1:] for c in CHECKPOINTS], ids=[c[0] for c in CHECKPOINTS])
@pytest.mark.parametrize("args", CHECKPOINT_COMMANDS, ids=["summary", "evaluate", "predict"])
def test_bad_checkpoint(files, fragments, args):
    for name, content in files.items():
        Path(name).write_bytes(content)
    Path("d.npz").write_bytes(npz_bytes(x=X, y=Y))
    before = snapshot(".")
    check_refused(invoke(args), 2, fragments, before, snapshot("."))


COMMAND_LINES = [
    ("lr-nan", ["train", "S", "--lr", "nan"], ["--lr", "not a finite number"]),
    ("lr-inf", ["train", "S", "--lr", "inf"], ["--lr"]),
    ("lr-zero", ["train", "S", "--lr", "0"], ["--lr"]),
    ("lr-text", ["train", "S", "--lr", "fast"], ["--lr"]),
    ("epochs-zero", ["train", "S", "--epochs", "0"], ["--epochs"]),
    ("batch-text", ["train", "S", "--batch-size", "x"], ["--batch-size"]),
    ("seed-negative", ["train", "S", "--seed", "-1"], ["--seed"]),
    ("threads-zero", ["train", "S", "--threads", "0"], ["--threads"]),
    ("unknown-option", ["train", "S", "--epoch", "3"], ["no such option", "--epoch"]),
    ("unknown-command", ["trian", "S"], ["no such command", "trian"]),
    ("train-nothing", ["train"], ["SPEC_FILE"]),
    ("summary-nothing", ["summary"], ["missing argument"]),
    ("spec-missing", ["summary", "nope.yaml"], ["nope.yaml", "not found"]),
    ("spec-is-directory", ["summary", "sub"], ["sub"]),
    ("gradcheck-nothing", ["gradcheck"], ["exactly one"]),
    ("gradcheck-eps-nan", ["gradcheck", "--all", "--eps", "nan"], ["--eps"]),
    ("gradcheck-unknown-layer", ["gradcheck", "--layer", "dens"], ["'dens' (did you mean 'dense'?)"]),
    ("inspect-nothing", ["inspect-gradients"], ["SOURCE"]),
    ("inspect-compare-alone", ["inspect-gradients", "--compare", "S"], ["SOURCE"]),
    ("predict-bad-output-type", ["predict", "C", "d.npz", "-o", "out.txt"], ["unknown output type"]),
    ("predict-top-k-too-big", ["predict", "C", "d.npz", "--top-k", "3"], ["--top-k 3"]),
    ("predict-top-k-with-proba", ["predict", "C", "d.npz", "--top-k", "1", "--proba"], ["--proba and --top-k"]),
    ("predict-output-under-a-file", ["predict", "C", "d.npz", "-o", "s.yaml/p.csv"], ["cannot write s.yaml/p.csv"]),
    ("predict-missing-input", ["predict", "C"], ["missing argument"]),
    ("evaluate-npy-without-labels", ["evaluate", "C", "x.npy"], ["needs labels"]),
    ("evaluate-unknown-type", ["evaluate", "C", "d.txt"], ["unsupported input type"]),
    ("resume-missing", ["train", "--resume", "gone.npz"], ["not found"]),
    ("resume-already-done", ["train", "--resume", "C"], ["already trained"]),
    ("resume-optimizer-wrong-shape", ["train", "--resume", "C", "--epochs", "2", "#optim.m=3"], ["optimizer state m"]),
    ("resume-optimizer-nan", ["train", "--resume", "C", "--epochs", "2", "#optim.v=nan"], ["optimizer state v"]),
    ("resume-step-not-a-count", ["train", "--resume", "C", "--epochs", "2", "#optim.step=vec"], ["optimizer step"]),
]

SPOILED_OPTIMIZER = {
    "optim.m=3": {"optim__m": np.zeros(3, np.float32)},
    "optim.v=nan": {"optim__v": np.full(22, np.nan, np.float32)},
    "optim.step=vec": {"optim__step": np.arange(3)},
}


@pytest.mark.parametrize("args,fragments", [c[1:] for c in COMMAND_LINES], ids=[c[0] for c in COMMAND_LINES])
def test_bad_command_line(args, fragments):
    Path("s.yaml").write_text(GOOD_SPEC)
    spoil = [a[1:] for a in args if a.startswith("#")]
    args = [a for a in args if not a.startswith("#")]
    Path("c.npz").write_bytes(checkpoint_bytes(**(SPOILED_OPTIMIZER[spoil[0]] if spoil else {})))
    Path("d.npz").write_bytes(npz_bytes(x=X, y=Y))
    Path("x.npy").write_bytes(npy_bytes(X))
    Path("d.txt").write_text("1,2\n")
    Path("sub").mkdir()
    args = [{"S": "s.yaml", "C": "c.npz"}.get(a, a) for a in args]
    before = snapshot(".")
    check_refused(invoke(args), 2, fragments, before, snapshot("."))


def x_with(value, row=5, column=1):
    x = X.copy()
    x[row, column] = value
    return x


# (id, data files, command line with S = a spec reading d.npz / x.npy / d.csv, fragments)
NPZ, CSV, NPY = spec_for("d.npz"), spec_for("d.csv", ", label: label"), spec_for("x.npy", ", targets: y.npy")
DATA_FILES = [
    ("npz-x-nan", {"d.npz": npz_bytes(x=x_with(np.nan), y=Y)}, NPZ, ["d.npz", "x has nan in row 5"]),
    ("npz-x-inf", {"d.npz": npz_bytes(x=x_with(np.inf, 9), y=Y)}, NPZ, ["d.npz", "x has inf in row 9"]),
    ("npz-x-minus-inf", {"d.npz": npz_bytes(x=x_with(-np.inf, 0, 0), y=Y)}, NPZ, ["row 0"]),
    ("npz-x-float64-nan", {"d.npz": npz_bytes(x=x_with(np.nan, 15).astype(np.float64), y=Y)}, NPZ, ["row 15"]),
    (
        "npz-x-beyond-float32",
        {"d.npz": npz_bytes(x=np.where(np.arange(16)[:, None] == 4, 1e300, X.astype(np.float64)), y=Y)},
        NPZ,
        ["d.npz: x has 1e+300 in row 4", "beyond float32's range"],
    ),
    ("npz-y-nan", {"d.npz": npz_bytes(x=X, y=np.where(np.arange(16) == 3, np.nan, 1.0))}, NPZ, ["y has nan in row 3"]),
    ("npz-x-text", {"d.npz": npz_bytes(x=X.astype(str), y=Y)}, NPZ, ["x holds", "not real numbers"]),
    ("npz-x-complex", {"d.npz": npz_bytes(x=X.astype(np.complex64), y=Y)}, NPZ, ["complex64", "not real numbers"]),
    ("npz-x-scalar", {"d.npz": npz_bytes(x=np.float32(1), y=Y)}, NPZ, ["single number"]),
    ("npz-x-object", {"d.npz": npz_bytes(x=np.array([1, "a"], dtype=object), y=Y)}, NPZ, ["d.npz", "not a readable"]),
    ("npz-no-y", {"d.npz": npz_bytes(x=X)}, NPZ, ["no array named 'y'"]),
    ("npz-garbage", {"d.npz": b"PK\x03\x04garbage"}, NPZ, ["d.npz"]),
    ("npz-truncated", {"d.npz": npz_bytes(x=X, y=Y)[:200]}, NPZ, ["d.npz"]),
    ("npz-wrong-width", {"d.npz": npz_bytes(x=np.zeros((16, 3), np.float32), y=Y)}, NPZ, ["shape (3,)", "[2]"]),
    ("npz-length-mismatch", {"d.npz": npz_bytes(x=X, y=Y[:10])}, NPZ, ["16 samples", "10"]),
    ("npz-label-out-of-range", {"d.npz": npz_bytes(x=X, y=Y + 5)}, NPZ, ["labels run from"]),
    ("npz-fractional-labels", {"d.npz": npz_bytes(x=X, y=Y + 0.5)}, NPZ, ["integer class labels"]),
    ("npz-missing", {}, NPZ, ["s.yaml:3:16: data.source: data file not found: d.npz (looked for /"]),
    ("npy-x-nan", {"x.npy": npy_bytes(x_with(np.nan, 7)), "y.npy": npy_bytes(Y)}, NPY, ["x.npy", "row 7"]),
    ("npy-targets-missing", {"x.npy": npy_bytes(X)}, NPY, ["s.yaml:3:", "data.targets", "not found: y.npy"]),
    # a problem with the labels names the labels' file, not the features'
    ("npy-targets-out-of-range", {"x.npy": npy_bytes(X), "y.npy": npy_bytes(Y + 5)}, NPY, ["y.npy: labels run from"]),
    ("npy-targets-float", {"x.npy": npy_bytes(X), "y.npy": npy_bytes(Y + 0.5)}, NPY, ["y.npy: cross_entropy"]),
    ("npy-targets-short", {"x.npy": npy_bytes(X), "y.npy": npy_bytes(Y[:-3])}, NPY, ["its targets", "y.npy have"]),
    ("npy-without-targets", {"x.npy": npy_bytes(X)}, spec_for("x.npy"), ["data.targets"]),
    ("npy-garbage", {"x.npy": b"\x93NUMPY garbage", "y.npy": npy_bytes(Y)}, NPY, ["x.npy", "not a readable"]),
    (
        "npy-huge-header",
        {
            "x.npy": npy_bytes(X)[:10]
            + b"{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000000, 2), }"
            + b" " * 40
            + b"\n",
            "y.npy": npy_bytes(Y),
        },
        NPY,
        ["x.npy"],
    ),
    ("csv-nan", {"d.csv": "a,b,label\n1,2,0\n3,nan,1\n"}, CSV, ["d.csv:3", "column 'b'", "'nan'"]),
    # named classes: more outputs than classes would train, the extra outputs naming nothing
    (
        "csv-more-outputs-than-classes",
        {"d.csv": "a,b,label\n" + "1,2,cat\n3,4,dog\n" * 4},
        CSV.replace("{dense: 2}]", "{dense: 3}]"),
        ["s.yaml:4:", "the last layer has 3 outputs, but d.csv has 2 classes (cat, dog): give it 2 units"],
    ),
    (
        "csv-fewer-outputs-than-classes",
        {"d.csv": "a,b,label\n" + "1,2,cat\n3,4,dog\n5,6,emu\n" * 3},
        CSV,
        ["s.yaml:4:", "the last layer has 2 outputs, but d.csv has 3 classes (cat, dog, emu): give it 3 units"],
    ),
    # an empty label cell is no class named "" (it trained, predicting a class with no name)
    (
        "csv-empty-label",
        {"d.csv": "a,b,label\n" + "1,2,cat\n3,4,\n" * 3},
        CSV,
        ["d.csv:3: column 'label' has no label"],
    ),
    ("csv-inf", {"d.csv": "a,b,label\n1,2,0\n-inf,1,1\n"}, CSV, ["d.csv:3", "column 'a'"]),
    (  # a test file's unknown class is named by its line, as the training file's errors are
        "csv-test-file-unknown-class",
        {"d.csv": "a,b,label\n" + "1,2,cat\n3,4,dog\n" * 4, "t.csv": "a,b,label\n1,2,cat\n3,4,wolf\n"},
        spec_for("d.csv", ", label: label, test: t.csv"),
        ["t.csv:3:", "column 'label' has label 'wolf', not a class"],
    ),
    (  # numbers where the classes are named: 0 need not be the first name in sorted order
        "csv-test-file-numbered-labels",
        {"d.csv": "a,b,label\n" + "1,2,cat\n3,4,dog\n" * 4, "t.npz": npz_bytes(x=np.zeros((2, 2)), y=np.array([0, 1]))},
        spec_for("d.csv", ", label: label, test: t.npz"),
        ["t.npz: the labels are numbers, but the training data's classes are named (cat, dog): give the names"],
    ),
    ("csv-beyond-float32", {"d.csv": "a,b,label\n1,2,0\n1,1e39,1\n"}, CSV, ["d.csv:3", "'1e39'"]),
    ("csv-not-numeric", {"d.csv": "a,b,label\n1,x,0\n"}, CSV, ["d.csv:2", "not numeric"]),
    ("csv-ragged", {"d.csv": "a,b,label\n1,2,0\n1,2\n"}, CSV, ["d.csv:3", "2 values"]),
    ("csv-no-label-column", {"d.csv": "a,b,c\n1,2,0\n"}, CSV, ["no column named 'label'"]),
    ("csv-label-typo", {"d.csv": "a,b,labels\n1,2,0\n"}, CSV, ["no column named 'label' (did you mean 'labels'?)"]),
    ("csv-without-label", {"d.csv": "a,b,label\n1,2,0\n"}, spec_for("d.csv"), ["data.label"]),
    ("csv-empty", {"d.csv": ""}, CSV, ["header row"]),
    ("csv-binary", {"d.csv": bytes(range(256))}, CSV, ["d.csv"]),
]


@pytest.mark.parametrize("files,spec_text,fragments", [c[1:] for c in DATA_FILES], ids=[c[0] for c in DATA_FILES])
@pytest.mark.parametrize("command", ["summary", "train"])
def test_bad_data_file(files, spec_text, fragments, command):
    for name, content in files.items():
        Path(name).write_bytes(content if isinstance(content, bytes) else content.encode())
    Path("s.yaml").write_text(spec_text)
    before = snapshot(".")
    check_refused(invoke([command, "s.yaml"]), 2, fragments, before, snapshot("."))


PREDICTION_INPUTS = [
    ("x-nan", npz_bytes(x=x_with(np.nan, 4), y=Y), ["in.npz", "x has nan in row 4"]),
    ("y-inf", npz_bytes(x=X, y=np.where(np.arange(16) == 2, np.inf, 0.0)), ["y has inf in row 2"]),  # evaluate only
    ("x-text", npz_bytes(x=X.astype(str), y=Y), ["numbers"]),
    (
        "x-huge-header",
        npy_bytes(X)[:10]
        + b"{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000000, 2), }"
        + b" " * 40
        + b"\n",
        ["in.npz"],
    ),
]


PREDICTION_CASES = [
    (command, content, fragments)
    for _, content, fragments in PREDICTION_INPUTS
    for command in ("predict", "evaluate")
    if command == "evaluate" or "y has" not in fragments[0]  # predict does not read labels
]


@pytest.mark.parametrize(
    "command,content,fragments",
    PREDICTION_CASES,
    ids=[
        f"{cmd}-{c[0]}"
        for c in PREDICTION_INPUTS
        for cmd in ("predict", "evaluate")
        if cmd == "evaluate" or "y has" not in c[2][0]
    ],
)
def test_bad_prediction_input(content, fragments, command):
    Path("c.npz").write_bytes(checkpoint_bytes())
    Path("in.npz").write_bytes(content)
    before = snapshot(".")
    check_refused(
        invoke([command, "c.npz", "in.npz", *(["-o", "out.csv"] if command == "predict" else [])]),
        2,
        fragments,
        before,
        snapshot("."),
    )


def test_nan_in_a_memory_mapped_input_is_found_block_by_block(monkeypatch):
    from dlcli import data

    x = np.zeros((50, 2), np.float32)
    x[37, 1] = np.nan
    np.save("x.npy", x)
    m = np.load("x.npy", mmap_mode="r")
    with pytest.raises(data.DataError, match=r"x.npy: x has nan in row 37"):
        data.check_values(m, "x", "x.npy", rows=8)
    data.check_values(m[:37], "x", "x.npy", rows=8)


# --------------------------------------------------------------------------- output paths
OUTPUTS = [
    ("log-in-missing-root", ["--log", "/proc/nope/log.jsonl"], ["metrics log", "/proc/nope"]),
    ("log-is-a-directory", ["--log", "sub"], ["--log", "is a directory"]),
    ("log-in-a-new-folder-under-a-file", ["--log", "s.yaml/new/log.jsonl"], ["metrics log"]),
    ("log-under-a-file", ["--log", "s.yaml/log.jsonl"], ["metrics log"]),
    ("checkpoint-is-a-directory", ["-o", "sub"], ["--output", "is a directory"]),
    ("checkpoint-in-missing-root", ["-o", "/proc/nope/c.npz"], ["cannot write /proc/nope/c.npz"]),
    ("checkpoint-under-a-file", ["-o", "s.yaml/c.npz"], ["cannot write"]),
    # --resume, summary and predict tell a checkpoint by its .npz: another name could not be read back
    ("checkpoint-not-npz", ["-o", "c.txt"], ["-o c.txt: a checkpoint is a .npz file"]),
]


@pytest.mark.parametrize("args,fragments", [c[1:] for c in OUTPUTS], ids=[c[0] for c in OUTPUTS])
def test_unwritable_outputs_are_refused_before_training(args, fragments):
    Path("s.yaml").write_text(GOOD_SPEC)
    Path("sub").mkdir()
    before = snapshot(".")
    check_refused(invoke(["train", "s.yaml", "-q", *args]), 2, fragments, before, snapshot("."))
    assert not Path("runs").exists()


LOGS = [
    ("log-a-list", "[1, 2]\n", ["no per-layer gradient norms"]),
    ("log-binary", bytes(range(128, 256)), ["not UTF-8"]),
    ("log-not-json", '{"event": "step"\n', ["m.jsonl:1", "not a JSON line"]),
    ("log-deep-json", "[" * 100_000 + "\n", ["not a JSON line"]),
    ("log-norm-text", '{"event": "step", "step": 1, "layer_grad_norms": {"a": "big"}}\n', ["layer_grad_norms.a"]),
    ("log-norm-negative", '{"event": "step", "step": 1, "layer_grad_norms": {"a": -1}}\n', ["not a norm"]),
    ("log-step-text", '{"event": "step", "step": "x", "layer_grad_norms": {"a": 1}}\n', ["step is 'x'"]),
    ("log-missing", None, ["no such metrics log"]),
    # found by the fuzzer: a step whose layer_grad_norms is empty crashed the heat map
    ("log-empty-norms", '{"event": "step", "step": 0, "layer_grad_norms": {}}\n', ["no per-layer gradient norms"]),
]


@pytest.mark.parametrize("content,fragments", [c[1:] for c in LOGS], ids=[c[0] for c in LOGS])
def test_bad_metrics_log(content, fragments):
    if content is not None:
        Path("m.jsonl").write_bytes(content if isinstance(content, bytes) else content.encode())
    before = snapshot(".")
    check_refused(invoke(["inspect-gradients", "--log", "m.jsonl"]), 2, fragments, before, snapshot("."))


def test_a_sample_shape_that_does_not_fit_names_model_input_in_the_spec():
    Path("s.yaml").write_text("name: s\ndata: builtin:spirals\nmodel:\n  input: [3]\n  layers: [{dense: 2}]\n")
    line = check_refused(invoke(["train", "s.yaml"]), 2)
    assert line == "Error: s.yaml:4:10: builtin:spirals: samples have shape (2,), but model.input is [3]"


def test_a_missing_data_file_names_the_field_and_where_it_was_looked_for():
    Path("sub").mkdir()
    Path("sub/s.yaml").write_text(
        spec_for("nothere.npz").replace("{source: nothere.npz, ", "\n  {source: nothere.npz, ")
    )
    line = check_refused(invoke(["train", "sub/s.yaml"]), 2)
    looked = Path.cwd() / "sub" / "nothere.npz"
    assert line == f"Error: sub/s.yaml:4:12: data.source: data file not found: nothere.npz (looked for {looked})"
    # a test file too, and a .csv without a label: the missing file is what to fix first
    np.savez("sub/d.npz", x=X, y=Y)
    Path("sub/s.yaml").write_text(spec_for("d.npz", ", test: t.npz"))
    line = check_refused(invoke(["train", "sub/s.yaml"]), 2)
    assert line.startswith("Error: sub/s.yaml:3:") and "data.test: data file not found: t.npz" in line
    Path("sub/s.yaml").write_text(spec_for("d.csv"))
    line = check_refused(invoke(["summary", "sub/s.yaml"]), 2)
    assert line.startswith("Error: sub/s.yaml:3:16: data.source: data file not found: d.csv")


# --------------------------------------------------------------------------- real processes
@pytest.mark.parametrize(
    "name,content,args,fragment",
    [
        ("laughs", laughs().encode(), ["summary", "f"], "expands to"),
        ("garbage", bytes(range(256)), ["summary", "f"], "not a text file"),
        ("meta-list", meta_bytes([1]), ["summary", "f"], "metadata is corrupt"),
        ("lr-nan", GOOD_SPEC.encode(), ["train", "f", "--lr", "nan"], "--lr"),
    ],
)
def test_refused_in_a_real_process(tmp_path, name, content, args, fragment):
    f = tmp_path / ("f.npz" if name.startswith("meta") else "f.yaml")
    f.write_bytes(content)
    before = snapshot(tmp_path)
    args = [str(f) if a == "f" else a for a in args]
    env = dict(os.environ, COLUMNS="80")
    out = subprocess.run(
        [sys.executable, "-m", "dlcli", *args], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], out.stderr
    assert snapshot(tmp_path) == before


def test_corpus_has_at_least_100_cases():
    n = len(SPECS) + len(CHECKPOINTS) * len(CHECKPOINT_COMMANDS) + len(COMMAND_LINES)
    n += 2 * len(DATA_FILES) + len(PREDICTION_CASES) + len(OUTPUTS) + len(LOGS)
    assert n >= 100, n


def test_numbers_in_exponent_form_are_numbers(write_spec):
    from dlcli import spec

    s = spec.load(
        write_spec(
            "data: {source: builtin:moons, options: {samples: 2e2, noise: .5}}\n"
            "model: {input: [2e0], layers: [{dense: 1e1}, relu, {dense: 2}]}\n"
            "optimizer: {name: adam, lr: 1e-3, eps: 1E-7, beta1: .9, beta2: 0.5e0}\n"
            "train: {epochs: 3., clip_norm: 1.5e+1}\n"
            "seed: 1e1\n"
        )
    )
    assert s.optimizer.lr == 1e-3 and s.optimizer.options["eps"] == 1e-7 and s.train.clip_norm == 15.0
    assert s.optimizer.options["beta2"] == 0.5 and s.data.options == {"samples": 200, "noise": 0.5}
    assert s.model.layers[0].options["units"] == 10 and s.train.epochs == 3 and s.seed == 10
    assert s.model.input == (2,) and isinstance(s.model.input[0], int)
    assert isinstance(s.train.epochs, int) and isinstance(s.model.layers[0].options["units"], int)
    # strings stay strings: versions, names, and exponent-looking words
    s = spec.load(write_spec("name: 1e3x\ndata: builtin:moons\nmodel: {input: [2], layers: [{dense: 2}]}\n"))
    assert s.name == "1e3x"


def test_the_corpus_checker_sees_a_changed_file():
    """The corpus's 'nothing changed' check can fail: a command that rewrites a file is caught."""
    Path("a.txt").write_text("one")
    before = snapshot(".")
    Path("a.txt").write_text("two")
    with pytest.raises(AssertionError, match="changed"):
        check_refused(invoke(["summary", "missing.yaml"]), 2, (), before, snapshot("."))
    assert json.dumps(before)


def test_clirunner_keeps_stderr_apart():
    """The corpus counts stderr lines through CliRunner: the installed Click must keep them apart."""
    import click
    from click.testing import CliRunner

    @click.command()
    def both():
        click.echo("out")
        click.echo("err", err=True)

    r = CliRunner().invoke(both)
    assert r.stdout == "out\n" and r.stderr == "err\n"
