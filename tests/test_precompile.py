"""The compile helper of a cold run (dlcli/precompile.py): its manifest matches what the
sample configs call, the split between run and helper, and the two processes' agreement
on a real cold run."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dlcli import precompile

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(str(p) for p in (ROOT / "sample_configs").glob("*.yaml"))


def without_seconds(manifest):
    return {key: [e[:3] for e in entries] for key, entries in manifest.items()}


@pytest.mark.slow
def test_manifest_matches_a_fresh_recording():
    """Every kernel the sample configs call from Python, with its argument types, by the
    bucket that calls it first; rerecord with `python -m dlcli.precompile --record`."""
    shipped = json.loads(precompile.MANIFEST.read_text())
    recorded = precompile.record(SAMPLES)
    assert without_seconds(recorded) == without_seconds(shipped), (
        "dlcli/kernels/signatures.json is stale: NUMBA_CACHE_DIR=$(mktemp -d) "
        "python -m dlcli.precompile --record > dlcli/kernels/signatures.json"
    )
    assert all(e[3] > 0 for entries in shipped.values() for e in entries)


def test_types_survive_json():
    from numba.core import types

    for t in [
        types.Array(types.float32, 3, "C"),
        types.Array(types.int64, 1, "A", readonly=True),
        types.boolean,
        types.int64,
        types.float64,
        types.UniTuple(types.int64, 2),
        types.Tuple([types.int64, types.float32]),
        types.none,
    ]:
        assert precompile.decode(json.loads(json.dumps(precompile.encode(t)))) == t
    with pytest.raises(TypeError):
        precompile.encode(types.unicode_type)


def test_the_helper_skips_claimed_kernels_and_survives_stale_ones():
    """What it says for each entry; a kernel renamed since the manifest was recorded, or
    given types it does not take, is left to the run (it compiles what it needs)."""
    said = []
    stale = [["dense", "no_such_kernel", []], ["dense", "column_sums", ["bool"]], ["dense", "bias_act", []]]
    precompile.compile_entries(stale, claimed={2}, say=said.append)
    assert said == ["started 0", "done 0", "started 1", "done 1"]


def test_no_helper_without_a_core_or_memory_to_spare_a_cold_cache_or_when_turned_off(monkeypatch):
    from dlcli import memory, run, runtime, spec

    s = spec.parse(COLD_SPEC, "cold.yaml")
    model, _ = run.build(s)
    started = []
    monkeypatch.setattr(precompile, "Helper", lambda entries: started.append(entries) or "helper")
    monkeypatch.setattr(precompile, "cached", lambda entry: False)  # as with an empty cache
    monkeypatch.setattr(runtime, "uncompiled_kernels", lambda model: ["dense"])
    monkeypatch.setenv("DLCLI_PRECOMPILE", "1")
    monkeypatch.setattr(runtime, "threads", lambda: 2)
    monkeypatch.setattr(memory, "available", lambda: (8 << 30, 16 << 30))
    assert precompile.start(s, model) == "helper" and started[0]
    monkeypatch.setattr(memory, "available", lambda: (300 << 20, 16 << 30))
    assert precompile.start(s, model) is None
    monkeypatch.setattr(memory, "available", lambda: (8 << 30, 16 << 30))
    monkeypatch.setattr(runtime, "threads", lambda: 1)
    assert precompile.start(s, model) is None
    monkeypatch.setattr(runtime, "threads", lambda: 2)
    monkeypatch.setenv("DLCLI_PRECOMPILE", "0")
    assert precompile.start(s, model) is None
    monkeypatch.setenv("DLCLI_PRECOMPILE", "1")
    monkeypatch.setattr(runtime, "uncompiled_kernels", lambda model: [])  # every kernel file there
    assert precompile.start(s, model) is None
    assert precompile.start(s, model, compiling=["dense"]) == "helper"  # the caller's own check
    assert precompile.start(s, model, gradients_only=True, dtype="float64") == "helper"  # float64: the index decides
    assert len(started) == 3


def test_the_helper_never_imports_a_dlcli_folder_in_the_working_directory(tmp_path):
    """A run started in someone else's project folder: its `dlcli/` must not run."""
    (tmp_path / "dlcli").mkdir()
    for name in ("__init__.py", "precompile.py"):
        (tmp_path / "dlcli" / name).write_text("open('ran', 'w').write('code from the folder ran')\n")
    out = subprocess.run(precompile.HELPER, cwd=tmp_path, input="[]\n", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "ran").exists()


