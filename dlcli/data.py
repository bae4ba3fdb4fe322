"""Datasets as arrays: built-in generators or the user's .npz/.npy/.csv files; split,
standardise, batch. Everything is seeded; nothing is downloaded."""

from __future__ import annotations

import csv
import functools
import math
import mmap
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import memory
from .datasets import BUILTIN
from .errors import DataError
from .files import LOAD_ERRORS
from .options import FLOAT32_MAX, did_you_mean


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
    features: list = field(default_factory=list)  # a CSV's feature column names, in order

    SPLITS = ("train", "val", "test")  # x_<split>, y_<split>
    # Rows of x whose bytes go into the fingerprint, from each end of a split: enough to
    # tell another file, cheap on a memory-mapped one (all of x would be read at every run).
    FINGERPRINT_ROWS = 64

    @functools.cached_property
    def fingerprint(self):
        """What a resumed run checks its data against (`run.train`): each split's size and
        a digest of the labels and of the first and last rows of x. Another file, rows
        added or removed, labels changed: another fingerprint (a change inside x alone,
        away from its ends, goes unseen)."""
        import hashlib

        digest = hashlib.sha256()
        sizes = {}
        for name in self.SPLITS:
            x, y = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
            sizes[name] = None if x is None else len(x)
            if x is None:
                continue
            n, k = len(x), self.FINGERPRINT_ROWS
            ends = np.arange(n) if n <= 2 * k else np.r_[0:k, n - k : n]  # a MappedRows takes index arrays
            for part in ((x[ends] if n else np.zeros(0)), y):
                part = np.ascontiguousarray(part)
                digest.update(f"{part.dtype.str}{part.shape}".encode())
                digest.update(part.tobytes())
        return {**sizes, "digest": digest.hexdigest()[:16]}


def resolve(source, spec_path=None):
    """A relative data path is relative to the spec file's folder, as in any config file;
    without a spec file (a spec given as text), to the working directory."""
    p = Path(source)
    if p.is_absolute() or not spec_path:
        return p
    return Path(spec_path).parent / p


def missing_file(key, value, spec_path=None):
    """The one-line problem with data.`key` when the file it names (`value`, resolved as
    `resolve` does) is not there, saying where it was looked for; None when it is there."""
    path = resolve(value, spec_path)
    if path.exists():
        return None
    looked = os.path.abspath(path)
    return f"data.{key}: data file not found: {value}" + (f" (looked for {looked})" if looked != value else "")


def named_files(spec):
    """(key, value) of each data file the spec names: data.source (unless built in),
    data.targets and data.test, as written (`resolve` finds them)."""
    ds = spec.data
    keys = ("targets", "test") if ds.builtin is not None else ("source", "targets", "test")
    return [(key, getattr(ds, key)) for key in keys if getattr(ds, key) is not None]


def check_files(spec):
    """Every data file the spec names is there, else an error at that field of the spec
    (before any of them is read, so the user is told the field to fix, not just a path)."""
    for key, value in named_files(spec):
        problem = missing_file(key, value, spec.path)
        if problem:
            raise DataError(f"{spec.where('data', key)}: {problem}")


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
        x = _load_npy(path, mmap=True)
        check_values(x, "the array", path)
        targets = resolve(data_spec.targets, spec_path)
        y = _load_npy(targets)
        check_values(y, "the array", targets)
        classes = []
        if len(x) != len(y):
            raise DataError(f"{path} has {len(x)} samples but its targets {targets} have {len(y)}")
    else:
        x, y, classes = load_csv(path, data_spec.label, classification)
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} samples but y has {len(y)}")
    return x, y, classes, f"{path.name}, {len(x)} samples"


