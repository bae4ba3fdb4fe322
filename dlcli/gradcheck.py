"""Finite-difference gradient checks in float64: the one helper every layer test calls.

For a layer: the scalar L = sum(R * layer(x)) with a fixed random R, so dL/dy = R and the
analytic gradients of every parameter and of the input can be compared with central
differences (L(p + eps) - L(p - eps)) / 2 eps. For a model: the real loss on a batch.

Kinks (ReLU at 0, max-pool ties) make central differences meaningless at that entry. We
detect them from the function itself: if the two one-sided slopes disagree by more than
the tolerance while the central slope disagrees with the analytic one, the loss is not
smooth across the step and the entry is marked "kink" rather than failed.

Randomness is pinned: each evaluation reseeds every layer's generator identically, so
dropout draws the same mask for the analytic pass and for every perturbed pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

DEFAULT_EPS = 1e-6
# An entry passes when its absolute error |a - n| <= atol or its relative error
# |a - n| / max(|a|, |n|, tiny) <= rtol. In float64 with eps = 1e-6 a correct gradient is
# typically within 1e-8 relative; a wrong one is off by O(1). (PyTorch's gradcheck uses
# atol 1e-5, rtol 1e-3; ours are stricter.)
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-6
TINY = 1e-12


@dataclass
class TensorCheck:
    layer: str  # e.g. "layers[2] dense", or "loss"
    tensor: str  # weight, bias, input, ...
    checked: int
    max_abs_error: float
    max_rel_error: float
    kinks: int
    status: str  # pass | FAIL | kink
    worst_index: tuple = field(default_factory=tuple)

    def to_dict(self):
        d = asdict(self)
        d["worst_index"] = list(self.worst_index)
        return d


def _pick_entries(size, samples, rng):
    if samples is None or size <= samples:
        return np.arange(size)
    return np.sort(rng.choice(size, samples, replace=False))


def compare(analytic, numeric, slopes_disagree, rtol, atol):
    """Per-entry verdicts: returns (abs errors, rel errors, failed mask, kink mask)."""
    abs_err = np.abs(analytic - numeric)
    rel_err = abs_err / np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), TINY)
    bad = (abs_err > atol) & (rel_err > rtol)
    kink = bad & slopes_disagree
    return abs_err, rel_err, bad & ~kink, kink


def check_tensor(f, array, analytic, layer, tensor, eps=DEFAULT_EPS, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL,
                 samples=None, rng=None):
    """Compare `analytic` (dL/d array) with central differences of f() on `array`,
    perturbed in place (and restored) entry by entry."""
    rng = rng or np.random.default_rng(0)
    flat = array.reshape(-1)
    ana = np.asarray(analytic, dtype=np.float64).reshape(-1)
    idx = _pick_entries(flat.size, samples, rng)
    f0 = f()
    numeric = np.empty(len(idx))
    disagree = np.zeros(len(idx), dtype=bool)
    for k, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        numeric[k] = (fp - fm) / (2 * eps)
        right, left = (fp - f0) / eps, (f0 - fm) / eps
        # Smooth f: the one-sided slopes differ by O(eps * f''), far below the tolerance.
        disagree[k] = abs(right - left) > max(10 * atol, 1e-4 * max(abs(right), abs(left)))
    a = ana[idx]
    abs_err, rel_err, failed, kink = compare(a, numeric, disagree, rtol, atol)
    worst = int(np.argmax(np.where(kink, -1, abs_err))) if len(idx) else 0
    status = "FAIL" if failed.any() else ("kink" if kink.any() else "pass")
    considered = ~kink
    return TensorCheck(
        layer,
        tensor,
        len(idx),
        float(abs_err[considered].max()) if considered.any() else 0.0,
        float(rel_err[considered].max()) if considered.any() else 0.0,
        int(kink.sum()),
        status,
        tuple(int(v) for v in np.unravel_index(idx[worst], array.shape)) if len(idx) else (),
    )


def _reseed(layers, seed):
    for i, layer in enumerate(layers):
        layer.rng = np.random.default_rng([seed, i])


def check_layer(layer, x, eps=DEFAULT_EPS, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, samples=None, seed=0,
                training=True):
    """Check one built float64 layer on input x: every parameter and the input."""
    rng = np.random.default_rng([seed, 99])

    def run(inp):
        _reseed([layer], seed)
        return layer.forward(inp, training)

    y = run(x)
    r = rng.standard_normal(y.shape)
    dx = layer.backward(r.copy(), need_dx=True)
    analytic = {name: g.copy() for name, g in layer.grads.items()}
    name = layer.name
    results = []
    for pname, p in layer.params.items():
        results.append(check_tensor(lambda: float(np.sum(run(x) * r)), p, analytic[pname], name, pname,
                                    eps, rtol, atol, samples, rng))
    xc = np.array(x, dtype=np.float64, copy=True)
    results.append(check_tensor(lambda: float(np.sum(run(xc) * r)), xc, dx, name, "input",
                                eps, rtol, atol, samples, rng))
    return results


def check_model(model, loss, x, y, eps=DEFAULT_EPS, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, samples=None, seed=0,
                training=True):
    """Check a float64 model end to end with its real loss: every layer's parameters,
    every layer's input (the backpropagated signal), and the loss's own gradient."""
    rng = np.random.default_rng([seed, 98])
    layers = model.trained

    def forward_from(k, inp):
        _reseed(layers, seed)
        for layer in layers[k:]:
            inp = layer.forward(inp, training)
        return inp

    def loss_of(out):
        return float(loss(out, y)[0])

    # Analytic pass, keeping every layer's input and input gradient.
    _reseed(layers, seed)
    inputs = []
    h = x
    for layer in layers:
        inputs.append(h)
        h = layer.forward(h, training)
    out = h
    _, dout, _ = loss(out, y)
    results = []
    input_grads = [None] * len(layers)
    d = dout.copy()
    for k in range(len(layers) - 1, -1, -1):
        d = layers[k].backward(d, need_dx=True)
        input_grads[k] = d.copy()
    param_grads = [{n: g.copy() for n, g in layer.grads.items()} for layer in layers]

    outc = np.array(out, dtype=np.float64, copy=True)
    results.append(check_tensor(lambda: loss_of(outc), outc, dout, "loss", f"{loss.name} input",
                                eps, rtol, atol, samples, rng))
    for k, layer in enumerate(layers):
        for pname, p in layer.params.items():
            results.append(check_tensor(lambda: loss_of(forward_from(0, x)), p, param_grads[k][pname],
                                        layer.name, pname, eps, rtol, atol, samples, rng))
        xin = np.array(inputs[k], dtype=np.float64, copy=True)
        results.append(check_tensor(lambda k=k, xin=xin: loss_of(forward_from(k, xin)), xin, input_grads[k],
                                    layer.name, "input", eps, rtol, atol, samples, rng))
    return results


def assert_gradients_ok(results):
    """For tests: raise AssertionError naming every failed tensor."""
    failed = [r for r in results if r.status == "FAIL"]
    assert not failed, "gradient check failed: " + "; ".join(
        f"{r.layer} {r.tensor}: max abs {r.max_abs_error:.2e}, max rel {r.max_rel_error:.2e} at {r.worst_index}"
        for r in failed
    )