class Layer:
    def __init__(self, kind):
        self.kind = kind


class Model:
    def __init__(self, *kinds):
        self.trained = [Layer(k) for k in kinds]


def e(name, seconds):
    return ["m", name, [], seconds]


MANIFEST = {
    "forward:a": [e("fa", 3.0)],
    "forward:b": [e("fb", 1.0), e("shared", 0.5)],
    "loss:l": [e("loss", 0.5)],
    "backward:b": [e("bb", 1.0), e("shared", 0.5)],
    "backward:a": [e("ba", 2.0)],
    "update:o": [e("up", 0.5)],
    "clip": [e("clip", 0.2)],
    "evaluate:a": [e("fa", 3.0), e("ea", 1.0)],
}


@pytest.fixture
def manifest(tmp_path, monkeypatch):
    path = tmp_path / "signatures.json"
    path.write_text(json.dumps(MANIFEST))
    monkeypatch.setattr(precompile, "MANIFEST", path)


def test_plan_gives_the_helper_the_step_end_costliest_first(manifest):
    names = [entry[1] for entry in precompile.plan(Model("a", "b"), "l", "o")]
    # the run calls fa 3, fb 1, shared .5, loss .5, bb 1, ba 2, up .5 (8.5 s): keeping the
    # first three or four both end at 5 s (the helper starting in 1 s); of the two the helper
    # takes less, bb, ba and up, costliest first; then validation's kernel the step lacks
    assert names == ["ba", "bb", "up", "ea"]
    assert [entry[1] for entry in precompile.plan(Model("a", "b"), "l", "o", clip=True)][-2:] == ["clip", "ea"]
    assert all(len(entry) == 3 for entry in precompile.plan(Model("a"), "l", "o"))


def test_a_gradient_check_plans_float64_forward_and_backward(manifest):
    names = [entry[1] for entry in precompile.plan(Model("a", "b"), "l", "o", gradients_only=True, dtype="float64")]
    assert "up" not in names and "ea" not in names  # no update, no validation
    assert set(names) < {"fa", "fb", "shared", "loss", "bb", "ba"}
    f32 = ["array", "float32", 2, "C", True, True]
    MANIFEST["forward:c"] = [e("big", 9.0)]  # the run compiles it: the helper takes what follows
    MANIFEST["backward:c"] = [["m", "bc", [f32, "float32", "int64"], 0.5]]
    try:
        precompile.MANIFEST.write_text(json.dumps(MANIFEST))
        (entry,) = [
            e for e in precompile.plan(Model("c"), "l", "o", gradients_only=True, dtype="float64") if e[1] == "bc"
        ]
        assert entry[2] == [["array", "float64", 2, "C", True, True], "float64", "int64"]
    finally:
        del MANIFEST["forward:c"], MANIFEST["backward:c"]


def test_the_cache_check_reads_numbas_index():
    from dlcli.kernels import dense

    dense.column_sums(np.ones((3, 4), np.float32), np.zeros(4, np.float32))  # compiled or loaded: in the cache
    sig = [["array", "float32", 2, "C", True, True], ["array", "float32", 1, "C", True, True]]
    assert precompile.cached(["dense", "column_sums", sig])
    assert not precompile.cached(["dense", "column_sums", [sig[0], ["array", "float32", 3, "C", True, True]]])
    assert not precompile.cached(["dense", "no_such_kernel", sig])
    names = [entry[1] for entry in precompile.plan(Model("a"), "l", "o", cached=lambda e: e[1] == "ba")]
    assert "ba" not in names


