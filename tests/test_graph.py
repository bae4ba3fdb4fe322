"""Graphs of layers: `name:`/`input:`, merge layers (add, concat), `residual:` blocks.
A graph spec and its equivalent stack give identical results; spec errors name the file
and line; every command works through a graph."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dlcli import checkpoint, losses, run, spec
from dlcli.cli import main
from dlcli.errors import ShapeError, SpecError
from dlcli.gradcheck import assert_gradients_ok, check_model
from dlcli.model import Model

HEAD = "seed: 2\ndata: {{source: builtin:spirals, options: {{samples: 120}}}}\n{rest}model:\n  input: [2]\n  layers:\n"


def parse(layers, rest=""):
    return spec.parse(HEAD.format(rest=rest) + layers, "g.yaml")


def build(s, dtype=np.float64, fuse=True):
    return Model.from_spec(s.model, dtype=dtype, seed=s.seed, loss=s.loss, fuse=fuse), losses.make(s.loss)


def pass_through(model, loss, x, y):
    out = model.forward(x, training=True)
    _, dout, _ = loss(out, y)
    dx = model.backward(dout, need_input_grad=True)
    return out.copy(), model.grads_flat.copy(), dx.copy()


STACK = """\
    - dense: 8
    - relu
    - dense: 8
    - tanh
    - dense: 3
"""
STACK_AS_GRAPH = """\
    - {dense: 8, name: h1, input: input}
    - {relu: null, name: a1, input: h1}
    - {dense: 8, name: h2, input: a1}
    - {tanh: null, input: h2}
    - dense: 3
"""


@pytest.mark.parametrize("fuse", [False, True])
def test_a_graph_spec_and_its_stack_give_identical_results(rng, fuse):
    stack, loss = build(parse(STACK), fuse=fuse)
    graph, _ = build(parse(STACK_AS_GRAPH), fuse=fuse)
    assert stack.is_chain() and graph.is_chain()
    np.testing.assert_array_equal(stack.params_flat, graph.params_flat)
    x, y = rng.standard_normal((7, 2)), rng.integers(0, 3, 7)
    for a, b in zip(pass_through(stack, loss, x, y), pass_through(graph, loss, x, y)):
        np.testing.assert_array_equal(a, b)


def test_training_a_graph_spec_repeats_its_stack(tmp_path):
    a = run.train(parse(STACK, "train: {epochs: 2, batch_size: 16}\n"), output=tmp_path / "a.npz")[2]
    b = run.train(parse(STACK_AS_GRAPH, "train: {epochs: 2, batch_size: 16}\n"), output=tmp_path / "b.npz")[2]
    np.testing.assert_array_equal(a.model.params_flat, b.model.params_flat)
    assert [e.val_loss for e in a.history] == [e.val_loss for e in b.history]


RESIDUAL = """\
    - dense: 8
    - residual:
        - dense: 8
        - relu
        - dense: 8
    - dense: 3
"""
RESIDUAL_BY_HAND = """\
    - {dense: 8, name: h}
    - dense: 8
    - relu
    - {dense: 8, name: f}
    - {add: {projection: true}, input: [h, f]}
    - dense: 3
