"""Generated image and signal classification sets for convolutional networks.

`shapes`: small grayscale images (1, size, size) of one outlined shape each (square,
circle, triangle, cross) at a random position, size and rotation, with random brightness
and Gaussian noise: the class depends on the shape, not on where it is.
`signals`: 1-D signals (1, length) of four kinds (sine, square wave, sawtooth, noise
burst) with random frequency, phase, amplitude and offset, plus noise.

Both are vectorised NumPy over the whole set and seeded: the same options and seed give
the same arrays.
"""

import numpy as np

from ..options import Opt, boolean, fraction, int_at_least, non_negative_float, positive_int
from .tabular import Generated

SHAPE_CLASSES = ["square", "circle", "triangle", "cross"]
SIGNAL_CLASSES = ["sine", "square", "sawtooth", "burst"]


class Shapes:
    """Squares, circles, triangles and crosses drawn as outlines on a noisy background."""

    OPTIONS = {
        "samples": Opt(positive_int, 6000, "total over the four classes"),
        "size": Opt(int_at_least(12), 28, "image height and width in pixels"),
        "noise": Opt(non_negative_float, 0.3, "standard deviation of the pixel noise"),
        "rotate": Opt(boolean, True, "rotate each shape by a random angle"),
    }

    @staticmethod
    def generate(o, rng):
        n, size = o["samples"], o["size"]
        y = np.arange(n) % 4
        rng.shuffle(y)
        # Radius between 20% and 40% of the image; centre so the shape stays inside.
        radius = rng.uniform(0.2, 0.4, n) * size / 2 * 1.6
        margin = radius + 1
        cx = rng.uniform(margin, size - 1 - margin)
        cy = rng.uniform(margin, size - 1 - margin)
        angle = rng.uniform(0, 2 * np.pi, n) if o["rotate"] else np.zeros(n)
        grid = np.arange(size, dtype=np.float32)
        dx = grid[None, None, :] - cx[:, None, None].astype(np.float32)
        dy = grid[None, :, None] - cy[:, None, None].astype(np.float32)
        cos = np.cos(angle).astype(np.float32)[:, None, None]
        sin = np.sin(angle).astype(np.float32)[:, None, None]
        u = cos * dx + sin * dy  # coordinates in the shape's own frame
        v = -sin * dx + cos * dy
        r = radius.astype(np.float32)[:, None, None]
        t = np.float32(1.6)  # stroke width in pixels
        img = np.zeros((n, size, size), np.float32)
        # square: between two nested squares (max-norm)
        m = np.maximum(np.abs(u), np.abs(v))
        sq = (m <= r * 0.8) & (m > r * 0.8 - t)
        # circle: a ring
        d = np.sqrt(u * u + v * v)
        ci = (d <= r) & (d > r - t)
        # triangle (pointing along -v): inside the big one, outside the inset one
        tri_out = (v <= r * 0.7) & (np.abs(u) * 1.7 <= (v + r))
        tri_in = (v <= r * 0.7 - t) & (np.abs(u) * 1.7 <= (v + r) - 2.2 * t)
        tr = tri_out & ~tri_in
        # cross: two strokes through the centre
        cr = ((np.abs(u) <= t / 2 + 0.2) & (np.abs(v) <= r)) | ((np.abs(v) <= t / 2 + 0.2) & (np.abs(u) <= r))
        for k, mask in enumerate((sq, ci, tr, cr)):
            sel = y == k
            img[sel] = mask[sel]
        brightness = rng.uniform(0.6, 1.0, n).astype(np.float32)[:, None, None]
        img *= brightness
        if o["noise"] > 0:
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(o["noise"])
        return Generated(
            img[:, None, :, :],
            y.astype(np.int64),
            list(SHAPE_CLASSES),
            f"shapes: {n} images 1x{size}x{size}, 4 classes, noise {o['noise']}",
        )


