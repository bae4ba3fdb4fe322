"""Datasets as arrays: built-in generators or the user's .npz/.npy/.csv files; split,
standardise, batch. Everything is seeded; nothing is downloaded."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import memory
from .datasets import BUILTIN
from .errors import DataError
from .files import LOAD_ERRORS


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: list = field(default_factory=list)
    mean: np.ndarray | None = None  # standardisation statistics of the training split
    std: np.ndarray | None = None
    description: str = ""
    x_test: np.ndarray | None = None  # never trained on or used to choose a model
    y_test: np.ndarray | None = None
    test_description: str = ""
    vocab: object = None  # text data: its text.Vocabulary (x and y are then token ids)


def resolve(source, spec_path=None):
    """A relative data path is relative to the spec file's folder, as in any config file;
    without a spec file (a spec given as text), to the working directory."""
    p = Path(source)
    if p.is_absolute() or not spec_path:
        return p
    return Path(spec_path).parent / p


def load_arrays(data_spec, spec_path=None, classification=True, seed=0):
    """(x, y, classes, description) for a data spec, before splitting."""
    if data_spec.builtin:
        gen = BUILTIN[data_spec.builtin].generate(data_spec.options, np.random.default_rng(seed))
        return gen.x, gen.y, gen.classes, gen.description
    path = resolve(data_spec.source, spec_path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        x, y = _load_npz(path)
        check_values(x, "x", path)
        check_values(y, "y", path)
        classes = []
    elif suffix == ".npy":
        x = _load_npy(path)
        check_values(x, "the array", path)
        targets = resolve(data_spec.targets, spec_path)
        y = _load_npy(targets)
        check_values(y, "the array", targets)
        classes = []
    else:
        x, y, classes = load_csv(path, data_spec.label, classification)
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} samples but y has {len(y)}")
    return x, y, classes, f"{path.name}, {len(x)} samples"


def check_values(a, name, where, rows=1 << 16):
    """Refuse an array a model cannot take: not numbers, a single number, or a NaN or an
    infinity, named by its file, array and first bad row (training would otherwise stop
    much later with "diverged"). Checked `rows` at a time, so a memory-mapped file is
    never read whole."""
    if a.dtype.kind not in "fiub":
        raise DataError(f"{where}: {name} holds {a.dtype} values, not numbers")
    if a.ndim == 0:
        raise DataError(f"{where}: {name} is a single number, not an array of samples")
    if a.dtype.kind != "f":
        return
    for start in range(0, len(a), rows):
        block = np.asarray(a[start : start + rows])
        finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            value = block[row][~np.isfinite(block[row])].flat[0]
            raise DataError(f"{where}: {name} has {value} in row {start + row} (counting from 0); data must be finite")


def _load_npy(path, mmap=False):
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except LOAD_ERRORS as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from None


def _load_npz(path, keys=("x", "y")):
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataError(
                    f"{path}: no array named '{missing[0]}'; a .npz data file needs keys "
                    f"{', '.join(keys)} (found: {', '.join(f.files) or 'none'})"
                )
            return tuple(f[k] for k in keys)
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except LOAD_ERRORS as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None


def load_csv(path, label, classification=True, need_label=True):
    """A CSV with a header row: numeric feature columns and (optionally) a label column.
    Non-numeric labels become class names, sorted; returns (x, y or None, classes)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    has_label = label in header
    if need_label and not has_label:
        raise DataError(f"{path}: no column named '{label}' (columns: {', '.join(header)})")
    li = header.index(label) if has_label else None
    feats, labels, lines = [], [], []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{n}: {len(row)} values, the header has {len(header)} columns")
        lines.append(n)
        try:
            feats.append([float(v) for i, v in enumerate(row) if i != li])
        except ValueError:
            bad = next(i for i, v in enumerate(row) if i != li and not _is_float(v))
            what = "has no value" if not row[bad].strip() else f"is not numeric: {row[bad]!r}"
            raise DataError(f"{path}:{n}: column '{header[bad]}' {what}") from None
        if li is not None:
            labels.append(row[li].strip())
    with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf: refused below
        x = np.asarray(feats, dtype=np.float32)
        finite = np.isfinite(x).all(axis=1) if x.size else np.ones(len(x), bool)
        if not finite.all():
            n = lines[int(np.argmin(finite))]
            row = rows[n - 1]
            bad = next(i for i, v in enumerate(row) if i != li and not np.isfinite(np.float32(float(v))))
            raise DataError(f"{path}:{n}: column '{header[bad]}' is {row[bad].strip()!r}; data must be finite")
    if li is None:
        return x, None, []
    if not classification:
        try:
            with np.errstate(over="ignore"):
                y = np.asarray([float(v) for v in labels], np.float32).reshape(-1, 1)
        except ValueError:
            raise DataError(f"{path}: label column '{label}' must be numeric for a regression loss") from None
        check_values(y, f"label column '{label}'", path)
        return x, y, []
    if all(_is_int(v) for v in labels):
        return x, np.asarray([int(v) for v in labels], np.int64), []
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    return x, np.asarray([index[v] for v in labels], np.int64), classes


def _is_float(v):
    try:
        float(v)
        return True
    except ValueError:
        return False


def _is_int(v):
    try:
        int(v)
        return True
    except ValueError:
        return False


def to_channels_first(x):
    """(N, ..., C) samples as (N, C, ...): what data.layout: channels_last asks for."""
    return np.moveaxis(x, -1, 1) if x.ndim >= 3 else x


