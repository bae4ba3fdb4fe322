"""Reference MLP: 784-512-256-10 ReLU, batch 128, SGD with momentum, random data.

Prints dlcli's training samples/s beside PyTorch's CPU figure with the same thread count
(when PyTorch is installed), the ratio, the GEMM ceiling (NumPy/BLAS doing just the
step's matrix products, on OpenBLAS's threads and in dlcli's thread-count-independent
blocks), and dlcli's cold and warm time to the first training step.

    python benchmarks/bench_mlp.py [--threads N] [--rounds 3] [--seconds 2]
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
from common import best_rate, ratio_line, run_child, torch_available  # noqa: E402

# name: (layer sizes, hidden activation). "sigmoid10" is deep_sigmoid.yaml's shape (10
# hidden layers of 256 sigmoid units) on MNIST-sized input: activation passes, not GEMMs.
MODELS = {"relu": ((784, 512, 256, 10), "relu"), "sigmoid10": ((784,) + (256,) * 10 + (10,), "sigmoid")}
SIZES = MODELS["relu"][0]
BATCH = 128


def train_flops(sizes):
    """Forward multiply-adds x2, backward twice that (the first layer's input gradient is skipped)."""
    fwd = sum(2 * a * b for a, b in zip(sizes, sizes[1:]))
    return 3 * fwd - 2 * sizes[0] * sizes[1]


TRAIN_FLOPS = train_flops(SIZES)


def spec_text(model="relu"):
    sizes, act = MODELS[model]
    layers = ", ".join(f"{{dense: {n}}}, {act}" for n in sizes[1:-1]) + f", {{dense: {sizes[-1]}}}"
    return f"""
name: bench_mlp_{model}
seed: 0
data: {{source: builtin:spirals}}
model:
  input: [{sizes[0]}]
  layers: [{layers}]
loss: cross_entropy
optimizer: {{name: sgd, lr: 0.01, momentum: 0.9}}
train: {{epochs: 1, batch_size: {BATCH}}}
"""


SPEC = spec_text()


def dlcli_rate(threads, seconds, model="relu"):
    import dlcli  # noqa: F401  (first: its thread-pool defaults must precede NumPy's OpenBLAS)

    # isort: split
    import numpy as np

    from dlcli import optim, run, runtime, spec
    from dlcli.train import train_step

    runtime.set_threads(threads)
    sizes = MODELS[model][0]
    s = spec.parse(spec_text(model), "bench_mlp.yaml")
    net, loss = run.build(s)
    opt = optim.for_model(s.optimizer, net)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], BATCH)

    def step():
        train_step(net, loss, opt, x, y, 0.01)

    return best_rate(step, BATCH, seconds)


def gemm_ceiling(threads, seconds, deterministic=False):
    """Samples/s if a step were nothing but its BLAS matrix products: NumPy's matmul on
    OpenBLAS's threads, or (`deterministic`) dlcli's `runtime.matmul` in the shape-fixed
    blocks a default run takes (the ceiling for a run repeatable across thread counts)."""
    import numpy as np

    if deterministic:
        from dlcli import runtime

        runtime.set_threads(threads, deterministic=True)
        matmul = runtime.matmul
    else:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, "blas")

        def matmul(a, b, out):
            np.matmul(a, b, out=out)

    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((a, b)).astype(np.float32) for a, b in zip(SIZES, SIZES[1:])]
    acts = [rng.standard_normal((BATCH, a)).astype(np.float32) for a in SIZES]
    outs = [np.empty((BATCH, b), np.float32) for b in SIZES[1:]]
    gws = [np.empty_like(w) for w in ws]
    gxs = [np.empty((BATCH, a), np.float32) for a in SIZES[:-1]]

    def step():
        for i, w in enumerate(ws):
            matmul(acts[i], w, outs[i])
        for i in range(len(ws) - 1, -1, -1):
            matmul(acts[i].T, outs[i], gws[i])
            if i:
                matmul(outs[i], ws[i].T, gxs[i])

    return best_rate(step, BATCH, seconds)


