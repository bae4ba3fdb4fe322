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

from . import precompile, run
from .errors import DlcliError
from .layers import LAYERS
from .model import Model
from .options import MISSING, UNKNOWN, OptionError, did_you_mean, parse_options

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
    max_abs_error: float | None  # over the entries where the loss is smooth; None: every entry a kink
    max_rel_error: float | None
    kinks: int
    status: str  # pass | FAIL | kink | n/a (an input of token ids: nothing to check)
    worst_index: tuple = field(default_factory=tuple)
    label: str | None = None  # the spec's `name:` for the layer, if it has one

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


def check_tensor(
    f, array, analytic, layer, tensor, eps=DEFAULT_EPS, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, samples=None, rng=None
):
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
        float(abs_err[considered].max()) if considered.any() else None,  # None: nothing compared
        float(rel_err[considered].max()) if considered.any() else None,
        int(kink.sum()),
        status,
        tuple(int(v) for v in np.unravel_index(idx[worst], array.shape)) if len(idx) else (),
    )


def _reseed(layers, seed):
    for i, layer in enumerate(layers):
        layer.rng = np.random.default_rng([seed, i])


def check_layer(layer, x, eps=DEFAULT_EPS, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, samples=None, seed=0, training=True):
    """Check one built float64 layer on input x (a list for a merge layer): every
    parameter and every input."""
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
        results.append(
            check_tensor(
                lambda: float(np.sum(run(x) * r)), p, analytic[pname], name, pname, eps, rtol, atol, samples, rng
            )
        )
    if layer.INTEGER_INPUT:
        results.append(not_differentiable(name))
        return results
    xs = [np.array(a, dtype=np.float64, copy=True) for a in x] if layer.MERGE else [np.array(x, dtype=np.float64)]
    dxs = dx if layer.MERGE else [dx]
    for k, (xc, d) in enumerate(zip(xs, dxs)):
        tensor = f"input[{k}]" if layer.MERGE else "input"
        results.append(
            check_tensor(
                lambda: float(np.sum(run(xs if layer.MERGE else xs[0]) * r)),
                xc,
                d,
                name,
                tensor,
                eps,
                rtol,
                atol,
                samples,
                rng,
            )
        )
    return results


def not_differentiable(layer):
    """The row for an input of token ids: a table says so rather than leaving it out."""
    return TensorCheck(layer, "input (token ids: not differentiable)", 0, None, None, 0, "n/a")


def check_model(
    model, loss, x, y, eps=DEFAULT_EPS, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, samples=None, seed=0, training=True
):
    """Check a float64 model end to end with its real loss: every node's parameters,
    every input of every node (the backpropagated signal; a merge node has several),
    and the loss's own gradient. A perturbation at node k reruns nodes k onwards only."""
    rng = np.random.default_rng([seed, 98])
    layers = model.trained

    def loss_of(out):
        return float(loss(out, y)[0])

    def loss_from(k, replace=None):  # every call reseeds all layers: dropout draws the same masks
        _reseed(layers, seed)
        outs = model.run_nodes(x, training, start=k, outputs=cached, replace=replace)
        return loss_of(outs[model.output_index])

    # Analytic pass. Copies: a layer may reuse its output buffer on the next forward pass.
    _reseed(layers, seed)
    cached = [np.array(o, dtype=np.float64, copy=True) for o in model.run_nodes(x, training)]
    out = cached[model.output_index]
    _, dout, _ = loss(out, y)
    input_grads = {}
    model.backward(
        dout.copy(),
        need_input_grad=True,
        observe=lambda k, layer, dxs: input_grads.__setitem__(k, [np.array(d, copy=True) for d in dxs]),
    )
    param_grads = [{n: g.copy() for n, g in layer.grads.items()} for layer in layers]

    outc = np.array(out, dtype=np.float64, copy=True)
    results = [
        check_tensor(lambda: loss_of(outc), outc, dout, "loss", f"{loss.name} input", eps, rtol, atol, samples, rng)
    ]
    for k, layer in enumerate(layers):
        for pname, p in layer.params.items():
            results.append(
                check_tensor(
                    lambda k=k: loss_from(k), p, param_grads[k][pname], layer.name, pname, eps, rtol, atol, samples, rng
                )
            )
        if layer.INTEGER_INPUT:
            results.append(not_differentiable(layer.name))
            continue
        if k not in input_grads:  # the output does not depend on this node (cannot happen in a valid spec)
            continue
        sources = model.inputs[k]
        for slot, j in enumerate(sources):
            xin = np.array(x if j < 0 else cached[j], dtype=np.float64, copy=True)
            results.append(
                check_tensor(
                    lambda k=k, slot=slot, xin=xin: loss_from(k, replace=(k, slot, xin)),
                    xin,
                    input_grads[k][slot],
                    layer.name,
                    f"input[{slot}]" if len(sources) > 1 else "input",
                    eps,
                    rtol,
                    atol,
                    samples,
                    rng,
                )
            )
    labels = {layer.name: layer.label for layer in layers}  # the names a spec gave its layers
    for r in results:
        r.label = labels.get(r.layer)
    return results


