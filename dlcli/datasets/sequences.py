"""Sequence tasks for recurrent networks, generated and seeded (input shape (T, features))."""

import numpy as np

from ..options import Opt, boolean, int_at_least, non_negative_float, positive_int
from .tabular import Generated


class Adding:
    """The adding problem (Hochreiter & Schmidhuber 1997). Each step has two channels: a
    value uniform in [0, 1] and a marker that is 1 at exactly two positions (one in each
    half of the sequence) and 0 elsewhere. The target is the sum of the two marked values.
    Predicting the constant 1.0 gives MSE = 1/6 ~ 0.167: the baseline to beat."""

    OPTIONS = {
        "length": Opt(int_at_least(2), 50, "time steps T"),
        "samples": Opt(positive_int, 10000),
    }

    @staticmethod
    def generate(o, rng):
        n, T = o["samples"], o["length"]
        values = rng.uniform(0, 1, size=(n, T))
        half = T // 2
        first = rng.integers(0, half, size=n)
        second = rng.integers(half, T, size=n)
        markers = np.zeros((n, T))
        rows = np.arange(n)
        markers[rows, first] = 1
        markers[rows, second] = 1
        x = np.stack([values, markers], axis=2)
        y = (values[rows, first] + values[rows, second]).reshape(n, 1)
        return Generated(
            x.astype(np.float32),
            y.astype(np.float32),
            [],
            f"adding problem, T={T}, {n} sequences (constant-1 baseline MSE 0.167)",
        )


class TemporalOrder:
    """Temporal order (after Hochreiter & Schmidhuber 1997): a noisy sequence of
    distractor symbols with two marker symbols, X or Y, at random positions; the class is
    the order in which they appear: XX, XY, YX or YY (4 classes). Each step is a one-hot
    over 6 symbols (X, Y and 4 distractors) plus Gaussian noise of std `noise`."""

    OPTIONS = {
        "length": Opt(int_at_least(4), 30, "time steps T"),
        "samples": Opt(positive_int, 4000),
        "noise": Opt(non_negative_float, 0.1),
    }
    CLASSES = ["XX", "XY", "YX", "YY"]

    @staticmethod
    def generate(o, rng):
        n, T = o["samples"], o["length"]
        sym = rng.integers(2, 6, size=(n, T))  # distractors
        rows = np.arange(n)
        p1 = rng.integers(0, T // 2, size=n)
        p2 = rng.integers(T // 2, T, size=n)
        a = rng.integers(0, 2, size=n)
        b = rng.integers(0, 2, size=n)
        sym[rows, p1] = a
        sym[rows, p2] = b
        x = np.eye(6)[sym] + rng.standard_normal((n, T, 6)) * o["noise"]
        y = 2 * a + b
        return Generated(
            x.astype(np.float32),
            y.astype(np.int64),
            list(TemporalOrder.CLASSES),
            f"temporal order, T={T}, {n} sequences, 4 classes",
        )


class SineNext:
    """Next-value prediction on a noisy sine wave: the input is T noisy samples of
    sin(w t + phase) (random frequency and phase per sequence), the target the next clean
    value (sequence-to-one, shape (1,)); with `seq2seq: true` the target is the next value at
    every step, shape (T, 1), for a `return_sequences` layer followed by `dense: 1`."""

    OPTIONS = {
        "length": Opt(int_at_least(2), 40, "time steps T"),
        "samples": Opt(positive_int, 4000),
        "noise": Opt(non_negative_float, 0.05),
        "seq2seq": Opt(boolean, False, "target at every step"),
    }

    @staticmethod
    def generate(o, rng):
        n, T = o["samples"], o["length"]
        w = rng.uniform(0.1, 0.4, size=(n, 1))
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
        t = np.arange(T + 1)[None, :]
        clean = np.sin(w * t + phase)
        x = (clean[:, :T] + rng.standard_normal((n, T)) * o["noise"])[:, :, None]
        y = clean[:, 1:, None] if o["seq2seq"] else clean[:, T:]
        return Generated(x.astype(np.float32), y.astype(np.float32), [], f"noisy sine next value, T={T}, {n} sequences")