def first_step_time(cache_dir):
    """Seconds from interpreter start to the end of the first training step, as `dlcli
    train` takes it (with its compile helper when the cache is cold)."""
    code = (
        "import time; t0 = time.perf_counter(); "
        "import sys; sys.argv = ['x']; "
        "from dlcli import spec, run, optim, precompile; import numpy as np; "
        "from dlcli.train import train_step; "
        f"s = spec.parse({SPEC!r}); m, l = run.build(s); "
        "h = precompile.start(s, m); "
        "o = optim.for_model(s.optimizer, m); "
        "x = np.zeros((128, 784), np.float32); y = np.zeros(128, np.int64); "
        "train_step(m, l, o, x, y, 0.01); "
        "print(time.perf_counter() - t0); h and h.stop()"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--model", choices=sorted(MODELS), default="relu", help="relu: 784-512-256-10 (the default)")
    ap.add_argument("--child", choices=["dlcli", "torch", "gemm", "gemm_blocks"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "dlcli":
        print(json.dumps(dlcli_rate(a.threads, a.seconds, a.model)))
        return
    if a.child in ("gemm", "gemm_blocks"):
        print(json.dumps(gemm_ceiling(a.threads, a.seconds, deterministic=a.child == "gemm_blocks")))
        return
    if a.child == "torch":
        from torch_peers import torch_mlp_rate

        sizes, act = MODELS[a.model]
        print(json.dumps(torch_mlp_rate(sizes, BATCH, a.threads, a.seconds, act)))
        return
    if a.model != "relu":
        sys.exit("--model other than relu is for bench_table.py's children")

    have_torch = torch_available()
    print(
        f"reference MLP {'-'.join(map(str, SIZES))} ReLU, batch {BATCH}, SGD momentum, "
        f"{a.threads} threads, {TRAIN_FLOPS / 1e6:.2f} MFLOP per training sample"
    )
    best = {"dlcli": 0.0, "torch": 0.0, "gemm": 0.0, "gemm_blocks": 0.0}
    common = ["--threads", a.threads, "--seconds", a.seconds]
    for r in range(a.rounds):
        best["dlcli"] = max(best["dlcli"], run_child("bench_mlp.py", ["--child", "dlcli", *common]))
        if have_torch:
            best["torch"] = max(best["torch"], run_child("bench_mlp.py", ["--child", "torch", *common]))
        best["gemm"] = max(best["gemm"], run_child("bench_mlp.py", ["--child", "gemm", *common]))
        best["gemm_blocks"] = max(best["gemm_blocks"], run_child("bench_mlp.py", ["--child", "gemm_blocks", *common]))
        print(
            f"  round {r + 1}: best so far dlcli {best['dlcli']:,.0f}, PyTorch {best['torch']:,.0f}, "
            f"GEMM-only {best['gemm']:,.0f} samples/s"
        )
    print(ratio_line("mlp", best["dlcli"], best["torch"], TRAIN_FLOPS))
    print(
        f"{'':<10} GEMM-only ceiling {best['gemm']:,.0f} samples/s "
        f"({best['gemm'] * TRAIN_FLOPS / 1e9:.1f} GFLOP/s); dlcli reaches "
        f"{best['dlcli'] / best['gemm']:.0%} of it"
    )
    print(
        f"{'':<10} the same products in dlcli's thread-count-independent blocks {best['gemm_blocks']:,.0f} "
        f"samples/s; dlcli reaches {best['dlcli'] / best['gemm_blocks']:.0%} of it"
    )

    cache = tempfile.mkdtemp(prefix="dlcli-numba-cache-")
    try:
        cold = first_step_time(cache)
        warm = first_step_time(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"time to first training step: cold (empty kernel cache) {cold:.2f} s, warm {warm:.2f} s")


if __name__ == "__main__":
    main()
