"""Predict and evaluate with a trained checkpoint, batch by batch in bounded memory.

Inputs: `.npy` files are memory-mapped (`mmap_mode="r"`), so only one batch of samples
and one batch of activations is ever in memory; `.npz` and `.csv` files cannot be
memory-mapped and are loaded whole. Outputs are written as each batch is done (CSV rows,
JSON records, or a `.npy` written through `np.lib.format.open_memmap`), to a temporary
file that is renamed into place at the end, so a failed run never leaves half a file.

The checkpoint carries everything prediction needs: the spec (model, loss, input shape,
CSV label column), the trained parameters, the training data's class names and, when the
spec standardised its data, the training split's mean and std, applied here unchanged.
"""

from __future__ import annotations

import csv
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint, data, losses, runtime
from .errors import CheckpointError, DataError, OutputError
from .files import atomic_path, check_new_output, check_not_an_input, check_writable

OUTPUT_FORMATS = (".csv", ".json", ".npy")
# Forward work below which a batch runs on one thread: ~0.1-0.3 ms on one core, about what
# waking the others costs on a busy machine (benchmarks/bench_predict.py, batch 1).
SERIAL_FLOPS = 16e6


# --------------------------------------------------------------------------- the model
@dataclass
class Predictor:
    """A checkpoint's model, loss and preprocessing, ready to map inputs to outputs."""

    path: str
    spec: object
    model: object
    loss: object
    classes: list
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    features: list = field(default_factory=list)  # the training CSV's feature columns, if it was one
    evaluators: dict = field(default_factory=dict, repr=False)  # batch size -> `Model.evaluator`

    @property
    def input_shape(self):
        return tuple(self.model.input_shape)

    @property
    def output_shape(self):
        return tuple(self.model.output_shape)

    @functools.cached_property
    def kind(self):
        """'multiclass' (softmax), 'binary' (one sigmoid output), 'multilabel' (several
        sigmoid outputs) or 'regression'."""
        return self.loss.kind(self.output_shape)

    @property
    def n_classes(self):
        if self.kind == "multiclass":
            return self.output_shape[-1]
        return 2 if self.kind == "binary" else 0

    def class_names(self):
        """Names of the classes in index order: the training data's names, else indices."""
        n = self.n_classes
        if self.classes and len(self.classes) == n:
            return list(self.classes)
        return list(range(n))

    def prepare(self, xb, where):
        """One batch of raw input rows as the model's float input, preprocessed as in training."""
        xb = data.fit_input(np.asarray(xb), self.input_shape, where, self.spec.data.layout)
        xb = xb.astype(np.float32, copy=False)
        if self.mean is not None:
            xb = data.standardize(xb, self.mean, self.std)
        return np.ascontiguousarray(xb, dtype=self.model.dtype)

    def raw(self, xb, where="input"):
        """The trained graph's outputs (logits for fused losses) for one batch; a copy.
        A small batch runs on one thread (`runtime.serial`): below SERIAL_FLOPS of
        work, waking the other cores costs more than sharing it saves."""
        return self._evaluate(xb, where).copy()

    def _evaluate(self, xb, where):
        """The graph's outputs for one batch, in the evaluator's own array (overwritten by
        the next call of that size)."""
        x = self.prepare(xb, where)
        runtime.serial(len(x) == 1 or len(x) * self.flops_per_sample < SERIAL_FLOPS)
        return self.evaluator(len(x))(x)

    def evaluator(self, batch):
        """The model's evaluation pass for `batch` rows, bound once per batch size (a few
        kept: a stream of batches has one size and a last, shorter one)."""
        run = self.evaluators.get(batch)
        if run is None:
            if len(self.evaluators) >= 4:
                self.evaluators.clear()
            run = self.evaluators[batch] = self.model.evaluator(batch)
        return run

    @functools.cached_property
    def flops_per_sample(self):
        return sum(layer.flops() for layer in self.model.trained)

    def outputs(self, xb, where="input"):
        """What `predict --proba` writes for one batch: class probabilities for
        classifiers (two columns for one sigmoid output), raw outputs for regression.
        `dlcli export` gives the ONNX model this same output."""
        raw = self._evaluate(xb, where)
        return raw.copy() if self.kind == "regression" else _probabilities(self, raw)  # a new array


