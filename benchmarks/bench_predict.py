"""Inference: dlcli against ONNX Runtime (on the model `dlcli export` writes) and PyTorch.

For the reference MLP (784-512-256-10 ReLU), CNN (bench_cnn.py's LeNet-style net) and
LSTM (bench_rnn.py's: 64 steps x 32 features -> lstm 128 -> dense 10), each ending in
the softmax that `predict --proba` applies, and a "tiny" 16 -> 10 dense layer whose
batch-1 latency is each engine's cost per call (input checks, dispatch, output), prints
throughput at batch 256 (samples/s) and latency at batch 1 (microseconds per call) of:

- dlcli: `Predictor.outputs`, what `dlcli predict --proba` runs per batch (input checks,
  forward, softmax);
- ONNX Runtime on the exported .onnx file (CPU provider, the same intra-op threads);
- PyTorch in `torch.inference_mode()` (when installed), the same architecture;
- dlcli and ONNX Runtime again on one thread each: what the threads gain (or cost, on a
  busy machine), and the engines compared without their thread pools.

Each engine runs in its own child process (no shared thread pools); they alternate in
rounds and the figures are the min-max over rounds of each round's best window. The
machine may be shared: compare the engines within a row.

    python benchmarks/bench_predict.py [--threads N] [--rounds 3] [--seconds 1] [--models mlp,cnn,lstm,tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_rate, run_child, span, torch_available  # noqa: E402

THROUGHPUT_BATCH, LATENCY_BATCH = 256, 1

LAYERS = {
    "mlp": ("[784]", "[{dense: 512}, relu, {dense: 256}, relu, {dense: 10}]"),
    "cnn": (
        "[1, 28, 28]",
        "[{conv2d: {filters: 16, kernel: 5}}, relu, {maxpool2d: 2}, {conv2d: {filters: 32, kernel: 5}}, relu, "
        "{maxpool2d: 2}, flatten, {dense: 10}]",
    ),
    "lstm": ("[64, 32]", "[{lstm: 128}, {dense: 10}]"),
    "tiny": ("[16]", "[{dense: 10}]"),  # no arithmetic to speak of: each engine's cost per call
}


def spec_text(name):
    shape, layers = LAYERS[name]
    return f"""
name: bench_predict_{name}
seed: 0
data: {{source: builtin:spirals}}
model: {{input: {shape}, layers: {layers}}}
loss: cross_entropy
optimizer: {{name: sgd, lr: 0.01}}
train: {{epochs: 1, batch_size: 64}}
"""


def make_files(name, folder):
    """A checkpoint of the model (seeded initial weights) and its ONNX export."""
    import dlcli  # noqa: F401  (first: its thread-pool defaults must precede NumPy's OpenBLAS)
    from dlcli import checkpoint, export, run, spec

    s = spec.parse(spec_text(name), f"{name}.yaml")
    model, _ = run.build(s)
    ckpt = os.path.join(folder, f"{name}.npz")
    checkpoint.save(ckpt, s.text, model)
    onnx_path = os.path.join(folder, f"{name}.onnx")
    export.to_onnx(ckpt, onnx_path)
    return ckpt, onnx_path


def inputs(shape, n):
    import numpy as np

    return np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)


def measure(run_batch, shape, seconds):
    """(samples/s at batch 256, microseconds per call at batch 1)."""
    big, one = inputs(shape, THROUGHPUT_BATCH), inputs(shape, LATENCY_BATCH)
    rate = best_rate(lambda: run_batch(big), THROUGHPUT_BATCH, seconds)
    calls = best_rate(lambda: run_batch(one), 1, seconds)
    return rate, 1e6 / calls


def dlcli_child(ckpt, onnx_path, name, threads, seconds):
    import dlcli  # noqa: F401
    from dlcli import runtime
    from dlcli.predict import open_model

    runtime.set_threads(threads)
    pred = open_model(ckpt)
    return measure(pred.outputs, pred.input_shape, seconds)


def ort_child(ckpt, onnx_path, name, threads, seconds):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    shape = [d for d in sess.get_inputs()[0].shape[1:]]
    return measure(lambda x: sess.run(None, {"input": x})[0], shape, seconds)


def torch_child(ckpt, onnx_path, name, threads, seconds):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn

    class LastState(nn.Module):
        """LSTM (batch first) -> its last hidden state -> Linear, as dlcli's lstm + dense."""

        def __init__(self):
            super().__init__()
            self.lstm, self.head = nn.LSTM(32, 128, batch_first=True), nn.Linear(128, 10)

        def forward(self, x):
            return self.head(self.lstm(x)[1][0][0])

    nets = {
        "mlp": lambda: nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
        ),
        "cnn": lambda: nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(512, 10),
        ),
        "lstm": LastState,
        "tiny": lambda: nn.Linear(16, 10),
    }  # fmt: skip
    net = nets[name]().eval()

    def run_batch(x):
        with torch.inference_mode():
            return torch.softmax(net(torch.from_numpy(x)), dim=-1).numpy()

    shape = {"mlp": [784], "cnn": [1, 28, 28], "lstm": [64, 32], "tiny": [16]}[name]
    return measure(run_batch, shape, seconds)


