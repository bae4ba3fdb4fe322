"""Character language model: embedding (96 tokens x 64) -> LSTM 256 (every step) -> dense 96,
token-level cross-entropy; batch 32 windows of 64 tokens, SGD with momentum, random ids.

Prints dlcli's training tokens/s beside PyTorch's CPU figure with the same thread count
(nn.Embedding + nn.LSTM(batch_first) + nn.Linear + CrossEntropyLoss over every token, in
its own child process; skipped when PyTorch is not installed) and the ratio. dlcli and
PyTorch alternate in rounds, each round in fresh processes; every round's ratio is printed
and the summary gives min-max over rounds (the machine is shared: only same-run ratios mean
anything).

    python benchmarks/bench_text.py [--threads N] [--rounds 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_rate, run_child, torch_available  # noqa: E402

BATCH, T, VOCAB, DIM, H = 32, 64, 96, 64, 256

SPEC = f"""
name: bench_text
seed: 0
data: {{source: builtin:arithmetic, options: {{samples: 200}}, text: {{seq_len: {T}}}}}
model:
  layers:
    - embedding: {{vocab_size: {VOCAB}, dim: {DIM}}}
    - lstm: {{units: {H}, return_sequences: true}}
    - dense: {VOCAB}
loss: cross_entropy
optimizer: {{name: sgd, lr: 0.01, momentum: 0.9}}
train: {{epochs: 1, batch_size: {BATCH}}}
"""


def batch(rng):
    return rng.integers(0, VOCAB, size=(BATCH, T)), rng.integers(0, VOCAB, size=(BATCH, T))


def dlcli_rate(threads, seconds):
    import dlcli  # noqa: F401  (first: its thread-pool defaults must precede NumPy's OpenBLAS)

    # isort: split
    import numpy as np

    from dlcli import optim, run, runtime, spec

    runtime.set_threads(threads)
    s = spec.parse(SPEC, "bench_text.yaml")
    model, loss = run.build(s)
    opt = optim.make(s.optimizer, model.n_params(), model.dtype)
    x, y = batch(np.random.default_rng(0))

    def step():
        out = model.forward(x, training=True)
        _, dout, _ = loss(out, y)
        model.backward(dout)
        opt.step(model.params_flat, model.grads_flat, 0.01)

    return best_rate(step, BATCH * T, seconds)


def torch_rate(threads, seconds):
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn
    emb, lstm, head = nn.Embedding(VOCAB, DIM), nn.LSTM(DIM, H, batch_first=True), nn.Linear(H, VOCAB)
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x, y = (torch.from_numpy(a) for a in batch(np.random.default_rng(0)))

    def step():
        opt.zero_grad(set_to_none=False)
        out, _ = lstm(emb(x))
        loss_fn(head(out).reshape(-1, VOCAB), y.reshape(-1)).backward()
        opt.step()

    return best_rate(step, BATCH * T, seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--child", choices=["dlcli", "torch"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        fn = {"dlcli": dlcli_rate, "torch": torch_rate}[a.child]
        print(json.dumps(fn(a.threads, a.seconds)))
        return

    t0 = time.perf_counter()
    have_torch = torch_available()
    print(
        f"char LM: embedding {VOCAB}x{DIM} -> lstm {H} (every step) -> dense {VOCAB}, batch {BATCH} x {T} tokens, "
        f"SGD momentum, {a.threads} threads; training tokens/s"
    )
    common = ["--threads", a.threads, "--seconds", a.seconds]
    ours, theirs = [], []
    for r in range(a.rounds):
        ours.append(run_child("bench_text.py", ["--child", "dlcli", *common]))
        line = f"round {r + 1}: dlcli {ours[-1]:>9,.0f} tokens/s"
        if have_torch:
            theirs.append(run_child("bench_text.py", ["--child", "torch", *common]))
            line += f" | PyTorch {theirs[-1]:>9,.0f} tokens/s | ratio {ours[-1] / theirs[-1]:5.2f}x"
        print(line, flush=True)
    summary = f"dlcli {min(ours):,.0f}-{max(ours):,.0f} tokens/s"
    if theirs:
        ratios = [o / t for o, t in zip(ours, theirs)]
        summary += f"; PyTorch {min(theirs):,.0f}-{max(theirs):,.0f}; ratio {min(ratios):.2f}-{max(ratios):.2f}x"
    else:
        summary += "; PyTorch not installed: skipped"
    print(f"over {a.rounds} rounds: {summary}")
    print(f"({time.perf_counter() - t0:.0f} s; the machine is shared: compare ratios, not absolute figures)")


if __name__ == "__main__":
    main()
