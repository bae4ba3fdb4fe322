"""Start-up: how long `dlcli --help` takes, with and without the interpreter's own start.

The test suite only checks that --help imports nothing heavy (tests/test_cli_core.py);
the time is measured here, where a busy machine shows as a wide min-max instead of a
failed test.

    python benchmarks/bench_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

IMPORTS_AND_HELP = """
import sys, time
t = time.perf_counter()
from dlcli.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print("ELAPSED", time.perf_counter() - t, file=sys.stderr)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    bare, whole, inside = [], [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", IMPORTS_AND_HELP], capture_output=True, text=True, check=True)
        whole.append(time.perf_counter() - t)
        inside.append(float(out.stderr.split("ELAPSED")[1]))

    def span(v):
        return f"{min(v) * 1000:7.1f} - {max(v) * 1000:7.1f} ms"

    print(f"{args.runs} runs, min - max")
    print(f"  python -c pass                 {span(bare)}")
    print(f"  python: dlcli --help           {span(whole)}")
    print(f"  imports + --help (in-process)  {span(inside)}")


if __name__ == "__main__":
    main()