def open_model(path) -> Predictor:
    """Load a checkpoint and build its model; every problem is a CheckpointError."""
    ckpt = checkpoint.load(path)
    spec, model = checkpoint.build_model(ckpt)
    pre = ckpt.preprocessing
    mean = std = None
    if pre:
        if "mean" not in pre or "std" not in pre:
            raise CheckpointError(f"{path}: its preprocessing entry is incomplete (needs mean and std)")
        mean = np.asarray(pre["mean"], np.float32)
        std = np.asarray(pre["std"], np.float32)
        shape = tuple(model.input_shape)
        if mean.shape != shape or std.shape != shape:
            raise CheckpointError(
                f"{path}: its standardisation statistics have shape {mean.shape}, the model's input is {list(shape)}"
            )
    classes = ckpt.meta.get("classes") or []
    if not isinstance(classes, list):
        raise CheckpointError(f"{path}: its metadata is corrupt (classes is not a list)")
    features = ckpt.meta.get("features") or []
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise CheckpointError(f"{path}: its metadata is corrupt (features is not a list of names)")
    pred = Predictor(str(path), spec, model, losses.make(spec.loss), [str(c) for c in classes], mean, std)
    pred.features = features
    return pred


# --------------------------------------------------------------------------- inputs
SPLIT_KEYS = {"train": ("x", "y"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")}


def labelled_keys(path, split=None, keys=None):
    """Which arrays of a .npz `evaluate` scores: the ones named (`keys`), those of `split`
    (train: x, y; val: x_val, y_val; test: x_test, y_test), else x_test/y_test when the
    file has them and x/y otherwise. Never a silent choice: the result names them."""
    if keys is not None:
        return tuple(keys)
    if split is not None:
        return SPLIT_KEYS[split]
    return SPLIT_KEYS["test"] if data._npz_has(path, *SPLIT_KEYS["test"]) else SPLIT_KEYS["train"]


def _check_token_ids(pred, x, where):
    """A model whose first layer is an embedding takes token ids: every id integral and
    within its vocabulary, checked before any prediction is written (found in the layer, a
    bad id stopped the output midway without naming the file or row). A block at a time."""
    first = pred.model.layers[0]
    if first.kind != "embedding":
        return
    vocab = first.vocab_size
    step = data.chunk_rows(x)
    for start in range(0, len(x), step):
        block = np.asarray(x[start : start + step])
        flat = block.reshape(len(block), -1)
        bad = first.invalid_ids(flat)
        rows = bad.any(axis=1)
        if rows.any():
            row = int(np.argmax(rows))
            value = flat[row][bad[row]][0]
            raise DataError(
                f"{where}: row {start + row} (counting from 0) has token id {value}, but the model's "
                f"vocabulary has {vocab} tokens (integer ids 0..{vocab - 1})"
            )


def load_inputs(pred: Predictor, path, need_labels=False, label=None, keys=("x", "y")):
    """(x, y or None) from a .npy (memory-mapped), .npz (arrays `keys`) or .csv file.

    x keeps its on-disk layout (a memmap for .npy); its per-sample shape is checked
    against the model here, and each batch is reshaped when it is used. y, when asked
    for, is checked against the loss and mapped onto the training data's class indices.
    """
    path = Path(path)
    where = str(path)
    suffix = path.suffix.lower()
    y = None
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if suffix == ".npy":
        if need_labels:
            raise DataError(f"{path}: evaluate needs labels: give a .npz with arrays x and y, or a .csv")
        x = data._load_npy(path, mmap=True)
    elif suffix == ".npz":
        if need_labels:
            x, y = data._load_npz(path, keys)
        else:
            (x,) = data._load_npz(path, keys[:1])
    elif suffix == ".csv":
        x, y = _load_csv(pred, path, need_labels, label)
    else:
        raise DataError(f"{path}: unsupported input type '{suffix}' (use .npy, .npz or .csv)")
    if x.dtype.kind not in "fiub":
        raise DataError(f"{path}: inputs must be numbers, got {x.dtype} values")
    if x.ndim < 1:
        raise DataError(f"{path}: inputs must be an array of samples, got a scalar")
    data.check_values(
        x, keys[0] if suffix == ".npz" else "x", where
    )  # block by block: a memory-mapped file is not read whole
    data.fit_input(x[:0], pred.input_shape, where, pred.spec.data.layout)  # shape check only: a view of no rows
    _check_token_ids(pred, x, where)
    if y is not None and suffix == ".npz":
        if len(y) != len(x):
            raise DataError(f"{path}: {keys[0]} has {len(x)} samples but {keys[1]} has {len(y)}")
        data.check_values(y, keys[1], where)
        y = _check_labels(pred, np.asarray(y), where, numbered=y.dtype.kind in "iuf")
    return x, y


def _load_csv(pred, path, need_labels, label):
    label = label or pred.spec.data.label or "label"
    known = [c for c in pred.class_names() if isinstance(c, str)] if need_labels else None
    x, y, names = data.load_csv(
        path, label, classification=pred.loss.classification, need_label=need_labels, columns=pred.features, known=known
    )
    n_features = int(np.prod(pred.input_shape))
    if x.ndim != 2 or x.shape[1] != n_features:
        cols = data.csv_features(path, label)
        raise DataError(
            f"{path}: {len(cols)} feature column{'s' if len(cols) != 1 else ''} ({', '.join(cols)}), "
            f"but the model takes {n_features} input{'s' if n_features != 1 else ''}"
            + (f" (label column '{label}' excluded)" if y is not None else "")  # load_csv gives y iff it has one
        )
    if not need_labels:
        return x, None
    if names:  # label strings: map them onto the training data's class order
        known = {c: i for i, c in enumerate(pred.class_names()) if isinstance(c, str)}
        if not known:
            raise DataError(
                f"{path}: column '{label}' holds names ({', '.join(names[:3])}...), "
                f"but the model was trained on numbered classes"
            )
        y = np.asarray([known[names[i]] for i in y], np.int64)
    return x, _check_labels(pred, y, str(path), numbered=not names)


def _check_labels(pred, y, where, numbered=False):
    """The labels as the loss takes them. `numbered`: the file gave numbers, not names
    (refused for a model of a CSV's class names: data.refuse_numbered_labels)."""
    if numbered and pred.loss.classification:
        data.refuse_numbered_labels(
            where, pred.class_names(), pred.spec.data.source, "the model was trained on named classes"
        )
    return pred.loss.check_targets(y, pred.output_shape, where)


# --------------------------------------------------------------------------- batches
def _batches(pred, x, batch_size, where, progress=None):
    """(start, stop, raw outputs) per batch; reads only one batch of x at a time."""
    n = len(x)
    if progress is not None:
        progress(0, n)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # found below, by row
            raw = pred.raw(x[start:stop], where)
        finite = np.isfinite(raw.reshape(len(raw), -1)).all(axis=1)
        if not finite.all():  # a NaN would become a label (argmax) or a NaN loss: never hidden
            row = int(np.argmin(finite))
            raise DataError(
                f"{where}: the model's output for row {start + row} (counting from 0) is not finite "
                f"({raw[row][~np.isfinite(raw[row])].flat[0]}): its values overflow the model's float32 arithmetic"
            )
        yield start, stop, raw
        if progress is not None:
            progress(stop, n)


def _probabilities(pred, raw):
    p = pred.loss.output(raw)
    if pred.kind == "binary":  # one sigmoid output: probabilities of classes 0 and 1
        p = np.concatenate([1 - p, p], axis=-1)
    return p


# --------------------------------------------------------------------------- predict
@dataclass
class Prediction:
    """What predict wrote: where, how many rows, which columns."""

    rows: int
    columns: list
    output: str | None
    mode: str  # labels, proba, top-k, raw
    input_loaded_whole: bool = False


def predict(
    model_path,
    input_path,
    output=None,
    stream=None,
    proba=False,
    top_k=None,
    batch_size=1024,
    label=None,
    progress=None,
    overwrite=False,
) -> Prediction:
    """Predict INPUT with the checkpoint at MODEL and write the result.

    `output` is a path ending in .csv, .json or .npy (an existing file is replaced only
    with `overwrite`); without it, CSV goes to `stream`.
    Classifiers give class labels (names when the training data had them), `proba` the
    probability of each class, `top_k` the K likeliest classes with their probabilities;
    regression models give their raw outputs.
    """
    if batch_size < 1:
        raise DataError("--batch-size must be at least 1")
    if output is not None:
        ext = Path(output).suffix.lower()
        if ext not in OUTPUT_FORMATS:
            raise DataError(f"{output}: unknown output type '{ext}' (use .csv, .json or .npy)")
        check_not_an_input(output, [("the input being predicted", input_path), ("the checkpoint", model_path)])
        check_new_output(output, overwrite)
        check_writable(output, OutputError)  # a path that cannot be written is bad input, found before any work
    pred = open_model(model_path)
    mode = _mode(pred, proba, top_k)
    x, _ = load_inputs(pred, input_path, need_labels=False, label=label)
    where = str(input_path)
    n = len(x)
    per = _Columns(pred, mode, top_k)
    if output is None:
        writer = _CsvWriter(stream, per)
        _run(pred, x, batch_size, where, progress, per, writer)
        writer.close()
        return Prediction(n, per.names, None, mode, not isinstance(x, np.memmap))
    ext = Path(output).suffix.lower()
    with atomic_path(output) as tmp:
        if ext == ".npy":
            writer = _NpyWriter(tmp, per, n)
        else:
            f = open(tmp, "w", newline="", encoding="utf-8")
            writer = _CsvWriter(f, per, owns=True) if ext == ".csv" else _JsonWriter(f, per)
        try:
            _run(pred, x, batch_size, where, progress, per, writer)
        finally:
            writer.close()
    return Prediction(n, per.names, str(output), mode, not isinstance(x, np.memmap))


def _mode(pred, proba, top_k):
    if top_k is not None and proba:
        raise DataError("--proba and --top-k together: --top-k already gives the K likeliest classes' probabilities")
    if top_k is not None:
        if pred.kind not in ("multiclass", "binary") or len(pred.output_shape) > 1:
            raise DataError(
                f"--top-k needs a classifier with one prediction per sample; this model is {pred.kind}"
                + (f" with outputs {list(pred.output_shape)}" if pred.kind == "multiclass" else "")
            )
        if top_k < 1 or top_k > pred.n_classes:
            raise DataError(f"--top-k {top_k}: the model has {pred.n_classes} classes")
        return "top-k"
    if pred.kind == "regression":
        if proba:
            raise DataError("--proba needs a classifier; this model is a regression (loss mse)")
        return "raw"
    return "proba" if proba else "labels"


def _run(pred, x, batch_size, where, progress, per, writer):
    for start, stop, raw in _batches(pred, x, batch_size, where, progress):
        writer.write(start, stop, per.values(raw))


class _Columns:
    """Turns a batch of raw outputs into output columns: names, numeric arrays, dtypes."""

    def __init__(self, pred, mode, k):
        self.pred, self.mode, self.k = pred, mode, k
        self.names_of_classes = pred.class_names()
        out = pred.output_shape
        if mode == "labels":
            shape = out[:-1] if pred.kind == "multiclass" else out
            if pred.kind == "binary":
                shape = ()
            self.names = _flat_names("label", shape)
            self.shape = shape
        elif mode == "proba":
            if pred.kind == "multiclass":
                per_class = [str(c) for c in self.names_of_classes]
                pos = _flat_names("", out[:-1])
                self.names = (
                    [f"{p}{c}" if not p else f"{p}:{c}" for p in pos for c in per_class] if out[:-1] else per_class
                )
            elif pred.kind == "binary":
                self.names = [str(c) for c in self.names_of_classes]
            else:
                self.names = _flat_names("proba", out)
            self.shape = None
        elif mode == "top-k":
            self.names = [n for i in range(1, k + 1) for n in (f"label_{i}", f"proba_{i}")]
        else:
            self.names = _flat_names("output", out)
        # label values: names when the training data had them, else indices
        self.label_strings = pred.kind != "multilabel" and any(isinstance(c, str) for c in self.names_of_classes)
        self.lookup = np.asarray(self.names_of_classes) if self.label_strings else None

    def values(self, raw):
        """A dict of arrays for one batch, keyed by what the writers need."""
        pred = self.pred
        if self.mode == "labels":
            lab = pred.loss.predict(raw)
            if pred.kind == "binary":
                lab = lab[:, 0]
            return {"labels": self.lookup[lab] if self.lookup is not None else lab}
        if self.mode == "proba":
            return {"numbers": _probabilities(pred, raw)}
        if self.mode == "top-k":
            p = _probabilities(pred, raw)
            # stable order: ties go to the lower class index, as argmax does
            idx = np.argsort(-p, axis=1, kind="stable")[:, : self.k]
            top = np.take_along_axis(p, idx, axis=1)
            return {"labels": self.lookup[idx] if self.lookup is not None else idx, "numbers": top}
        return {"numbers": raw}

    def npy_dtype(self):
        """(dtype, per-sample shape) of the .npy output."""
        pred = self.pred
        label_dtype = self.lookup.dtype if self.lookup is not None else np.dtype(np.int64)
        if self.mode == "labels":
            return label_dtype, tuple(self.shape)
        if self.mode == "proba":
            return pred.model.dtype, tuple(pred.output_shape) if pred.kind != "binary" else (2,)
        if self.mode == "top-k":
            k = self.k
            return np.dtype([("label", label_dtype, (k,)), ("proba", pred.model.dtype, (k,))]), ()
        return pred.model.dtype, tuple(pred.output_shape)

    def rows(self, v):
        """The batch as a list of rows (Python values), in the order of `names`."""
        n = len(next(iter(v.values())))
        if self.mode == "top-k":
            labels = v["labels"].tolist()
            numbers = v["numbers"].tolist()
            return [[x for pair in zip(labels[i], numbers[i]) for x in pair] for i in range(n)]
        a = v["labels"] if "labels" in v else v["numbers"]
        return a.reshape(n, -1).tolist()


def _flat_names(base, shape):
    shape = tuple(shape)
    if not shape or shape == (1,):
        return [base]
    return [f"{base}_" + "_".join(map(str, idx)) for idx in np.ndindex(*shape)]


def _fmt(v):
    """float32 values with 9 significant digits: enough to read back the same float32."""
    if isinstance(v, float):
        return format(v, ".9g")
    return v


class _CsvWriter:
    def __init__(self, f, columns, owns=False):
        self.f, self.columns, self.owns = f, columns, owns
        self.w = csv.writer(f, lineterminator="\n")
        self.w.writerow(columns.names)

    def write(self, start, stop, v):
        self.w.writerows([[_fmt(x) for x in row] for row in self.columns.rows(v)])

    def close(self):
        self.f.flush()
        if self.owns:
            self.f.close()


class _JsonWriter:
    """A JSON array of records (one object per sample, keyed like the CSV columns),
    written as it goes: `[` + one record per line + `]`."""

    def __init__(self, f, columns):
        self.f, self.columns = f, columns
        self.first = True
        f.write("[")

    def write(self, start, stop, v):
        names = self.columns.names
        parts = [json.dumps(dict(zip(names, row))) for row in self.columns.rows(v)]
        if parts:
            self.f.write(("\n" if self.first else ",\n") + ",\n".join(parts))
            self.first = False

    def close(self):
        self.f.write("\n]\n")
        self.f.close()


class _NpyWriter:
    def __init__(self, path, columns, n):
        dtype, shape = columns.npy_dtype()
        self.columns = columns
        self.a = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n,) + shape)

    def write(self, start, stop, v):
        if self.columns.mode == "top-k":
            self.a["label"][start:stop] = v["labels"]
            self.a["proba"][start:stop] = v["numbers"]
        else:
            self.a[start:stop] = v["labels"] if "labels" in v else v["numbers"]

    def close(self):
        self.a.flush()
        del self.a


