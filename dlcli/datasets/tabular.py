"""Small 2-D classification sets and a 1-D regression: the classic toy problems."""

from dataclasses import dataclass, field

import numpy as np

from ..options import Opt, fraction, non_negative_float, positive_int


@dataclass
class Generated:
    x: np.ndarray
    y: np.ndarray  # int64 labels for classification, float targets for regression
    classes: list = field(default_factory=list)  # class names; empty for regression
    description: str = ""


class Spirals:
    """k interleaved spiral arms in the plane (the CS231n classic); one class per arm."""

    OPTIONS = {
        "classes": Opt(positive_int, 3),
        "samples": Opt(positive_int, 3000, "total over all classes"),
        "noise": Opt(non_negative_float, 0.2),
        "turns": Opt(non_negative_float, 1.0, "how far each arm winds"),
    }

    @staticmethod
    def generate(o, rng):
        k, n = o["classes"], o["samples"]
        per = n // k
        xs, ys = [], []
        for c in range(k):
            r = np.linspace(0.05, 1.0, per)
            t = np.linspace(c * 2 * np.pi / k, c * 2 * np.pi / k + o["turns"] * 2 * np.pi, per)
            t = t + rng.standard_normal(per) * o["noise"]
            xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
            ys.append(np.full(per, c))
        return Generated(
            np.concatenate(xs).astype(np.float32),
            np.concatenate(ys).astype(np.int64),
            [f"arm{c}" for c in range(k)],
            f"{k} spiral arms, {per * k} points",
        )


class Moons:
    """Two interleaving half circles."""

    OPTIONS = {"samples": Opt(positive_int, 2000), "noise": Opt(non_negative_float, 0.1)}

    @staticmethod
    def generate(o, rng):
        n = o["samples"] // 2
        t = rng.uniform(0, np.pi, size=n)
        upper = np.stack([np.cos(t), np.sin(t)], 1)
        t = rng.uniform(0, np.pi, size=n)
        lower = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)
        x = np.concatenate([upper, lower]) + rng.standard_normal((2 * n, 2)) * o["noise"]
        y = np.repeat(np.arange(2), n)
        return Generated(x.astype(np.float32), y.astype(np.int64), ["upper", "lower"], f"two moons, {2 * n} points")


class Xor:
    """Points in [-1, 1]^2 labelled by the sign of x0 * x1: not linearly separable."""

    OPTIONS = {"samples": Opt(positive_int, 2000), "noise": Opt(non_negative_float, 0.05)}

    @staticmethod
    def generate(o, rng):
        x = rng.uniform(-1, 1, size=(o["samples"], 2))
        y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
        x = x + rng.standard_normal(x.shape) * o["noise"]
        return Generated(x.astype(np.float32), y, ["different", "same"], f"xor, {o['samples']} points")


class Circles:
    """A disc inside a ring."""

    OPTIONS = {
        "samples": Opt(positive_int, 2000),
        "noise": Opt(non_negative_float, 0.05),
        "factor": Opt(fraction, 0.5, "inner radius relative to the outer"),
    }

    @staticmethod
    def generate(o, rng):
        n = o["samples"] // 2
        t = rng.uniform(0, 2 * np.pi, size=2 * n)
        r = np.concatenate([np.ones(n), np.full(n, o["factor"])])
        x = np.stack([r * np.cos(t), r * np.sin(t)], 1) + rng.standard_normal((2 * n, 2)) * o["noise"]
        y = np.repeat(np.arange(2), n)
        return Generated(x.astype(np.float32), y.astype(np.int64), ["outer", "inner"], f"circles, {2 * n} points")


class Sine:
    """Regression: y = sin(x) + noise on x in [-pi, pi] (times `periods`)."""

    OPTIONS = {
        "samples": Opt(positive_int, 2000),
        "noise": Opt(non_negative_float, 0.05),
        "periods": Opt(non_negative_float, 1.0),
    }

    @staticmethod
    def generate(o, rng):
        x = rng.uniform(-np.pi, np.pi, size=(o["samples"], 1)) * o["periods"]
        y = np.sin(x) + rng.standard_normal(x.shape) * o["noise"]
        return Generated(x.astype(np.float32), y.astype(np.float32), [], f"sine regression, {o['samples']} points")
