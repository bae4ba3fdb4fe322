"""Shared pieces of the benchmark scripts: timing, the PyTorch peer, printing ratios.

Benchmarks print figures measured side by side in one run: this machine is shared and
noisy, so the ratios mean more than the absolute numbers. dlcli and PyTorch alternate in
rounds and each keeps its best round. PyTorch runs in a child process so the two never
share thread pools; it is skipped when not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def torch_available():
    try:
        import importlib.util

        return importlib.util.find_spec("torch") is not None
    except Exception:
        return False


def best_rate(step, samples_per_step, seconds=2.0, warmup=3):
    """Samples/s of `step()`: best of a few timed windows after warm-up steps."""
    for _ in range(warmup):
        step()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        n, t0 = 0, time.perf_counter()
        while n < 5 or time.perf_counter() - t0 < 0.25:
            step()
            n += 1
        best = max(best, n * samples_per_step / (time.perf_counter() - t0))
    return best


def gemm_gflops(threads, seconds=1.0, n=1024):
    """GFLOP/s of one large float32 n x n x n product through NumPy's BLAS on `threads`
    cores: the machine's practical peak, to set a kernel's GFLOP/s against."""
    import dlcli  # noqa: F401  (first: its thread-pool defaults must precede NumPy's OpenBLAS)

    # isort: split
    import numpy as np
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, "blas")
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    return best_rate(lambda: np.matmul(a, b, out=out), 1, seconds) * 2 * n**3 / 1e9


def run_child(script, args, timeout=300, env=None, folder=HERE):
    """Run `python folder/script args...` and return the JSON it prints on its last line."""
    out = subprocess.run(
        [sys.executable, os.path.join(folder, script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def span(values, fmt="{:,.0f}"):
    """'lo-hi' of the values as `fmt` prints them (one figure when both print alike)."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def ratio_line(name, ours, theirs, flops_per_sample=None):
    """One printed row: dlcli samples/s, PyTorch samples/s, ratio, and GFLOP/s of each."""
    parts = [f"{name:<10} dlcli {ours:>10,.0f} samples/s"]
    if flops_per_sample:
        parts.append(f"({ours * flops_per_sample / 1e9:6.1f} GFLOP/s)")
    if theirs:
        parts.append(f"| PyTorch {theirs:>10,.0f} samples/s")
        if flops_per_sample:
            parts.append(f"({theirs * flops_per_sample / 1e9:6.1f} GFLOP/s)")
        parts.append(f"| ratio {ours / theirs:5.2f}x")
    else:
        parts.append("| PyTorch not installed: skipped")
    return " ".join(parts)
