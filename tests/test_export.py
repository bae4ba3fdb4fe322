"""`dlcli export` (issue 16): the ONNX model gives what `dlcli predict` gives.

Every sample config (trained one epoch on a few samples) and a seeded draw of specs over
the layer options are exported, checked with onnx.checker (full check), run in ONNX
Runtime and compared with dlcli on the same raw inputs, batch 1 and batch 37.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from click.testing import CliRunner

from dlcli import checkpoint, export, spec
from dlcli.cli import main
from dlcli.errors import ShapeError
from dlcli.model import Model
from dlcli.predict import open_model

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "sample_configs").glob("*.yaml"))
TOLERANCE = 1e-5  # of the output scale (the largest |output|)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def raw_inputs(pred, n, seed):
    """Raw samples as a user would give them: around the training statistics if any."""
    rng = np.random.default_rng(seed)
    first = pred.model.trained[0]
    if first.INTEGER_INPUT:  # a text model: token ids
        return rng.integers(0, first.vocab_size, size=(n, *pred.input_shape)).astype(np.float32)
    x = rng.standard_normal((n, *pred.input_shape)).astype(np.float32)
    if pred.mean is not None:
        x = (x * pred.std + pred.mean).astype(np.float32)
    return x


def session(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return model, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_close(ours, theirs, what):
    assert theirs.shape == ours.shape, what
    scale = max(float(np.abs(ours).max()), 1e-6)
    diff = float(np.abs(ours - theirs).max())
    assert diff <= TOLERANCE * scale, f"{what}: largest difference {diff:.3g}, output scale {scale:.3g}"


def compare(ckpt, onnx_path, seed=0):
    """ONNX Runtime against dlcli's own outputs (what predict --proba writes), batch 1 and 37."""
    pred = open_model(ckpt)
    model, sess = session(onnx_path)
    for n in (1, 37):
        x = raw_inputs(pred, n, seed + n)
        (theirs,) = sess.run(None, {"input": x})
        assert_close(pred.outputs(x), theirs, f"{Path(ckpt).name}, batch {n}")
    return pred, model


# --------------------------------------------------------------------------- sample configs
def narrow(layers, most=32):
    """Layer widths capped at `most` units (same layer types and options otherwise): a
    256-unit LSTM's orthogonal initialisation alone took seconds on a loaded machine."""
    for item in layers:
        for kind, value in item.items() if isinstance(item, dict) else ():
            if kind == "residual":
                narrow(value, most)
            elif kind in ("dense", "rnn", "lstm", "gru"):
                if isinstance(value, dict) and isinstance(value.get("units"), int):
                    value["units"] = min(value["units"], most)
                elif isinstance(value, int):
                    item[kind] = min(value, most)


def small(path, samples=48):
    """The sample config's spec, one epoch on a few samples, layers at most 32 units wide."""
    doc = yaml.safe_load(path.read_text())
    narrow(doc["model"]["layers"])
    doc["data"]["validation_split"] = 0.25
    if "text" in doc["data"]:  # a text model: a few short windows over its text
        doc["data"]["text"].update(seq_len=8, stride=500)
        doc["data"]["validation_split"] = 0.02
    if str(doc["data"]["source"]).startswith("builtin:"):
        doc["data"].setdefault("options", {})["samples"] = samples
    doc["train"]["epochs"] = 1
    return spec.parse(yaml.safe_dump(doc, sort_keys=False), str(path))


