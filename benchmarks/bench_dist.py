"""Data-parallel training over MPI on this machine, and a model of it on a cluster.

The reference MLP (784-512-256-10 ReLU, batch 128, SGD momentum) and LSTM (64 steps x 32
features -> lstm 128 -> dense 10, batch 32), each as
  - 1 process x 2 threads on the global batch (and x 1 thread, for scale),
  - 2 ranks x 1 thread (mpirun -n 2), each on half of it, in each of dlcli's three ways of
    summing the gradients (DLCLI_ALLREDUCE): `shared` (the default: the node's ranks share
    parameters and gradients in memory; each sums and updates its part), `blocking` (one
    allreduce after backward) and `overlap` (one non-blocking allreduce per layer during
    backward),
in alternating rounds; prints samples/s (min-max over rounds), the time each rank is
blocked in MPI per step (the transfer or barrier plus waiting for the slower rank), the
allreduce alone with both ranks ready, the gradient bytes each rank sends per step, and the
share of the blocked time the overlap hides. Then a scaling projection for 2-64 nodes from the
measured compute time per step and the ring-allreduce cost model
    t_allreduce(N) = 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency
at 10 and 100 Gbit/s: a model, not a measurement.

    python benchmarks/bench_dist.py [--rounds 3] [--seconds 2] [--models mlp,lstm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HERE, run_child, span  # noqa: E402

MODELS = {
    "mlp": dict(
        batch=128,
        input=(784,),
        classes=10,
        spec="""
name: bench_mlp
data: {source: builtin:spirals}
model: {input: [784], layers: [{dense: 512}, relu, {dense: 256}, relu, {dense: 10}]}
loss: cross_entropy
optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
""",
    ),
    "lstm": dict(
        batch=32,
        input=(64, 32),
        classes=10,
        spec="""