# --------------------------------------------------------------------------- evaluate
@dataclass
class Evaluation:
    samples: int
    loss_name: str
    loss: float
    accuracy: float | None = None
    classes: list = field(default_factory=list)
    precision: list = field(default_factory=list)  # per class; None where nothing was predicted
    recall: list = field(default_factory=list)  # per class; None where the class never occurs
    support: list = field(default_factory=list)
    confusion: list = field(default_factory=list)  # rows: true class, columns: predicted class
    scored: str = ""  # which arrays (or file) were scored

    def as_dict(self):
        d = {
            "scored": self.scored,
            "samples": self.samples,
            "loss_name": self.loss_name,
            "loss": self.loss,
            "accuracy": self.accuracy,
        }
        if self.classes:
            d["classes"] = self.classes
            d["per_class"] = [
                {"class": c, "precision": p, "recall": r, "support": s}
                for c, p, r, s in zip(self.classes, self.precision, self.recall, self.support)
            ]
            d["confusion"] = self.confusion
        return d


def evaluate(model_path, data_path, batch_size=1024, label=None, progress=None, split=None, keys=None) -> Evaluation:
    """Loss, accuracy, per-class precision/recall and the confusion matrix on labelled
    data; for a .npz, the arrays `labelled_keys` picks."""
    if batch_size < 1:
        raise DataError("--batch-size must be at least 1")
    pred = open_model(model_path)
    npz = Path(data_path).suffix.lower() == ".npz"
    if (split is not None or keys is not None) and not npz:
        raise DataError(f"{data_path}: --split and --keys choose arrays of a .npz file")
    chosen = labelled_keys(data_path, split, keys) if npz else ("x", "y")
    x, y = load_inputs(pred, data_path, need_labels=True, label=label, keys=chosen)
    where = str(data_path)
    n = len(x)
    if n == 0:
        raise DataError(f"{data_path}: no samples to evaluate")
    k = pred.n_classes
    confusion = np.zeros((k, k), np.int64) if k else None
    loss_sum = 0.0
    entries = 0
    hits = 0
    for start, stop, raw in _batches(pred, x, batch_size, where, progress):
        yb = y[start:stop]
        value, _, _ = pred.loss(np.ascontiguousarray(raw), yb)
        m = pred.loss.entries(raw)
        loss_sum += float(value) * m
        entries += m
        if pred.loss.classification:
            lab = pred.loss.predict(raw)
            truth = yb.astype(np.int64)
            hits += int((lab == truth).sum())
            if confusion is not None:
                np.add.at(confusion, (truth.reshape(-1), lab.reshape(-1)), 1)
    result = Evaluation(n, pred.loss.name, loss_sum / entries)
    result.scored = f"{chosen[0]}, {chosen[1]} of {Path(data_path).name}" if npz else Path(data_path).name
    if pred.loss.classification:
        result.accuracy = hits / entries
    if confusion is not None:
        result.classes = pred.class_names()
        predicted = confusion.sum(axis=0)
        actual = confusion.sum(axis=1)
        diag = np.diag(confusion)
        result.precision = [float(d / p) if p else None for d, p in zip(diag, predicted)]
        result.recall = [float(d / a) if a else None for d, a in zip(diag, actual)]
        result.support = actual.tolist()
        result.confusion = confusion.tolist()
    return result