def assert_gradients_ok(results):
    """For tests: raise AssertionError naming every failed tensor."""
    failed = [r for r in results if r.status == "FAIL"]
    assert not failed, "gradient check failed: " + "; ".join(
        f"{r.layer} {r.tensor}: max abs {r.max_abs_error:.2e}, max rel {r.max_rel_error:.2e} at {r.worst_index}"
        for r in failed
    )


# ---------------------------------------------------------------- the command's side


class UsageError(DlcliError):
    """A layer type that does not exist or cannot be checked on its own."""

    exit_code = 2


DEFAULT_SAMPLES = 30  # entries per tensor: a moderate spec checks in seconds
DEFAULT_BATCH = 4


@dataclass
class Section:
    """One checked graph: a spec's model (plain or fused) or one layer type on its own."""

    title: str
    results: list
    kind: str = ""  # set for a layer type checked on its own

    @property
    def passed(self):
        return not any(r.status == "FAIL" for r in self.results)


@dataclass
class Report:
    sections: list
    eps: float
    rtol: float
    atol: float
    samples: int | None
    batch_size: int
    seed: int
    per_kind: bool = False  # layer types on their own (--layer/--all) rather than a spec's model

    @property
    def results(self):
        return [r for s in self.sections for r in s.results]

    @property
    def passed(self):
        return all(s.passed for s in self.sections)

    def counts(self):
        c = {"pass": 0, "kink": 0, "FAIL": 0, "n/a": 0}
        for r in self.results:
            c[r.status] += 1
        return c

    def summary_line(self):
        return " ".join(self.summary_pieces())

    def summary_pieces(self):
        """The summary line in the pieces a narrow terminal may break it between: the
        counts stay together, so a wrapped line never leaves "FAIL" on its own."""
        c = self.counts()
        entries = sum(r.checked for r in self.results)
        verdict = "all gradients match" if self.passed else "gradient check FAILED"
        if self.passed and c["kink"] and not c["pass"]:  # nothing was compared where the loss is smooth
            verdict = "no tensor passed: every one hit kinks (a smaller --eps may help)"
        what = "layer type" if self.per_kind else "graph"
        counts = f"{c['pass']} pass, {c['kink']} kink, {c['FAIL']} FAIL"
        return [
            f"{verdict}:",
            f"{len(self.results)} tensor{'s' if len(self.results) != 1 else ''} ({entries} entries)",
            f"in {len(self.sections)} {what}{'s' if len(self.sections) != 1 else ''}:",
            *([counts + ",", f"{c['n/a']} not differentiable"] if c["n/a"] else [counts]),
        ]

    def to_dict(self):
        rows = []
        for sec in self.sections:
            for r in sec.results:
                index, kind = split_layer_name(r.layer)
                rows.append({"graph": sec.title, "layer_index": index, "layer_type": kind, **r.to_dict()})
        return {
            "passed": self.passed,
            "exit_code": 0 if self.passed else 1,
            "eps": self.eps,
            "rtol": self.rtol,
            "atol": self.atol,
            "samples": self.samples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "summary": {**self.counts(), "tensors": len(self.results), "line": self.summary_line()},
            "checks": rows,
        }


