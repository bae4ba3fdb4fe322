"""`make bench`: every reference model of the benchmark scripts in one table, bounded.

For each model (mlp and sigm10, the 10-layer sigmoid MLP, from bench_mlp; cnn from
bench_cnn; rnn, lstm, gru from bench_rnn) and
1 and 2 threads: dlcli's and PyTorch's training samples/s (each the scripts' own child
process, so the models are theirs), the ratio, and each child's peak RSS; then, per
model, the cold (empty NUMBA_CACHE_DIR) and warm time to the first training step, and
what each kernel family (module of dlcli/kernels) cost to compile in the cold run; last,
training samples/s from a memory-mapped .npy against the same data in memory.

    python benchmarks/bench_table.py [--runs 1] [--rounds 2] [--seconds 1] [--threads 1,2]

With --runs N the whole table is measured N times and each figure is printed as the
min-max over the runs.

Numbers from a shared machine vary: run it more than once and compare ranges.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HERE, span, torch_available  # noqa: E402

MODELS = {  # name: (script, extra arguments of its child)
    "mlp": ("bench_mlp.py", []),
    "sigm10": ("bench_mlp.py", ["--model", "sigmoid10"]),
    "cnn": ("bench_cnn.py", []),
    "rnn": ("bench_rnn.py", ["--cells", "rnn"]),
    "lstm": ("bench_rnn.py", ["--cells", "lstm"]),
    "gru": ("bench_rnn.py", ["--cells", "gru"]),
}


def child(args, env=None, timeout=600):
    """(the JSON a child prints last, its peak RSS in MB): ru_maxrss of that child alone."""
    proc = subprocess.Popen(
        [sys.executable, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{args[0]} timed out")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read(), proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024


FIRST_STEP = """
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {here!r})
import dlcli
import numba.core.event as event
import numpy as np
import {module} as bench
from dlcli import optim, precompile, run, spec
from dlcli.train import train_step

with event.install_recorder("numba:compile") as recorder:
    s = spec.parse({text}, "first_step.yaml")
    model, loss = run.build(s)
    helper = precompile.start(s, model) if {helper} else None  # as run.train
    opt = optim.for_model(s.optimizer, model)
    n = s.train.batch_size
    x = np.zeros((n, *s.model.input), np.float32)
    train_step(model, loss, opt, x, np.zeros(n, np.int64), 0.01)
seconds = time.perf_counter() - t0
if helper is not None:
    helper.stop()
families, open_ = {{}}, []
for stamp, ev in recorder.buffer:  # outermost compilations only: nested ones are inside them
    if ev.is_start:
        open_.append(stamp)
    else:
        began = open_.pop()
        if not open_:
            module = ev.data["dispatcher"].py_func.__module__.rsplit(".", 1)[-1]
            families[module] = families.get(module, 0.0) + stamp - began
