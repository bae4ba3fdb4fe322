"""Data larger than memory: .npy and uncompressed .npz inputs are memory-mapped and read a
batch at a time, with the same results as in memory."""

import json
import subprocess
import sys

import numpy as np
import pytest

from dlcli import data, run, spec

SPEC = """
seed: 3
data: {{source: {source}, {targets} validation_split: 0.2, test_split: 0.1, layout: {layout}, standardize: true}}
model:
  input: [3, 4, 2]
  layers: [flatten, {{dense: 6}}, tanh, {{dense: 3}}]
loss: cross_entropy
optimizer: {{name: adam, lr: 0.01}}
train: {{epochs: 2, batch_size: 16}}
"""


def write_data(folder, rng, n=203):
    x = rng.normal(2.0, 3.0, size=(n, 4, 2, 3))  # channels last, float64: shaped and converted per batch
    y = rng.integers(0, 3, n)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    np.savez(folder / "plain.npz", x=x, y=y)
    np.savez_compressed(folder / "packed.npz", x=x, y=y)
    return x, y


def parse(folder, source, targets=""):
    return spec.parse(SPEC.format(source=source, targets=targets, layout="channels_last"), str(folder / "s.yaml"))


def test_npy_and_uncompressed_npz_are_mapped_and_train_bit_identically(tmp_path, rng):
    write_data(tmp_path, rng)
    specs = {
        "memory": parse(tmp_path, "packed.npz"),
        "npy": parse(tmp_path, "x.npy", "targets: y.npy,"),
        "npz": parse(tmp_path, "plain.npz"),
    }
    trainers = {k: run.train(s, output=tmp_path / f"{k}.npz")[2] for k, s in specs.items()}
    assert isinstance(trainers["memory"].dataset.x_train, np.ndarray)
    for k in ("npy", "npz"):
        d = trainers[k].dataset
        assert isinstance(d.x_train, data.MappedRows) and isinstance(d.x_train.source, np.memmap)
        assert isinstance(d.x_val, data.MappedRows) and isinstance(d.x_test, data.MappedRows)
    ref = trainers["memory"]
    for k in ("npy", "npz"):
        t = trainers[k]
        np.testing.assert_array_equal(t.model.params_flat, ref.model.params_flat)
        assert [e.train_loss for e in t.history] == [e.train_loss for e in ref.history]
        assert [e.val_loss for e in t.history] == [e.val_loss for e in ref.history]
        np.testing.assert_array_equal(t.dataset.mean, ref.dataset.mean)
        for split in ("x_train", "x_val", "x_test"):
            np.testing.assert_array_equal(np.asarray(getattr(t.dataset, split)), getattr(ref.dataset, split))


def test_a_batch_keeps_the_shuffled_order(tmp_path, rng):
    x, _ = write_data(tmp_path, rng, n=50)
    mapped = data.MappedRows(np.load(tmp_path / "x.npy", mmap_mode="r"), np.arange(50)[::-1].copy(), np.asarray)
    idx = np.array([7, 3, 41, 0, 3])
    np.testing.assert_array_equal(mapped[idx], x[::-1][idx].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(mapped[10:13]), x[::-1][10:13].astype(np.float32))


def test_column_stats_match_numpy_across_chunks(rng):
    x = rng.normal(5.0, 2.0, size=(1000, 7)).astype(np.float32)
    mean, std = data.column_stats(x, rows=64)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, x.astype(np.float64).std(0) + 1e-8, rtol=1e-5)
    assert mean.dtype == std.dtype == np.float32


def test_nan_in_a_mapped_file_names_its_row(tmp_path, rng):
    x = rng.normal(size=(300, 24))
    x[211, 5] = np.nan
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 300))
    s = parse(tmp_path, "x.npy", "targets: y.npy,")
    with pytest.raises(data.DataError, match="row 211"):
        run.train(s, output=tmp_path / "o.npz")


CHILD = """
import json, sys
from dlcli import run, spec


def status(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024


def train(path, out):
    return run.train(spec.parse(open(path).read(), path), output=out)[0]


train(sys.argv[1], sys.argv[2])  # kernels compiled or loaded, buffers warm
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # restart the peak (VmHWM) from here
result = train(sys.argv[3], sys.argv[4])
print(json.dumps({"before": before, "peak": status("VmHWM"), "epochs": result.epochs_done}))
"""

BIG = """
seed: 0
data: {{source: x.npy, targets: y.npy, validation_split: 0.1, standardize: true}}
model: {{input: [{features}], layers: [{{dense: 4}}, relu, {{dense: 2}}]}}
loss: cross_entropy
optimizer: {{name: sgd, lr: 0.01}}
train: {{epochs: 1, batch_size: 256}}
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak from /proc/self/status")
def test_a_file_larger_than_the_memory_growth_allowed_trains_one_epoch(tmp_path):
    """Training one epoch on a 96 MB file (NaN check, standardisation statistics, shuffled
    batches, validation) must raise the peak resident memory by far less than the file:
    measured from after a warm-up run on a tiny file, in the same child process."""
    features, n = 1536, 8192
    for name, rows in (("tiny", 64), ("big", n)):
        folder = tmp_path / name
        folder.mkdir()
        x = np.lib.format.open_memmap(folder / "x.npy", "w+", np.float64, (rows, features))
        for start in range(0, rows, 512):  # written in blocks: the test itself stays small too
            x[start : start + 512] = np.random.default_rng(start).normal(size=(min(512, rows - start), features))
        x.flush()
        del x
        np.save(folder / "y.npy", np.arange(rows) % 2)
        (folder / "s.yaml").write_text(BIG.format(features=features))
    out = subprocess.run(
        [sys.executable, "-c", CHILD]
        + [str(tmp_path / name / f) for name in ("tiny", "big") for f in ("s.yaml", "o.npz")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["epochs"] == 1
    file_bytes = n * features * 8
    assert report["peak"] - report["before"] < file_bytes / 4, (report, file_bytes)
