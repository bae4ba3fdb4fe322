"""Datasets as arrays: built-in generators or the user's .npz/.npy/.csv files; split,
standardise, batch. Everything is seeded; nothing is downloaded."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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


def resolve(source, spec_path=None):
    """Relative data paths are relative to the spec file, then to the working directory."""
    p = Path(source)
    if not p.is_absolute() and spec_path and not p.exists():
        beside = Path(spec_path).parent / p
        if beside.exists():
            return beside
    return p


def load_arrays(data_spec, spec_path=None, classification=True, seed=0):
    """(x, y, classes, description) for a data spec, before splitting."""
    if data_spec.builtin:
        from .datasets import BUILTIN

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


def fit_input(x, input_shape, where):
    """x as (n, *input_shape): accepted as is, or reshaped when only the layout differs
    (flat image rows), else a clear error naming both shapes."""
    input_shape = tuple(input_shape)
    if tuple(x.shape[1:]) == input_shape:
        return x
    if x.ndim >= 1 and int(np.prod(x.shape[1:])) == int(np.prod(input_shape)):
        return x.reshape((len(x),) + input_shape)
    raise DataError(f"{where}: samples have shape {tuple(x.shape[1:])}, but model.input is {list(input_shape)}")


def load(spec, loss, output_shape) -> Dataset:
    """The spec's data, split into training and validation, checked against the model."""
    ds = spec.data
    x, y, classes, description = load_arrays(ds, spec.path, loss.classification, spec.seed)
    where = ds.source
    x = fit_input(np.asarray(x), spec.model.input, where).astype(np.float32, copy=False)
    y = loss.check_targets(np.asarray(y), output_shape, where)
    rng = np.random.default_rng([spec.seed, 1])
    order = rng.permutation(len(x)) if ds.shuffle else np.arange(len(x))
    n_val = int(round(len(x) * ds.validation_split))
    if n_val >= len(x):
        raise DataError(f"{where}: validation_split {ds.validation_split} leaves no training samples")
    val, train = order[:n_val], order[n_val:]
    d = Dataset(x[train], y[train], x[val], y[val], classes, description=description)
    if ds.standardize:
        d.mean = d.x_train.mean(axis=0)
        d.std = d.x_train.std(axis=0) + 1e-8
        d.x_train = standardize(d.x_train, d.mean, d.std)
        d.x_val = standardize(d.x_val, d.mean, d.std)
    return d


def standardize(x, mean, std):
    return ((x - mean) / std).astype(np.float32)


def batches(x, y, batch_size, rng=None):
    """Mini-batches as contiguous arrays, in a fresh random order when rng is given."""
    n = len(x)
    order = rng.permutation(n) if rng is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]
