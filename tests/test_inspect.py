"""`dlcli inspect-gradients`: per-layer and per-time-step gradient flow, verdicts, JSON."""

import json
from pathlib import Path

from click.testing import CliRunner

from dlcli.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "sample_configs"

TINY = """\
name: tiny
seed: 0
data: {source: builtin:spirals, options: {classes: 3, samples: 120}, validation_split: 0.2}
model:
  input: [2]
  layers: [{dense: 16}, relu, {dense: 16}, sigmoid, {dense: 3}]
loss: cross_entropy
optimizer: {name: sgd, lr: 0.1}
train: {epochs: 1, batch_size: 16}
"""

RECURRENT = """\
name: {kind}_long
seed: 0
data: {{source: builtin:adding, options: {{length: 200, samples: 64}}, validation_split: 0.0}}
model:
  input: [200, 2]
  layers: [{{{kind}: 32}}, {{dense: 1}}]
loss: mse
optimizer: {{name: adam, lr: 0.001}}
train: {{batch_size: 32}}
"""


def invoke(*args):
    result = CliRunner().invoke(main, ["inspect-gradients", *map(str, args)])
    return result


def as_json(*args):
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_deep_sigmoid_vanishes_and_deep_relu_does_not():
    data = as_json(
        SAMPLES / "deep_sigmoid.yaml", "--compare", SAMPLES / "deep_relu.yaml", "--batches", 1, "--batch-size", 32
    )
    sig, relu = data["compare"]
    first, last = sig["layers"][0]["grad_norm"]["mean"], sig["layers"][-1]["grad_norm"]["mean"]
    assert first < 1e-4 * last
    assert sig["first_last_ratio"] < 1e-4
    assert "vanishing" in [v["kind"] for v in sig["verdicts"]]
    assert all(l["saturated_fraction"] is not None for l in sig["layers"] if l["kind"] == "sigmoid")
    assert relu["first_last_ratio"] > 1e-2
    assert "vanishing" not in [v["kind"] for v in relu["verdicts"]]
    assert all(l["dead_fraction"] is not None for l in relu["layers"] if l["kind"] == "relu")


def test_residual_connections_keep_the_deep_sigmoid_net_healthy():
    data = as_json(
        SAMPLES / "deep_sigmoid.yaml", "--compare", SAMPLES / "deep_residual.yaml", "--batches", 1, "--batch-size", 8
    )
    plain, residual = data["compare"]
    dense = [l for l in residual["layers"] if l["kind"] == "dense"]
    assert len(dense) == len([l for l in plain["layers"] if l["kind"] == "dense"]) == 11  # the same depth
    assert "vanishing" in [v["kind"] for v in plain["verdicts"]]
    assert [v["kind"] for v in residual["verdicts"]] == ["healthy"]
    assert residual["first_last_ratio"] > 1e4 * plain["first_last_ratio"]


def test_json_has_the_documented_fields(write_spec):
    data = as_json(write_spec(TINY), "--batches", 3)
    assert set(data) >= {
        "source",
        "name",
        "batches",
        "batch_size",
        "optimizer",
        "lr",
        "loss",
        "layers",
        "time_steps",
        "first_last_ratio",
        "clip_norm",
        "verdicts",
        "batches_asked",
    }
    assert (
        data["batches"] == 3
        and data["batches_asked"] is None
        and data["clip_norm"] is None
        and data["batch_size"] == 16
        and data["time_steps"] == []
    )
    assert [l["kind"] for l in data["layers"]] == ["dense", "relu", "dense", "sigmoid", "dense"]
    dense = data["layers"][0]
    assert set(dense) >= {
        "index",
        "name",
        "kind",
        "input_grad_norm",
        "grad_norm",
        "update_ratio",
        "params",
        "dead_fraction",
        "saturated_fraction",
    }
    assert set(dense["params"]) == {"weight", "bias"}
    w = dense["params"]["weight"]
    assert w["mean"] > 0 and w["std"] >= 0 and 0 < w["update_ratio"] < 1
    assert 0 <= data["layers"][1]["dead_fraction"] <= 1 and data["layers"][1]["saturated_fraction"] is None
    assert 0 <= data["layers"][3]["saturated_fraction"] <= 1
    for v in data["verdicts"]:
        assert set(v) == {"kind", "layer", "message", "suggestion"} and v["message"] and v["suggestion"]


