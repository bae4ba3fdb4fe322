"""Memory estimates: planning counts exactly what building allocates, the estimates bound
what tracemalloc measures, and a spec that cannot fit is refused in one line before any
of it is allocated."""

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from badinput import GOOD_SPEC, check_refused, invoke, snapshot

from dlcli import data, memory, run, spec
from dlcli.errors import ShapeError
from dlcli.layers import LAYERS
from dlcli.model import Model, Plan
from dlcli.options import parse_options


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_planning_counts_what_building_allocates(kind):
    cls = LAYERS[kind]
    options = parse_options(cls.OPTIONS, cls.EXAMPLE["options"])
    planned = cls(**options)
    planned.planning, planned.planned = True, {}
    planned_out = planned.build(cls.EXAMPLE["input"])
    built = cls(**options)
    out = built.build(cls.EXAMPLE["input"])
    assert planned_out == out
    assert planned.planned.get("params", 0) == built.n_params()
    assert planned.planned.get("buffers", 0) == built.n_buffer_entries()
    assert not planned.params


def test_planning_allocates_nothing():
    s = spec.parse("data: builtin:moons\nmodel: {input: [1000], layers: [{dense: 3000}, {lstm: 1}]}\n")
    with pytest.raises(ShapeError, match="layers.1. lstm"):  # found by the plan as by a build
        Plan.of_spec(s.model)
    s = spec.parse("data: builtin:moons\nmodel: {input: [1000], layers: [{dense: 3000}, {batchnorm: {}}]}\n")
    tracemalloc.start()
    plan = Plan.of_spec(s.model)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert plan.params == 1000 * 3000 + 3000 + 2 * 3000 and plan.buffers == 2 * 3000
    assert peak < 200_000  # the 12 MB of weights were only counted


MODELS = [
    "model: {input: [20], layers: [{dense: 600}, relu, {dense: 600}, {batchnorm: {}}, {dense: 3}]}",
    "model: {input: [1, 16, 16], layers: [{conv2d: {filters: 8, kernel: 3}}, relu, flatten, {dense: 3}]}",
    "model: {input: [12, 5], layers: [{lstm: 32}, {dense: 3}]}",
    "model: {input: [12, 5], layers: [{gru: {units: 16, return_sequences: true}}, flatten, {dense: 3}]}",
    "model: {input: [20], layers: [{dense: 300}, {residual: [{dense: 400}, relu, {dense: 400}]}, {dense: 3}]}",
]


@pytest.mark.parametrize("model_text", MODELS, ids=["mlp", "cnn", "lstm", "gru", "residual-projection"])
def test_model_estimate_bounds_what_building_and_a_training_step_take(model_text):
    s = spec.parse(f"data: builtin:moons\noptimizer: adam\n{model_text}\n")
    plan = Plan.of_spec(s.model)
    tracemalloc.start()
    model, _ = run.build(s)
    _, build_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert build_peak <= sum(plan.model_bytes().values())
    assert model.n_params() == plan.params

    from dlcli import optim

    batch = 16
    x = np.random.default_rng(0).standard_normal((batch,) + tuple(s.model.input)).astype(np.float32)

    def step():
        model, _ = run.build(s)
        opt = optim.for_model(s.optimizer, model)
        y = model.forward(x, training=True)
        model.backward(np.ones_like(y))
        opt.step(model.params_flat, model.grads_flat, 0.01)

    step()  # compiles the kernels (not part of what a run holds)
    tracemalloc.start()
    step()
    _, step_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    estimate = sum(plan.training_bytes(batch, 2).values())
    assert step_peak <= estimate


DATASETS = [
    ("moons", [2], "{samples: 4000}", "[{dense: 2}]", "cross_entropy"),
    ("circles", [2], "{samples: 4000}", "[{dense: 2}]", "cross_entropy"),
    ("spirals", [2], "{samples: 4000}", "[{dense: 3}]", "cross_entropy"),
    ("sine", [1], "{samples: 4000}", "[{dense: 1}]", "mse"),
    ("shapes", [1, 28, 28], "{samples: 200}", "[flatten, {dense: 4}]", "cross_entropy"),
    ("signals", [1, 128], "{samples: 500}", "[flatten, {dense: 4}]", "cross_entropy"),
    ("adding", [50, 2], "{samples: 500}", "[{rnn: 2}, {dense: 1}]", "mse"),
    ("temporal_order", [30, 6], "{samples: 500}", "[{rnn: 2}, {dense: 4}]", "cross_entropy"),
    (
        "sine_next",
        [40, 1],
        "{samples: 500, seq2seq: true}",
        "[{rnn: {units: 2, return_sequences: true}}, {dense: 1}]",
        "mse",
    ),
]