name: bench_lstm
data: {source: builtin:spirals}
model: {input: [64, 32], layers: [{lstm: {units: 128}}, {dense: 10}]}
loss: cross_entropy
optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
""",
    ),
}
LATENCY_S = {10: 20e-6, 100: 5e-6}  # assumed per-message latency of each network (model input)
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def measure(name, threads, seconds, mode="shared"):
    """In this process (a rank under mpirun, or alone): the best window's samples/s of the
    global batch, and per step the seconds blocked in MPI and the compute seconds."""
    import dlcli  # noqa: F401  (first: its thread-pool defaults must precede NumPy's OpenBLAS)

    # isort: split
    import numpy as np

    from dlcli import distributed, optim, run, runtime, spec
    from dlcli.train import train_step

    runtime.set_threads(threads)
    m = MODELS[name]
    s = spec.parse(m["spec"], f"{name}.yaml")
    model, loss = run.build(s)
    opt = optim.for_model(s.optimizer, model)
    world = distributed.world()
    if world is not None:
        world = distributed.World(world.comm, mode=mode)
        world.prepare(model, opt)
    batch = m["batch"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *m["input"])).astype(np.float32)
    y = rng.integers(0, m["classes"], batch)
    if world is not None:
        lo, hi = world.share(batch)
        x, y = x[lo:hi], y[lo:hi]

    def step():
        train_step(model, loss, opt, x, y, 0.01, sync=world, global_rows=batch)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    step()
    one = time.perf_counter() - t0
    n = max(5, int(0.25 / one))
    windows = max(3, int(seconds / (n * one)))
    if world is not None:  # every rank takes the same number of steps
        n, windows = world.comm.bcast((n, windows))
    best = None
    for _ in range(windows):
        c0 = world.comm_seconds if world else 0.0
        if world is not None:
            world.comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        per_step = (time.perf_counter() - t0) / n
        blocked = ((world.comm_seconds - c0) / n) if world else 0.0
        if world is not None:  # the slower rank sets the pace
            per_step, blocked = (
                world.comm.allreduce(per_step, op=world.MPI.MAX),
                world.comm.allreduce(blocked, op=world.MPI.MAX),
            )
        if best is None or per_step < best["step_s"]:
            best = {"step_s": per_step, "blocked_s": blocked}
    best["samples_per_s"] = batch / best["step_s"]
    best["grad_bytes"] = int(model.grads_flat.nbytes)
    best["compute_s"] = best["step_s"] - best["blocked_s"]
    if world is not None:  # the transfer alone: both ranks ready (after a barrier), best of 20
        buf = model.grads_flat.copy()
        times = []
        for _ in range(20):
            world.comm.Barrier()
            t0 = time.perf_counter()
            world.comm.Allreduce(world.MPI.IN_PLACE, buf)
            times.append(time.perf_counter() - t0)
        best["allreduce_alone_s"] = world.comm.allreduce(min(times), op=world.MPI.MAX)
    return best if world is None or world.rank == 0 else None


def run_ranks(name, seconds, mode):
    """`mpirun -n 2` of this script's child, one thread per rank: rank 0's figures."""
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    cmd = [mpirun, "-n", "2", "--oversubscribe", sys.executable, os.path.join(HERE, "bench_dist.py")]
    cmd += ["--child", name, "--threads", "1", "--seconds", str(seconds), "--mode", mode]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **MPI_ENV})
    if out.returncode != 0:
        raise RuntimeError(f"mpirun failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ring_allreduce_s(nodes, nbytes, gbit, latency):
    return 2 * (nodes - 1) / nodes * nbytes * 8 / (gbit * 1e9) + 2 * (nodes - 1) * latency


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--models", default="mlp,lstm")
    ap.add_argument("--child", choices=list(MODELS), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="shared", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        r = measure(a.child, a.threads, a.seconds, mode=a.mode)
        if r is not None:
            print(json.dumps(r))
        return

    print(
        f"data-parallel training on this machine ({os.cpu_count()} cores, shared with other work: "
        f"figures move between runs; min-max over {a.rounds} alternating rounds)"
    )
    for name in a.models.split(","):
        m = MODELS[name]
        runs = {"single": [], "one_thread": [], "shared": [], "blocking": [], "overlap": []}
        for _ in range(a.rounds):
            runs["single"].append(run_child("bench_dist.py", ["--child", name, "--threads", 2, "--seconds", a.seconds]))
            runs["one_thread"].append(
                run_child("bench_dist.py", ["--child", name, "--threads", 1, "--seconds", a.seconds])
            )
            for mode in ("shared", "blocking", "overlap"):
                runs[mode].append(run_ranks(name, a.seconds, mode))
        rate = {k: [r["samples_per_s"] for r in v] for k, v in runs.items()}
        ratios = {k: [o / s for o, s in zip(rate[k], rate["single"])] for k in ("shared", "blocking", "overlap")}
        nbytes = runs["overlap"][0]["grad_bytes"]
        blocked_ov = [r["blocked_s"] * 1e3 for r in runs["overlap"]]
        blocked_bl = [r["blocked_s"] * 1e3 for r in runs["blocking"]]
        hidden = [1 - o / b if b > 0 else 0.0 for o, b in zip(blocked_ov, blocked_bl)]
        print(f"\n{name}: global batch {m['batch']}, {nbytes / 1e6:.2f} MB of gradients per rank per step")
        print(f"  1 process x 2 threads      {span(rate['single']):>16} samples/s")
        print(f"  1 process x 1 thread       {span(rate['one_thread']):>16} samples/s  (half the cores: for scale)")
        blocked_sh = [r["blocked_s"] * 1e3 for r in runs["shared"]]
        print(
            f"  2 ranks x 1 thread shared  {span(rate['shared']):>16} samples/s  "
            f"({span(ratios['shared'], '{:.2f}')}x of 1 process, median {statistics.median(ratios['shared']):.2f}x; "
            "target >= 0.9x; dlcli's default), "
            f"blocked in MPI {span(blocked_sh, '{:.2f}')} ms/step"
        )
        print(
            f"  2 ranks x 1 thread blocking{span(rate['blocking']):>16} samples/s  "
            f"({span(ratios['blocking'], '{:.2f}')}x, median {statistics.median(ratios['blocking']):.2f}x; "
            "DLCLI_ALLREDUCE=blocking), "
            f"blocked in MPI {span(blocked_bl, '{:.2f}')} ms/step"
        )
        print(
            f"  2 ranks x 1 thread overlap {span(rate['overlap']):>16} samples/s  "
            f"({span(ratios['overlap'], '{:.2f}')}x; DLCLI_ALLREDUCE=overlap), blocked in MPI "
            f"{span(blocked_ov, '{:.2f}')} ms/step"
        )
        alone = [r["allreduce_alone_s"] * 1e3 for r in runs["overlap"] + runs["blocking"]]
        print(
            f"  the allreduce alone (both ranks ready): {span(alone, '{:.2f}')} ms for {nbytes / 1e6:.2f} MB; "
            "the rest of the blocked time is waiting for the other rank"
        )
        print(f"  share of the blocked time hidden by overlap: {span([h * 100 for h in hidden], '{:.0f}')} %")

        compute = min(r["step_s"] for r in runs["single"])  # one node's step on the global batch
        print(
            f"  projection (a MODEL, not a measurement): every node runs this machine's measured step "
            f"on a batch of {m['batch']} ({compute * 1e3:.2f} ms) and then a ring allreduce of {nbytes / 1e6:.2f} MB "
            "without overlap; efficiency = compute / (compute + allreduce)"
        )
        print(f"  {'nodes':>7} " + " ".join(f"{f'{g} Gbit/s: samples/s  eff':>32}" for g in LATENCY_S))
        for nodes in (2, 4, 8, 16, 32, 64):
            cells = []
            for gbit, lat in LATENCY_S.items():
                t = compute + ring_allreduce_s(nodes, nbytes, gbit, lat)
                cells.append(f"{nodes * m['batch'] / t:>22,.0f}  {compute / t:>6.0%}")
            print(f"  {nodes:>7} " + " ".join(f"{c:>32}" for c in cells))
    print(
        f"\nmodel inputs: latency per message {', '.join(f'{lat * 1e6:.0f} us at {g} Gbit/s' for g, lat in LATENCY_S.items())}"
    )


if __name__ == "__main__":
    main()