class Signals:
    """Sine, square, sawtooth and noise-burst signals of random frequency and phase.

    Four options make it harder, each 0 (off) by default, so the default data stay as
    they were: `shift` rolls each signal in time by up to that fraction of its length,
    `scaling` multiplies its amplitude by a log-uniform factor in [e^-s, e^s], `shear`
    adds a linear trend from -a to +a across the signal (a uniform in [-shear, shear]), and
    `correlated_noise` adds a slowly wandering AR(1) noise (coefficient 0.95) of that
    standard deviation. A pattern that is local in time survives all four; a template
    over the whole signal, which is what an MLP learns, does not.
    """

    OPTIONS = {
        "samples": Opt(positive_int, 4000, "total over the four classes"),
        "length": Opt(int_at_least(16), 128, "samples per signal"),
        "noise": Opt(non_negative_float, 0.3, "standard deviation of the added noise"),
        "shift": Opt(fraction, 0.0, "random roll in time, up to this fraction of the length"),
        "scaling": Opt(non_negative_float, 0.0, "amplitude times e^u, u uniform in [-scaling, scaling]"),
        "shear": Opt(non_negative_float, 0.0, "a linear trend from -a to a, a uniform in [-shear, shear]"),
        "correlated_noise": Opt(non_negative_float, 0.0, "standard deviation of added AR(1) noise (0.95)"),
    }

    @staticmethod
    def generate(o, rng):
        n, length = o["samples"], o["length"]
        y = np.arange(n) % 4
        rng.shuffle(y)
        t = np.arange(length, dtype=np.float64)[None, :] / length
        cycles = rng.uniform(2, 8, n)[:, None]  # periods per signal
        phase = rng.uniform(0, 1, n)[:, None]
        amp = rng.uniform(0.5, 1.5, n)[:, None]
        offset = rng.uniform(-0.5, 0.5, n)[:, None]
        frac = np.mod(t * cycles + phase, 1.0)  # position within the period, [0, 1)
        sine = np.sin(2 * np.pi * frac)
        square = np.where(frac < 0.5, 1.0, -1.0)
        saw = 2 * frac - 1
        # burst: a window of noise somewhere in the signal, quiet elsewhere
        start = rng.uniform(0, 0.6, n)[:, None]
        width = rng.uniform(0.15, 0.4, n)[:, None]
        inside = (t >= start) & (t < start + width)
        burst = np.where(inside, rng.standard_normal((n, length)) * 1.2, 0.0)
        x = np.choose(y[:, None], [sine, square, saw, burst]) * amp + offset
        if o["noise"] > 0:
            x = x + rng.standard_normal(x.shape) * o["noise"]
        x = Signals.distort(x, o, rng)  # draws nothing when every distortion is off
        extras = [f"{k} {o[k]:g}" for k in ("shift", "scaling", "shear", "correlated_noise") if o.get(k)]
        return Generated(
            x.astype(np.float32)[:, None, :],
            y.astype(np.int64),
            list(SIGNAL_CLASSES),
            f"signals: {n} signals 1x{length}, 4 classes, noise {o['noise']}" + "".join(", " + e for e in extras),
        )

    @staticmethod
    def distort(x, o, rng):
        n, length = x.shape
        if o.get("shift"):
            most = int(o["shift"] * length)
            shifts = rng.integers(-most, most + 1, n)
            cols = (np.arange(length)[None, :] - shifts[:, None]) % length
            x = x[np.arange(n)[:, None], cols]
        if o.get("scaling"):
            x = x * np.exp(rng.uniform(-o["scaling"], o["scaling"], n))[:, None]
        if o.get("shear"):
            t = np.linspace(-1.0, 1.0, length)[None, :]
            x = x + rng.uniform(-o["shear"], o["shear"], n)[:, None] * t
        if o.get("correlated_noise"):
            rho = 0.95
            steps = rng.standard_normal((n, length)) * np.sqrt(1 - rho**2)
            walk = np.empty((n, length))
            walk[:, 0] = rng.standard_normal(n)
            for k in range(1, length):
                walk[:, k] = rho * walk[:, k - 1] + steps[:, k]
            x = x + walk * o["correlated_noise"]
        return x
