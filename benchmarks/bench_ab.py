"""Paired A/B of two checkouts of dlcli on one benchmark: children of the base checkout
and of this one alternate, round after round, so both see the same machine; prints each
round's samples/s and the per-round ratio (this / base).

    python benchmarks/bench_ab.py BASE bench_cnn.py [--threads 2] [--rounds 5] [--seconds 1.5] [-- extra args]

BASE is another checkout (e.g. `git worktree add /tmp/base HEAD~3`); its own benchmark
script runs with its own dlcli first on the path. The script must have a `--child dlcli`
mode printing samples/s as its last line (bench_mlp, bench_cnn, bench_rnn, bench_graph).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def child(root, script, threads, seconds, extra):
    env = dict(os.environ, PYTHONPATH=root)
    args = [sys.executable, os.path.join(root, "benchmarks", script), "--child", "dlcli"]
    args += ["--threads", str(threads), "--seconds", str(seconds), *extra]
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{script} in {root} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="the other checkout's root folder")
    ap.add_argument("script", help="a benchmark script of benchmarks/, e.g. bench_cnn.py")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("extra", nargs="*", help="more arguments for the script's child, after --")
    a = ap.parse_args()
    this = os.path.dirname(HERE)
    roots = {"base": os.path.abspath(a.base), "this": this}
    for root in roots.values():  # compile (or load) both before timing
        child(root, a.script, a.threads, 0.2, a.extra)
    ratios = []
    for r in range(a.rounds):
        rates = {name: child(root, a.script, a.threads, a.seconds, a.extra) for name, root in roots.items()}
        ratios.append(rates["this"] / rates["base"])
        print(f"round {r + 1}: base {rates['base']:,.0f}, this {rates['this']:,.0f} samples/s, ratio {ratios[-1]:.3f}")
    print(f"{a.script} {' '.join(a.extra)} threads {a.threads}: this / base {min(ratios):.2f}-{max(ratios):.2f}x")


if __name__ == "__main__":
    main()
