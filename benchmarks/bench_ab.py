"""Paired A/B of two checkouts of dlcli on one benchmark: children of the base checkout
and of this one alternate, round after round, so both see the same machine; prints each
round's samples/s and the per-round ratio (this / base).

    python benchmarks/bench_ab.py [--threads 2] [--rounds 5] [--seconds 1.5] BASE bench_cnn.py [-- extra args]

(options before BASE: after the two names, everything goes to the script's child)

BASE is another checkout (e.g. `git worktree add /tmp/base HEAD~3`); its own benchmark
script runs with its own dlcli first on the path. The script must have a `--child dlcli`
mode printing samples/s as its last line (bench_mlp, bench_cnn, bench_rnn, bench_graph).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HERE, run_child  # noqa: E402


def child(root, script, threads, seconds, extra):
    """samples/s of `script --child dlcli` of the checkout at root, its dlcli first on the path."""
    args = ["--child", "dlcli", "--threads", threads, "--seconds", seconds, *extra]
    env = dict(os.environ, PYTHONPATH=root)
    return run_child(script, args, timeout=600, env=env, folder=os.path.join(root, "benchmarks"))


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
    print(
        f"{a.script} {' '.join(a.extra)} threads {a.threads}: this / base {min(ratios):.2f}-{max(ratios):.2f}x, "
        f"median {statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