@pytest.mark.parametrize("name,shape,options,layers,loss", DATASETS, ids=[d[0] for d in DATASETS])
def test_dataset_estimate_bounds_what_loading_takes(name, shape, options, layers, loss):
    s = spec.parse(
        f"data: {{source: builtin:{name}, options: {options}}}\nloss: {loss}\n"
        f"model: {{input: {shape}, layers: {layers}}}\n"
    )
    model, lossf = run.build(s)
    tracemalloc.start()
    data.load(s, lossf, model.output_shape)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    estimate = memory.dataset_bytes(s.data.options["samples"], s.model.input, math.prod(model.output_shape))
    assert peak <= estimate <= 8 * peak


def test_human_sizes():
    assert memory.human(512) == "512 bytes"
    assert memory.human(1536) == "1.5 KB"
    assert memory.human(3 * 1024**4) == "3.0 TB"


def test_available_reads_the_machine():
    free, total = memory.available()
    assert 0 < free <= total


@pytest.mark.parametrize(
    "section,fragments",
    [
        ("model: {input: [2], layers: [{dense: 100000000000}, relu, {dense: 2}]}", ["would need about", "parameters"]),
        ("model: {input: [100000000000], layers: [{dense: 2}]}", ["would need about"]),
        ("model: {input: [2], layers: [{lstm: 1e6}]}", ["layers[0] lstm"]),  # a shape error comes first
        ("model: {input: [16, 2], layers: [{lstm: 1e6}, {dense: 2}]}", ["would need about"]),
        ("data: {source: builtin:moons, options: {samples: 1e13}}", ["would need about", "dataset"]),
        ("data: {source: builtin:shapes, options: {samples: 1e9}}", ["would need about", "dataset"]),
    ],
    ids=["units", "input", "lstm-shape", "lstm-units", "samples", "images"],
)
@pytest.mark.parametrize("command", ["summary", "train"])
def test_too_big_for_any_machine_is_refused_in_one_line(section, fragments, command):
    key = section.split(":")[0]
    text = "\n".join(ln for ln in GOOD_SPEC.splitlines() if not ln.startswith(key + ":")) + "\n" + section + "\n"
    if "shapes" in section:
        text = text.replace("model: {input: [2], layers: [{dense: 4}, relu, {dense: 2}]}", "")
        text += "model: {input: [1, 28, 28], layers: [flatten, {dense: 4}]}\n"
    Path("s.yaml").write_text(text)
    before = snapshot(".")
    line = check_refused(invoke([command, "s.yaml"]), 2, fragments, before, snapshot("."))
    if "would need" in fragments[0]:
        assert "available" in line and "in total" in line


def test_a_run_that_fits_the_model_but_not_the_batch_is_refused(monkeypatch):
    """With the machine's memory pretended small, the estimate (not a MemoryError) refuses;
    a batch larger than the data counts as the data's size (no batch is larger)."""
    wide = GOOD_SPEC.replace("{dense: 4}", "{dense: 4096}").replace("samples: 64", "samples: 20000")
    Path("s.yaml").write_text(wide.replace("batch_size: 16", "batch_size: 100000000"))
    monkeypatch.setattr(memory, "available", lambda: (50 * 1024**2, 100 * 1024**2))
    line = check_refused(invoke(["train", "s.yaml"]), 2, ["activations for a batch of 20000"])
    assert "50.0 MB available (100.0 MB in total)" in line
    r = invoke(["summary", "s.yaml"])  # summary builds no batch: it fits
    assert r.exit_code == 0, r.output


def test_an_address_space_limit_counts_as_the_memory_available(monkeypatch):
    """`ulimit -v` caps what this process can map, whatever the machine has free."""
    monkeypatch.setattr(memory, "_address_space_left", lambda: 10 * 1024**2)
    assert memory.available()[0] == 10 * 1024**2
    with pytest.raises(
        memory.ResourceError, match=r"address-space limit \(ulimit -v\) leaves this process about 10.0 MB"
    ):
        memory.require({"parameters": 20 * 1024**2}, "this run")


def test_the_model_check_is_in_the_build_itself(monkeypatch):
    """Every command builds through Model: gradcheck, inspect-gradients, predict too."""
    monkeypatch.setattr(memory, "available", lambda: (100, 2000))
    s = spec.parse(GOOD_SPEC)
    with pytest.raises(memory.ResourceError, match=r"the model would need about .* but this machine has 100 bytes"):
        Model.from_spec(s.model)