def split_layer_name(name):
    """'layers[2] dense' -> (2, 'dense'); 'loss' -> (None, 'loss'); 'lstm' -> (None, 'lstm')."""
    if name.startswith("layers[") and "]" in name:
        head, _, kind = name.partition("] ")
        try:
            return int(head[len("layers[") :]), kind
        except ValueError:
            pass
    return None, name


def spec_inputs(s, model, loss, batch_size, seed):
    """Small random float64 inputs of the spec's input shape, and targets the loss accepts."""
    rng = np.random.default_rng([seed, 7])
    x = random_input(model.layers[0], (batch_size,) + tuple(model.input_shape), rng)
    # The trained graph's output (logits for fused losses) is what the loss sees.
    return x, loss.random_targets(rng, batch_size, model.trained[-1].output_shape)


def random_input(first_layer, shape, rng):
    """Standard normal inputs, or token ids for a layer that takes them."""
    if first_layer.INTEGER_INPUT:
        return rng.integers(0, first_layer.vocab_size, size=shape)
    return rng.standard_normal(shape)


def check_spec(
    s,
    eps=DEFAULT_EPS,
    rtol=DEFAULT_RTOL,
    atol=DEFAULT_ATOL,
    samples=DEFAULT_SAMPLES,
    batch_size=DEFAULT_BATCH,
    seed=0,
    fused=True,
):
    """Check a spec's model end to end with its loss, in float64: first as written, then
    (when the model has any) with the Dense+ReLU fusion training uses. Kernels not yet
    compiled for float64 are compiled by this process and a helper (precompile.py)."""
    sections = []
    builds = [(fuse, *run.build(s, dtype=np.float64, fuse=fuse)) for fuse in ((False, True) if fused else (False,))]
    helper = precompile.start(s, builds[-1][1], gradients_only=True, dtype="float64")  # the fused one, as training
    try:
        for fuse, model, loss in builds:
            if fuse and not any(layer.fuse_relu for layer in model.trained):
                continue
            x, y = spec_inputs(s, model, loss, batch_size, seed)
            results = check_model(model, loss, x, y, eps, rtol, atol, samples, seed)
            sections.append(Section(f"{s.name} ({'fused dense+relu' if fuse else 'as written'})", results))
    finally:
        if helper is not None:
            helper.stop()
    return Report(sections, eps, rtol, atol, samples, batch_size, seed)


def example_layer(kind, dtype=np.float64, seed=0):
    """A built layer of this kind from its EXAMPLE, and the example's one-sample input shape."""
    if kind not in LAYERS:
        raise UsageError(f"unknown layer type '{kind}'{did_you_mean(kind, LAYERS)}; known: {', '.join(LAYERS)}")
    cls = LAYERS[kind]
    example = getattr(cls, "EXAMPLE", None)
    if not example or "input" not in example:
        raise UsageError(f"layer type '{kind}' has no EXAMPLE (options and input shape) to check")
    given = example.get("options", {})
    try:
        options = parse_options(cls.OPTIONS, given)
    except OptionError as e:
        if e.problem is UNKNOWN:
            raise UsageError(
                f"layer type '{kind}': its EXAMPLE has unknown options {sorted(set(given) - set(cls.OPTIONS))}"
            ) from None
        if e.problem is MISSING:
            raise UsageError(f"layer type '{kind}': its EXAMPLE lacks the required option '{e.key}'") from None
        raise UsageError(f"layer type '{kind}': its EXAMPLE's {e.key} {e.problem}, got {e.value!r}") from None
    layer = cls(dtype=dtype, rng=np.random.default_rng([seed, 0]), name=kind, **options)
    if cls.MERGE:  # several inputs: built on its own (its parameters need no flat buffer)
        shapes = [tuple(s) for s in example["input"]]
        layer.build(shapes)
        return layer, shapes
    Model([layer], example["input"], dtype=dtype, loss=None, fuse=False)  # builds; flat buffers
    return layer, tuple(example["input"])