def fit_input(x, input_shape, where, layout="channels_first"):
    """x as (n, *input_shape). Accepted as is, after the transpose `layout` asks for, or
    reshaped when that only adds or removes axes of size 1 or unflattens flat rows (a CSV
    row is C-ordered); any other difference would scramble the values, so it is an error
    that says how to state the layout."""
    input_shape = tuple(input_shape)
    if layout == "channels_last":
        x = to_channels_first(x)
    sample = tuple(x.shape[1:])
    if sample == input_shape:
        return x
    same_size = int(np.prod(sample)) == int(np.prod(input_shape))
    squeezed = tuple(d for d in sample if d != 1) == tuple(d for d in input_shape if d != 1)
    if same_size and (squeezed or len(sample) == 1):
        return x.reshape((len(x),) + input_shape)
    message = f"{where}: samples have shape {sample}, but model.input is {list(input_shape)}"
    if same_size and layout != "channels_last" and len(sample) >= 2 and sample[-1:] + sample[:-1] == input_shape:
        message += (
            "; the data looks channels-last: set data.layout: channels_last to transpose it, "
            "or give model.input as it is and add a permute layer"
        )
    elif same_size and len(input_shape) == 1:
        message += "; give model.input as the samples' shape and add a flatten layer"
    elif same_size:
        message += (
            "; a reshape would scramble the values: give model.input in the data's layout and add a permute layer"
        )
    raise DataError(message)


def _test_arrays(ds, spec_path, classification, classes):
    """(x, y, description) of data.test: a .npz (x_test/y_test if present, else x/y) or a
    .csv with the label column; CSV class names map to the training data's classes."""
    path = resolve(ds.test, spec_path)
    if path.suffix.lower() == ".npz":
        keys = ("x_test", "y_test") if _npz_has(path, "x_test", "y_test") else ("x", "y")
        x, y = _load_npz(path, keys)
        check_values(x, keys[0], path)
        check_values(y, keys[1], path)
        desc = f"{path.name} ({', '.join(keys)})" if keys[0] == "x_test" else path.name
    else:
        x, y, names = load_csv(path, ds.label, classification)
        if names:
            index = {c: i for i, c in enumerate(classes)}
            unknown = sorted(set(names) - set(index))
            if unknown:
                raise DataError(f"{path}: class {unknown[0]!r} is not among the training data's classes")
            y = np.asarray([index[names[i]] for i in y], np.int64)
        desc = path.name
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} samples but y has {len(y)}")
    return x, y, f"{desc}, {len(x)} samples"


def _npz_has(path, *keys):
    try:
        with np.load(path, allow_pickle=False) as f:
            return all(k in f.files for k in keys)
    except LOAD_ERRORS:
        return False


def load(spec, loss, output_shape, vocab=None) -> Dataset:
    """The spec's data, split into training, validation and (optionally) test, checked
    against the model. The test split is cut first, so adding one leaves the validation
    split of a seed unchanged only when test_split is 0. Text sources go to dlcli/text.py
    (`vocab`: use this vocabulary, e.g. a checkpoint's)."""
    ds = spec.data
    if ds.text is not None:
        from . import text  # here: text imports this module

        return text.load(spec, loss, output_shape, vocab)
    samples = ds.options.get("samples") if ds.builtin else None
    if samples is not None:
        need = memory.dataset_bytes(samples, spec.model.input, math.prod(output_shape))
        memory.require({"dataset": need}, f"{ds.source} with {samples} samples")
    x, y, classes, description = load_arrays(ds, spec.path, loss.classification, spec.seed)
    where = ds.source
    x = fit_input(np.asarray(x), spec.model.input, where, ds.layout).astype(np.float32, copy=False)
    y = loss.check_targets(np.asarray(y), output_shape, where)
    rng = np.random.default_rng([spec.seed, 1])
    order = rng.permutation(len(x)) if ds.shuffle else np.arange(len(x))
    n_test = int(round(len(x) * ds.test_split))
    n_val = int(round(len(x) * ds.validation_split))
    if n_test + n_val >= len(x):
        raise DataError(
            f"{where}: validation_split {ds.validation_split}"
            + (f" and test_split {ds.test_split}" if ds.test_split else "")
            + f" leave no training samples of {len(x)}"
        )
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    d = Dataset(x[train], y[train], x[val], y[val], classes, description=description)
    if n_test:
        d.x_test, d.y_test = x[test], y[test]
        d.test_description = f"test_split {ds.test_split} of {description.split(',')[0]}, {n_test} samples"
    elif ds.test:
        tx, ty, d.test_description = _test_arrays(ds, spec.path, loss.classification, classes)
        d.x_test = fit_input(np.asarray(tx), spec.model.input, ds.test, ds.layout).astype(np.float32, copy=False)
        d.y_test = loss.check_targets(np.asarray(ty), output_shape, ds.test)
    if ds.standardize:
        d.mean = d.x_train.mean(axis=0)
        d.std = d.x_train.std(axis=0) + 1e-8
        d.x_train = standardize(d.x_train, d.mean, d.std)
        d.x_val = standardize(d.x_val, d.mean, d.std)
        if d.x_test is not None:
            d.x_test = standardize(d.x_test, d.mean, d.std)
    return d


def standardize(x, mean, std):
    return ((x - mean) / std).astype(np.float32)


def batches(x, y, batch_size, rng=None, share=None):
    """Mini-batches as contiguous arrays, in a fresh random order when rng is given.
    `share(n) -> (lo, hi)` keeps only those rows of each batch of n (one MPI rank's part)."""
    n = len(x)
    order = rng.permutation(n) if rng is not None else None
    for start in range(0, n, batch_size):
        lo, hi = start, min(start + batch_size, n)
        if share is not None:
            a, b = share(hi - lo)
            lo, hi = lo + a, lo + b
        if order is None:
            yield x[lo:hi], y[lo:hi]
        else:
            idx = order[lo:hi]
            yield x[idx], y[idx]