@pytest.mark.slow  # 3-5 s each on a loaded machine
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_config_exports_and_matches_predict(path, tmp_path):
    from dlcli import run

    _, ckpt, _ = run.train(small(path), output=tmp_path / "m.npz")
    result = invoke("export", ckpt, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    pred, model = compare(ckpt, tmp_path / "m.onnx")
    text = checkpoint.load(ckpt).meta.get("text")
    props = {p.key: p.value for p in model.metadata_props}
    assert (json.loads(props["vocabulary"]) if text else None) == text  # a text model's tokens travel along
    if text:  # and name its classes: output i is the probability of token i
        assert json.loads(props["classes"]) == text["tokens"]
    # and against the predict command itself, on a file, as a user would
    x = raw_inputs(pred, 37, 7)
    np.save(tmp_path / "x.npy", x)
    proba = [] if pred.kind == "regression" else ["--proba"]
    result = invoke("predict", ckpt, tmp_path / "x.npy", *proba, "-o", tmp_path / "p.npy", "-q")
    assert result.exit_code == 0, result.output
    _, sess = session(tmp_path / "m.onnx")
    assert_close(np.load(tmp_path / "p.npy"), sess.run(None, {"input": x})[0], "predict command")


# --------------------------------------------------------------------------- random specs
def random_layers(rng):
    """(input shape, layer list, loss) over the layer options: dense, conv/pool, recurrent."""
    family = str(rng.choice(["dense", "conv2d", "conv1d", "recurrent"]))
    act = lambda: str(rng.choice(["relu", "sigmoid", "tanh", "dropout", "softmax"]))  # noqa: E731
    layers = []
    if family == "dense":
        shape = [int(rng.integers(1, 7))]
        for _ in range(rng.integers(1, 3)):
            layers += [{"dense": {"units": int(rng.integers(1, 9)), "bias": bool(rng.random() < 0.7)}}, act()]
            if rng.random() < 0.4:
                layers.insert(-1, norm(rng))
            layers += merges(rng, lambda: {"dense": int(rng.integers(1, 6))}, act, len(layers))
    elif family.startswith("conv"):
        nd = 2 if family == "conv2d" else 1
        shape = [int(rng.integers(1, 4))] + [int(rng.integers(5, 12)) for _ in range(nd)]
        for _ in range(rng.integers(1, 3)):
            pad = rng.choice(["valid", "same", "int", "list"])
            padding = {"int": int(rng.integers(0, 3)), "list": [int(rng.integers(0, 3)) for _ in range(nd)]}.get(
                str(pad), str(pad)
            )
            kernel = [int(rng.integers(1, 4)) for _ in range(nd)]
            opts = {
                "filters": int(rng.integers(1, 5)),
                "kernel": kernel,
                "stride": [int(rng.integers(1, 3)) for _ in range(nd)],
                "dilation": [int(rng.integers(1, 3)) for _ in range(nd)],
                "padding": padding,
                "bias": bool(rng.random() < 0.7),
            }
            layers += [{family: opts}, act()]
            if rng.random() < 0.4:
                layers.insert(-1, norm(rng, over=("auto", "channels", "features")))
            conv = {"filters": int(rng.integers(1, 4)), "kernel": 3, "padding": "same", "stride": [1] * nd}
            conv["stride"][-1] = int(rng.integers(1, 3))  # a strided block needs a strided projection
            layers += merges(rng, lambda c=conv: {family: dict(c)}, act, len(layers))
            if rng.random() < 0.5:
                pool = f"{rng.choice(['max', 'avg'])}pool{nd}d"
                layers.append({pool: {"size": [int(rng.integers(1, 3))] * nd, "stride": [1] * nd}})
        layers.append(str(rng.choice(["flatten", "global_avgpool"])))
    else:
        shape = [int(rng.integers(1, 7)), int(rng.integers(1, 5))]
        cells = int(rng.integers(1, 3))
        for i in range(cells):
            cell = str(rng.choice(["rnn", "lstm", "gru"]))
            opts = {
                "units": int(rng.integers(1, 7)),
                "return_sequences": bool(i < cells - 1 or rng.random() < 0.5),
                "bias": bool(rng.random() < 0.7),
            }
            if cell == "rnn":
                opts["activation"] = str(rng.choice(["tanh", "relu"]))
            layers.append({cell: opts})
            if opts["return_sequences"] and rng.random() < 0.4:
                layers.append(norm(rng, over=("features",)))
    loss = str(rng.choice(["cross_entropy", "binary_cross_entropy", "mse"]))
    units = 1 if loss == "binary_cross_entropy" and rng.random() < 0.5 else int(rng.integers(2, 5))
    layers.append({"dense": {"units": units}})
    if loss == "cross_entropy" and rng.random() < 0.5:
        layers.append("softmax")  # left out of training, applied when predicting
    return shape, layers, loss


def merges(rng, make, act, at):
    """Sometimes a residual block (its add may need a projection) and sometimes a concat
    of a named layer and a second one that reads it: graph nodes over the options."""
    out = []
    if rng.random() < 0.35:
        out.append({"residual": [make(), act()] if rng.random() < 0.5 else [make()]})
    if rng.random() < 0.35:
        a, b = f"a{at}", f"b{at}"
        out += [{**make(), "name": a}, {**make(), "name": b, "input": a}, {"concat": None, "input": [a, b]}]
    return out


def norm(rng, over=("auto",)):
    kind = str(rng.choice(["batchnorm", "layernorm"]))
    return {kind: {"over": str(rng.choice(over)), "affine": bool(rng.random() < 0.7), "eps": 1e-3}}


def spec_text(shape, layers, loss, name="random"):
    doc = {
        "name": name,
        "seed": 0,
        "data": {"source": "builtin:spirals"},  # never loaded: the model is made here
        "model": {"input": shape, "layers": layers},
        "loss": loss,
        "optimizer": {"name": "sgd", "lr": 0.1},
        "train": {"epochs": 1, "batch_size": 8},
    }
    return yaml.safe_dump(doc, sort_keys=False)


class _Statistics:
    """What checkpoint.save reads from a dataset: class names and standardisation."""

    def __init__(self, classes, mean=None, std=None):
        self.classes, self.mean, self.std = classes, mean, std


def random_checkpoint(path, text, rng):
    """A checkpoint of the spec with random (non-zero bias) parameters and, half the time,
    standardisation statistics."""
    s = spec.parse(text, "random.yaml")
    model = Model.from_spec(s.model, seed=s.seed, loss=s.loss)
    model.params_flat[:] = rng.normal(0, 0.6, model.params_flat.size).astype(np.float32)
    for layer in model.layers:  # running statistics as training would leave them
        if "running_mean" in layer.buffers:
            layer.buffers["running_mean"][...] = rng.normal(0, 1, layer.buffers["running_mean"].shape)
            layer.buffers["running_var"][...] = rng.uniform(0.2, 3, layer.buffers["running_var"].shape)
    shape = tuple(s.model.input)
    mean = std = None
    if rng.random() < 0.5:
        mean = rng.normal(0, 3, shape).astype(np.float32)
        std = rng.uniform(0.5, 4, shape).astype(np.float32)
    classes = [f"c{i}" for i in range(model.output_shape[-1])]
    checkpoint.save(path, text, model, meta={}, dataset=_Statistics(classes, mean, std))
    return s


DRAWS = 32


@pytest.mark.parametrize("draw", range(DRAWS))
def test_random_spec_exports_and_matches(draw, tmp_path):
    rng = np.random.default_rng([16, draw])
    while True:  # draw again when a kernel came out larger than its input
        text = spec_text(*random_layers(rng))
        try:
            random_checkpoint(tmp_path / "r.npz", text, rng)
            break
        except ShapeError:
            pass
    exported = export.to_onnx(tmp_path / "r.npz", tmp_path / "r.onnx")
    compare(tmp_path / "r.npz", exported.path, seed=draw)


def test_random_specs_cover_every_layer_option():
    """The draw above reaches every exportable layer type and the padding forms."""
    kinds, paddings = set(), set()
    for draw in range(DRAWS):
        _, layers, _ = random_layers(np.random.default_rng([16, draw]))
        for layer in layers:
            kind = layer if isinstance(layer, str) else next(iter(layer))
            kinds.add("add" if kind == "residual" else kind)
            if kind in ("conv1d", "conv2d"):
                p = layer[kind]["padding"]
                paddings.add(p if isinstance(p, str) else type(p).__name__)
    # embedding takes token ids, not random floats: test_embedding_maps_to_gather covers it;
    # permute: test_permute_maps_to_transpose
    others = {"embedding", "permute"}
    assert set(export.EMITTERS) - others <= kinds, set(export.EMITTERS) - kinds - others
    assert paddings == {"valid", "same", "int", "list"}


# --------------------------------------------------------------------------- the mappings in detail
def test_same_padding_puts_the_odd_pixel_after(tmp_path):
    text = spec_text([1, 6, 7], [{"conv2d": {"filters": 2, "kernel": [2, 4], "padding": "same"}}, "flatten"], "mse")
    random_checkpoint(tmp_path / "c.npz", text, np.random.default_rng(0))
    model = export.build(open_model(tmp_path / "c.npz"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    pads = next(a for a in conv.attribute if a.name == "pads").ints
    assert list(pads) == [0, 1, 1, 2]  # [h_begin, w_begin, h_end, w_end]
    compare(tmp_path / "c.npz", _write(model, tmp_path / "c.onnx"))


def test_embedding_maps_to_gather(tmp_path):
    from dlcli import run

    text = """
data: {source: builtin:arithmetic, options: {samples: 40, digits: 2}, text: {seq_len: 6}, validation_split: 0.25}
model: {layers: [embedding: 3, {lstm: {units: 4, return_sequences: true}}, dense: vocab]}
train: {epochs: 1, batch_size: 8}
"""
    run.train(spec.parse(text, str(tmp_path / "t.yaml")), output=tmp_path / "t.npz")
    exported = export.to_onnx(tmp_path / "t.npz", tmp_path / "t.onnx")
    _, model = compare(tmp_path / "t.npz", exported.path)
    ops = [n.op_type for n in model.graph.node]
    assert ops[:2] == ["Cast", "Gather"], ops
    checked = invoke("export", tmp_path / "t.npz", "-o", tmp_path / "c.onnx", "--check")  # feeds token ids
    assert checked.exit_code == 0, checked.output
    assert "largest difference" in checked.output


def test_permute_maps_to_transpose(tmp_path):
    layers = [{"permute": [2, 1]}, {"conv1d": {"filters": 3, "kernel": 3}}, "relu", "flatten", {"dense": 2}]
    random_checkpoint(tmp_path / "p.npz", spec_text([6, 2], layers, "cross_entropy"), np.random.default_rng(2))
    exported = export.to_onnx(tmp_path / "p.npz", tmp_path / "p.onnx")
    _, model = compare(tmp_path / "p.npz", exported.path)
    (transpose,) = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert [a.ints for a in transpose.attribute if a.name == "perm"] == [[0, 2, 1]]


def _write(model, path):
    Path(path).write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("cell, op", [("lstm", "LSTM"), ("gru", "GRU"), ("rnn", "RNN")])
def test_recurrent_layers_map_to_onnx_cells(cell, op, tmp_path):
    text = spec_text([5, 3], [{cell: {"units": 4, "return_sequences": True}}, {cell: 3}], "mse")
    random_checkpoint(tmp_path / "r.npz", text, np.random.default_rng(1))
    model = export.build(open_model(tmp_path / "r.npz"))
    cells = [n for n in model.graph.node if n.op_type == op]
    assert len(cells) == 2
    if cell == "gru":
        assert all(a.i == 1 for n in cells for a in n.attribute if a.name == "linear_before_reset")
    compare(tmp_path / "r.npz", _write(model, tmp_path / "r.onnx"))


@pytest.mark.parametrize(
    "shape, layers, ops",
    [
        ([5], [{"dense": 4}, {"batchnorm": {}}, "relu"], {"BatchNormalization"}),
        (
            [2, 6, 5],
            [{"conv2d": {"filters": 3, "kernel": 3}}, {"batchnorm": {}}, "relu", "flatten"],
            {"BatchNormalization"},
        ),
        (
            [2, 7],
            [{"conv1d": {"filters": 3, "kernel": 2}}, {"layernorm": {"affine": True}}, "flatten"],
            {"LayerNormalization"},
        ),
        (
            [4, 3],
            [{"gru": {"units": 5, "return_sequences": True}}, {"batchnorm": {"over": "features"}}],
            {"Mul", "Add"},
        ),
        (
            [4, 3],
            [{"lstm": {"units": 5, "return_sequences": True}}, {"layernorm": {"over": "features"}}],
            {"LayerNormalization"},
        ),
        ([3, 4, 5], [{"batchnorm": {"over": "features", "affine": False}}, "flatten"], {"Mul", "Add"}),
    ],
)
def test_normalisation_layers(shape, layers, ops, tmp_path):
    text = spec_text(shape, layers + [{"dense": 2}], "mse")
    random_checkpoint(tmp_path / "n.npz", text, np.random.default_rng(3))
    model = export.build(open_model(tmp_path / "n.npz"))
    assert ops <= {n.op_type for n in model.graph.node}
    compare(tmp_path / "n.npz", _write(model, tmp_path / "n.onnx"))


GRAPHS = {
    "residual_dense_projection": ([5], [{"dense": 4}, {"residual": [{"dense": 6}, "relu", {"dense": 3}]}]),
    "residual_conv_strided": (
        [2, 9, 8],
        [{"residual": [{"conv2d": {"filters": 3, "kernel": 3, "stride": 2, "padding": "same"}}]}, "flatten"],
    ),
    "concat_named_branches": (
        [2, 10],
        [
            {"conv1d": {"filters": 3, "kernel": 3}, "name": "stem"},
            {"global_avgpool": None, "input": "stem", "name": "pooled"},
            {"maxpool1d": 2, "input": "stem", "name": "coarse"},
            {"flatten": None, "name": "flat"},
            {"concat": None, "input": ["pooled", "flat"]},
        ],
    ),
    "add_three": (
        [4],
        [
            {"dense": 3, "name": "a"},
            {"dense": 3, "name": "b", "input": "input"},
            {"add": None, "input": ["a", "b", "a"]},
        ],
    ),
}


@pytest.mark.parametrize("graph", GRAPHS)
def test_graph_models(graph, tmp_path):
    shape, layers = GRAPHS[graph]
    random_checkpoint(
        tmp_path / "g.npz", spec_text(shape, layers + [{"dense": 2}], "cross_entropy"), np.random.default_rng(4)
    )
    model = export.build(open_model(tmp_path / "g.npz"))
    ops = [n.op_type for n in model.graph.node]
    assert ("Concat" if "concat" in graph else "Add") in ops
    outputs = {o for n in model.graph.node for o in n.output}
    names = {d[k] for d in layers if isinstance(d, dict) for k in ("name",) if k in d}
    assert names <= outputs  # the spec's names are the tensors' names
    compare(tmp_path / "g.npz", _write(model, tmp_path / "g.onnx"))


def test_dense_on_sequences_is_time_distributed(tmp_path):
    text = spec_text([4, 3], [{"lstm": {"units": 5, "return_sequences": True}}, {"dense": 3}], "cross_entropy")
    random_checkpoint(tmp_path / "s.npz", text, np.random.default_rng(2))
    model = export.build(open_model(tmp_path / "s.npz"))
    ops = [n.op_type for n in model.graph.node]
    assert "MatMul" in ops and "Gemm" not in ops and ops[-1] == "Softmax"
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim[1:]] == [4, 3]
    compare(tmp_path / "s.npz", _write(model, tmp_path / "s.onnx"))


# --------------------------------------------------------------------------- the file: input, metadata, opset
SPIRALS = """\
name: spirals
seed: 0
data: {source: builtin:spirals, options: {classes: 3, samples: 120}, standardize: true}
model: {input: [2], layers: [{dense: 8}, relu, {dropout: 0.2}, {dense: 3}, softmax]}
loss: cross_entropy
optimizer: {name: adam, lr: 0.02}
train: {epochs: 1, batch_size: 32}
"""


@pytest.fixture
def spirals(tmp_path):
    from dlcli import run

    _, ckpt, _ = run.train(spec.parse(SPIRALS, "spirals.yaml"), output=tmp_path / "spirals.npz")
    return ckpt


def test_metadata_input_and_output(spirals, tmp_path):
    result = invoke("export", spirals, "--check")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "onnx.checker: ok" in result.output
    assert "largest difference" in result.output
    model = onnx.load(str(Path(spirals).with_suffix(".onnx")))  # the default output path
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["classes"]) == checkpoint.load(spirals).meta["classes"]
    assert props["spec"] == SPIRALS and props["task"] == "multiclass"
    assert props["dlcli_version"] == __import__("dlcli").__version__
    assert model.opset_import[0].version == 17 and model.producer_name == "dlcli"
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and out.name == "probabilities"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"  # a dynamic batch
    ops = [n.op_type for n in model.graph.node]
    assert ops[:2] == ["Sub", "Div"]  # standardisation first
    assert "Dropout" not in ops and ops[-1] == "Softmax"


def test_check_line_reports_the_difference(spirals):
    result = invoke("export", spirals, "-o", "m.onnx", "--check")
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[-1]
    diff = float(line.split("largest difference ")[1].split(" ")[0])
    assert 0 <= diff < 1e-5


def test_newer_opset(spirals, tmp_path):
    result = invoke("export", spirals, "-o", tmp_path / "m.onnx", "--opset", "18")
    assert result.exit_code == 0, result.output
    assert onnx.load(str(tmp_path / "m.onnx")).opset_import[0].version == 18
    compare(spirals, tmp_path / "m.onnx")


# --------------------------------------------------------------------------- bad input: one line, exit 2
def one_line_error(result):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "bad.npz").write_text("not a zip")
    line = one_line_error(invoke("export", tmp_path / "bad.npz"))
    assert "not a dlcli checkpoint" in line
    assert not (tmp_path / "bad.onnx").exists()
    (tmp_path / "g.yaml").write_text("model: {input: [2], layers: [{dense: 2}]}\n")  # the spec, not its checkpoint
    line = one_line_error(invoke("export", tmp_path / "g.yaml"))
    assert "a spec, not a checkpoint: train it first (dlcli train" in line, line