def test_rnn_decays_through_time_faster_than_lstm(write_spec):
    rnn = as_json(write_spec(RECURRENT.format(kind="rnn"), "rnn.yaml"), "--batches", 2)
    lstm = as_json(write_spec(RECURRENT.format(kind="lstm"), "lstm.yaml"), "--batches", 2)
    (r,), (l,) = rnn["time_steps"], lstm["time_steps"]
    assert len(r["grad_norms"]) == len(l["grad_norms"]) == 200
    assert r["grad_norms"][0] < r["grad_norms"][-1]  # decays toward the first step
    assert r["first_last_ratio"] < 0.1 * l["first_last_ratio"]
    assert r["decades_per_step"] > 1.3 * l["decades_per_step"]
    assert "vanishing_through_time" in [v["kind"] for v in rnn["verdicts"]]


def test_a_healthy_recurrent_net_still_shows_its_loss_through_time(write_spec):
    """So a close call (the LSTM of lstm_adding.yaml: 1.5e-2 against the 1e-2 line) reads as one."""
    short = RECURRENT.format(kind="lstm").replace("length: 200", "length: 10").replace("[200, 2]", "[10, 2]")
    data = as_json(write_spec(short, "short.yaml"), "--batches", 2)
    ((t,), (v,)) = data["time_steps"], data["verdicts"]
    assert v["kind"] == "healthy"
    assert f"through time ||dL/dh_1|| is {t['first_last_ratio']:.1e} x ||dL/dh_T|| in layers[0] lstm" in v["message"]


def test_rnn_vs_lstm_chart_and_verdicts(write_spec):
    a = write_spec(RECURRENT.format(kind="rnn").replace("200", "60"), "rnn.yaml")
    b = write_spec(RECURRENT.format(kind="lstm").replace("200", "60"), "lstm.yaml")
    result = invoke(a, "--compare", b, "--batches", 1)
    assert result.exit_code == 0, result.output
    assert "||dL/dh_t||" in result.output and "rnn_long verdict:" in result.output
    assert "lstm_long verdict:" in result.output and "gates keep gradients through time" in result.output
    # into a pipe: each verdict and suggestion on one line, the panels as wide as their content
    lines = result.output.splitlines()
    assert any(
        ln.startswith("rnn_long verdict: vanishing through time:") and ln.endswith("barely learn") for ln in lines
    )
    assert "  suggestion: use lstm or gru: their gates keep gradients through time" in lines
    assert max(map(len, lines)) < 200
    # one spelling for people: the table's verdict row as the text says it
    assert any(ln.startswith("│ verdict ") and "│ vanishing through time │" in ln for ln in lines), result.output
    assert "vanishing_through_time" not in result.output


def test_from_a_checkpoint_and_a_training_log(write_spec, tmp_path):
    spec = write_spec(TINY)
    log = tmp_path / "m.jsonl"
    r = CliRunner().invoke(
        main, ["train", str(spec), "-q", "-o", str(tmp_path / "t.npz"), "--log", str(log), "--log-grad-norms"]
    )
    assert r.exit_code == 0, r.output
    fresh = as_json(spec, "--batches", 2)
    trained = as_json(tmp_path / "t.npz", "--batches", 2, "--log", log)
    assert trained["name"] == "tiny" and trained["source"].endswith("t.npz")
    assert trained["layers"][0]["params"]["weight"]["mean"] != fresh["layers"][0]["params"]["weight"]["mean"]
    tl = trained["training_log"]
    assert tl["layers"] == ["layers[0] dense", "layers[2] dense", "layers[4] dense"]
    assert len(tl["steps"]) == 6 and all(len(v) == 6 for v in tl["grad_norms"].values())
    shown = invoke("--log", log)
    assert shown.exit_code == 0 and "over training" in shown.output and "layers[2] dense" in shown.output


