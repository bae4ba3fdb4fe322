"""`dlcli predict` and `dlcli evaluate` (issue 7), through the command line.

Three tiny models are trained once for the module: a softmax classifier on the built-in
spirals (standardised, so the checkpoint carries preprocessing), a classifier trained on
a CSV with string labels, a one-output sigmoid classifier and a regression.
"""

import csv
import io
import json
import os
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dlcli import checkpoint, data, run
from dlcli.cli import main
from dlcli.datasets import BUILTIN
from dlcli.options import parse_options
from dlcli.spec import parse

SPIRALS = """\
name: spirals
seed: 0
data:
  source: builtin:spirals
  options: {classes: 3, samples: 600}
  standardize: true
model:
  input: [2]
  layers:
    - dense: {units: 16}
    - relu
    - dense: {units: 3}
loss: cross_entropy
optimizer: {name: adam, lr: 0.02}
train: {epochs: 3, batch_size: 32}
"""

CSV_SPEC = """\
name: fruit
seed: 1
data: {source: fruit.csv, label: kind, standardize: true, validation_split: 0.2}
model:
  input: [3]
  layers: [{dense: {units: 8}}, relu, {dense: {units: 3}}]
loss: cross_entropy
optimizer: {name: adam, lr: 0.05}
train: {epochs: 3, batch_size: 16}
"""

BINARY = """\
name: xor
seed: 0
data: {source: builtin:xor, options: {samples: 300}}
model:
  input: [2]
  layers: [{dense: {units: 8}}, tanh, {dense: {units: 1}}]
loss: binary_cross_entropy
optimizer: {name: adam, lr: 0.05}
train: {epochs: 2, batch_size: 32}
"""

SINE = """\
name: sine
seed: 0
data: {source: builtin:sine, options: {samples: 300}}
model:
  input: [1]
  layers: [{dense: {units: 8}}, tanh, {dense: {units: 1}}]
loss: mse
optimizer: {name: adam, lr: 0.05}
train: {epochs: 2, batch_size: 32}
"""

