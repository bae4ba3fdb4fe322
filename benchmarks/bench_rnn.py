"""Recurrent classifier: input 32 features x 64 steps -> rnn | lstm | gru (128 units, last
hidden state) -> dense 10; batch 32, SGD with momentum, random data.

For each cell prints dlcli's training samples/s beside PyTorch's CPU figure with the same
thread count (nn.RNN/LSTM/GRU with batch_first + Linear, in its own child process; skipped
when PyTorch is not installed), the ratio, and GFLOP/s (matrix-product FLOPs of forward +
backward). dlcli and PyTorch alternate in rounds and each keeps its best round. Last, the
machine's practical peak (one large GEMM on the same threads) and each cell's share of it.

    python benchmarks/bench_rnn.py [--threads N] [--rounds 2] [--seconds 2] [--cells rnn,lstm,gru]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_rate, gemm_gflops, ratio_line, run_child, torch_available  # noqa: E402

BATCH, T, F, H, CLASSES = 32, 64, 32, 128, 10
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def train_flops(cell):
    """Per training sample: forward (input and recurrent products, dense) times 3 (forward,
    weight gradients, input gradients); the first layer's dx is counted as PyTorch does it."""
    g = GATES[cell] * H
    fwd = T * (2 * F * g + 2 * H * g) + 2 * H * CLASSES
    return 3 * fwd


def spec_text(cell):
    return f"""
name: bench_{cell}
seed: 0
data: {{source: builtin:adding}}
model:
  input: [{T}, {F}]
  layers:
    - {cell}: {{units: {H}}}
    - dense: {CLASSES}
loss: cross_entropy
optimizer: {{name: sgd, lr: 0.01, momentum: 0.9}}
train: {{epochs: 1, batch_size: {BATCH}}}
"""


def dlcli_rate(cell, threads, seconds):
    import dlcli  # noqa: F401  (first: its thread-pool defaults must precede NumPy's OpenBLAS)

    # isort: split
    import numpy as np

    from dlcli import optim, run, runtime, spec

    runtime.set_threads(threads)
    s = spec.parse(spec_text(cell), f"bench_{cell}.yaml")
    model, loss = run.build(s)
    opt = optim.make(s.optimizer, model.n_params(), model.dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, T, F)).astype(np.float32)
    y = rng.integers(0, CLASSES, BATCH)

    def step():
        out = model.forward(x, training=True)
        _, dout, _ = loss(out, y)
        model.backward(dout)
        opt.step(model.params_flat, model.grads_flat, 0.01)

    return best_rate(step, BATCH, seconds)


def torch_rate(cell, threads, seconds):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn
    rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](F, H, batch_first=True)
    head = nn.Linear(H, CLASSES)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(BATCH, T, F)
    y = torch.randint(0, CLASSES, (BATCH,))

    def step():
        opt.zero_grad(set_to_none=False)
        out, _ = rnn(x)
        loss_fn(head(out[:, -1]), y).backward()
        opt.step()

    return best_rate(step, BATCH, seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--cells", default="rnn,lstm,gru")
    ap.add_argument("--child", choices=["dlcli", "torch", "peak"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    cells = [c for c in a.cells.split(",") if c]
    if a.child == "peak":
        print(json.dumps(gemm_gflops(a.threads, a.seconds)))
        return
    if a.child:
        fn = {"dlcli": dlcli_rate, "torch": torch_rate}[a.child]
        print(json.dumps(fn(cells[0], a.threads, a.seconds)))
        return

    t0 = time.perf_counter()
    have_torch = torch_available()
    print(
        f"recurrent classifier: {T} steps x {F} features -> {{rnn, lstm, gru}} {H} units (last state) "
        f"-> dense {CLASSES}, batch {BATCH}, SGD momentum, {a.threads} threads"
    )
    common = ["--threads", a.threads, "--seconds", a.seconds]
    lines, gflops = [], {}
    for cell in cells:
        best = {"dlcli": 0.0, "torch": 0.0}
        for _ in range(a.rounds):
            best["dlcli"] = max(
                best["dlcli"], run_child("bench_rnn.py", ["--child", "dlcli", "--cells", cell, *common])
            )
            if have_torch:
                best["torch"] = max(
                    best["torch"], run_child("bench_rnn.py", ["--child", "torch", "--cells", cell, *common])
                )
        lines.append(ratio_line(cell, best["dlcli"], best["torch"], train_flops(cell)))
        gflops[cell] = best["dlcli"] * train_flops(cell) / 1e9
        print(lines[-1], flush=True)
    peak = max(run_child("bench_rnn.py", ["--child", "peak", *common]) for _ in range(a.rounds))
    shares = ", ".join(f"{c} {g / peak:.0%}" for c, g in gflops.items())
    print(f"machine peak (one 1024^3 float32 GEMM, {a.threads} threads): {peak:.1f} GFLOP/s; dlcli reaches {shares}")
    print(f"({time.perf_counter() - t0:.0f} s; the machine is shared: compare ratios, not absolute figures)")


if __name__ == "__main__":
    main()