def test_table_output_and_errors(write_spec, tmp_path):
    spec = write_spec(TINY)
    result = invoke(spec, "--batches", 1)
    assert result.exit_code == 0, result.output
    assert "update/weight" in result.output and "verdict:" in result.output
    assert ": 1 batch of 16," in result.output
    more = invoke(spec, "--batches", 10_000)  # more than the data has: said, not measured quietly
    assert more.exit_code == 0 and "(of 10000 asked: all the training split has)" in more.output
    no_norms = tmp_path / "plain.jsonl"
    no_norms.write_text('{"event": "step", "step": 1, "loss": 1.0}\n')
    bad = invoke("--log", no_norms)
    assert bad.exit_code == 2 and "--log-grad-norms" in bad.output and "Traceback" not in bad.output
    assert invoke().exit_code == 2
    missing = invoke(tmp_path / "nope.yaml")
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1


def test_a_healthy_verdict_says_no_dead_units_only_when_there_are_none():
    """A layer 25 % dead is below the dead-ReLU line, but not free of dead units."""
    from dlcli.inspect_gradients import Inspection, verdicts

    def layer(name, kind, dead, saturated=None):
        norm = {"mean": 1.0}
        return {
            "name": name,
            "kind": kind,
            "params": kind == "dense",
            "grad_norm": norm,
            "dead_fraction": dead,
            "saturated_fraction": saturated,
        }

    def verdict(*layers):
        r = Inspection("x", "x", 1, 8, "sgd", 0.1, 1.0, list(layers), first_last_ratio=1.8)
        (v,) = verdicts(r)
        assert v.kind == "healthy"
        return v.message

    clean = verdict(layer("a", "dense", None), layer("b", "relu", 0.0), layer("c", "dense", None))
    assert clean.endswith("(ratio 1.8); no dead or saturated units")
    some = verdict(layer("a", "dense", None), layer("b", "relu", 0.25), layer("c", "tanh", None, 0.1))
    assert "no dead" not in some
    assert "dead ReLUs at most 25% of a layer (a problem above 50%)" in some
    assert "saturated outputs at most 10% of a layer (a problem above 20%)" in some


def test_advice_on_an_explosion_heeds_clipping_already_set():
    """Norms are measured before clipping, so a clipped run still shows them: the advice
    then is the learning rate, not 'set train.clip_norm'."""
    from dlcli.inspect_gradients import Inspection, verdicts

    rows = [
        {
            "name": n,
            "kind": "dense",
            "params": True,
            "grad_norm": {"mean": g},
            "dead_fraction": None,
            "saturated_fraction": None,
        }
        for n, g in (("a", 1e3), ("b", 1.0))
    ]
    (v,) = verdicts(Inspection("x", "x", 1, 8, "sgd", 0.1, 1.0, rows, first_last_ratio=1e3))
    assert v.kind == "exploding" and v.suggestion.startswith("set train.clip_norm")
    r = Inspection("x", "x", 1, 8, "sgd", 0.1, 1.0, rows, first_last_ratio=1e3, clip_norm=1.0)
    (v,) = verdicts(r)
    assert "set train.clip_norm" not in v.suggestion and "train.clip_norm 1 already caps" in v.suggestion


