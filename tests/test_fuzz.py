"""Property-based fuzzing of everything a user hands dlcli: generated and mutated specs,
data files (wrong dtypes and shapes, NaN, text, truncated) and checkpoints (cut,
byte-flipped, wrong or huge shapes, arbitrary metadata). The property: every input either
works (exit 0) or is refused the documented way (exit 2, one `Error:` line, no
traceback), and no file the user had is changed.

Budgets are Hypothesis profiles chosen by DLCLI_FUZZ: "ci" (the default, in `make test`:
few examples, derandomized, so a run is repeatable and quick) or "long" (`make fuzz`;
DLCLI_FUZZ_EXAMPLES sets the examples per test). Every failure the fuzzer found is now a
case in tests/test_bad_input.py.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import yaml
from badinput import GOOD_SPEC, checkpoint_arrays, good_data, invoke, npy_bytes, npz_bytes, snapshot, spec_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlcli.datasets import BUILTIN
from dlcli.layers import LAYERS

ROOT = Path(__file__).resolve().parents[1]
settings.register_profile(
    "ci",
    max_examples=12,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("DLCLI_FUZZ_EXAMPLES", "2000")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FUZZ = settings.get_profile(os.environ.get("DLCLI_FUZZ", "ci"))
# Command lines may train or gradcheck for a second or more each: fewer of them in `make test`.
FUZZ_SLOW = settings(FUZZ, max_examples=4) if os.environ.get("DLCLI_FUZZ", "ci") == "ci" else FUZZ


def run_in_fresh_folder(files, args, codes=(0, 2)):
    """Write `files`, run the command line in a folder of its own, and check the property."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            for name, content in files.items():
                Path(name).write_bytes(
                    content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
                )
            before = snapshot(".")
            r = invoke(args)
            after = snapshot(".")
        finally:
            os.chdir(here)
    where = f"args={args} exit={r.exit_code} stderr={r.stderr!r} exception={r.exception!r}"
    assert r.exception is None or isinstance(r.exception, SystemExit), where
    assert r.exit_code in codes, where
    assert "Traceback" not in r.output, where
    if r.exit_code == 2:
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), where
    changed = [n for n, digest in before.items() if after.get(n) != digest]
    assert not changed, f"{where}: changed {changed}"
    return r


# --------------------------------------------------------------------------- values
SMALL = st.integers(-3, 9)
AWKWARD_NUMBERS = st.sampled_from([0, -1, 1e-3, 0.5, 1.5, 10**11, 10**30, float("nan"), float("inf"), -float("inf")])
SCALARS = st.one_of(
    SMALL,
    AWKWARD_NUMBERS,
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.sampled_from(["relu", "same", "valid", "builtin:moons", "auto", "1e-3", ".5", "5."]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def layer_specs(draw):
    kind = draw(st.sampled_from(sorted(LAYERS)) | st.text(max_size=6))
    options = LAYERS[kind].OPTIONS if kind in LAYERS else {}
    keys = (
        draw(st.lists(st.sampled_from(sorted(options)) | st.text(max_size=5), max_size=3, unique=True))
        if options
        else []
    )
    if draw(st.booleans()):
        return kind
    values = {k: draw(st.one_of(SMALL.filter(lambda v: v > 0), VALUES)) for k in keys}
    return {kind: draw(st.one_of(st.just(values), SMALL, VALUES))}


@st.composite
def specs(draw):
    """A spec document: mostly the right sections with plausible, wrong or absurd values."""
    doc = {}
    if draw(st.integers(0, 9)):
        source = draw(st.sampled_from(["builtin:" + n for n in BUILTIN]) | st.sampled_from(["x.npz", "d.csv", "a.txt"]))
        data = {"source": source}
        if draw(st.booleans()) and source.startswith("builtin:"):
            opts = BUILTIN[source[8:]].OPTIONS
            data["options"] = {
                k: draw(st.one_of(SMALL, VALUES))
                for k in draw(st.lists(st.sampled_from(sorted(opts)), max_size=2, unique=True))
            }
            data["options"]["samples"] = draw(st.sampled_from([1, 7, 64]) | AWKWARD_NUMBERS)
        if draw(st.booleans()):
            data["validation_split"] = draw(st.one_of(st.floats(-1, 2), AWKWARD_NUMBERS))
        doc["data"] = data
    if draw(st.integers(0, 9)):
        shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3) | VALUES)
        doc["model"] = {"input": shape, "layers": draw(st.lists(layer_specs(), max_size=5))}
    for key in ("loss", "optimizer", "train", "seed", "name"):
        if draw(st.integers(0, 3)) == 0:
            doc[key] = draw(VALUES)
    if draw(st.booleans()):
        doc["optimizer"] = {
            "name": draw(st.sampled_from(["sgd", "adam", "adamw", "rmsprop", "x"])),
            "lr": draw(AWKWARD_NUMBERS),
        }
    if draw(st.booleans()):
        doc["train"] = {"epochs": draw(SMALL), "batch_size": draw(st.one_of(SMALL, AWKWARD_NUMBERS))}
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.text(max_size=5))] = draw(VALUES)
    return doc


