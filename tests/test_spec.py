"""spec.py: YAML -> dataclasses; every error names file:line:column and the field."""

import subprocess
import sys

import numpy as np
import pytest

from dlcli import spec
from dlcli.errors import SpecError

GOOD = """\
name: demo
seed: 5
data:
  source: builtin:spirals
  options: {classes: 4, samples: 400}
  validation_split: 0.25
model:
  input: [2]
  layers:
    - dense: {units: 16}
    - relu
    - dense: 4
    - dropout: 0.1
    - softmax
loss: cross_entropy
optimizer:
  name: adam
  lr: 0.003
  schedule: {name: step, step_size: 3, gamma: 0.5, warmup_epochs: 1}
train: {epochs: 7, batch_size: 16, clip_norm: 1.5}
"""


def test_good_spec_parses_with_defaults(write_spec):
    p = write_spec(GOOD)
    s = spec.load(p)
    assert s.name == "demo" and s.seed == 5 and s.path == str(p) and s.text == GOOD
    assert s.data.builtin == "spirals"
    assert s.data.options == {"classes": 4, "samples": 400, "noise": 0.2, "turns": 1.0}
    assert s.data.validation_split == 0.25 and s.data.shuffle is True and s.data.standardize is False
    assert s.model.input == (2,)
    assert [(ls.kind, ls.options) for ls in s.model.layers] == [
        ("dense", {"units": 16, "bias": True, "init": "auto"}),
        ("relu", {}),
        ("dense", {"units": 4, "bias": True, "init": "auto"}),
        ("dropout", {"rate": 0.1}),
        ("softmax", {}),
    ]
    assert [ls.line for ls in s.model.layers] == [10, 11, 12, 13, 14]
    assert s.loss == "cross_entropy"
    o = s.optimizer
    assert (o.name, o.lr) == ("adam", 0.003)
    assert o.options == {"weight_decay": 0.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    assert o.schedule.name == "step"
    assert o.schedule.options == {"warmup_epochs": 1, "step_size": 3, "gamma": 0.5}
    assert (s.train.epochs, s.train.batch_size, s.train.clip_norm, s.train.threads) == (7, 16, 1.5, None)


def test_minimal_spec_and_shorthands(write_spec):
    s = spec.load(
        write_spec("data: builtin:moons\nmodel: {input: 2, layers: [dense: 2]}\noptimizer: sgd\n", name="tiny.yaml")
    )
    assert s.name == "tiny" and s.seed == 0
    assert s.data.source == "builtin:moons" and s.data.options == {"samples": 2000, "noise": 0.1}
    assert s.model.input == (2,)
    assert s.optimizer.name == "sgd" and s.optimizer.lr == 0.01 and s.optimizer.schedule.name == "constant"
    assert (s.train.epochs, s.train.batch_size) == (10, 32)
    s2 = spec.parse(
        "data: builtin:xor\nmodel: {input: [2], layers: [dense: 2]}\noptimizer: {name: adam, schedule: cosine}"
    )
    assert s2.optimizer.schedule.name == "cosine"


def error_of(write_spec, text):
    p = write_spec(text)
    with pytest.raises(SpecError) as info:
        spec.load(p)
    return str(info.value), p


@pytest.mark.parametrize(
    "text,where,fragments",
    [
        # wrong value, the README's own example: line and column of the value
        (
            "data: builtin:spirals\nmodel:\n  input: [2]\n  layers:\n    - dense: {units: 4}\n    - relu\n"
            "    - dense: {units: -4}\n",
            "7:22",
            ["model.layers[2].dense.units must be a positive integer, got -4"],
        ),
        # wrong type
        (
            "data: builtin:spirals\nmodel: {input: [2], layers: [dense: 2]}\ntrain:\n  epochs: ten\n",
            "4:11",
            ["train.epochs must be a positive integer, got 'ten'"],
        ),
        (
            "data: builtin:spirals\nmodel: {input: [2], layers: [dense: 2]}\ntrain:\n  batch_size: 2.5\n",
            "4:15",
            ["train.batch_size must be a positive integer, got 2.5"],
        ),
        (
            "data: builtin:spirals\nmodel: {input: [2], layers: [dense: 2]}\noptimizer:\n  nesterov: 1\n",
            "4:13",
            ["optimizer.nesterov must be true or false"],
        ),
        (
            "data: builtin:spirals\nmodel: {input: [2], layers: [dense: 2]}\noptimizer: {lr: -0.1}\n",
            "3:17",
            ["optimizer.lr must be a positive number, got -0.1"],
        ),
        (
            "data: {source: builtin:spirals, validation_split: 1.0}\nmodel: {input: [2], layers: [dense: 2]}\n",
            "1:51",
            ["data.validation_split must be a number in [0, 1)"],
        ),
        (
            "data: builtin:spirals\nmodel: {input: [2, -1], layers: [dense: 2]}\n",
            "2:16",
            ["model.input must be a list of positive integers"],
        ),
        (
            "seed: -1\ndata: builtin:spirals\nmodel: {input: [2], layers: [dense: 2]}\n",
            "1:7",
            ["seed must be a non-negative integer"],
        ),
        # unknown keys, with a hint: the position of the key
        (
            "data: builtin:spirals\nmodel: {input: [2], layers: [dense: 2]}\ntrain:\n  epochs: 3\n  bach_size: 4\n",
            "5:3",
            ["unknown field 'train.bach_size'", "did you mean 'batch_size'?"],
        ),
        (
            "data: builtin:spirals\nmodel:\n  input: [2]\n  layers:\n    - dense: {unit: 4}\n",
            "5:15",
            ["unknown field 'model.layers[0].dense.unit'", "did you mean 'units'?"],
        ),
        (
            "data: builtin:spirals\nmodle: {input: [2], layers: [dense: 2]}\n",
            "2:1",
            ["unknown field 'modle'", "did you mean 'model'?"],
        ),
        (
            "data: builtin:spirals\nmodel: {input: [2], layers: [dense: 2]}\noptimizer:\n  name: adam\n  beta_1: 0.8\n",
            "5:3",
            ["unknown field 'optimizer.beta_1'", "did you mean 'beta1'?"],
        ),
        (
            "data: builtin:spirals\nmodel: {input: [2], layers: [dense: 2]}\noptimizer:\n  schedule: {name: cosine, min_rl: 0}\n",
            "4:28",
            ["unknown field 'optimizer.schedule.min_rl'", "did you mean 'min_lr'?"],
        ),
        # an option the chosen optimizer or schedule does not use: each has its own table
        (
            "data: builtin:spirals\nmodel: {input: [2], layers: [dense: 2]}\noptimizer: {name: adam, momentum: 0.9}\n",
            "3:25",
            ["unknown field 'optimizer.momentum'; allowed: name, lr, weight_decay, beta1, beta2, eps"],
        ),
        (
            "data: builtin:spirals\nmodel: {input: [2], layers: [dense: 2]}\n"
            "optimizer: {schedule: {name: cosine, step_size: 3}}\n",
            "3:38",
            ["unknown field 'optimizer.schedule.step_size'; allowed: name, warmup_epochs, min_lr"],
        ),
        # unknown names
        (
            "data: builtin:spirals\nmodel:\n  input: [2]\n  layers:\n    - dense: 4\n    - rleu\n",
            "6:7",
            ["unknown layer type 'rleu'", "did you mean 'relu'?"],
        ),
        (
            "data: builtin:sprials\nmodel: {input: [2], layers: [dense: 2]}\n",
            "1:7",
            ["names no built-in dataset", "did you mean 'builtin:spirals'?"],
        ),
        (
            "data: builtin:spirals\nmodel: {input: [2], layers: [dense: 2]}\nloss: cross_entropyy\n",
            "3:7",
            ["loss must be one of", "did you mean 'cross_entropy'?"],
        ),
        (
            "data: builtin:spirals\nmodel: {input: [2], layers: [dense: 2]}\noptimizer: {name: adma}\n",
            "3:19",
            ["optimizer.name must be one of sgd, adam, adamw, rmsprop"],
        ),
        (
            "data:\n  source: builtin:spirals\n  options: {classes: 3, nosie: 0.1}\nmodel: {input: [2], layers: [dense: 2]}\n",
            "3:25",
            ["unknown field 'data.options.nosie'", "did you mean 'noise'?"],
        ),
        # missing pieces
        ("model: {input: [2], layers: [dense: 2]}\n", None, ["needs a 'data' section"]),
        ("data: builtin:spirals\nmodel: {layers: [dense: 2]}\n", "2:8", ["model.input is required"]),
        ("data: builtin:spirals\nmodel: {input: [2], layers: []}\n", "2:29", ["model.layers must be a non-empty list"]),
        (
            "data: builtin:spirals\nmodel: {input: [2], layers: [dense: {bias: false}]}\n",
            "2:37",
            ["model.layers[0].dense.units is required"],
        ),
        # a missing file is said before the missing label or targets: it is the first thing to fix
        ("data: data.csv\nmodel: {input: [2], layers: [dense: 2]}\n", "1:7", ["data.source: data file not found"]),
        ("data: x.npy\nmodel: {input: [2], layers: [dense: 2]}\n", "1:7", ["data.source: data file not found: x.npy"]),
        ("data: data.txt\nmodel: {input: [2], layers: [dense: 2]}\n", "1:7", ["must be builtin:<name> or a .npz"]),
    ],
)
def test_errors_name_file_line_column_and_field(write_spec, text, where, fragments):
    msg, p = error_of(write_spec, text)
    assert msg.startswith(f"{p}:{where}: " if where else f"{p}")
    for f in fragments:
        assert f in msg, msg
    assert "\n" not in msg


def test_a_data_file_without_its_label_or_targets(write_spec, tmp_path):
    (tmp_path / "data.csv").write_text("a,b,label\n1,2,0\n")
    msg, p = error_of(write_spec, "data: data.csv\nmodel: {input: [2], layers: [dense: 2]}\n")
    assert msg.startswith(f"{p}:1:7: ") and "data.label must name the label column" in msg
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    msg, p = error_of(write_spec, "data: x.npy\nmodel: {input: [2], layers: [dense: 2]}\n")
    assert msg.startswith(f"{p}:1:7: ") and "data.targets must name the .npy file" in msg


def test_invalid_yaml_gives_its_position(write_spec):
    msg, p = error_of(write_spec, "data: builtin:spirals\nmodel:\n  input: [2\n  layers: []\n")
    assert msg.startswith(f"{p}:") and "not valid YAML" in msg
    line = int(msg[len(str(p)) + 1 :].split(":")[0])
    assert line in (3, 4)


def test_a_key_given_twice_is_an_error_with_both_lines(write_spec):
    """YAML keeps the last of two equal keys without a word: a spec with `data:` twice
    trained on the second. Nested mappings too; a merge key may repeat what it merges."""
    msg, p = error_of(
        write_spec, "data: builtin:spirals\ndata: builtin:moons\nmodel: {input: [2], layers: [dense: 2]}\n"
    )
    assert msg == f"{p}:2:1: duplicate key 'data' (first on line 1); a key may appear once"
    msg, p = error_of(write_spec, "data: builtin:spirals\nmodel:\n  input: [2]\n  layers: [{dense: 2, dense: 3}]\n")
    assert msg.startswith(f"{p}:4:") and "duplicate key 'dense'" in msg
    s = spec.parse(
        "data: builtin:spirals\nmodel: {input: [2], layers: [{dense: &d {units: 4}}, {dense: {<<: *d, units: 3}}]}"
    )
    assert [layer.options["units"] for layer in s.model.layers] == [4, 3]


def test_not_a_mapping_and_missing_file(write_spec, tmp_path):
    msg, p = error_of(write_spec, "- just\n- a list\n")
    assert "must be a YAML mapping" in msg
    with pytest.raises(SpecError, match="spec file not found") as info:
        spec.load(tmp_path / "nope.yaml")
    assert info.value.exit_code == 2


def test_spec_errors_have_exit_code_2_and_keep_their_parts(write_spec):
    p = write_spec("data: builtin:spirals\nmodel: {input: [2], layers: [dense: 0]}\n")
    with pytest.raises(SpecError) as info:
        spec.load(p)
    e = info.value
    assert (e.exit_code, e.file, e.line, e.column) == (2, str(p), 2, 37)


def test_loading_a_spec_imports_neither_numba_nor_kernels(write_spec):
    p = write_spec(GOOD)
    code = (
        "import sys; from dlcli import spec; spec.load(sys.argv[1]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numba' or m.startswith('dlcli.kernels')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