"""


def test_residual_block_is_the_add_it_stands_for(rng):
    block, loss = build(parse(RESIDUAL))
    hand, _ = build(parse(RESIDUAL_BY_HAND))
    assert [layer.kind for layer in block.layers] == ["dense", "dense", "relu", "dense", "add", "dense"]
    assert block.inputs[4] == (0, 3) == hand.inputs[4]
    x, y = rng.standard_normal((5, 2)), rng.integers(0, 3, 5)
    for a, b in zip(pass_through(block, loss, x, y), pass_through(hand, loss, x, y)):
        np.testing.assert_array_equal(a, b)
    # y = h + f(h): the add node's output is the sum of its inputs
    outs = block.run_nodes(x)
    np.testing.assert_allclose(outs[4], outs[0] + outs[3], rtol=1e-15)


def test_relu_fused_into_a_residual_add_gives_the_unfused_results(rng):
    s = parse(RESIDUAL.replace("    - dense: 3\n", "    - relu\n    - dense: 3\n"))
    fused, loss = build(s, fuse=True)
    plain, _ = build(s, fuse=False)
    assert fused.layers[4].fuse_relu and fused.layers[5].fused and not plain.layers[4].fuse_relu
    x, y = rng.standard_normal((6, 2)), rng.integers(0, 3, 6)
    for a, b in zip(pass_through(fused, loss, x, y), pass_through(plain, loss, x, y)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_add_of_a_layer_with_itself(rng):
    s = parse("    - {dense: 4, name: h}\n    - {add: null, input: [h, h]}\n    - dense: 3\n")
    model, loss = build(s)
    x, y = rng.standard_normal((6, 2)), rng.integers(0, 3, 6)
    outs = model.run_nodes(x)
    np.testing.assert_allclose(outs[1], 2 * outs[0], rtol=1e-15)
    assert_gradients_ok(check_model(model, loss, x, y))
    # the same as doubling h's output: dL/dh = 2 dL/d(sum)
    _, grads, _ = pass_through(model, loss, x, y)
    single, _ = build(parse("    - {dense: 4, name: h}\n    - dense: 3\n"))
    single.params_flat[...] = model.params_flat
    single.layers[1].params["weight"][...] *= 2
    _, grads1, _ = pass_through(single, loss, x, y)
    n0 = model.layer_offsets[1]  # the first dense layer's gradient is the same
    np.testing.assert_allclose(grads[:n0], grads1[:n0], rtol=1e-12)


GRAPH_1D = """\
seed: 1
data: {{source: builtin:signals, options: {{samples: 60, length: 16}}}}
model:
  input: [1, 16]
  layers:
    - conv1d: {{filters: 4, kernel: 3, padding: same}}
    - batchnorm
    - {{relu: null, name: stem}}
    - residual:
        - conv1d: {{filters: 6, kernel: 3, stride: 2, padding: same}}
        - batchnorm
        - relu
        - conv1d: {{filters: 6, kernel: 3, padding: same}}
    - {{layernorm: null, name: deep}}
    - {{global_avgpool: null, input: stem, name: pooled_stem}}
    - {{global_avgpool: null, input: deep, name: pooled_deep}}
    - {{concat: null, input: [pooled_stem, pooled_deep]}}
    - dense: 4
{rest}"""


def test_graph_gradients_every_parameter_and_input():
    s = spec.parse(GRAPH_1D.format(rest=""), "g.yaml")
    model, loss = build(s, fuse=True)
    add = model.layers[7]
    assert add.kind == "add" and add.projection.kind == "conv1d" and add.projection.options["stride"] == (2,)
    assert model.layers[4].fuse_relu  # batchnorm + relu inside the block
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 1, 16)), rng.integers(0, 4, 2)
    results = check_model(model, loss, x, y, samples=6)
    assert_gradients_ok(results)
    tensors = {(r.layer, r.tensor) for r in results}
    for i, layer in enumerate(model.trained):
        for p in layer.params:
            assert (layer.name, p) in tensors
        slots = ["input"] if len(model.inputs[i]) == 1 else ["input[0]", "input[1]"]
        for slot in slots:
            assert (layer.name, slot) in tensors
    assert (add.name, "weight") in tensors  # the projection's weight


@pytest.mark.parametrize(
    "layers,message",
    [
        ("    - dense: 4\n    - {dense: 3, input: hidden}\n", r"g.yaml:7:\d+: .*no layer is named 'hidden'"),
        (
            "    - {dense: 4, name: a, input: b}\n    - {dense: 4, name: b, input: a}\n    - dense: 3\n",
            r"g.yaml:6:\d+: .*a cycle: 'a' -> 'b' -> 'a'",
        ),
        (
            "    - {dense: 4, name: a}\n    - {dense: 4, input: input}\n    - dense: 3\n",
            r"g.yaml:6:\d+: .*'a'\): its output is never used",
        ),
        ("    - {dense: 4, name: a}\n    - add\n", r"g.yaml:7:\d+: .*add merges several layers"),
        ("    - {dense: 4, name: a}\n    - {dense: 3, input: [a, a]}\n", r"g.yaml:7:\d+: .*dense takes one input"),
        ("    - {dense: 4, name: input}\n", r"g.yaml:6:\d+: .*'input' already names the model input"),
        ("    - dense: 4\n    - {relu: null, input: input}\n    - dense: 3\n", r"layers\[0\] \(dense\): its output"),
        (
            "    - {dense: 4, nmae: a}\n",
            r"g.yaml:6:\d+: unknown field 'model.layers\[0\].nmae' \(did you mean 'name'\?\)",
        ),
        (
            "    - {dense: 4, name: a}\n    - {add: null, inputs: [a, a]}\n",
            r"g.yaml:7:\d+: unknown field 'model.layers\[1\].inputs' \(did you mean 'input'\?\)",
        ),
    ],
)
def test_graph_spec_errors_name_file_and_line(layers, message):
    with pytest.raises(SpecError, match=message):
        parse(layers)


def test_concat_over_channels_of_vectors_is_a_shape_error():
    text = HEAD.format(rest="") + "    - {dense: 4, name: a}\n    - {concat: {over: channels}, input: [a, input]}\n"
    with pytest.raises(
        ShapeError, match=r"g.yaml:7: layers\[1\] concat: over: channels needs .* got \(4,\) \(from a\)"
    ):
        build(spec.parse(text, "g.yaml"))


def test_add_of_different_shapes_names_both(write_spec):
    text = (
        HEAD.format(rest="")
        + "    - {dense: 4, name: a}\n    - {dense: 5, name: b}\n    - {add: null, input: [a, b]}\n"
    )
    with pytest.raises(ShapeError, match=r"g.yaml:8: layers\[2\] add: .*\(4,\) \(from a\) and \(5,\) \(from b\)"):
        build(spec.parse(text, "g.yaml"))
    result = CliRunner().invoke(main, ["summary", str(write_spec(text))])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "(4,) (from a) and (5,) (from b)" in lines[0]


def test_commands_work_through_a_graph(write_spec, tmp_path):
    path = write_spec(GRAPH_1D.format(rest="train: {epochs: 1, batch_size: 16}\noptimizer: {name: adam, lr: 0.01}\n"))
    out = tmp_path / "g.npz"
    runner = CliRunner()
    r = runner.invoke(main, ["summary", str(path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "pooled_stem, pooled_deep" in r.output and "projection: conv1d 1x1 stride 2" in r.output
    r = runner.invoke(main, ["train", str(path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    ck = checkpoint.load(out)
    assert "layers.1.running_mean" in ck.params and "layers.7.weight" in ck.params  # state buffer, projection
    r = runner.invoke(main, ["inspect-gradients", str(out), "--json", "--batches", "1"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["layers"]
    assert [row["kind"] for row in rows][6:8] == ["conv1d", "add"] and rows[7]["grad_norm"]["mean"] > 0
    # evaluate with the saved running statistics: the same as the trained model in memory
    s, model = checkpoint.build_model(ck)
    _, _, trainer = run.train(s, output=tmp_path / "again.npz")
    x = np.random.default_rng(0).standard_normal((4, 1, 16)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x), trainer.model.forward(x))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((10, 1, 16)).astype(np.float32), y=np.arange(10) % 4)
    r = runner.invoke(main, ["evaluate", str(out), str(data), "--json"])
    assert r.exit_code == 0, r.output
    assert 0 <= json.loads(r.output)["accuracy"] <= 1
    # resume for a second epoch
    r = runner.invoke(main, ["train", str(path), "--resume", str(out), "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert checkpoint.load(out).meta["epochs_done"] == 2


def test_residual_block_with_its_own_input_and_name_and_a_conv2d_projection(rng):
    s = spec.parse(
        "data: builtin:shapes\nmodel:\n  input: [1, 8, 8]\n  layers:\n"
        "    - {conv2d: {filters: 2, kernel: 3, padding: same}, name: stem}\n"
        "    - {relu: null, name: side}\n"
        "    - residual: [{conv2d: {filters: 4, kernel: 3, stride: 2, padding: same}}, relu]\n"
        "      input: stem\n"
        "      name: block\n"
        "    - {global_avgpool: null, input: block, name: a}\n"
        "    - {global_avgpool: null, input: side, name: b}\n"
        "    - {concat: null, input: [a, b]}\n"
        "    - dense: 4\n",
        "r.yaml",
    )
    model, loss = build(s)
    add = model.layers[4]
    assert model.inputs[2] == (0,) and model.inputs[4] == (0, 3) and add.label == "block"
    assert add.projection.kind == "conv2d" and add.projection.options["stride"] == (2, 2)
    assert add.output_shape == (4, 4, 4)
    x, y = rng.standard_normal((2, 1, 8, 8)), rng.integers(0, 4, 2)
    assert_gradients_ok(check_model(model, loss, x, y, samples=8))
