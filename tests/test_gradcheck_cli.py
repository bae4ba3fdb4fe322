"""`dlcli gradcheck`: the command (through CliRunner) and the helper every layer test uses."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from dlcli import gradcheck as gc
from dlcli.cli import main
from dlcli.layers import LAYERS

SPEC = """\
name: tiny
seed: 0
data: {{source: builtin:spirals, options: {{classes: 3, samples: 60}}}}
model:
  input: [2]
  layers:
    - dense: 6
    - relu
    - dropout: 0.3
    - dense: 5
    - tanh
    - dense: {out}
loss: {loss}
"""


def run(*args):
    return CliRunner().invoke(main, ["gradcheck", *map(str, args)])


def rows(result):
    return json.loads(result.output)["checks"]


@pytest.mark.parametrize("loss,out", [("cross_entropy", 3), ("mse", 2), ("binary_cross_entropy", 1)])
def test_spec_passes_with_every_loss(write_spec, loss, out):
    result = run(write_spec(SPEC.format(loss=loss, out=out)), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["passed"] and data["summary"]["FAIL"] == 0
    checked = {(r["graph"].split(" (")[1], r["layer_index"], r["tensor"]) for r in data["checks"]}
    # every parameter and every layer's input, the loss, as written and fused
    for graph in ("as written)", "fused dense+relu)"):
        assert (graph, 0, "weight") in checked and (graph, 0, "bias") in checked
        assert (graph, 2, "input") in checked  # dropout, with its mask pinned
        assert (graph, 5, "weight") in checked
        assert (graph, None, f"{loss} input") in checked
    assert all(r["status"] in ("pass", "kink") for r in data["checks"])


def test_table_and_summary_line(write_spec):
    result = run(write_spec(SPEC.format(loss="cross_entropy", out=3)), "--samples", 5)
    assert result.exit_code == 0, result.output
    assert "max rel err" in result.output and "fused dense+relu" in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("all gradients match") and "0 FAIL" in last


def test_injected_bug_fails_that_layer_and_tensor(write_spec, monkeypatch):
    from dlcli.layers.dense import Dense

    original = Dense.backward

    def broken(self, dy, need_dx=True):
        dx = original(self, dy, need_dx)
        if self.name == "layers[3] dense":
            self.grads["bias"] *= 1.1  # a 10% error in one tensor of one layer
        return dx

    monkeypatch.setattr(Dense, "backward", broken)
    path = write_spec(SPEC.format(loss="cross_entropy", out=3))
    result = run(path, "--json")
    assert result.exit_code == 1
    failed = {(r["layer_index"], r["layer_type"], r["tensor"]) for r in rows(result) if r["status"] == "FAIL"}
    assert failed == {(3, "dense", "bias")}
    table = run(path)
    assert table.exit_code == 1
    assert "FAIL" in table.output and "gradient check FAILED" in table.output


def test_kink_is_marked_not_failed():
    layer, _ = gc.example_layer("relu")
    x = np.random.default_rng(0).standard_normal((4, 5))
    x[0, :3] = 0.0  # exactly on ReLU's kink
    x[1, 0] = 3e-7  # within eps of it
    results = gc.check_layer(layer, x)
    (r,) = results
    assert r.status == "kink" and r.kinks == 4
    gc.assert_gradients_ok(results)  # kinks do not fail


def test_wrong_gradient_on_smooth_function_is_not_excused_as_kink():
    layer, _ = gc.example_layer("tanh")
    x = np.random.default_rng(0).standard_normal((4, 5))
    original = layer.backward
    layer.backward = lambda dy, need_dx=True: original(dy, need_dx) * 1.01
    (r,) = gc.check_layer(layer, x)
    assert r.status == "FAIL" and r.kinks == 0
    with pytest.raises(AssertionError, match="tanh input"):
        gc.assert_gradients_ok([r])


def test_layer_option_checks_one_type(write_spec):
    result = run("--layer", "dense", "--layer", "sigmoid", "--json")
    assert result.exit_code == 0, result.output
    got = {(r["layer_type"], r["tensor"]) for r in rows(result)}
    assert got == {("dense", "weight"), ("dense", "bias"), ("dense", "input"), ("sigmoid", "input")}


def test_all_checks_every_layer_type_and_each_has_an_example():
    for kind, cls in LAYERS.items():
        ex = getattr(cls, "EXAMPLE", None)  # `Layer` has none: each type (or its family) states one
        assert isinstance(ex, dict) and set(ex) <= {"options", "input"}, kind
        assert isinstance(ex.get("options", {}), dict), kind
        shapes = ex["input"] if cls.MERGE else [ex["input"]]  # a merge layer has one shape per input
        assert shapes and all(
            isinstance(s, (tuple, list)) and s and all(isinstance(d, int) and d > 0 for d in s) for s in shapes
        ), kind
    result = run("--all", "--json", "--samples", 10)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {r["layer_type"] for r in data["checks"]} == set(LAYERS)
    assert all(r["status"] != "FAIL" for r in data["checks"])
    for r in data["checks"]:
        assert set(r) >= {
            "graph",
            "layer_index",
            "layer_type",
            "tensor",
            "checked",
            "max_abs_error",
            "max_rel_error",
            "kinks",
            "status",
            "worst_index",
        }


def test_an_option_missing_its_value_points_at_the_commands_help():
    """Click gives such an error no context; the hint names the command from the arguments."""
    from dlcli.cli import main as group

    for args, where in ((["train", "--resume"], "dlcli train"), (["gradcheck", "--layer"], "dlcli gradcheck")):
        result = CliRunner().invoke(group, args, standalone_mode=True)
        assert result.exit_code == 2 and f"(see '{where} -h')" in result.output, result.output


def test_bad_usage_is_one_line():
    result = run("--layer", "nope")
    assert result.exit_code == 2
    assert "unknown layer type 'nope'" in result.output and "Traceback" not in result.output
    assert run().exit_code == 2  # neither a spec nor --layer/--all


def test_tables_into_a_pipe_keep_every_cell_whole():
    """Not a terminal: no 80-column limit, so no cell is cropped ("global_a…") or folded."""
    result = run("--layer", "global_avgpool", "--layer", "embedding")
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert "│ global_avgpool │" in result.output and "input (token ids: not differentiable)" in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("all gradients match:") and last.endswith("1 not differentiable")


def test_an_80_column_terminal_keeps_every_verdict(monkeypatch):
    """Cells may be cropped to fit, but never a status, and the summary line breaks
    between whole pieces: "FAIL" keeps its count."""
    from rich.console import Console

    from dlcli import cli

    monkeypatch.setattr(cli, "stdout_console", lambda: Console(width=80, color_system=None))
    result = run("--layer", "dense", "--layer", "global_avgpool", "--layer", "embedding", "--rtol", 0, "--atol", 0)
    assert result.exit_code == 1, result.output
    lines = result.output.rstrip("\n").splitlines()
    assert max(map(len, lines)) <= 80 and "│ global_avgpool │" in result.output
    statuses = [ln.split("│")[6].strip() for ln in lines if ln.startswith("│") and ln.split("│")[3].strip().isdigit()]
    assert statuses and all(s.startswith(("FAIL", "pass", "kink", "n/a")) for s in statuses), statuses
    summary = lines[lines.index([ln for ln in lines if ln.startswith("gradient check FAILED")][0]) :]
    assert len(summary) == 2 and re.search(r"\d+ pass, \d+ kink, \d+ FAIL, 1 not differentiable$", summary[1])


def test_a_report_where_every_tensor_hit_kinks_does_not_say_they_match():
    from dlcli.gradcheck import Report, Section, TensorCheck

    kinked = TensorCheck("layers[0] tanh", "input", 20, 0.0, 0.0, 20, "kink")
    report = Report([Section("tanh", [kinked], kind="tanh")], 1e-3, 1e-5, 1e-8, None, 4, 0, per_kind=True)
    line = report.summary_line()
    assert report.passed and "all gradients match" not in line
    assert line.startswith("no tensor passed: every one hit kinks (a smaller --eps may help): 1 tensor (20 entries)")
    fine = TensorCheck("layers[0] tanh", "input", 20, 1e-10, 1e-9, 0, "pass")
    assert (
        Report([Section("t", [fine, kinked])], 1e-6, 1e-5, 1e-8, None, 4, 0)
        .summary_line()
        .startswith("all gradients match: 2 tensors")
    )


def test_a_tensor_with_only_kinks_reports_no_error_figures(write_spec):
    """dense -> batchnorm -> relu at batch 1: batchnorm's output is 0 for one sample, so
    every entry of the relu's input sits on its kink. Its largest errors read 0.0 (as if
    exact); nothing was compared, so they are null."""
    p = write_spec("data: builtin:spirals\nmodel: {input: [2], layers: [{dense: 4}, batchnorm, relu, {dense: 3}]}\n")
    result = CliRunner().invoke(main, ["gradcheck", str(p), "--batch-size", "1", "--json"])
    assert result.exit_code == 0, result.output
    only_kinks = [
        r for r in json.loads(result.output)["checks"] if r["status"] == "kink" and r["kinks"] == r["checked"]
    ]
    assert only_kinks and all(r["max_abs_error"] is None and r["max_rel_error"] is None for r in only_kinks)


def test_layers_named_in_the_spec_are_shown_by_their_names(write_spec):
    """A tester's named layers (h, side) showed only as their index and type."""
    p = write_spec(SPEC.format(loss="cross_entropy", out=3).replace("    - dense: 5\n", "    - {dense: 5, name: h}\n"))
    data = json.loads(run(p, "--json", "--samples", 5).output)
    labels = {(r["layer_index"], r["label"]) for r in data["checks"] if r["layer_index"] is not None}
    assert (3, "h") in labels and (0, None) in labels
    assert "dense (h)" in run(p, "--samples", 5).output
