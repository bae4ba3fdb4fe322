"""The shard threads' hand-over: polling workers running BLAS blocks from task rows
(kernels/blas.py, the default) against workers that sleep on a lock between calls and
blocks made as NumPy calls in Python tasks (the hand-over before 2026-11-27), in one
process, alternating in short windows so both see the same machine.

1. Hand-over alone: a ticket with no work, after idle gaps of 0 to 5 ms (median us).
2. One reference model's training step, samples/s of each way per window, and the
   per-window ratio (polling / lock): median, quartiles, min-max.

    python benchmarks/bench_handover.py [--rounds 40] [--window 0.3] [--models mlp,cnn,lstm,resmlp,bncnn] [--spin-us 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dlcli  # noqa: E402,F401  (first: its thread-pool defaults must precede NumPy's OpenBLAS)


def _ways(spin_us):
    from dlcli import runtime

    gemm, spin = runtime._gemm_functions(), runtime.SPIN_SECONDS if spin_us is None else spin_us * 1e-6

    def use(way):
        runtime.SPIN_SECONDS = spin if way == "polling" else 0
        runtime._gemm = gemm if way == "polling" else False  # False: NumPy calls as Python tasks

    return use


def _spin_for(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def handover_latency(use, calls=300):
    """Median microseconds of run_shards of a trivial task after each idle gap, each way."""
    from dlcli import runtime

    runtime.set_threads(2)
    rows = []
    for gap in (0, 50e-6, 200e-6, 1e-3, 5e-3):
        medians = {}
        for way in ("polling", "lock"):
            use(way)
            runtime.run_shards(lambda k: None, 2)
            times = []
            for _ in range(calls if gap < 1e-3 else calls // 3):
                _spin_for(gap)
                t = time.perf_counter()
                runtime.run_shards(lambda k: None, 2)
                times.append(time.perf_counter() - t)
            medians[way] = statistics.median(times) * 1e6
        rows.append((gap, medians))
    return rows


def product_handover(use, calls=200):
    """Median microseconds of the residual MLP's forward product (128x256 @ 256x256), each way."""
    import numpy as np

    from dlcli import runtime

    runtime.set_threads(2, deterministic=True)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((128, 256)).astype(np.float32), rng.standard_normal((256, 256)).astype(np.float32)
    out = np.empty((128, 256), np.float32)
    medians = {}
    for way in ("polling", "lock"):
        use(way)
        times = []
        for _ in range(calls):
            _spin_for(50e-6)  # the pass between two products
            t = time.perf_counter()
            runtime.matmul(a, b, out)
            times.append(time.perf_counter() - t)
        medians[way] = statistics.median(times) * 1e6
    return medians


def model_step(name):
    """(train step, batch) of a benchmark's reference model at 2 threads."""
    grab = lambda step, batch, seconds=None, **_: (step, batch)  # noqa: E731
    if name in ("mlp", "cnn"):
        module = __import__(f"bench_{name}")
        module.best_rate = grab
        return module.dlcli_rate(2, 1)
    module = __import__("bench_graph" if name in ("resmlp", "bncnn") else "bench_rnn")
    module.best_rate = grab
    return module.dlcli_rate(name, 2, 1)


def model_ratios(use, name, rounds, window):
    step, batch = model_step(name)
    ratios = []
    for r in range(rounds):
        rate = {}
        for way in ("polling", "lock") if r % 2 else ("lock", "polling"):
            use(way)
            for _ in range(3):
                step()
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < window:
                step()
                n += 1
            rate[way] = n * batch / (time.perf_counter() - t)
        ratios.append(rate["polling"] / rate["lock"])
    return ratios


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--window", type=float, default=0.3)
    ap.add_argument("--models", default="mlp,cnn,lstm,resmlp,bncnn")
    ap.add_argument("--spin-us", type=float, help="how long a worker polls (default: runtime.SPIN_SECONDS)")
    a = ap.parse_args()
    use = _ways(a.spin_us)
    from dlcli import runtime

    if not runtime._gemm_functions():
        print("NumPy's BLAS has no 64-bit CBLAS symbols here: dlcli uses the lock hand-over alone")
        return
    print("hand-over of a task with no work, after an idle gap (median us): polling / lock")
    for gap, m in handover_latency(use):
        print(f"  gap {gap * 1e6:6.0f} us: {m['polling']:6.1f} / {m['lock']:6.1f}")
    m = product_handover(use)
    print(f"128x256 @ 256x256 in two blocks, 50 us after the last (median us): {m['polling']:.0f} / {m['lock']:.0f}")
    print(f"training step, samples/s polling / lock, {a.rounds} windows of {a.window} s each way:")
    for name in a.models.split(","):
        r = model_ratios(use, name, a.rounds, a.window)
        q = statistics.quantiles(r, n=4)
        print(
            f"  {name:7s} median {statistics.median(r):.3f}x, quartiles {q[0]:.3f}-{q[2]:.3f}, "
            f"min-max {min(r):.3f}-{max(r):.3f}"
        )


if __name__ == "__main__":
    main()