print(json.dumps({{"seconds": seconds, "families": families}}))
"""


def first_step(name, cache_dir, helper=True):
    """Seconds to the end of the first step from interpreter start, with dlcli train's
    compile helper (dlcli/precompile.py) or without it (one process compiles all)."""
    script, extra = MODELS[name]
    module = script[:-3]
    text = f"bench.spec_text({extra[1]!r})" if extra else "bench.SPEC"  # bench_mlp and bench_rnn have one
    code = FIRST_STEP.format(here=HERE, module=module, text=text, helper=helper)
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    return child(["-c", code], env=env)


MAPPED = """
import json, sys, time
import dlcli
from dlcli import run, spec
s = spec.parse(open(sys.argv[1]).read(), sys.argv[1])
run.train(s, output=sys.argv[2] + "-warm.npz")  # kernels compiled or loaded, files in the page cache
t0 = time.perf_counter()
result = run.train(s, output=sys.argv[2] + ".npz")[0]
print(json.dumps(result.epochs_done * int(sys.argv[3]) / (time.perf_counter() - t0)))
"""

MAPPED_SPEC = """
seed: 0
data: {{source: {source}, {targets}validation_split: 0.1, standardize: true}}
model: {{input: [784], layers: [{{dense: 512}}, relu, {{dense: 256}}, relu, {{dense: 10}}]}}
loss: cross_entropy
optimizer: {{name: sgd, lr: 0.01, momentum: 0.9}}
train: {{epochs: 2, batch_size: 128}}
"""


def mapped_vs_memory(samples=8192):
    """Training samples/s (2 epochs of the reference MLP, whole run.train) from a
    memory-mapped .npy and from the same data in memory (a compressed .npz)."""
    import numpy as np

    folder = tempfile.mkdtemp(prefix="dlcli-mapped-")
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((samples, 784), dtype=np.float32)
        y = rng.integers(0, 10, samples)
        np.save(os.path.join(folder, "x.npy"), x)
        np.save(os.path.join(folder, "y.npy"), y)
        np.savez_compressed(os.path.join(folder, "packed.npz"), x=x, y=y)
        rates = {}
        for name, source, targets in (("mapped", "x.npy", "targets: y.npy, "), ("memory", "packed.npz", "")):
            path = os.path.join(folder, f"{name}.yaml")
            with open(path, "w") as f:
                f.write(MAPPED_SPEC.format(source=source, targets=targets))
            trained = 2 * (samples - round(samples * 0.1))
            rates[name], rss = child(["-c", MAPPED, path, os.path.join(folder, name), trained // 2])
            rates[name + "_rss"] = rss
        return rates
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def speed_rows(names, threads, rounds, seconds, have_torch):
    """{(model, threads): {"dlcli": (rate, rss), "torch": (rate, rss)}}, best of the rounds."""
    rows = {}
    for name in names:
        script, extra = MODELS[name]
        for t in threads:
            best = {"dlcli": (0.0, 0.0), "torch": (0.0, 0.0)}
            for _ in range(rounds):
                for who in ("dlcli", "torch") if have_torch else ("dlcli",):
                    args = [os.path.join(HERE, script), "--child", who, *extra]
                    rate, rss = child([*args, "--threads", t, "--seconds", seconds])
                    if rate > best[who][0]:
                        best[who] = (rate, rss)
            rows[name, t] = best
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    # Two rounds, dlcli and PyTorch alternating, each engine's best kept: on a shared
    # machine one child caught by a burst of other work no longer decides a ratio alone.
    ap.add_argument("--rounds", type=int, default=2, help="rounds per figure (best kept)")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per child")
    ap.add_argument("--runs", type=int, default=1, help="whole runs of the table; ranges are min-max over them")
    ap.add_argument("--models", default=",".join(MODELS))
    a = ap.parse_args()
    names = a.models.split(",")
    threads = list(map(int, a.threads.split(",")))
    have_torch = torch_available()
    started = time.perf_counter()
    runs, firsts = [], {name: [] for name in names}
    for _ in range(a.runs):
        runs.append(speed_rows(names, threads, a.rounds, a.seconds, have_torch))
        for name in names:
            cache, alone = tempfile.mkdtemp(prefix="dlcli-numba-cache-"), tempfile.mkdtemp(prefix="dlcli-numba-cache-")
            try:
                firsts[name].append(
                    (first_step(name, cache), first_step(name, cache), first_step(name, alone, helper=False))
                )
            finally:
                shutil.rmtree(cache, ignore_errors=True)
                shutil.rmtree(alone, ignore_errors=True)
    print(
        f"training samples/s, best of {a.rounds} round(s) of {a.seconds:g} s per run, min-max over {a.runs} run(s); "
        "peak RSS of each child (largest)"
    )
    print(f"{'model':<6} {'thr':>3} {'dlcli/s':>15} {'PyTorch/s':>15} {'ratio':>11} {'dlcli MB':>9} {'PyTorch MB':>10}")
    for name in names:
        for t in threads:
            ours = [r[name, t]["dlcli"][0] for r in runs]
            our_rss = max(r[name, t]["dlcli"][1] for r in runs)
            line = f"{name:<6} {t:>3} {span(ours):>15}"
            if have_torch:
                theirs = [r[name, t]["torch"][0] for r in runs]
                ratios = [o / p for o, p in zip(ours, theirs)]
                their_rss = max(r[name, t]["torch"][1] for r in runs)
                line += f" {span(theirs):>15} {span(ratios, '{:.2f}'):>11} {our_rss:>9.0f} {their_rss:>10.0f}"
            else:
                line += f" {'-':>15} {'-':>11} {our_rss:>9.0f} {'-':>10}"
            print(line)
    if not have_torch:
        print("PyTorch not installed: its columns are skipped (pip install torch, CPU build)")
    if len(threads) > 1:
        lo, hi = threads[0], threads[-1]
        gains = ", ".join(
            f"{name} {span([r[name, hi]['dlcli'][0] / r[name, lo]['dlcli'][0] for r in runs], '{:.2f}')}x"
            for name in names
        )
        print(f"dlcli from {lo} to {hi} threads: {gains}")
    print()
    print("time to the first training step (interpreter start to end of step), min-max over the runs: cold")
    print("(empty kernel cache) as dlcli train runs it, with its compile helper; cold with one process")
    print("compiling all (no helper), and compile seconds per kernel family there in the last run; warm")
    for name in names:
        triples = firsts[name]  # per run: (cold, warm, cold without helper), each (result, peak RSS)
        cold = [c[0]["seconds"] for c, _, _ in triples]
        alone = [a[0]["seconds"] for _, _, a in triples]
        warm = [w[0]["seconds"] for _, w, _ in triples]
        cold_rss = max(c[1] for c, _, _ in triples)
        families = triples[-1][2][0]["families"]
        listed = ", ".join(f"{k} {v:.1f}" for k, v in sorted(families.items(), key=lambda kv: -kv[1]))
        print(
            f"{name:<6} cold {span(cold, '{:.1f}'):>9} s (peak {cold_rss:.0f} MB), one process {span(alone, '{:.1f}')} s "
            f"({listed}); warm {span(warm, '{:.2f}')} s"
        )
    r = mapped_vs_memory()
    print(
        f"\nreference MLP, 8192 samples, 2 epochs: memory-mapped .npy {r['mapped']:,.0f} samples/s "
        f"(peak {r['mapped_rss']:.0f} MB), in memory {r['memory']:,.0f} samples/s (peak {r['memory_rss']:.0f} MB), "
        f"ratio {r['mapped'] / r['memory']:.2f}"
    )
    print(f"\nwhole table: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