@FUZZ
@given(doc=specs())
def test_generated_specs(doc):
    text = yaml.safe_dump(doc, allow_unicode=True)
    run_in_fresh_folder({"spec.yaml": text}, ["summary", "spec.yaml"])


SAMPLE_SPECS = [GOOD_SPEC] + [p.read_text() for p in sorted((ROOT / "sample_configs").glob("*.yaml"))]


@st.composite
def mutated(draw, texts):
    """A good file with a few bytes flipped, inserted or deleted, or cut short."""
    b = bytearray(draw(st.sampled_from(texts)))
    for _ in range(draw(st.integers(1, 4))):
        if not b:
            break
        at = draw(st.integers(0, len(b) - 1))
        how = draw(st.sampled_from(["flip", "insert", "delete", "cut", "duplicate"]))
        if how == "flip":
            b[at] ^= draw(st.integers(1, 255))
        elif how == "insert":
            b[at:at] = draw(
                st.binary(min_size=1, max_size=8)
                | st.sampled_from([b"&a ", b"*a", b"[", b"{", b": ", b"\n  - ", b".nan", b"1e9"])
            )
        elif how == "delete":
            del b[at : at + draw(st.integers(1, 8))]
        elif how == "cut":
            del b[at:]
        else:
            b[at:at] = b[at : at + draw(st.integers(1, 40))]
    return bytes(b)


@FUZZ
@given(content=mutated([t.encode() for t in SAMPLE_SPECS]))
def test_mutated_specs(content):
    run_in_fresh_folder({"spec.yaml": content}, ["summary", "--no-data", "spec.yaml"])


# --------------------------------------------------------------------------- data files
DTYPES = st.sampled_from(["f4", "f8", "f2", "i8", "i1", "u1", "?", "c8", "U3", "S2", "M8[s]", "V4"])


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    n = int(np.prod(shape)) if shape else 1
    raw = np.frombuffer(draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize)), dtype=dtype)
    a = raw.reshape(shape).copy()
    if dtype.kind == "f" and a.size and draw(st.booleans()):
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return a


@st.composite
def data_files(draw):
    x, y = draw(arrays()), draw(arrays())
    if draw(st.booleans()):  # a plausible file, then spoilt in one way
        rng = np.random.default_rng(draw(st.integers(0, 99)))
        n = draw(st.integers(1, 12))
        x, y = rng.standard_normal((n, 2)).astype(np.float32), rng.integers(0, 2, n)
        spoil = draw(st.sampled_from(["none", "nan", "labels", "width", "length", "dtype"]))
        if spoil == "nan":
            x[draw(st.integers(0, n - 1)), draw(st.integers(0, 1))] = np.nan
        elif spoil == "labels":
            y = y + draw(st.sampled_from([-1, 2, 0.5, 10**12]))
        elif spoil == "width":
            x = np.zeros((n, draw(st.integers(1, 4))), np.float32)
        elif spoil == "length":
            y = y[: draw(st.integers(0, n))]
        elif spoil == "dtype":
            x = x.astype(draw(DTYPES))
    arrays_ = {"x": x, "y": y}
    for key in draw(st.lists(st.sampled_from(["x", "y"]), max_size=1)):
        del arrays_[key]
    content = npz_bytes(**arrays_)
    if draw(st.integers(0, 4)) == 0:
        content = content[: draw(st.integers(0, len(content)))]
    return content


@FUZZ
@given(content=data_files())
def test_data_files(content):
    run_in_fresh_folder({"d.npz": content, "s.yaml": spec_for("d.npz")}, ["summary", "s.yaml"])


CSV_CELLS = st.one_of(
    st.sampled_from(["1", "0", "-2.5", "nan", "inf", "-inf", "1e39", "", " ", "a", "1,5", '"', "0x10", "1_0"]),
    st.text(max_size=4),
)


@FUZZ
@given(
    header=st.lists(st.sampled_from(["a", "b", "label", ""]) | st.text(max_size=3), max_size=4),
    rows=st.lists(st.lists(CSV_CELLS, max_size=4), max_size=5),
)
def test_csv_files(header, rows):
    text = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
    run_in_fresh_folder({"d.csv": text, "s.yaml": spec_for("d.csv", ", label: label")}, ["summary", "s.yaml"])


# --------------------------------------------------------------------------- checkpoints
def huge_header(shape, descr="<f4"):
    """A .npy whose header claims `shape` but holds a few bytes: what np.load is asked to trust."""
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x00" * 16