def test_a_log_of_several_runs_shows_the_last_one(write_spec, tmp_path):
    """A log many runs append to: the map is the last run's, never two models' rows on one
    scale, and says which it is."""
    log = tmp_path / "m.jsonl"
    other = TINY.replace("name: tiny", "name: other").replace("{dense: 16}, relu, {dense: 16}", "{dense: 8}")
    for text, name in ((TINY, "a.yaml"), (other, "b.yaml")):
        r = CliRunner().invoke(
            main,
            [
                "train",
                str(write_spec(text, name)),
                "-q",
                "-o",
                str(tmp_path / f"{name}.npz"),
                "--log",
                str(log),
                "--log-grad-norms",
            ],
        )
        assert r.exit_code == 0, r.output
    data = as_json(tmp_path / "b.yaml.npz", "--batches", 1, "--log", log)["training_log"]
    assert data["runs"] == 2 and data["layers"] == ["layers[0] dense", "layers[2] dense"]  # the second model's
    assert data["steps"] == list(range(1, 7))
    shown = invoke("--log", log)
    assert shown.exit_code == 0 and "the last of 2 runs in the log" in " ".join(shown.output.split())


def test_compare_tells_apart_two_sides_of_the_same_name(write_spec, tmp_path):
    spec = write_spec(TINY)
    assert CliRunner().invoke(main, ["train", str(spec), "-q", "-o", str(tmp_path / "t.npz")]).exit_code == 0
    r = invoke(tmp_path / "t.npz", "--compare", spec, "--batches", 1)
    assert r.exit_code == 0, r.output
    assert "tiny (t.npz) verdict:" in r.output and f"tiny ({spec.name}) verdict:" in r.output


def _strict_json(text):
    """json.loads that refuses the bare NaN/Infinity Python writes (JSON has neither)."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_an_input_that_overflows_float32_is_not_finite_not_exploding_and_the_json_stays_json(tmp_path):
    """x = 3.3e38 (finite float32): every figure is NaN. The verdict said "exploding: set
    clip_norm", NaN ratios read as inf, NumPy's overflow warnings went to stderr and the
    JSON had bare NaN (which JSON.parse refuses)."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "big.npz", x=np.full((64, 3), 3.3e38, np.float32), y=rng.integers(0, 2, 64))
    p = tmp_path / "big.yaml"
    p.write_text(f"data: {tmp_path / 'big.npz'}\nmodel: {{input: [3], layers: [{{dense: 8}}, relu, {{dense: 2}}]}}\n")
    r = CliRunner().invoke(main, ["inspect-gradients", str(p), "--json", "--batch-size", "1000"])
    assert r.exit_code == 0 and r.stderr == "", r.output
    d = _strict_json(r.stdout)
    assert d["first_last_ratio"] == "nan" and [v["kind"] for v in d["verdicts"]] == ["not finite"]
    assert [l["dead_fraction"] for l in d["layers"] if l["kind"] == "relu"] == [None]  # not "38 % dead": unknown
    assert d["batch_size"] == 51  # the training split's rows (validation takes 20 %), not the 1000 asked for
    # a healthy model: a zero-initialised bias's update ratio is infinite, written as "inf"
    np.savez(tmp_path / "ok.npz", x=rng.standard_normal((64, 3)).astype(np.float32), y=rng.integers(0, 2, 64))
    p.write_text(f"data: {tmp_path / 'ok.npz'}\nmodel: {{input: [3], layers: [{{dense: 8}}, relu, {{dense: 2}}]}}\n")
    d = _strict_json(CliRunner().invoke(main, ["inspect-gradients", str(p), "--json"]).stdout)
    assert d["layers"][0]["params"]["bias"]["update_ratio"] == "inf"


def test_layers_named_in_the_spec_are_shown_by_their_names(write_spec):
    """A tester's layers h and side showed only as 'layers[2] dense' in tables and JSON."""
    p = write_spec(
        TINY.replace(
            "[{dense: 16}, relu, {dense: 16}, sigmoid, {dense: 3}]",
            "[{dense: 16, name: h}, relu, {dense: 16}, sigmoid, {dense: 3, name: side}]",
        )
    )
    data = as_json(p, "--batches", 1)
    assert [l["label"] for l in data["layers"]] == ["h", None, None, None, "side"]
    out = invoke(p, "--batches", 1).output
    assert "dense (h)" in out and "dense (side)" in out