FRUIT = ["apple", "banana", "cherry"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def held_out(name, samples, seed=99, **options):
    """Fresh samples of a built-in dataset, from a seed training never used."""
    gen = BUILTIN[name]
    opts = parse_options(gen.OPTIONS, {"samples": samples, **options})
    g = gen.generate(opts, np.random.default_rng(seed))
    return g.x, g.y


def write_fruit_csv(path, n, seed, label=True, drop=None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((n, 3)) * 0.3 + np.eye(3)[y] * 2 + 5  # offset: standardisation matters
    cols = ["w", "h", "d"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        keep = [i for i, c in enumerate(cols) if c != drop]
        w.writerow([cols[i] for i in keep] + (["kind"] if label else []))
        for xi, yi in zip(x, y):
            w.writerow([f"{xi[i]:.6f}" for i in keep] + ([FRUIT[yi]] if label else []))
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    # the spirals classifier is trained in-process, so its in-memory model is at hand
    s = parse(SPIRALS, str(d / "spirals.yaml"))
    result, saved, trainer = run.train(s, output=d / "spirals.npz")
    assert saved
    m = {"spirals": d / "spirals.npz", "trainer": trainer, "dir": d}
    write_fruit_csv(d / "fruit.csv", 240, seed=0)
    for name, text in (("fruit", CSV_SPEC), ("xor", BINARY), ("sine", SINE)):
        (d / f"{name}.yaml").write_text(text)
        ok(invoke("train", d / f"{name}.yaml", "-o", d / f"{name}.npz", "-q"))
        m[name] = d / f"{name}.npz"
    return m


def in_memory_proba(models, x):
    """Probabilities from the model the training run left in memory."""
    t = models["trainer"]
    xs = data.standardize(x.astype(np.float32), t.dataset.mean, t.dataset.std)
    return t.loss.output(t.model.predict_raw(xs))


def read_csv(text):
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


# --------------------------------------------------------------------------- round trips
def test_labels_on_stdout_match_in_memory_model_and_use_class_names(models):
    x, _ = held_out("spirals", 300)
    np.save("x.npy", x)
    header, rows = read_csv(ok(invoke("predict", models["spirals"], "x.npy", "--batch-size", 37)).stdout)
    expected = in_memory_proba(models, x).argmax(axis=1)
    assert header == ["label"]
    assert [r[0] for r in rows] == [f"arm{i}" for i in expected]
    assert len(set(r[0] for r in rows)) > 1  # a model predicting one class would hide mistakes


@pytest.mark.parametrize("ext", ["csv", "json", "npy"])
def test_proba_outputs_parse_and_match_exactly(models, ext):
    x, _ = held_out("spirals", 150)
    np.savez("held.npz", x=x)  # y ignored by predict
    ok(invoke("predict", models["spirals"], "held.npz", "--proba", "-o", f"out.{ext}", "--batch-size", 16))
    expected = in_memory_proba(models, x)
    names = ["arm0", "arm1", "arm2"]
    if ext == "csv":
        header, rows = read_csv(Path("out.csv").read_text())
        assert header == names
        got = np.array(rows, dtype=np.float64).astype(np.float32)
    elif ext == "json":
        records = json.loads(Path("out.json").read_text())
        assert list(records[0]) == names
        got = np.array([[r[n] for n in names] for r in records], dtype=np.float32)
    else:
        got = np.load("out.npy", allow_pickle=False)
        assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert not [p for p in os.listdir() if p.endswith(".tmp")]  # the temporary file was renamed


def test_labels_to_json_and_npy(models):
    x, _ = held_out("spirals", 90)
    np.save("x.npy", x)
    expected = [f"arm{i}" for i in in_memory_proba(models, x).argmax(axis=1)]
    ok(invoke("predict", models["spirals"], "x.npy", "-o", "l.json", "-q"))
    assert [r["label"] for r in json.loads(Path("l.json").read_text())] == expected
    ok(invoke("predict", models["spirals"], "x.npy", "-o", "l.npy", "-q"))
    assert np.load("l.npy", allow_pickle=False).tolist() == expected


def test_top_k(models):
    x, _ = held_out("spirals", 60)
    np.save("x.npy", x)
    p = in_memory_proba(models, x)
    header, rows = read_csv(ok(invoke("predict", models["spirals"], "x.npy", "--top-k", 2)).stdout)
    assert header == ["label_1", "proba_1", "label_2", "proba_2"]
    order = np.argsort(-p, axis=1, kind="stable")
    assert [r[0] for r in rows] == [f"arm{i}" for i in order[:, 0]]
    assert [r[2] for r in rows] == [f"arm{i}" for i in order[:, 1]]
    np.testing.assert_array_equal(
        np.array([r[1] for r in rows], float).astype(np.float32), p[np.arange(60), order[:, 0]]
    )
    ok(invoke("predict", models["spirals"], "x.npy", "--top-k", 3, "-o", "top.npy"))
    a = np.load("top.npy", allow_pickle=False)
    assert a["label"].shape == (60, 3) and a["label"][:, 0].tolist() == [r[0] for r in rows]
    np.testing.assert_array_equal(a["proba"], np.take_along_axis(p, order, axis=1))


def test_csv_model_names_and_preprocessing_round_trip(models):
    """Trained on a CSV with string labels and standardize: names come back, the stored
    mean/std are applied (unstandardised inputs around 5 would all land in one class)."""
    x, y = write_fruit_csv("test.csv", 120, seed=5)
    header, rows = read_csv(ok(invoke("predict", models["fruit"], "test.csv")).stdout)  # label column dropped
    assert header == ["label"]
    ckpt = checkpoint.load(models["fruit"])
    assert ckpt.meta["classes"] == FRUIT and set(ckpt.preprocessing) == {"mean", "std"}
    _, model = checkpoint.build_model(ckpt)
    raw = model.predict_raw(data.standardize(x, ckpt.preprocessing["mean"], ckpt.preprocessing["std"]))
    assert [r[0] for r in rows] == [FRUIT[i] for i in raw.argmax(axis=1)]
    assert np.mean([r[0] == FRUIT[t] for r, t in zip(rows, y)]) > 0.9  # separable data: preprocessing works
    # without the label column, the same predictions
    write_fruit_csv("nolabel.csv", 120, seed=5, label=False)
    assert (
        ok(invoke("predict", models["fruit"], "nolabel.csv")).stdout
        == ok(invoke("predict", models["fruit"], "test.csv")).stdout
    )
    # saved by Excel: a UTF-8 byte-order mark before the header, not part of its first name
    Path("bom.csv").write_bytes(b"\xef\xbb\xbf" + Path("test.csv").read_bytes())
    assert (
        ok(invoke("predict", models["fruit"], "bom.csv")).stdout
        == ok(invoke("predict", models["fruit"], "test.csv")).stdout
    )
    assert ok(invoke("evaluate", models["fruit"], "bom.csv")).stdout.startswith("bom.csv: 120 samples")


def test_csv_columns_are_matched_by_name(models):
    """A model trained on a CSV takes a CSV's columns by their names: in another order they
    give the same predictions; a column it was not trained with is an error, not a
    silently wrong input."""
    assert checkpoint.load(models["fruit"]).meta["features"] == ["w", "h", "d"]
    write_fruit_csv("test.csv", 60, seed=5)
    expected = ok(invoke("predict", models["fruit"], "test.csv", "--proba")).stdout
    rows = list(csv.reader(open("test.csv", newline="")))
    order = [2, 0, 3, 1]  # d, w, kind, h
    with open("shuffled.csv", "w", newline="") as f:
        csv.writer(f).writerows([[r[i] for i in order] for r in rows])
    assert ok(invoke("predict", models["fruit"], "shuffled.csv", "--proba")).stdout == expected
    assert ok(invoke("evaluate", models["fruit"], "shuffled.csv")).stdout == ok(
        invoke("evaluate", models["fruit"], "test.csv")
    ).stdout.replace("test.csv", "shuffled.csv")
    with open("renamed.csv", "w", newline="") as f:
        csv.writer(f).writerows([["w", "height", "d", "kind"]] + rows[1:])
    r = invoke("predict", models["fruit"], "renamed.csv")
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1, r.output
    assert "renamed.csv: has no column 'h', which the model was trained with" in r.stderr and "w, h, d" in r.stderr


def test_regression_gives_raw_outputs(models):
    x, _ = held_out("sine", 50)
    np.save("x.npy", x)
    ok(invoke("predict", models["sine"], "x.npy", "-o", "r.npy"))
    _, model = checkpoint.build_model(checkpoint.load(models["sine"]))
    np.testing.assert_array_equal(np.load("r.npy"), model.predict_raw(x))
    header, rows = read_csv(ok(invoke("predict", models["sine"], "x.npy")).stdout)
    assert header == ["output"]
    np.testing.assert_array_equal(np.array(rows, float).astype(np.float32), model.predict_raw(x))
    r = invoke("predict", models["sine"], "x.npy", "--proba")
    assert r.exit_code == 2 and "needs a classifier" in r.stderr


# --------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("name", ["spirals", "xor"])
def test_evaluate_accuracy_equals_accuracy_of_predictions(models, name):
    x, y = held_out(name, 200)
    np.savez("d.npz", x=x, y=y)
    report = json.loads(ok(invoke("evaluate", models[name], "d.npz", "--json", "--batch-size", 50)).stdout)
    ok(invoke("predict", models[name], "d.npz", "-o", "p.csv"))
    names = report["classes"]
    _, rows = read_csv(Path("p.csv").read_text())
    predicted = np.array([names.index(r[0]) for r in rows])
    assert report["samples"] == len(y) == len(predicted)
    assert report["accuracy"] == pytest.approx(np.mean(predicted == y), abs=0)
    cm = np.array(report["confusion"])
    assert cm.sum() == len(y) and cm.trace() == int(np.sum(predicted == y))
    for i, pc in enumerate(report["per_class"]):
        hits = int(np.sum((predicted == i) & (y == i)))
        assert pc["support"] == int(np.sum(y == i))
        assert pc["recall"] == pytest.approx(hits / np.sum(y == i))
        if np.sum(predicted == i):
            assert pc["precision"] == pytest.approx(hits / np.sum(predicted == i))
        else:
            assert pc["precision"] is None
    assert np.isfinite(report["loss"]) and report["loss"] > 0


def test_evaluate_loss_matches_training_loss_function(models):
    x, y = held_out("spirals", 100)
    np.savez("d.npz", x=x, y=y)
    report = json.loads(ok(invoke("evaluate", models["spirals"], "d.npz", "--json", "--batch-size", 7)).stdout)
    t = models["trainer"]
    raw = t.model.predict_raw(data.standardize(x, t.dataset.mean, t.dataset.std))
    expected, _, _ = t.loss(raw, y)
    assert report["loss"] == pytest.approx(expected, rel=1e-5)


def test_evaluate_takes_quiet_as_predict_does(models):
    x, y = held_out("spirals", 20)
    np.savez("h.npz", x=x, y=y)
    assert ok(invoke("evaluate", models["spirals"], "h.npz", "-q")).stdout.startswith(
        f"x, y of h.npz: {len(x)} samples"
    )


def test_evaluate_csv_table(models):
    write_fruit_csv("test.csv", 90, seed=7)
    out = ok(invoke("evaluate", models["fruit"], "test.csv")).stdout
    assert "90 samples" in out and "accuracy" in out
    for word in ("precision", "recall", "confusion", *FRUIT):
        assert word in out
    report = json.loads(ok(invoke("evaluate", models["fruit"], "test.csv", "--json")).stdout)
    assert report["classes"] == FRUIT and report["accuracy"] > 0.9


def test_no_progress_bar_or_noise_when_not_a_terminal(models):
    x, _ = held_out("spirals", 30)
    np.save("x.npy", x)
    r = ok(invoke("predict", models["spirals"], "x.npy"))
    assert r.stderr == ""
    assert len(r.stdout.splitlines()) == 31


# --------------------------------------------------------------------------- memory bound
def test_predicting_a_large_npy_keeps_memory_bounded(models):
    n = 1_000_000  # 8 MB of float32 pairs
    x = np.lib.format.open_memmap("big.npy", mode="w+", dtype=np.float32, shape=(n, 2))
    x[:] = np.random.default_rng(0).standard_normal((n, 2), dtype=np.float32)
    del x
    size = os.path.getsize("big.npy")
    tracemalloc.start()
    try:
        ok(invoke("predict", models["spirals"], "big.npy", "--batch-size", 4096, "-o", "big_out.npy", "--proba"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 8, f"peak {peak} bytes for a {size}-byte input"
    out = np.load("big_out.npy", mmap_mode="r")
    assert out.shape == (n, 3)
    sl = slice(n - 5000, n)
    np.testing.assert_array_equal(out[sl], in_memory_proba(models, np.load("big.npy")[sl]))


# --------------------------------------------------------------------------- bad input
def _corrupt(src, how):
    b = bytearray(Path(src).read_bytes())
    if how == "truncated":
        return bytes(b[: len(b) // 2])
    if how == "garbage":
        return b"not a checkpoint at all"
    if how == "flipped":  # a byte inside a stored parameter: the zip CRC catches it
        with zipfile.ZipFile(src) as z:
            info = z.getinfo("param.layers.0.weight.npy")
        b[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF
        return bytes(b)
    if how == "newer":
        with np.load(src) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays["meta"]))
        meta.update(format=checkpoint.FORMAT + 1, dlcli_version="99.0")
        arrays["meta"] = np.array(json.dumps(meta))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()
    raise ValueError(how)


@pytest.mark.parametrize(
    "how,message",
    [
        ("truncated", "not a dlcli checkpoint"),
        ("garbage", "not a dlcli checkpoint"),
        ("flipped", "not a readable dlcli checkpoint"),
        ("newer", "written by a newer dlcli"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_bad_checkpoint(models, how, message, command):
    Path("bad.npz").write_bytes(_corrupt(models["spirals"], how))
    x, y = held_out("spirals", 20)
    np.savez("d.npz", x=x, y=y)
    _assert_clean_error(invoke(command, "bad.npz", "d.npz"), message)


def _assert_clean_error(r, message):
    assert r.exit_code == 2, (r.output, r.exception)
    assert isinstance(r.exception, SystemExit)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.output and r.stdout == ""


def _write(name, text):
    Path(name).write_text(text)
    return name


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda: np.save("a.npy", np.zeros((4, 3), np.float32)) or "a.npy",
            "samples have shape (3,), but model.input is [2]",
        ),
        (lambda: np.save("a.npy", np.zeros((4, 2, 2), np.float32)) or "a.npy", "samples have shape (2, 2)"),
        (lambda: np.save("a.npy", np.array(["a", "b"])) or "a.npy", "must be numbers"),
        (lambda: np.savez("a.npz", inputs=np.zeros((4, 2))) or "a.npz", "no array named 'x'"),
        (lambda: _write("a.csv", "x0\n1\n2\n"), "1 feature column (x0), but the model takes 2 inputs"),
        (lambda: _write("a.csv", "x0,x1\n1,2\n3,oops\n"), "a.csv:3: column 'x1' is not numeric: 'oops'"),
        (lambda: _write("a.csv", "x0,x1\n1,\n"), "a.csv:2: column 'x1' has no value"),
        (lambda: _write("a.csv", "x0,x1\n1,2\n3\n"), "a.csv:3: 1 values"),
        (lambda: _write("a.npy", "not numpy"), "not a readable .npy array"),
        (lambda: _write("a.txt", "1,2\n"), "unsupported input type '.txt'"),
        (lambda: "missing.npy", "data file not found: missing.npy"),
        (  # finite, but overflowing float32 in the model: a NaN output is never made a label
            lambda: np.save("a.npy", np.array([[1, 2], [3e38, 3e38]], np.float32)) or "a.npy",
            "a.npy: the model's output for row 1 (counting from 0) is not finite",
        ),
    ],
)
def test_bad_prediction_input(models, make, message):
    path = make()
    r = invoke("predict", models["spirals"], path, "-o", "out.csv")
    _assert_clean_error(r, message)
    assert not Path("out.csv").exists()  # no partial output left behind


def test_an_existing_output_is_replaced_only_when_asked(models):
    """A rerun of predict to the same -o path refuses (one line, exit 2) and leaves the
    file as it was; --overwrite replaces it."""
    x, _ = held_out("spirals", 20)
    np.save("held.npy", x)
    Path("out.csv").write_text("earlier results\n")
    _assert_clean_error(invoke("predict", models["spirals"], "held.npy", "-o", "out.csv"), "out.csv already exists")
    assert Path("out.csv").read_text() == "earlier results\n"
    ok(invoke("predict", models["spirals"], "held.npy", "-o", "out.csv", "--overwrite"))
    header, rows = read_csv(Path("out.csv").read_text())
    assert len(rows) == len(x)


@pytest.mark.parametrize(
    "args,message",
    [
        (["-o", "out.txt"], "unknown output type '.txt'"),
        (["--top-k", "4"], "--top-k 4: the model has 3 classes"),
    ],
)
def test_bad_prediction_options(models, args, message):
    np.save("x.npy", np.zeros((3, 2), np.float32))
    _assert_clean_error(invoke("predict", models["spirals"], "x.npy", *args), message)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: np.save("a.npy", np.zeros((4, 3), np.float32)) or "a.npy", "evaluate needs labels"),
        (lambda: np.savez("a.npz", x=np.zeros((4, 3), np.float32)) or "a.npz", "no array named 'y'"),
        (
            lambda: np.savez("a.npz", x=np.zeros((4, 2)), y=np.zeros(4, int)) or "a.npz",
            "samples have shape (2,), but model.input is [3]",
        ),
        (lambda: np.savez("a.npz", x=np.zeros((4, 3)), y=np.zeros(5, int)) or "a.npz", "x has 4 samples but y has 5"),
        (lambda: np.savez("a.npz", x=np.zeros((4, 3)), y=np.full(4, 7)) or "a.npz", "the labels are numbers, but"),
        (lambda: _write("a.csv", "w,h,d\n1,2,3\n"), "no column named 'kind'"),
        (
            lambda: _write("a.csv", "w,h,d,kind\n1,2,3,apple\n1,2,3,kiwi\n"),
            "a.csv:3: column 'kind' has label 'kiwi', not a class the model knows",
        ),
        (lambda: _write("a.csv", "w,h,d,kind\n1,2,3,apple\n1,2,3,\n"), "a.csv:3: column 'kind' has no label"),
        (lambda: _write("a.csv", "w,h,d,kind\n1,2,3,0\n1,2,3,\n"), "a.csv:3: column 'kind' has no label"),
        (lambda: _write("a.csv", "w,h,kind\n1,2,apple\n"), "has no column 'd', which the model was trained with"),
        (
            lambda: _write("a.csv", "w,h,d,kind\n3e38,3e38,3e38,apple\n3e38,3e38,3e38,apple\n"),
            "a.csv: the model's output for row 0 (counting from 0) is not finite",
        ),
    ],
)
def test_bad_evaluation_input(models, make, message):
    _assert_clean_error(invoke("evaluate", models["fruit"], make()), message)


def test_small_batches_run_on_one_thread_with_the_same_outputs(models, monkeypatch):
    """Below SERIAL_FLOPS of work a batch runs on one thread (runtime.serial: waking the
    other cores costs more than it saves); the outputs are those of the threaded pass, and
    a big batch gets every thread back."""
    from threadpoolctl import threadpool_info

    from dlcli import predict as predict_mod
    from dlcli import runtime

    def counts():
        return runtime.threads(), {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    runtime.set_threads(2, deterministic=False)  # BLAS's own threads, to see them switched
    seen = []
    pred = predict_mod.open_model(models["spirals"])
    real_evaluator = pred.model.evaluator

    def spy(batch):
        run = real_evaluator(batch)

        def evaluate(x):
            seen.append(counts())
            return run(x)

        return evaluate

    x = np.random.default_rng(0).standard_normal((300, 2)).astype(np.float32)
    threaded = pred.model.forward(pred.prepare(x, "x"), training=False).copy()
    monkeypatch.setattr(pred.model, "evaluator", spy)
    np.testing.assert_allclose(pred.raw(x[:1]), threaded[:1], rtol=1e-6, atol=1e-7)
    assert seen[-1] == (1, {1})  # one sample: always one thread
    assert pred.flops_per_sample * 300 < predict_mod.SERIAL_FLOPS
    np.testing.assert_allclose(pred.raw(x), threaded, rtol=1e-6, atol=1e-7)
    assert seen[-1] == (1, {1})  # a tiny model: 300 samples are still small work
    monkeypatch.setattr(predict_mod, "SERIAL_FLOPS", 0)
    np.testing.assert_allclose(pred.raw(x), threaded, rtol=1e-6, atol=1e-7)
    assert seen[-1] == (2, {2})  # big work: all threads again
    runtime.serial(True)
    runtime.set_threads(2)  # setting the threads ends serial mode
    assert counts() == (2, {2})
    runtime.set_threads(2, deterministic=True)  # the default: BLAS one thread a call, blocks on the shards
    assert counts() == (2, {1})
    runtime.serial(True)
    assert counts() == (1, {1})
    runtime.set_threads(None)


ADDING_LSTM = """\
name: adding
seed: 0
data: {source: builtin:adding, options: {length: 6, samples: 64}}
model:
  input: [6, 2]
  layers: [{lstm: {units: 4}}, {dense: {units: 1}}]
loss: mse
optimizer: {name: adam, lr: 0.01}
train: {epochs: 1, batch_size: 32}
"""


def test_loading_a_checkpoint_draws_no_initial_values(tmp_path, monkeypatch):
    """A loaded model's parameters all come from the checkpoint, so the (costly, for a
    recurrent layer) initialisation is skipped; the loaded values are the saved ones."""
    from dlcli.layers import recurrent
    from dlcli.predict import open_model

    (tmp_path / "a.yaml").write_text(ADDING_LSTM)
    ok(invoke("train", tmp_path / "a.yaml", "-o", tmp_path / "a.npz", "-q"))

    def refuse(*args):
        raise AssertionError("initialised a parameter the checkpoint overwrites")

    monkeypatch.setattr(recurrent, "orthogonal", refuse)
    pred = open_model(tmp_path / "a.npz")
    saved = checkpoint.load(tmp_path / "a.npz").params
    state = pred.model.state()
    assert set(state) == set(saved)
    for k, v in state.items():
        np.testing.assert_array_equal(v, saved[k])
    assert np.abs(state[next(k for k in state if "w_recurrent" in k)]).sum() > 0


def test_a_confusion_matrix_too_wide_for_the_terminal_is_named_not_drawn_empty():
    """A text model's 30 classes in 80 columns: every cell was empty; now one line says so."""
    from rich.console import Console

    from dlcli.predict import Evaluation, evaluation_report

    def report(k, width):
        r = Evaluation(100, "cross_entropy", 0.5, 0.9, [f"c{i}" for i in range(k)], [0.5] * k, [0.5] * k, [3] * k)
        r.confusion = [[7] * k for _ in range(k)]
        out = evaluation_report(r, width)
        console = Console(width=width, record=True, file=io.StringIO())
        for part in out:
            console.print(part)
        return console.export_text()

    wide = report(30, 80)
    assert "confusion matrix: 30 classes, " in wide and "--json has it" in wide and "…" not in wide
    small = report(10, 80)
    assert "confusion matrix" in small and "--json has it" not in small and "…" not in small
    assert all(len(line) <= 80 for line in small.splitlines())


def test_numbered_labels_for_a_model_of_named_classes_are_refused(tmp_path):
    """A model trained on CSV names (high, low, mid), scored on an npz whose 0, 1, 2 meant
    low, mid, high: accuracy 0.07 with exit 0. Refused, naming the classes."""
    from click.testing import CliRunner

    from dlcli.cli import main

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 2))
    names = np.array(["high", "low", "mid"])[rng.integers(0, 3, 60)]
    rows = "\n".join(f"{a:.4f},{b:.4f},{n}" for (a, b), n in zip(x, names))
    (tmp_path / "d.csv").write_text("a,b,label\n" + rows + "\n")
    (tmp_path / "s.yaml").write_text(
        f"data: {{source: {tmp_path / 'd.csv'}, label: label}}\n"
        "model: {input: [2], layers: [{dense: 3}]}\ntrain: {epochs: 1, batch_size: 16}\n"
    )
    ck = str(tmp_path / "m.npz")
    assert CliRunner().invoke(main, ["train", str(tmp_path / "s.yaml"), "-o", ck, "-q"]).exit_code == 0
    np.savez(tmp_path / "n.npz", x=x.astype(np.float32), y=rng.integers(0, 3, 60))
    r = CliRunner().invoke(main, ["evaluate", ck, str(tmp_path / "n.npz")])
    assert (
        r.exit_code == 2
        and "the labels are numbers, but the model was trained on named classes (high, low, mid)" in r.output
    )
    (tmp_path / "n.csv").write_text("a,b,label\n" + "\n".join(f"{a:.4f},{b:.4f},1" for a, b in x) + "\n")
    r = CliRunner().invoke(main, ["evaluate", ck, str(tmp_path / "n.csv")])
    assert r.exit_code == 2 and "the labels are numbers" in r.output
    (tmp_path / "ok.csv").write_text("a,b,label\n" + rows + "\n")
    assert CliRunner().invoke(main, ["evaluate", ck, str(tmp_path / "ok.csv")]).exit_code == 0