def check_kind(
    kind,
    eps=DEFAULT_EPS,
    rtol=DEFAULT_RTOL,
    atol=DEFAULT_ATOL,
    samples=DEFAULT_SAMPLES,
    batch_size=DEFAULT_BATCH,
    seed=0,
):
    """One built-in layer type on its own, on its EXAMPLE: Section of TensorChecks."""
    layer, shape = example_layer(kind, seed=seed)
    rng = np.random.default_rng([seed, 5])
    x = [rng.standard_normal((batch_size,) + s) for s in shape] if layer.MERGE else None
    if not layer.MERGE:
        x = random_input(layer, (batch_size,) + shape, rng)
    results = check_layer(layer, x, eps, rtol, atol, samples, seed)

    def compact(v):
        return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    opts = " ".join(f"{k}={compact(v)}" for k, v in layer.EXAMPLE.get("options", {}).items())
    shapes = shape if layer.MERGE else [shape]
    on = " + ".join(compact((batch_size,) + tuple(s)) for s in shapes)
    return Section(f"{kind} on {on}" + (f" ({opts})" if opts else ""), results, kind)


def check_kinds(
    kinds,
    eps=DEFAULT_EPS,
    rtol=DEFAULT_RTOL,
    atol=DEFAULT_ATOL,
    samples=DEFAULT_SAMPLES,
    batch_size=DEFAULT_BATCH,
    seed=0,
):
    sections = [check_kind(k, eps, rtol, atol, samples, batch_size, seed) for k in kinds]
    return Report(sections, eps, rtol, atol, samples, batch_size, seed, per_kind=True)


def report_tables(report):
    """Rich tables: one per checked model graph, or one for all the layer types checked."""
    from rich.table import Table
    from rich.text import Text

    style = {"pass": "green", "FAIL": "bold red", "kink": "yellow", "n/a": "dim"}

    def new_table(title, first):
        t = Table(title=title, title_justify="left", header_style="bold")
        t.add_column(first, justify="left" if report.per_kind else "right", no_wrap=True)
        if not report.per_kind:
            t.add_column("layer")
        t.add_column("tensor")
        t.add_column("checked", justify="right")
        t.add_column("max abs err", justify="right")
        t.add_column("max rel err", justify="right")
        t.add_column("status", no_wrap=True)  # never cropped: the row's verdict
        if report.per_kind:
            t.add_column("example: batch x input (options)", overflow="fold")
        return t

    def add(t, first, r, second=None):
        index, kind = split_layer_name(r.layer)
        status = r.status + (f" ({r.kinks})" if r.kinks else "")
        cells = [
            first,
            (kind + (f" ({r.label})" if r.label else "")) if second is None else second,
            r.tensor,
            str(r.checked),
            f"{r.max_abs_error:.1e}" if r.max_abs_error is not None else "-",
            f"{r.max_rel_error:.1e}" if r.max_rel_error is not None else "-",
            Text(status, style=style[r.status]),
        ]
        if report.per_kind:
            cells.append(second or "")
            del cells[1]
        t.add_row(*cells)

    if report.per_kind:
        t = new_table(
            f"layer types on their own (eps {report.eps:g}, rtol {report.rtol:g}, atol {report.atol:g})", "layer"
        )
        for sec in report.sections:
            for j, r in enumerate(sec.results):
                example = sec.title[len(sec.kind) + 1 :] if sec.title.startswith(sec.kind + " ") else sec.title
                add(t, sec.kind if j == 0 else "", r, example if j == 0 else "")
            t.add_section()
        return [t]
    tables = []
    for sec in report.sections:
        t = new_table(sec.title, "#")
        for r in sec.results:
            index, _ = split_layer_name(r.layer)
            add(t, "" if index is None else str(index), r)
        tables.append(t)
    return tables
