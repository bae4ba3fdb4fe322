"""Built-in datasets, file loaders, split, standardisation, batching and their errors."""

import numpy as np
import pytest

from dlcli import data, losses, spec
from dlcli.datasets import BUILTIN
from dlcli.errors import DataError


def load(text, spec_path=None, output_shape=None):
    s = spec.parse(text, str(spec_path) if spec_path else "<spec>")
    loss = losses.make(s.loss)
    if output_shape is None:
        from dlcli.model import Model

        output_shape = Model.from_spec(s.model, loss=s.loss).output_shape
    return data.load(s, loss, output_shape)


@pytest.mark.parametrize(
    "name,options,n,classes,features",
    [
        ("spirals", {"classes": 4, "samples": 401, "noise": 0.1, "turns": 1.0}, 400, 4, 2),
        ("moons", {"samples": 301, "noise": 0.1}, 300, 2, 2),
        ("xor", {"samples": 301, "noise": 0.05}, 301, 2, 2),
        ("circles", {"samples": 300, "noise": 0.05, "factor": 0.5}, 300, 2, 2),
        ("sine", {"samples": 50, "noise": 0.0, "periods": 1.0}, 50, 0, 1),
    ],
)
def test_builtin_datasets(name, options, n, classes, features):
    g = BUILTIN[name].generate(options, np.random.default_rng(0))
    assert g.x.shape == (n, features) and g.x.dtype == np.float32
    assert len(g.y) == n
    assert len(g.classes) == classes
    if classes:
        assert g.y.dtype == np.int64
        assert set(np.unique(g.y)) == set(range(classes))
        counts = np.bincount(g.y)
        assert counts.max() - counts.min() <= n * 0.2  # roughly balanced
    else:
        np.testing.assert_allclose(g.y, np.sin(g.x), atol=1e-6)  # noise 0: exact sine
    again = BUILTIN[name].generate(options, np.random.default_rng(0))
    np.testing.assert_array_equal(g.x, again.x)
    other = BUILTIN[name].generate(options, np.random.default_rng(1))
    assert not np.array_equal(g.x, other.x)


def test_builtin_geometry():
    o = {"samples": 400, "noise": 0.0, "factor": 0.3}
    c = BUILTIN["circles"].generate(o, np.random.default_rng(0))
    r = np.linalg.norm(c.x, axis=1)
    np.testing.assert_allclose(r[c.y == 0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(r[c.y == 1], 0.3, rtol=1e-5)
    x = BUILTIN["xor"].generate({"samples": 400, "noise": 0.0}, np.random.default_rng(0))
    np.testing.assert_array_equal(x.y, (x.x[:, 0] * x.x[:, 1] > 0).astype(np.int64))


def test_split_sizes_are_disjoint_and_seeded():
    text = (
        "seed: {seed}\ndata: {{source: builtin:xor, options: {{samples: 200}}, validation_split: 0.25}}\n"
        "model: {{input: [2], layers: [dense: 2]}}"
    )
    d = load(text.format(seed=1))
    assert len(d.x_train) == 150 and len(d.x_val) == 50
    rows = {tuple(r) for r in np.concatenate([d.x_train, d.x_val])}
    assert len(rows) == 200
    assert not ({tuple(r) for r in d.x_train} & {tuple(r) for r in d.x_val})
    d2 = load(text.format(seed=1))
    np.testing.assert_array_equal(d.x_val, d2.x_val)
    d3 = load(text.format(seed=2))
    assert not np.array_equal(d.x_val, d3.x_val)


def test_no_shuffle_keeps_file_order(tmp_path):
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load(
        "data: {source: d.npz, validation_split: 0.2, shuffle: false}\nmodel: {input: [2], layers: [dense: 2]}",
        spec_path=tmp_path / "spec.yaml",
    )
    np.testing.assert_array_equal(d.x_val, x[:2])
    np.testing.assert_array_equal(d.x_train, x[2:])


def test_standardize_uses_training_statistics():
    d = load(
        "data: {source: builtin:moons, options: {samples: 400}, standardize: true}\n"
        "model: {input: [2], layers: [dense: 2]}"
    )
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(axis=0), 1, atol=1e-4)
    raw = load("data: {source: builtin:moons, options: {samples: 400}}\nmodel: {input: [2], layers: [dense: 2]}")
    np.testing.assert_allclose(d.mean, raw.x_train.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(d.x_val, (raw.x_val - d.mean) / d.std, rtol=1e-5, atol=1e-5)


def test_npz_npy_and_csv_loaders(tmp_path, write_spec):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 3)).astype(np.float32)
    y = rng.integers(0, 2, 12)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "sub").mkdir()
    lines = ["a,b,kind,c"] + [f"{r[0]},{r[1]},{'dog' if t else 'cat'},{r[2]}" for r, t in zip(x, y)]
    (tmp_path / "sub" / "d.csv").write_text("\n".join(lines) + "\n")
    model = "model: {input: [3], layers: [dense: 2]}\n"
    for source in ("source: d.npz", "source: x.npy, targets: y.npy", "source: sub/d.csv, label: kind"):
        d = load("data: {" + source + ", validation_split: 0.0, shuffle: false}\n" + model, spec_path=write_spec("x"))
        np.testing.assert_allclose(d.x_train, x, rtol=1e-6)
        np.testing.assert_array_equal(d.y_train, y)
        assert d.y_train.dtype == np.int64
    assert d.classes == ["cat", "dog"]  # names sorted: cat -> 0, dog -> 1