def check_values(a, name, where, rows=None):
    """Refuse an array a model cannot take: not numbers, a single number, or a NaN or an
    infinity, named by its file, array and first bad row (training would otherwise stop
    much later with "diverged"). Checked a chunk at a time, so a memory-mapped file is
    never read whole."""
    if a.dtype.kind not in "fiub":
        raise DataError(f"{where}: {name} holds {a.dtype} values, not real numbers")
    if a.ndim == 0:
        raise DataError(f"{where}: {name} is a single number, not an array of samples")
    if a.dtype.kind != "f":
        return
    rows = rows or chunk_rows(a, budget=1 << 20)  # small: `predict` keeps its peak under 1 MB for 8 MB input
    wide = a.dtype.itemsize > 4  # float64 values past float32's range become inf in the model
    for start in range(0, len(a), rows):
        block = np.asarray(a[start : start + rows])
        flat = block.reshape(len(block), -1)
        finite = np.isfinite(flat).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            value = block[row][~np.isfinite(block[row])].flat[0]
            raise DataError(f"{where}: {name} has {value} in row {start + row} (counting from 0); data must be finite")
        if wide and flat.size:
            fits = (np.abs(flat) <= FLOAT32_MAX).all(axis=1)
            if not fits.all():
                row = int(np.argmin(fits))
                value = flat[row][np.abs(flat[row]) > FLOAT32_MAX][0]
                raise DataError(
                    f"{where}: {name} has {value:g} in row {start + row} (counting from 0), beyond float32's "
                    f"range (about 3.4e38) that the model computes in"
                )
        drop_read_pages(a)