@st.composite
def checkpoints(draw):
    arrays_ = checkpoint_arrays()
    how = draw(st.sampled_from(["param", "meta", "drop", "bytes", "huge"]))
    if how == "param":
        key = draw(st.sampled_from(sorted(k for k in arrays_ if k.startswith(("param.", "optim.")))))
        arrays_[key] = draw(arrays())
    elif how == "meta":
        meta = draw(
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                lambda c: (
                    st.lists(c, max_size=3)
                    | st.dictionaries(
                        st.sampled_from(["format", "epochs_done", "epoch_step", "step", "classes", "x"]), c, max_size=4
                    )
                ),
                max_leaves=6,
            )
        )
        arrays_["meta"] = np.array(json.dumps(meta))
    elif how == "drop":
        del arrays_[draw(st.sampled_from(sorted(arrays_)))]
    content = npz_bytes(**arrays_)
    if how == "bytes":
        b = bytearray(content)
        for _ in range(draw(st.integers(1, 3))):
            b[draw(st.integers(0, len(b) - 1))] ^= draw(st.integers(1, 255))
        content = bytes(b[: draw(st.integers(0, len(b)))] if draw(st.booleans()) else b)
    if how == "huge":
        import zipfile

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            key = draw(st.sampled_from(["param.layers.0.weight", "optim.m", "meta"]))
            for k, v in arrays_.items():
                if k != key:
                    member = io.BytesIO()
                    np.save(member, v)
                    z.writestr(k + ".npy", member.getvalue())
            dims = draw(st.lists(st.sampled_from([0, 1, 2, 4, 10**6, 10**12, 2**62]), min_size=1, max_size=3))
            z.writestr(key + ".npy", huge_header(dims))
        content = buf.getvalue()
    return content


@FUZZ
@given(content=checkpoints(), command=st.sampled_from(["summary", "predict", "evaluate", "resume"]))
def test_checkpoints(content, command):
    x = np.zeros((3, 2), np.float32)
    files = {"c.npz": content, "d.npz": npz_bytes(x=x, y=np.zeros(3, np.int64))}
    args = {
        "summary": ["summary", "--no-data", "c.npz"],
        "predict": ["predict", "c.npz", "d.npz", "-o", "p.csv"],
        "evaluate": ["evaluate", "c.npz", "d.npz"],
        "resume": ["train", "--resume", "c.npz", "--epochs", "2", "-q", "-o", "out.npz"],
    }[command]
    run_in_fresh_folder(files, args)


# --------------------------------------------------------------------------- metrics logs
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(st.sampled_from(["event", "step", "layer_grad_norms", "a"]), c, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def log_lines(draw):
    line = draw(JSON)
    if draw(st.booleans()):
        line = {
            "event": "step",
            "step": draw(st.integers(0, 5) | JSON),
            "layer_grad_norms": draw(st.dictionaries(st.text(max_size=3), st.floats() | JSON, max_size=3) | JSON),
        }
    text = json.dumps(line)
    return text[: draw(st.integers(0, len(text)))] if draw(st.integers(0, 5)) == 0 else text


@FUZZ
@given(lines=st.lists(log_lines(), max_size=6))
def test_metrics_logs(lines):
    run_in_fresh_folder({"m.jsonl": "\n".join(lines) + "\n"}, ["inspect-gradients", "--log", "m.jsonl"])


# --------------------------------------------------------------------------- command lines
TOKENS = st.sampled_from(
    ["s.yaml", "c.npz", "d.npz", "x.npy", "nope.yaml", "sub", "-o", "out.csv", "out.npz", "--lr", "--epochs", "--batch-size",
     "--seed", "--threads", "--resume", "--log", "m.jsonl", "--proba", "--top-k", "--label", "--json", "--batches",
     "--compare", "--layer", "dense", "--eps", "--samples", "-q", "--no-data", "0", "1", "2", "-1", "nan", "inf", "1e-3",
     "1e9", "", "--", "-h"]
)  # fmt: skip


@FUZZ_SLOW
@given(
    command=st.sampled_from(["train", "summary", "predict", "evaluate", "inspect-gradients", "gradcheck"]),
    tokens=st.lists(TOKENS, max_size=6),
)
def test_command_lines(command, tokens):
    x, y = good_data()
    files = {
        "s.yaml": GOOD_SPEC,
        "c.npz": npz_bytes(**checkpoint_arrays()),
        "d.npz": npz_bytes(x=x, y=y),
        "x.npy": npy_bytes(x),
    }
    if command == "gradcheck" and "--layer" not in tokens:
        tokens = ["--layer", "dense", *tokens]  # --all would check every layer type: too slow here
    if command == "train":
        tokens = [*tokens, "--epochs", "1"] if "--resume" not in tokens else tokens
    run_in_fresh_folder(files, [command, *tokens], codes=(0, 1, 2) if command == "gradcheck" else (0, 2))