def dlcli_one_thread_child(ckpt, onnx_path, name, threads, seconds):
    """dlcli on one core: against the row above, what sharing the work across threads gains
    (or, on a loaded machine, what waking the other threads costs)."""
    return dlcli_child(ckpt, onnx_path, name, 1, seconds)


def ort_one_thread_child(ckpt, onnx_path, name, threads, seconds):
    """ONNX Runtime on one core: beside dlcli's one-thread row, the engines without their
    thread pools (ONNX Runtime's threads spin between calls; dlcli's sleep)."""
    return ort_child(ckpt, onnx_path, name, 1, seconds)


CHILDREN = {
    "dlcli": dlcli_child,
    "dlcli1": dlcli_one_thread_child,
    "ort": ort_child,
    "ort1": ort_one_thread_child,
    "torch": torch_child,
}
LABELS = {
    "dlcli": "dlcli",
    "dlcli1": "dlcli 1 thread",
    "ort": "ONNX Runtime",
    "ort1": "ORT 1 thread",
    "torch": "PyTorch",
}
ONE_THREAD_PEERS = {"ort1": "dlcli1"}  # compared with dlcli on one thread, not with the pool


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--models", default="mlp,cnn,lstm,tiny")
    ap.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--files", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    models = [m for m in a.models.split(",") if m]
    if a.child:
        print(json.dumps(CHILDREN[a.child](*a.files, models[0], a.threads, a.seconds)))
        return

    t0 = time.perf_counter()
    engines = ["dlcli", "ort"] + (["torch"] if torch_available() else []) + ["dlcli1", "ort1"]
    import onnxruntime

    print(
        f"inference with softmax: throughput at batch {THROUGHPUT_BATCH} (samples/s), latency at batch "
        f"{LATENCY_BATCH} (us per call); {a.threads} threads; min-max over {a.rounds} rounds; "
        f"ONNX Runtime {onnxruntime.__version__}" + ("" if "torch" in engines else "; PyTorch not installed: skipped")
    )
    with tempfile.TemporaryDirectory(prefix="dlcli-bench-predict-") as folder:
        for name in models:
            files = make_files(name, folder)
            rates = {e: [] for e in engines}
            lat = {e: [] for e in engines}
            for _ in range(a.rounds):
                for e in engines:
                    args = ["--child", e, "--files", *files, "--models", name, "--threads", a.threads]
                    r, us = run_child("bench_predict.py", [*args, "--seconds", a.seconds])
                    rates[e].append(r)
                    lat[e].append(us)
            print(f"{name}:")
            for e in engines:
                line = f"  {LABELS[e]:<13} {span(rates[e]):>17} samples/s   {span(lat[e]):>13} us"
                if e not in ("dlcli", "dlcli1"):
                    ours = ONE_THREAD_PEERS.get(e, "dlcli")
                    line += (
                        f"   {LABELS[ours]}/{LABELS[e]}: throughput {max(rates[ours]) / max(rates[e]):.2f}x, "
                        f"latency {min(lat[ours]) / min(lat[e]):.2f}x"
                    )
                print(line, flush=True)
    print(f"({time.perf_counter() - t0:.0f} s; the machine is shared: compare engines within a model)")


if __name__ == "__main__":
    main()