def chunk_rows(a, budget=4 << 20):
    """How many rows of `a` fit in `budget` bytes (at least one, and as float64): the unit
    in which a whole array is scanned without holding it."""
    row_bytes = 8 * math.prod(a.shape[1:])
    return max(1, budget // max(row_bytes, 1))


def drop_read_pages(a):
    """Let go of the pages of a memory-mapped array read so far. They stay in the page
    cache, but no longer count in this process's resident memory, which would otherwise
    grow to the file's size over an epoch. A no-op for an array in memory."""
    mapped = getattr(a, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)


def _load_npy(path, mmap=False):
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except LOAD_ERRORS as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from None


def _load_npz(path, keys=("x", "y"), mmap_first=True):
    """The arrays `keys` of a .npz; the first memory-mapped when the file stores it
    uncompressed (np.savez), so a large x is read a batch at a time."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataError(
                    f"{path}: no array named '{missing[0]}'; a .npz data file needs keys "
                    f"{', '.join(keys)} (found: {', '.join(f.files) or 'none'})"
                )
            first = _map_npz_member(path, keys[0]) if mmap_first else None
            return (f[keys[0]] if first is None else first,) + tuple(f[k] for k in keys[1:])
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except LOAD_ERRORS as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None


def _map_npz_member(path, key):
    """A read-only memory map of array `key` of a .npz, or None when the member is
    compressed (np.savez_compressed) and so must be read whole."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(key + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the local file header: its name and extra field lengths differ per file
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if dtype.hasobject or math.prod(shape) == 0:
        return None
    return np.memmap(path, dtype, "r", offset, shape, "F" if fortran else "C")


def load_csv(path, label, classification=True, need_label=True, columns=(), known=None):
    """A CSV with a header row: numeric feature columns and (optionally) a label column.
    Non-numeric labels become class names, sorted; returns (x, y or None, classes).
    `columns`: the training CSV's feature names, which x's columns are matched to by name
    (`match_columns`). `known`: the class names a trained model has; a label outside
    them is an error naming its line. A UTF-8 byte-order mark (Excel writes one) is
    not part of the first column's name."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
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
        hint = did_you_mean(label, header)
        raise DataError(f"{path}: no column named '{label}'{hint} (columns: {', '.join(header)})")
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
    x = match_columns(x, [h for i, h in enumerate(header) if i != li], columns, path)
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
    if classification:  # an empty cell is no class (it would become a class named "")
        empty = next((n for n, v in zip(lines, labels) if not v), None)
        if empty is not None:
            known_note = f" (classes: {', '.join(map(str, known))})" if known else ""
            raise DataError(f"{path}:{empty}: column '{label}' has no label{known_note}")
    if all(_is_int(v) for v in labels):
        return x, np.asarray([int(v) for v in labels], np.int64), []
    if known:  # a name the model does not know
        for n, v in zip(lines, labels):
            if v not in known:
                raise DataError(
                    f"{path}:{n}: column '{label}' has label {v!r}, not a class the model knows "
                    f"(classes: {', '.join(map(str, known))})"
                )
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    return x, np.asarray([index[v] for v in labels], np.int64), classes


def csv_features(path, label):
    """The feature column names of a CSV, in file order (its header without the label)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    return [h for h in header if h != label]


def match_columns(x, columns, trained, path):
    """x (rows of a CSV whose feature columns are `columns`) with its columns in the order
    of `trained`, the training CSV's, matched by name as pandas-fed tools match features:
    the same columns in another order are reordered; other names are an error, since by
    position they would feed each input the wrong feature, silently. No `trained` (the
    model learnt from arrays): x as it is."""
    if not trained or columns == trained:
        return x
    missing = [c for c in trained if c not in columns]
    unknown = [c for c in columns if c not in trained]
    if missing:
        problem = f"has no column {missing[0]!r}, which the model was trained with"
    elif unknown:
        problem = f"has a column {unknown[0]!r} the model was not trained with"
    elif len(set(columns)) != len(columns):
        problem = "repeats a column name"
    else:
        return np.ascontiguousarray(x[:, [columns.index(c) for c in trained]])
    raise DataError(f"{path}: {problem} (the training columns, matched by name: {', '.join(trained)})")


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
    given = tuple(x.shape[1:])  # as the file has them: what a message names
    if layout == "channels_last":
        if x.ndim == 2 and len(input_shape) >= 2 and given == (math.prod(input_shape),):
            # flat channels-last rows (a CSV of (H, W, C) images): unflattened as such
            x = x.reshape((len(x),) + input_shape[1:] + input_shape[:1])
        x = to_channels_first(x)
    sample = tuple(x.shape[1:])
    if sample == input_shape:
        return x
    same_size = int(np.prod(sample)) == int(np.prod(input_shape))
    squeezed = tuple(d for d in sample if d != 1) == tuple(d for d in input_shape if d != 1)
    if same_size and (squeezed or len(sample) == 1):
        return x.reshape((len(x),) + input_shape)
    transposed = f" ({sample} after data.layout: channels_last)" if sample != given else ""
    message = f"{where}: samples have shape {given}{transposed}, but model.input is {list(input_shape)}"
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


def _test_arrays(ds, spec_path, classification, classes, features=()):
    """(x, y, description) of data.test: a .npz (x_test/y_test if present, else x/y) or a
    .csv with the label column; CSV class names map to the training data's classes."""
    path = resolve(ds.test, spec_path)
    if path.suffix.lower() == ".npz":
        keys = ("x_test", "y_test") if _npz_has(path, "x_test", "y_test") else ("x", "y")
        x, y = _load_npz(path, keys, mmap_first=False)
        check_values(x, keys[0], path)
        check_values(y, keys[1], path)
        desc = f"{path.name} ({', '.join(keys)})" if keys[0] == "x_test" else path.name
    else:
        known = [c for c in classes if isinstance(c, str)]  # a label outside them: an error naming its line
        x, y, names = load_csv(path, ds.label or "label", classification, columns=features, known=known)
        if names:
            index = {c: i for i, c in enumerate(classes)}
            unknown = sorted(set(names) - set(index))
            if unknown:  # names where the training data had numbered classes
                raise DataError(f"{path}: class {unknown[0]!r} is not among the training data's classes")
            y = np.asarray([index[names[i]] for i in y], np.int64)
        desc = path.name
    if classification and (path.suffix.lower() == ".npz" or not names):
        refuse_numbered_labels(path, classes, ds.source, "the training data's classes are named")
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} samples but y has {len(y)}")
    return x, y, f"{desc}, {len(x)} samples"


def listed(names, most=6):
    """Class names for a message: 'cat, dog, emu', or the first `most` and '...'."""
    return ", ".join(map(str, names[:most])) + (", ..." if len(names) > most else "")


