"""What a trained language model has learned, in numbers.

    python benchmarks/text_report.py runs/arithmetic_lstm.npz [--problems 200] [--seed 1]

Prints the bits per character on the validation tail of the checkpoint's text, for the
same spec freshly initialised (before training) and for the checkpoint (after). For a model
trained on `builtin:arithmetic` it also asks `generate` (greedy: temperature 0, stopping at
the end of the line) for the answers of `--problems` fresh problems, drawn with another seed
than the training text and never one of its lines, and prints the share answered exactly.
"""

from __future__ import annotations

import argparse
import math
import time


def validation_bpc(model, loss, dataset, batch_size=256):
    total, n = 0.0, 0
    for start in range(0, len(dataset.x_val), batch_size):
        xb, yb = dataset.x_val[start : start + batch_size], dataset.y_val[start : start + batch_size]
        value, _, _ = loss(model.forward(xb, training=False), yb)
        total += value * len(xb)
        n += len(xb)
    return total / n / math.log(2)


def arithmetic_accuracy(tm, spec, problems, seed):
    import numpy as np

    from dlcli.datasets.text import Arithmetic
    from dlcli.generate import generate

    o = spec.data.options
    seen = set(Arithmetic.generate_text(o, np.random.default_rng(spec.seed)).splitlines())
    rng = np.random.default_rng([seed, 18])
    fresh = []
    while len(fresh) < problems:
        for prompt, answer in Arithmetic.problems(o, rng, problems):
            if prompt + answer not in seen and len(fresh) < problems:
                fresh.append((prompt, answer))
    longest = max(len(a) for _, a in fresh) + 2
    right, examples = 0, []
    for prompt, answer in fresh:
        got = "".join(generate(tm, prompt, length=longest, temperature=0, stop="\n")).rstrip("\n")
        right += got == answer
        if len(examples) < 6:
            examples.append(f"{prompt}{got} ({'right' if got == answer else 'want ' + answer})")
    return right / problems, examples


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1, help="seed of the fresh problems (the text's is the spec's)")
    a = ap.parse_args()

    import dlcli  # noqa: F401  (first: its thread-pool defaults must precede NumPy's OpenBLAS)
    from dlcli import data, run
    from dlcli.generate import open_text_model

    t0 = time.perf_counter()
    tm = open_text_model(a.checkpoint)
    s = tm.spec
    fresh_model, loss = run.build(s, vocab=tm.vocab)  # the spec's seed: the initialisation training started from
    ds = data.load(s, loss, tm.model.output_shape, vocab=tm.vocab)
    before = validation_bpc(fresh_model, loss, ds)
    after = validation_bpc(tm.model, loss, ds)
    print(f"{s.name}: validation tail {len(ds.x_val) * ds.x_val.shape[1]:,} tokens, vocabulary {tm.vocab.size}")
    print(f"bits per character: before training {before:.3f}, after {after:.3f}")
    if s.data.builtin == "arithmetic":
        acc, examples = arithmetic_accuracy(tm, s, a.problems, a.seed)
        print(f"generate, temperature 0: {acc:.1%} of {a.problems} fresh problems answered exactly")
        for e in examples:
            print("  " + e)
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
