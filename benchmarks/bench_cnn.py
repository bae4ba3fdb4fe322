"""Reference CNN: 1x28x28 -> conv 16 5x5 -> ReLU -> maxpool 2 -> conv 32 5x5 -> ReLU ->
maxpool 2 -> flatten -> dense 10; batch 64, SGD with momentum, random data.

Prints dlcli's training samples/s beside PyTorch's CPU figure with the same thread count
(when PyTorch is installed; it runs in its own child process), the ratio, and the conv
layers' forward and backward passes alone in GFLOP/s.

    python benchmarks/bench_cnn.py [--threads N] [--rounds 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_rate, ratio_line, run_child, torch_available  # noqa: E402

BATCH = 64
# (in channels, out channels, kernel, output side) of the two convolutions
CONVS = ((1, 16, 5, 24), (16, 32, 5, 8))
CONV_FWD = [2 * ci * co * k * k * o * o for ci, co, k, o in CONVS]
DENSE_FWD = 2 * 512 * 10
FWD = sum(CONV_FWD) + DENSE_FWD
# backward: weight gradient (1x forward) everywhere, input gradient (1x) except the first layer
TRAIN_FLOPS = 3 * FWD - CONV_FWD[0]

SPEC = """
name: bench_cnn
seed: 0
data: {source: builtin:shapes}
model:
  input: [1, 28, 28]
  layers:
    - conv2d: {filters: 16, kernel: 5}
    - relu
    - maxpool2d: 2
    - conv2d: {filters: 32, kernel: 5}
    - relu
    - maxpool2d: 2
    - flatten
    - dense: 10
loss: cross_entropy
optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
train: {epochs: 1, batch_size: 64}
"""


def _model(threads):
    import dlcli  # noqa: F401  (first: its thread-pool defaults must precede NumPy's OpenBLAS)

    # isort: split
    import numpy as np

    from dlcli import optim, run, runtime, spec

    runtime.set_threads(threads)
    s = spec.parse(SPEC, "bench_cnn.yaml")
    model, loss = run.build(s)
    opt = optim.for_model(s.optimizer, model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    return model, loss, opt, x, y


def dlcli_rate(threads, seconds):
    from dlcli.train import train_step

    model, loss, opt, x, y = _model(threads)

    def step():
        train_step(model, loss, opt, x, y, 0.01)

    return best_rate(step, BATCH, seconds)


def conv_kernel_rates(threads, seconds):
    """GFLOP/s of each conv layer's forward and backward pass alone (im2col, GEMM, output pass;
    output-gradient pass, GEMMs, col2im), on the activations of a real forward pass."""
    import numpy as np

    model, loss, opt, x, y = _model(threads)
    acts = [x]
    for layer in model.trained:
        acts.append(layer.forward(acts[-1], training=True))
    out = {}
    for i, layer in enumerate(model.trained):
        if layer.kind != "conv2d":
            continue
        k = len(out) // 2
        xin = acts[i]
        dy = np.random.default_rng(1).standard_normal(acts[i + 1].shape).astype(np.float32)
        need_dx = i > 0
        fwd_rate = best_rate(lambda layer=layer, xin=xin: layer.forward(xin, training=True), BATCH, seconds / 4)
        layer.forward(xin, training=True)
        bwd_rate = best_rate(
            lambda layer=layer, dy=dy, need_dx=need_dx: layer.backward(dy, need_dx=need_dx), BATCH, seconds / 4
        )
        out[f"conv{k + 1} forward"] = fwd_rate * CONV_FWD[k] / 1e9
        out[f"conv{k + 1} backward"] = bwd_rate * CONV_FWD[k] * (2 if need_dx else 1) / 1e9
    return out


def torch_rate(threads, seconds):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(512, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(BATCH, 1, 28, 28)
    y = torch.randint(0, 10, (BATCH,))

    def step():
        opt.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()
        opt.step()

    return best_rate(step, BATCH, seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--child", choices=["dlcli", "torch", "kernels"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        fn = {"dlcli": dlcli_rate, "torch": torch_rate, "kernels": conv_kernel_rates}[a.child]
        print(json.dumps(fn(a.threads, a.seconds)))
        return

    t0 = time.perf_counter()
    have_torch = torch_available()
    print(
        f"reference CNN 1x28x28 conv16-5 relu pool2 conv32-5 relu pool2 dense10, batch {BATCH}, "
        f"SGD momentum, {a.threads} threads, {TRAIN_FLOPS / 1e6:.2f} MFLOP per training sample"
    )
    best = {"dlcli": 0.0, "torch": 0.0}
    common = ["--threads", a.threads, "--seconds", a.seconds]
    for r in range(a.rounds):
        best["dlcli"] = max(best["dlcli"], run_child("bench_cnn.py", ["--child", "dlcli", *common]))
        if have_torch:
            best["torch"] = max(best["torch"], run_child("bench_cnn.py", ["--child", "torch", *common]))
        print(f"  round {r + 1}: best so far dlcli {best['dlcli']:,.0f}, PyTorch {best['torch']:,.0f} samples/s")
    print(ratio_line("cnn", best["dlcli"], best["torch"], TRAIN_FLOPS))
    kernels = run_child("bench_cnn.py", ["--child", "kernels", *common])
    print("conv kernels alone (batch 64): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in kernels.items()))
    print(f"(benchmark took {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