def test_ranks_of_a_node_share_the_kernels_by_their_seconds(manifest):
    shares = [[entry[1] for entry in precompile.share(Model("a", "b"), "l", "o", False, i, 2)] for i in range(2)]
    # costliest first, each to the share with the fewest seconds so far (the first of equals)
    assert shares == [["fa", "bb", "shared", "up"], ["ba", "fb", "ea", "loss"]]
    assert [entry[1] for entry in precompile.share(Model("a", "b"), "l", "o", True, 0, 1)] == [
        "fa",
        "ba",
        "fb",
        "bb",
        "ea",
        "shared",
        "loss",
        "up",
        "clip",
    ]


COLD_RUN = """
import json, sys
import dlcli
import numpy as np
from dlcli import optim, precompile, run, runtime, spec
from dlcli.train import train_step

s = spec.parse(sys.argv[1], "cold.yaml")
model, loss = run.build(s)
runtime.set_threads(2)
helper = precompile.start(s, model)  # an empty cache: as run.train starts it
opt = optim.for_model(s.optimizer, model)
x = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
y = np.arange(16) % 3
first = train_step(model, loss, opt, x, y, 0.1)[0]
patched = [d for d in helper.patched if "compile" in vars(d)]
helper.process.wait(timeout=120)
with helper.cond:  # its output read to the end
    helper.cond.wait_for(lambda: helper.ended, 10)
state = dict(helper.state)
helper.stop()
left = [d for d in patched if "compile" in vars(d)]

# stopped while it compiles: it ends soon and leaves no half-written file in the cache
import time
from pathlib import Path
manifest = json.loads(precompile.MANIFEST.read_text())
slow = precompile.Helper([e[:3] for kind in ("lstm", "gru", "rnn") for e in manifest["forward:" + kind]
                          if e[1] == kind + "_seq_forward"])  # ~5 s each
while not slow.state:
    time.sleep(0.05)
t = time.perf_counter()
slow.stop()  # waits for it to end
code = slow.process.poll()
print(json.dumps({"state": state, "patched": len(patched), "left": len(left), "loss": first,
                  "entries": len(precompile.plan(model, s.loss, s.optimizer.name)),
                  "stopped_in": time.perf_counter() - t, "code": code, "slow_state": slow.state,
                  "temporary": [p.name for p in Path(sys.argv[2]).rglob("*.tmp.*")]}))
"""

COLD_SPEC = textwrap.dedent("""
    data: {source: "builtin:spirals"}
    model: {input: [8], layers: [{dense: 16}, tanh, {dense: 16}, sigmoid, {dense: 3}]}
    loss: cross_entropy
    optimizer: {name: adam, lr: 0.01}
""")


@pytest.mark.slow
def test_a_cold_run_and_its_helper_share_the_compiling(tmp_path):
    """From an empty cache: the helper compiles its kernels or leaves them to the run when
    the run claims them first (never both), the run's step is right, and stop() gives
    Numba's dispatchers back their own compile; a helper stopped mid-compile ends at once
    and leaves no temporary file in the cache."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), DLCLI_PRECOMPILE="1")
    out = subprocess.run(
        [sys.executable, "-c", COLD_RUN, COLD_SPEC, env["NUMBA_CACHE_DIR"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["entries"] > 0 and result["patched"] > 0
    states = result["state"].values()
    assert set(states) <= {"done", "claimed"}, result
    assert len(result["state"]) == result["entries"]  # each one: done by the helper or claimed by the run
    assert "done" in states  # the helper did compile some
    assert result["left"] == 0
    assert np.isfinite(result["loss"])
    # stopped in the first of three ~5 s compiles: the others never start, and the first is
    # "done" only if its compile ended before the stop took hold (a long LLVM call under load)
    assert result["slow_state"] in ({"0": "started"}, {"0": "done"}), result["slow_state"]
    assert result["code"] is not None and result["stopped_in"] < 10 and result["temporary"] == []
