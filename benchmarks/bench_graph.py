"""Graph models: a residual MLP and a CNN with batch normalisation, training samples/s of
dlcli beside PyTorch CPU (same threads, each in its own child process, alternating rounds).

- resmlp: 256 -> dense 256 relu -> 4 residual blocks [dense 256, relu, dense 256] each
  followed by relu -> dense 10; batch 128.
- bncnn: 1x28x28 -> conv 16 5x5 -> batchnorm -> relu -> maxpool 2 -> conv 32 5x5 ->
  batchnorm -> relu -> maxpool 2 -> flatten -> dense 10; batch 64 (convs without bias,
  as usual before batchnorm).

SGD with momentum, random data. Every round prints each ratio; the summary gives the
min-max of the per-round ratios and the best rate of each.

    python benchmarks/bench_graph.py [--threads N] [--rounds 3] [--seconds 2] [--model resmlp|bncnn]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_rate, run_child, torch_available  # noqa: E402

BLOCKS, WIDTH = 4, 256
MODELS = {
    "resmlp": {
        "batch": 128,
        "input": [WIDTH],
        "layers": "    - dense: 256\n    - relu\n"
        + "    - residual:\n        - dense: 256\n        - relu\n        - dense: 256\n    - relu\n" * BLOCKS
        + "    - dense: 10\n",
    },
    "bncnn": {
        "batch": 64,
        "input": [1, 28, 28],
        "layers": """\
    - conv2d: {filters: 16, kernel: 5, bias: false}
    - batchnorm
    - relu
    - maxpool2d: 2
    - conv2d: {filters: 32, kernel: 5, bias: false}
    - batchnorm
    - relu
    - maxpool2d: 2
    - flatten
    - dense: 10
""",
    },
}


def spec_text(name):
    m = MODELS[name]
    return (
        f"name: bench_{name}\nseed: 0\ndata: {{source: builtin:spirals}}\n"
        f"model:\n  input: {m['input']}\n  layers:\n{m['layers']}"
        "loss: cross_entropy\noptimizer: {name: sgd, lr: 0.01, momentum: 0.9}\n"
    )


def dlcli_rate(name, threads, seconds):
    import dlcli  # noqa: F401  (first: its thread-pool defaults must precede NumPy's OpenBLAS)

    # isort: split
    import numpy as np

    from dlcli import optim, run, runtime, spec
    from dlcli.train import train_step

    runtime.set_threads(threads)
    s = spec.parse(spec_text(name), f"bench_{name}.yaml")
    model, loss = run.build(s)
    opt = optim.for_model(s.optimizer, model)
    batch = MODELS[name]["batch"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *MODELS[name]["input"])).astype(np.float32)
    y = rng.integers(0, 10, batch)
    return best_rate(lambda: train_step(model, loss, opt, x, y, 0.01), batch, seconds)


def torch_rate(name, threads, seconds):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH))

        def forward(self, x):
            return torch.relu(x + self.f(x))

    if name == "resmlp":
        model = nn.Sequential(
            nn.Linear(WIDTH, WIDTH), nn.ReLU(), *[Block() for _ in range(BLOCKS)], nn.Linear(WIDTH, 10)
        )
    else:
        model = nn.Sequential(
            nn.Conv2d(1, 16, 5, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(512, 10),
        )
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    batch = MODELS[name]["batch"]
    x = torch.randn(batch, *MODELS[name]["input"])
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()
        opt.step()

    return best_rate(step, batch, seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--model", choices=sorted(MODELS), action="append", help="default: both")
    ap.add_argument("--child", choices=["dlcli", "torch"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    names = a.model or ["resmlp", "bncnn"]
    if a.child:
        fn = {"dlcli": dlcli_rate, "torch": torch_rate}[a.child]
        print(json.dumps(fn(names[0], a.threads, a.seconds)))
        return

    t0 = time.perf_counter()
    have_torch = torch_available()
    print(f"graph models, SGD momentum, {a.threads} threads, {a.rounds} rounds of {a.seconds:g} s per run")
    common = ["--threads", a.threads, "--seconds", a.seconds]
    for name in names:
        ours, theirs, ratios = [], [], []
        for r in range(a.rounds):
            ours.append(run_child("bench_graph.py", ["--child", "dlcli", "--model", name, *common]))
            line = f"  {name} round {r + 1}: dlcli {ours[-1]:,.0f} samples/s"
            if have_torch:
                theirs.append(run_child("bench_graph.py", ["--child", "torch", "--model", name, *common]))
                ratios.append(ours[-1] / theirs[-1])
                line += f", PyTorch {theirs[-1]:,.0f} samples/s, ratio {ratios[-1]:.2f}x"
            print(line)
        summary = f"{name:<7} dlcli best {max(ours):,.0f} samples/s"
        if ratios:
            summary += f" | PyTorch best {max(theirs):,.0f} | ratio per round {min(ratios):.2f}-{max(ratios):.2f}x"
        else:
            summary += " | PyTorch not installed: skipped"
        print(summary)
    print(f"(benchmark took {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