def refuse_numbered_labels(where, classes, source, whose):
    """Numbered labels for classes a CSV named (its label strings, sorted): number i need
    not mean the i-th name (a tester's 0=low, 1=mid, 2=high scored 0.07 in silence), so
    they are refused. A built-in dataset's names (arm0, arm1, ...) go by their numbers.
    `whose`: how the message names the classes ("the model was trained on named classes")."""
    named = [c for c in classes if isinstance(c, str)]
    if named and str(source).lower().endswith(".csv"):
        raise DataError(f"{where}: the labels are numbers, but {whose} ({listed(named)}): give the names")


def _npz_has(path, *keys):
    try:
        with np.load(path, allow_pickle=False) as f:
            return all(k in f.files for k in keys)
    except LOAD_ERRORS:
        return False


class MappedRows:
    """The samples `rows` of a memory-mapped array, read only when a batch asks for them:
    each batch is gathered in file order (sorted indices) and put back in the order asked
    for, then shaped, converted and standardised exactly as an in-memory array is, so a
    run is bit-identical either way and its memory stays a few batches, whatever the file's
    size. Slicing stays lazy; np.asarray or an index array reads."""

    def __init__(self, source, rows, shape_batch, mean=None, std=None):
        self.source, self.rows, self.shape_batch = source, rows, shape_batch
        self.mean, self.std = mean, std
        self.shape = (len(rows),) + shape_batch(source[:0]).shape[1:]
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)

    def _view(self, rows, mean, std):
        return MappedRows(self.source, rows, self.shape_batch, mean, std)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._view(self.rows[key], self.mean, self.std)
        wanted = self.rows[np.asarray(key)]
        file_order = np.argsort(wanted, kind="stable")
        batch = np.empty((len(wanted),) + self.shape[1:], np.float32)
        batch[file_order] = self.shape_batch(self._read(wanted[file_order]))
        return batch if self.mean is None else standardize(batch, self.mean, self.std)

    def _read(self, rows):
        """Rows (sorted) of the file, each run of consecutive rows in one read. Read, not
        paged in through the map: the kernel maps whole page-cache folios (up to 2 MB) per
        touched row, so a random batch of 256 rows put ~80 MB of a 96 MB file in the
        resident set (measured); read into a fresh array, a batch costs only itself."""
        src = self.source
        if not src.flags.c_contiguous:  # a Fortran-ordered file: rows are not contiguous
            out = np.asarray(src[rows])
            drop_read_pages(src)
            return out
        out = np.empty((len(rows),) + src.shape[1:], src.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        row_bytes = flat.shape[1] if len(rows) else 0
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
        ends = np.append(starts[1:], len(rows))
        with open(src.filename, "rb", buffering=0) as f:
            for a, b in zip(starts, ends):
                want = (b - a) * row_bytes
                got = os.preadv(f.fileno(), [flat[a:b].reshape(-1)], src.offset + int(rows[a]) * row_bytes)
                if got != want:
                    raise DataError(f"{src.filename}: the file ended early (truncated while training?)")
        return out

    def __array__(self, dtype=None, copy=None):
        batch = self[np.arange(len(self))]
        return batch if dtype is None else batch.astype(dtype, copy=False)

    def select(self, indices):
        """These rows' subset, still unread."""
        return self._view(self.rows[indices], self.mean, self.std)

    def standardized(self, mean, std):
        return self._view(self.rows, mean, std)


def column_stats(x, rows=None):
    """Per-feature mean and standard deviation (+1e-8) of x as float32, accumulated in
    float64 a chunk (`rows`) at a time (Chan et al.'s pairwise update), so a memory-mapped split is
    never read whole; in-memory arrays take the same path so both give the same model."""
    n, mean, m2 = 0, 0.0, 0.0
    rows = rows or chunk_rows(x)
    for start in range(0, len(x), rows):
        block = np.asarray(x[start : start + rows]).astype(np.float64)
        k = len(block)
        block_mean = block.mean(axis=0)
        block -= block_mean  # in place: the chunk's only float64 copy
        block *= block
        block_m2 = block.sum(axis=0)
        delta = block_mean - mean
        mean = mean + delta * (k / (n + k))
        m2 = m2 + block_m2 + delta**2 * (n * k / (n + k))
        n += k
    std = np.sqrt(m2 / n) + 1e-8
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def load(spec, loss, output_shape, vocab=None) -> Dataset:
    """The spec's data, split into training, validation and (optionally) test, checked
    against the model. The test split is cut first, so adding one leaves the validation
    split of a seed unchanged only when test_split is 0. Text sources go to dlcli/text.py
    (`vocab`: use this vocabulary, e.g. a checkpoint's)."""
    ds = spec.data
    if ds.text is not None:
        from . import text  # here: text imports this module

        return text.load(spec, loss, output_shape, vocab)  # text.read checks the files
    check_files(spec)
    samples = ds.options.get("samples") if ds.builtin else None
    if samples is not None:
        need = memory.dataset_bytes(samples, spec.model.input, math.prod(output_shape))
        memory.require({"dataset": need}, f"{ds.source} with {samples} samples")
    x, y, classes, description = load_arrays(ds, spec.path, loss.classification, spec.seed)
    where = ds.source
    input_at = spec.where("model", "input")  # a shape that does not fit names model.input's line

    def shape_batch(raw):
        x = fit_input(np.asarray(raw), spec.model.input, f"{input_at}: {where}", ds.layout)
        return x.astype(np.float32, copy=False)

    if isinstance(x, np.memmap):
        x = MappedRows(x, np.arange(len(x)), shape_batch)  # checks the shape now, reads nothing
    else:
        x = shape_batch(x)
    labels_from = ds.targets if ds.targets is not None else where  # a label problem names the labels' file
    if loss.kind(output_shape) == "multiclass" and classes and output_shape[-1] != len(classes):
        # Named classes: said by name (the label range check would speak of numbers). More
        # outputs than classes would train, but the extra outputs stand for no class.
        raise DataError(
            f"{spec.where('model', 'layers', len(spec.model.layers) - 1)}: the last layer has "
            f"{output_shape[-1]} outputs, but {where} has {len(classes)} classes "
            f"({listed(classes)}): give it {len(classes)} units"
        )
    y = loss.check_targets(np.asarray(y), output_shape, labels_from)
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
    pick = x.select if isinstance(x, MappedRows) else x.__getitem__
    d = Dataset(pick(train), y[train], pick(val), y[val], classes, description=description)
    source = None if ds.builtin else resolve(ds.source, spec.path)
    if source is not None and source.suffix.lower() == ".csv":
        d.features = csv_features(source, ds.label)  # predict matches columns by them
    if n_test:
        d.x_test, d.y_test = pick(test), y[test]
        d.test_description = f"test_split {ds.test_split} of {description.split(',')[0]}, {n_test} samples"
    elif ds.test:
        tx, ty, d.test_description = _test_arrays(ds, spec.path, loss.classification, classes, d.features)
        d.x_test = fit_input(np.asarray(tx), spec.model.input, f"{input_at}: {ds.test}", ds.layout)
        d.x_test = d.x_test.astype(np.float32, copy=False)
        d.y_test = loss.check_targets(np.asarray(ty), output_shape, ds.test)
    if ds.standardize:
        d.mean, d.std = column_stats(d.x_train)
        d.x_train = _standardized(d.x_train, d.mean, d.std)
        d.x_val = _standardized(d.x_val, d.mean, d.std)
        if d.x_test is not None:
            d.x_test = _standardized(d.x_test, d.mean, d.std)
    return d


def _standardized(x, mean, std):
    return x.standardized(mean, std) if isinstance(x, MappedRows) else standardize(x, mean, std)


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
            yield np.asarray(x[lo:hi]), y[lo:hi]
        else:
            idx = order[lo:hi]
            yield x[idx], y[idx]