def test_csv_regression_labels(tmp_path):
    (tmp_path / "r.csv").write_text("a,b,c,d,t\n1,2,3,4,0.5\n5,6,7,8,-1.5\n")
    d = load(
        "data: {source: r.csv, label: t, validation_split: 0.0, shuffle: false}\n"
        "model: {input: [4], layers: [dense: 1]}\nloss: mse",
        spec_path=tmp_path / "s.yaml",
    )
    np.testing.assert_array_equal(d.x_train, [[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_allclose(d.y_train, [[0.5], [-1.5]])
    assert d.y_train.dtype == np.float32 and d.classes == []


def test_flat_rows_are_reshaped_to_the_model_input():
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    out = data.fit_input(x, (3, 2, 2), "d.npz")
    assert out.shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(out[1].reshape(-1), x[1])
    assert data.fit_input(x, (12,), "d.npz") is x
    with pytest.raises(DataError, match=r"d.npz: samples have shape \(12,\), but model.input is \[5\]"):
        data.fit_input(x, (5,), "d.npz")


def test_flat_channels_last_rows_are_unflattened_as_channels_last():
    """A flat row of a (2, 2, 3) channels-last sample is that sample flattened: it must
    come out as the channels-first (3, 2, 2) sample, the same as the unflattened data."""
    rng = np.random.default_rng(0)
    hwc = rng.standard_normal((4, 2, 2, 3)).astype(np.float32)
    expected = data.fit_input(hwc, (3, 2, 2), "d.npz", "channels_last")
    np.testing.assert_array_equal(expected, np.moveaxis(hwc, -1, 1))
    flat = data.fit_input(hwc.reshape(4, 12), (3, 2, 2), "d.csv", "channels_last")
    np.testing.assert_array_equal(flat, expected)
    # a message names the shape in the file, and the one the transpose made
    with pytest.raises(
        DataError, match=r"samples have shape \(3, 2, 2\) \(\(2, 3, 2\) after data.layout: channels_last\)"
    ):
        data.fit_input(np.zeros((4, 3, 2, 2), np.float32), (3, 2, 2), "d.npz", "channels_last")


@pytest.mark.parametrize(
    "files,source,match",
    [
        ({}, "missing.npz", "data file not found: .*missing.npz"),
        ({}, "missing.csv, label: y", "data file not found: .*missing.csv"),
        (
            {"d.npz": {"inputs": np.zeros((4, 2)), "y": np.zeros(4, int)}},
            "d.npz",
            "no array named 'x'.*found: inputs, y",
        ),
        (
            {"d.npz": {"x": np.zeros((4, 5)), "y": np.zeros(4, int)}},
            "d.npz",
            r"samples have shape \(5,\), but model.input is \[2\]",
        ),
        ({"d.npz": {"x": np.zeros((4, 2)), "y": np.zeros(3, int)}}, "d.npz", "x has 4 samples but y has 3"),
        ({"d.npz": {"x": np.zeros((4, 2)), "y": np.array([0, 1, 2, 3])}}, "d.npz", r"labels run from 0 to 3.*0\.\.2"),
        ({"d.npz": {"x": np.zeros((4, 2)), "y": np.array([0, 1, 0.5, 1])}}, "d.npz", "needs integer class labels"),
        ({"d.csv": "a,b,y\n1,2,0\n3,x,1\n"}, "d.csv, label: y", r"d.csv:3: column 'b' is not numeric"),
        ({"d.csv": "a,b,y\n1,2,0\n3,4\n"}, "d.csv, label: y", r"d.csv:3: 2 values, the header has 3 columns"),
        ({"d.csv": "a,b,y\n1,2,0\n"}, "d.csv, label: cls", "no column named 'cls'"),
        ({"d.npz": "this is not a zip"}, "d.npz", "not a readable .npz file"),
    ],
)
def test_data_errors_are_clear(tmp_path, files, source, match):
    for name, content in files.items():
        if isinstance(content, dict):
            np.savez(tmp_path / name, **content)
        else:
            (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=match) as info:
        load("data: {source: " + source + "}\nmodel: {input: [2], layers: [dense: 3]}", spec_path=tmp_path / "s.yaml")
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


def test_batches_cover_everything_once(rng):
    x = np.arange(23)
    y = np.arange(23) * 10
    plain = list(data.batches(x, y, 5))
    assert [len(b[0]) for b in plain] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in plain]), x)
    shuffled = list(data.batches(x, y, 5, np.random.default_rng(0)))
    xs = np.concatenate([b[0] for b in shuffled])
    assert sorted(xs) == list(x) and not np.array_equal(xs, x)
    for bx, by in shuffled:
        np.testing.assert_array_equal(by, bx * 10)


def test_csv_columns_match_the_training_columns_by_name():
    x = np.array([[1.0, 2.0, 3.0]], np.float32)  # columns c, a, b
    np.testing.assert_array_equal(data.match_columns(x, ["c", "a", "b"], ["a", "b", "c"], "t.csv"), [[2, 3, 1]])
    assert data.match_columns(x, ["c", "a", "b"], [], "t.csv") is x  # trained on arrays: by position
    for columns, message in ((["c", "a", "z"], "has no column 'b'"), (["c", "a", "b", "z"], "has a column 'z'")):
        with pytest.raises(DataError, match=message):
            data.match_columns(np.zeros((1, len(columns))), columns, ["a", "b", "c"], "t.csv")