def evaluation_report(r, width=None):
    """What `dlcli evaluate` prints: a summary line, the per-class table and the
    confusion matrix (rows: true class), as Rich renderables. A matrix wider than `width`
    (a text model's vocabulary: 30 classes and more) is named, not drawn: cut to fit, its
    cells were empty or '…'; `--json` has it whole."""
    from rich.table import Table

    from .dashboard import fmt

    line = f"{r.scored}: {r.samples} samples   {r.loss_name} loss {fmt(r.loss)}"  # as training prints it
    if r.accuracy is not None:
        line += f"   accuracy {r.accuracy:.4f}"
    out = [line]
    if not r.classes:
        return out

    def pct(v):
        return "–" if v is None else f"{v:.3f}"

    per = Table(title="per class")
    for name in ("class", "precision", "recall", "support"):
        per.add_column(name, justify="left" if name == "class" else "right")
    for c, p, rc, s in zip(r.classes, r.precision, r.recall, r.support):
        per.add_row(str(c), pct(p), pct(rc), str(s))
    cells = [len(str(c)) for c in r.classes] + [len(str(v)) for row in r.confusion for v in row]
    label_w = max([len("true \\ predicted")] + [len(str(c)) for c in r.classes])
    matrix_w = label_w + 4 + len(r.classes) * (max(cells) + 3)  # Rich's borders and padding
    if width is not None and matrix_w > width:
        return out + [per, f"confusion matrix: {len(r.classes)} classes, {matrix_w} columns wide; --json has it"]
    cm = Table(title="confusion matrix")
    cm.add_column("true \\ predicted")
    for c in r.classes:
        cm.add_column(str(c), justify="right")
    for i, (c, row) in enumerate(zip(r.classes, r.confusion)):
        cm.add_row(str(c), *[f"[bold]{v}[/bold]" if i == j else str(v) for j, v in enumerate(row)])
    return out + [per, cm]