def test_an_existing_file_is_replaced_only_when_asked(spirals, tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"the user's model")
    line = one_line_error(invoke("export", spirals, "-o", target))
    assert "already exists" in line and "--overwrite" in line
    assert target.read_bytes() == b"the user's model"
    result = invoke("export", spirals, "-o", target, "--overwrite")
    assert result.exit_code == 0, result.output
    compare(spirals, target)


def test_unsupported_opset(spirals):
    line = one_line_error(invoke("export", spirals, "--opset", "16"))
    assert "--opset 16" in line and "17" in line


def test_a_layer_without_mapping_is_refused_by_name(spirals, monkeypatch, tmp_path):
    monkeypatch.delitem(export.EMITTERS, "relu")
    line = one_line_error(invoke("export", spirals, "-o", tmp_path / "m.onnx"))
    assert "layers[1] relu" in line and "no ONNX mapping" in line
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_missing_says_how_to_install(spirals, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    line = one_line_error(invoke("export", spirals))
    assert "pip install 'dlcli[onnx]'" in line


def test_nothing_else_imports_onnx(spirals):
    code = f"""
import sys
from click.testing import CliRunner
import dlcli
from dlcli.cli import main
for args in (["--help"], ["export", "--help"], ["summary", {str(spirals)!r}], ["predict", "--help"]):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxruntime"))
print("RESULT", bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RESULT []" in out.stdout, out.stdout


def test_a_channels_last_model_takes_the_samples_predict_takes(tmp_path):
    """data.layout: channels_last: predict reads (n, length, channels) samples and moves
    the channels first; the exported graph takes the same samples and transposes them
    itself (it took (n, channels, length), and `--check` failed on its own inputs)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 16, 2)).astype(np.float32)
    np.savez(tmp_path / "cl.npz", x=x, y=(x[:, :, 0].sum(1) > 0).astype(np.int64))
    spec = tmp_path / "cl.yaml"
    spec.write_text(
        f"data: {{source: {tmp_path / 'cl.npz'}, layout: channels_last, standardize: true}}\n"
        "model: {input: [2, 16], layers: [{conv1d: {filters: 4, kernel: 3}}, relu, flatten, {dense: 2}]}\n"
        "train: {epochs: 1, batch_size: 32}\n"
    )
    assert invoke("train", spec, "-o", tmp_path / "cl.ckpt.npz", "-q").exit_code == 0
    r = invoke("export", tmp_path / "cl.ckpt.npz", "-o", tmp_path / "cl.onnx", "--check")
    assert r.exit_code == 0, r.output
    model, sess = session(tmp_path / "cl.onnx")
    assert [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 16, 2]
    pred = open_model(tmp_path / "cl.ckpt.npz")
    (theirs,) = sess.run(None, {"input": x[:37]})
    assert_close(pred.outputs(x[:37]), theirs, "channels-last samples")
