"""How gradients flow: per layer, per time step, over training, and what that means.

`inspect(source)` runs a spec's freshly initialised model (or a checkpoint's trained one)
forward and backward on a few batches of its data, without updating it, and collects:

- for every layer of the trained graph: the norm of the gradient of each parameter and of
  the layer's input (the backpropagated signal), as mean and spread over the batches;
- the update-to-weight ratio ||update|| / ||weight|| one optimizer step at the spec's
  learning rate would make (with the checkpoint's optimizer state when there is one);
- the fraction of dead units of each ReLU (never positive on any inspected sample) and of
  saturated outputs of each sigmoid (within 0.01 of 0 or 1) and tanh (|y| > 0.99);
- for recurrent layers: ||dL/dh_t|| for every time step (the layers' `record_time_grads`);
- a verdict: vanishing, exploding, dead ReLUs, saturation, or healthy.

`read_log(path)` turns a `train --log FILE --log-grad-norms` file into a layer x step grid.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import data, optim, precompile, run
from .errors import DataError

VANISHING = 1e-2  # first/last gradient-norm ratio below this: vanishing (two orders of magnitude)
EXPLODING = 1e2  # ... above this: exploding
DEAD = 0.5  # fraction of ReLU units never active on any inspected sample
SATURATED = 0.2  # fraction of saturated sigmoid/tanh outputs


@dataclass
class Verdict:
    kind: str  # vanishing | exploding | vanishing_through_time | exploding_through_time | dead_relu | saturation | healthy
    layer: str | None
    message: str
    suggestion: str

    @property
    def label(self):
        """The kind as people read it, as the message spells it: "vanishing through time"
        (the JSON keeps the identifier)."""
        return self.kind.replace("_", " ")

    def to_dict(self):
        return dict(self.__dict__)


@dataclass
class Inspection:
    source: str
    name: str
    batches: int
    batch_size: int
    optimizer: str
    lr: float
    loss: float
    layers: list  # dicts, see to_dict
    time_steps: list = field(default_factory=list)  # dicts: index, name, kind, grad_norms (T,)
    first_last_ratio: float | None = None
    verdicts: list = field(default_factory=list)
    clip_norm: float | None = None  # the spec's train.clip_norm: advice on explosions heeds it
    batches_asked: int | None = None  # --batches, when the training split had fewer

    @property
    def param_layers(self):
        return [l for l in self.layers if l["params"]]

    def to_dict(self):
        return {
            "source": self.source,
            "name": self.name,
            "batches": self.batches,
            "batches_asked": self.batches_asked,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "loss": self.loss,
            "layers": self.layers,
            "time_steps": self.time_steps,
            "first_last_ratio": self.first_last_ratio,
            "clip_norm": self.clip_norm,
            "verdicts": [v.to_dict() for v in self.verdicts],
        }


def _stats(values):
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std())}


def _offset(model, view):
    """Where a parameter view starts in the model's flat buffer."""
    base = model.params_flat.__array_interface__["data"][0]
    return (view.__array_interface__["data"][0] - base) // model.params_flat.itemsize


def inspect(source, batches=4, batch_size=None, seed=None) -> Inspection:
    """The figures behind both `--json` and `render`: measure a few training batches of
    SOURCE's model without updating it, then summarise and judge them."""
    s, ckpt = run.spec_or_checkpoint(source)
    if seed is not None:
        s = run.apply_overrides(s, seed=seed)
    # unfused: each ReLU's own input gradient and dead units
    model, loss = run.build(s, fuse=False, checkpoint=ckpt)
    helper = precompile.start(s, model, gradients_only=True)
    try:
        ds = data.load(s, loss, model.output_shape, vocab=run.vocabulary_of(ckpt))
        bs = min(batch_size or s.train.batch_size, max(len(ds.x_train), 1))  # the rows a batch really has
        m = _Measurements(model, loss, s, ckpt.optimizer if ckpt is not None else None)
        rng = np.random.default_rng([s.seed, 2, 0]) if s.data.shuffle else None
        # overflow shows in the figures (NaN, inf) and the verdict, not as NumPy's warnings
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for xb, yb in data.batches(ds.x_train, ds.y_train, bs, rng):
                if m.batches >= batches:
                    break
                m.record(xb, yb)
    finally:
        if helper is not None:
            helper.stop()
    if m.batches == 0:
        raise DataError(f"{source}: the training split has no samples to inspect")

    result = Inspection(
        str(source),
        s.name,
        m.batches,
        bs,
        s.optimizer.name,
        float(s.optimizer.lr),
        float(np.mean(m.losses)),
        m.layer_rows(),
        m.time_step_rows(),
        clip_norm=s.train.clip_norm,
        batches_asked=batches if m.batches < batches else None,
    )
    plist = result.param_layers
    if len(plist) >= 2:
        first, last = plist[0]["grad_norm"]["mean"], plist[-1]["grad_norm"]["mean"]
        result.first_last_ratio = ratio_of(first, last)
    result.verdicts = verdicts(result)
    return result


def shown_name(l, key="name"):
    """A layer row's name (or its `key`, e.g. kind) as the spec's reader knows it:
    'layers[7] dense (h)' for a layer named h in the spec (logs from before the label have none)."""
    return f"{l[key]} ({l['label']})" if l.get("label") else l[key]


def _batches_line(r):
    said = f"{r.batches} batch{'es' if r.batches != 1 else ''} of {r.batch_size}"
    if r.batches_asked:  # never fewer in silence
        said += f" (of {r.batches_asked} asked: all the training split has)"
    return said


def ratio_of(a, b):
    """a / b of two norms: inf when only b is 0 (a zero-initialised bias's update), NaN
    when either is NaN or both are 0 (never inf for a NaN: that would read as exploding)."""
    if math.isnan(a) or math.isnan(b) or (a == 0 and b == 0):
        return float("nan")
    return a / b if b > 0 else float("inf")


class _Measurements:
    """Per-batch figures of every node of the trained graph, gathered by `record` and
    summarised by `layer_rows` and `time_step_rows` (the dicts `Inspection` holds)."""

    def __init__(self, model, loss, s, ckpt_optim):
        self.model, self.loss, self.spec, self.ckpt_optim = model, loss, s, ckpt_optim
        self.layers = layers = model.trained
        self.recurrent = [l for l in layers if l.RECORDS_TIME_GRADS]
        for layer in self.recurrent:
            layer.record_time_grads = True
        n = len(layers)
        self.batches = 0
        self.losses = []
        self.input_norms = [[] for _ in range(n)]
        self.param_norms = [{name: [] for name in l.params} for l in layers]
        self.layer_norms = [[] for _ in range(n)]
        self.update_ratios = [{name: [] for name in l.params} for l in layers]
        self.layer_update = [[] for _ in range(n)]
        self.alive = [None] * n
        self.saturated = [[] for _ in range(n)]
        self.time_norms = {id(l): [] for l in self.recurrent}
        self.spans = [{name: (_offset(model, p), p.size) for name, p in l.params.items()} for l in layers]

    def record(self, xb, yb):
        """Forward and backward on one batch (dropout as in the first training epoch)."""
        self.batches += 1
        model = self.model
        for i, layer in enumerate(model.layers):
            layer.rng = np.random.default_rng([self.spec.seed, 3, 0, i])
        ids = model.trained[0].INTEGER_INPUT  # token ids stay ids
        h = model.forward(
            np.ascontiguousarray(xb, dtype=None if ids else model.dtype), training=True, observe=self._activity
        )
        value, d, _ = self.loss(h, yb)
        self.losses.append(float(value))
        model.backward(d, need_input_grad=True, observe=self._backpropagated)
        for k, layer in enumerate(self.layers):
            total = 0.0
            for name, g in layer.grads.items():
                n = float(np.linalg.norm(g.astype(np.float64)))
                self.param_norms[k][name].append(n)
                total += n * n
            if layer.params:
                self.layer_norms[k].append(math.sqrt(total))
        for layer in self.recurrent:
            if layer.time_grad_norms is not None:
                self.time_norms[id(layer)].append(np.asarray(layer.time_grad_norms, dtype=np.float64).copy())
        self._update_ratios()

    def _activity(self, k, layer, y):
        """Dead ReLU units (never positive on a batch with finite outputs) and saturated
        sigmoid/tanh outputs."""
        if layer.kind == "relu":
            y = np.asarray(y).reshape(len(y), -1)
            if not np.isfinite(y).all():  # overflow upstream (a -inf makes a 0 here): not dead units
                return
            active = (y > 0).any(axis=0)
            self.alive[k] = active if self.alive[k] is None else (self.alive[k] | active)
        elif layer.kind == "sigmoid":
            self.saturated[k].append(float(np.mean((y < 0.01) | (y > 0.99))))
        elif layer.kind == "tanh":
            self.saturated[k].append(float(np.mean(np.abs(y) > 0.99)))

    def _backpropagated(self, k, layer, dxs):
        """The norm of a node's input gradient: all of a merge node's inputs together."""
        self.input_norms[k].append(math.sqrt(sum(float(np.sum(np.asarray(g, dtype=np.float64) ** 2)) for g in dxs)))

    def _update_ratios(self):
        """One optimizer step on copies: what the update would be, relative to the weights."""
        model, s = self.model, self.spec
        opt = optim.make(s.optimizer, model.n_params(), model.dtype)
        if self.ckpt_optim:
            opt.load_state_dict(self.ckpt_optim)
        p = model.params_flat.copy()
        opt.step(p, model.grads_flat.copy(), s.optimizer.lr)
        delta = (p - model.params_flat).astype(np.float64)
        w = model.params_flat.astype(np.float64)
        for k, layer in enumerate(self.layers):
            du = dw = 0.0
            for name, (o, size) in self.spans[k].items():
                a = float(np.linalg.norm(delta[o : o + size]))
                b = float(np.linalg.norm(w[o : o + size]))
                self.update_ratios[k][name].append(ratio_of(a, b))
                du += a * a
                dw += b * b
            if layer.params:
                self.layer_update[k].append(ratio_of(math.sqrt(du), math.sqrt(dw)))

    def layer_rows(self):
        rows = []
        for k, layer in enumerate(self.layers):
            alive, saturated = self.alive[k], self.saturated[k]
            rows.append(
                {
                    "index": k,
                    "name": layer.name,
                    "label": layer.label,  # the spec's `name:`, if the layer has one
                    "kind": layer.kind,
                    # None: token ids, which have no gradient
                    "input_grad_norm": _stats(self.input_norms[k]) if self.input_norms[k] else None,
                    "grad_norm": _stats(self.layer_norms[k]) if layer.params else None,
                    "update_ratio": float(np.mean(self.layer_update[k])) if layer.params else None,
                    "params": {
                        name: {
                            **_stats(self.param_norms[k][name]),
                            "update_ratio": float(np.mean(self.update_ratios[k][name])),
                        }
                        for name in layer.params
                    },
                    "dead_fraction": float(1.0 - alive.mean()) if alive is not None else None,
                    "saturated_fraction": float(np.mean(saturated)) if saturated else None,
                }
            )
        return rows

    def time_step_rows(self):
        rows = []
        for layer in self.recurrent:
            got = self.time_norms[id(layer)]
            if not got:
                continue
            g = np.mean(got, axis=0)
            ok = g > 0
            # Fitted slope of log10 ||dL/dh_t|| over t: decades lost per step back in time.
            decay = float(np.polyfit(np.flatnonzero(ok), np.log10(g[ok]), 1)[0]) if ok.sum() >= 2 else None
            rows.append(
                {
                    "index": self.layers.index(layer),
                    "name": layer.name,
                    "label": layer.label,  # the spec's `name:`, if the layer has one
                    "kind": layer.kind,
                    "grad_norms": [float(v) for v in g],
                    "first_last_ratio": ratio_of(float(g[0]), float(g[-1])),
                    "decades_per_step": decay,
                }
            )
        return rows


def verdicts(r: Inspection):
    """What the figures mean, each with a one-line explanation and a suggestion."""
    out = []
    plist = r.param_layers
    kinds = {l["kind"] for l in r.layers}
    squashing = sorted(kinds & {"sigmoid", "tanh"})
    norms = [l["grad_norm"]["mean"] for l in plist]
    ratio = r.first_last_ratio
    if not math.isfinite(r.loss) or any(math.isnan(n) for n in norms):
        out.append(
            Verdict(
                "not finite",
                None,
                f"the loss is {r.loss} and gradient norms are NaN: values overflow float32 already in "
                "the forward pass, before any step",
                "check the data's scale (data.standardize: true) and the initial weights",
            )
        )
    elif any(not math.isfinite(n) for n in norms):
        out.append(
            Verdict(
                "exploding",
                None,
                "some gradient norms are not finite (overflow)",
                _clip_advice(r, "lower the learning rate"),
            )
        )
    elif ratio is not None and ratio < VANISHING:
        why = (
            f"each {'/'.join(squashing)} multiplies the backpropagated signal by its derivative "
            f"(at most {'0.25' if 'sigmoid' in squashing else '1'}), so it shrinks layer by layer"
            if squashing
            else "the backpropagated signal shrinks layer by layer"
        )
        out.append(
            Verdict(
                "vanishing",
                plist[0]["name"],
                f"vanishing gradients: the first layer's gradient is {ratio:.1e} x the last layer's; {why}",
                "use relu with He initialisation (ReLU passes the gradient unchanged where it is active), "
                "or fewer layers"
                if squashing
                else "check the initialisation scale, or use fewer layers",
            )
        )
    elif ratio is not None and ratio > EXPLODING:
        out.append(
            Verdict(
                "exploding",
                plist[0]["name"],
                f"exploding gradients: the first layer's gradient is {ratio:.1e} x the last layer's; "
                "the signal grows as it is multiplied back through the layers",
                _clip_advice(r, "lower the learning rate or the initial weights"),
            )
        )
    through_time = []  # (layer name, ||dL/dh_1|| / ||dL/dh_T||) of each recurrent layer
    for t in r.time_steps:
        g = t["grad_norms"]
        if len(g) < 2 or not g[-1] > 0:
            continue
        tr = g[0] / g[-1]
        through_time.append((t["name"], tr))
        gated = t["kind"] in ("lstm", "gru")
        if tr < VANISHING:
            out.append(
                Verdict(
                    "vanishing_through_time",
                    t["name"],
                    f"vanishing through time: ||dL/dh_1|| is {tr:.1e} x ||dL/dh_T|| in {t['name']}; "
                    + (
                        "even the gates lose the signal over these many steps"
                        if gated
                        else "each step back multiplies it by W_hh and tanh', so early inputs barely learn"
                    ),
                    "use lstm or gru: their gates keep gradients through time"
                    if not gated
                    else "shorten the sequences or add skip connections",
                )
            )
        elif tr > EXPLODING:
            out.append(
                Verdict(
                    "exploding_through_time",
                    t["name"],
                    f"exploding through time: ||dL/dh_1|| is {tr:.1e} x ||dL/dh_T|| in {t['name']}",
                    _clip_advice(r),
                )
            )
    for l in r.layers:
        if l["dead_fraction"] is not None and l["dead_fraction"] > DEAD:
            out.append(
                Verdict(
                    "dead_relu",
                    l["name"],
                    f"dead ReLUs: {l['dead_fraction']:.0%} of {shown_name(l)}'s units are never active on these batches, "
                    "so their gradient is zero and they stop learning",
                    "lower the learning rate, use He initialisation, or standardize the inputs",
                )
            )
        if l["saturated_fraction"] is not None and l["saturated_fraction"] > SATURATED:
            out.append(
                Verdict(
                    "saturation",
                    l["name"],
                    f"saturation: {l['saturated_fraction']:.0%} of {shown_name(l)}'s outputs sit where its derivative "
                    "is almost 0, so they pass almost no gradient back",
                    "standardize the inputs (data.standardize), use Glorot initialisation, or relu",
                )
            )
    if not out:
        msg = "healthy: gradients reach the first layer at a scale comparable to the last"
        if ratio is not None:
            msg += f" (ratio {ratio:.2g})"
        for name, tr in through_time:  # a close call shows as one (the vanishing line is VANISHING)
            msg += f"; through time ||dL/dh_1|| is {tr:.1e} x ||dL/dh_T|| in {name} (vanishing below {VANISHING:.0e})"
        out.append(Verdict("healthy", None, msg + "; " + _units_line(r.layers), "nothing to change"))
    return out


def _clip_advice(r, also=""):
    """What to do about an explosion: clip, unless the run already does (these norms are
    measured before clipping, so they read the same with it)."""
    if r.clip_norm is None:
        return "set train.clip_norm (clipping tames explosions)" + (f", or {also}" if also else "")
    return f"train.clip_norm {r.clip_norm:g} already caps each step's size; " + (also or "lower the learning rate")


def _units_line(layers):
    """What a healthy verdict says of dead and saturated units: 'none' only when the table
    shows none (a layer 25 % dead is below the DEAD line, not free of dead units)."""
    dead = max((l["dead_fraction"] for l in layers if l["dead_fraction"] is not None), default=0.0)
    saturated = max((l["saturated_fraction"] for l in layers if l["saturated_fraction"] is not None), default=0.0)
    if not dead and not saturated:
        return "no dead or saturated units"
    parts = []
    if dead:
        parts.append(f"dead ReLUs at most {dead:.0%} of a layer (a problem above {DEAD:.0%})")
    if saturated:
        parts.append(f"saturated outputs at most {saturated:.0%} of a layer (a problem above {SATURATED:.0%})")
    return "; ".join(parts)


# ---------------------------------------------------------------- the metrics log


@dataclass
class GradLog:
    path: str
    layers: list
    steps: list
    norms: dict  # layer name -> list of norms, one per step (None where missing)
    runs: int = 1  # runs with gradient norms in the log; the figures are the last one's

    def to_dict(self):
        return {
            "log": self.path,
            "layers": self.layers,
            "steps": self.steps,
            "grad_norms": self.norms,
            "runs": self.runs,
        }


def read_log(path):
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such metrics log")
    layers, steps, rows = [], [], []
    runs, spec = [], None  # finished segments (layers, steps, rows); the current run's spec name
    try:
        with open(p, encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a metrics log (byte {e.object[e.start]:#04x} is not UTF-8 text)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the metrics log: {e.strerror or e}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise DataError(f"{path}:{lineno}: not a JSON line") from None
        if isinstance(obj, dict) and obj.get("event") == "start" and obj.get("spec") != spec:
            spec = obj.get("spec")  # another model: its norms must not share one map with these
            if rows:
                runs.append((layers, steps, rows))
                layers, steps, rows = [], [], []
        if not isinstance(obj, dict) or obj.get("event") != "step":
            continue
        g = obj.get("layer_grad_norms")
        if not isinstance(g, dict):
            continue
        step = obj.get("step", len(steps) + 1)
        if isinstance(step, bool) or not isinstance(step, int):
            raise DataError(f"{path}:{lineno}: step is {step!r}, not a step number")
        if rows and step <= steps[-1]:
            runs.append((layers, steps, rows))  # counting began again: another run of the spec
            layers, steps, rows = [], [], []
        for name, value in g.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise DataError(f"{path}:{lineno}: layer_grad_norms.{name} is {value!r}, not a norm")
            if name not in layers:
                layers.append(name)
        steps.append(step)
        rows.append(g)
    if not layers and runs:  # the last run logged no norms: the last one that did
        layers, steps, rows = runs.pop()
    if not layers:  # no step lines, or only empty layer_grad_norms
        raise DataError(f"{path}: no per-layer gradient norms; train with --log {path} --log-grad-norms")
    norms = {n: [r.get(n) for r in rows] for n in layers}
    return GradLog(str(path), layers, steps, norms, runs=len(runs) + 1)


# ---------------------------------------------------------------- rendering

SHADES = " ░▒▓█"


def heat_map(log: GradLog, width=60):
    """Layer x step grid, one character per column of steps: darker is a larger norm (log scale)."""
    from rich.table import Table
    from rich.text import Text

    from .dashboard import fmt

    n = len(log.steps)
    cols = min(width, n)
    edges = [round(i * n / cols) for i in range(cols + 1)]
    grid = {}
    values = []
    for name in log.layers:
        row = []
        for a, b in zip(edges, edges[1:]):
            chunk = [v for v in log.norms[name][a:b] if v is not None and v > 0 and math.isfinite(v)]
            row.append(float(np.mean(np.log10(chunk))) if chunk else None)
        grid[name] = row
        values += [v for v in row if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    span = max(hi - lo, 1e-12)
    colors = ["blue", "cyan", "green", "yellow", "red"]
    t = Table.grid(padding=(0, 1))
    t.add_column(no_wrap=True, min_width=max(len(n) for n in log.layers))
    t.add_column(no_wrap=True)
    for name in log.layers:
        text = Text()
        for v in grid[name]:
            if v is None:
                text.append(" ")
                continue
            level = min(int((v - lo) / span * len(SHADES)), len(SHADES) - 1)
            text.append(SHADES[max(level, 1)], style=colors[level])
        t.add_row(name, text)
    which = f"the last of {log.runs} runs in the log, " if log.runs > 1 else ""
    legend = Text(f"{which}steps {log.steps[0]}..{log.steps[-1]} left to right; shade: {fmt(10**lo)} ", style="dim")
    for i, c in enumerate(SHADES[1:], 1):
        legend.append(c, style=colors[i])
    legend.append(f" {fmt(10**hi)} (log scale)", style="dim")
    from rich.console import Group

    return Group(t, legend)


def render(r: Inspection):
    """Rich renderables for one inspection: per-layer table, bars, time steps, verdict."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from .dashboard import fmt, log_bars

    t = Table(
        title=f"{r.name}: {_batches_line(r)}, loss {fmt(r.loss)}, {r.optimizer} lr {fmt(r.lr)}",
        title_justify="left",
        header_style="bold",
    )
    for col, just in (
        ("#", "right"),
        ("layer", "left"),
        ("tensor", "left"),
        ("grad norm", "right"),
        ("± sd", "right"),
        ("update/weight", "right"),
        ("dead/sat.", "right"),
    ):
        t.add_column(col, justify=just)
    for l in r.layers:
        idx, kind = str(l["index"]), shown_name(l, "kind")
        for name, p in l["params"].items():
            t.add_row(idx, kind, name, fmt(p["mean"]), fmt(p["std"]), fmt(p["update_ratio"]), "")
            idx = kind = ""
        extra = ""
        if l["dead_fraction"] is not None:
            extra = f"{l['dead_fraction']:.0%} dead"
        elif l["saturated_fraction"] is not None:
            extra = f"{l['saturated_fraction']:.0%} sat."
        ig = l["input_grad_norm"]
        t.add_row(
            idx,
            kind,
            Text("input" if ig else "input (ids)", style="dim"),
            fmt(ig["mean"]) if ig else "n/a",
            fmt(ig["std"]) if ig else "",
            "",
            extra,
        )
    parts = [t]
    plist = r.param_layers
    parts.append(
        Panel(
            log_bars([shown_name(l) for l in plist], [l["grad_norm"]["mean"] for l in plist], width=30),
            title="gradient norm per layer (log scale, first layer at the top)",
            title_align="left",
            border_style="blue",
        )
    )
    if r.time_steps:
        colors = ["cyan", "magenta", "yellow", "green"]
        series = []
        for i, ts in enumerate(r.time_steps):
            g = ts["grad_norms"]
            xs = [j / max(len(g) - 1, 1) for j in range(len(g))]
            series.append((f"{ts['name']} ||dL/dh_t||", xs, g, colors[i % len(colors)]))
        T = len(r.time_steps[0]["grad_norms"])
        parts.append(
            Panel(
                _PanelWideChart(series),
                title=f"gradient through time (log scale): step 1 left .. step {T} right; "
                "backpropagation runs right to left",
                title_align="left",
                border_style="blue",
            )
        )
    parts.append(verdict_text(r))
    return Group(*parts)


class _PanelWideChart:
    """A log-scale line chart as wide as the panel it is drawn in, laid out when Rich draws
    it: a chart of a fixed 50 columns left most of a wide panel empty, so the last time
    step was not at the right edge the title points to."""

    MOST_WIDTH = 100

    def __init__(self, series, height=8):
        self.series, self.height = series, height

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        return Measurement(20, min(options.max_width, self.MOST_WIDTH))

    def __rich_console__(self, console, options):
        from .dashboard import line_chart

        # a pipe's console is as wide as its content (cli.stdout_console): there, MOST_WIDTH
        yield line_chart(self.series, height=self.height, log=True, fit_width=min(options.max_width, self.MOST_WIDTH))


def verdict_text(r: Inspection, named=""):
    """The verdicts; `named`, the label of a side of --compare, leads each line."""
    from rich.text import Text

    text = Text()
    for v in r.verdicts:
        style = "green" if v.kind == "healthy" else "bold yellow"
        text.append(f"{named} verdict: " if named else "verdict: ", style="bold")
        text.append(v.message + "\n", style=style)
        text.append(f"  suggestion: {v.suggestion}\n", style="dim")
    return text


def compare_labels(a: Inspection, b: Inspection):
    """What names the two sides: the models' names, or their sources when the names are
    the same (a checkpoint beside its own spec read 'spirals_mlp' twice)."""
    if a.name != b.name:
        return a.name, b.name
    return f"{a.name} ({Path(a.source).name})", f"{b.name} ({Path(b.source).name})"


def render_compare(a: Inspection, b: Inspection):
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    from .dashboard import fmt, log_bars, log_scale

    t = Table(title="side by side", title_justify="left", header_style="bold")
    t.add_column("")
    label_a, label_b = compare_labels(a, b)
    t.add_column(label_a, justify="right")
    t.add_column(label_b, justify="right")
    pa, pb = a.param_layers, b.param_layers
    t.add_row(
        "first layer grad norm",
        fmt(pa[0]["grad_norm"]["mean"]) if pa else "-",
        fmt(pb[0]["grad_norm"]["mean"]) if pb else "-",
    )
    t.add_row(
        "last layer grad norm",
        fmt(pa[-1]["grad_norm"]["mean"]) if pa else "-",
        fmt(pb[-1]["grad_norm"]["mean"]) if pb else "-",
    )
    t.add_row("first / last", fmt(a.first_last_ratio), fmt(b.first_last_ratio))
    ta = a.time_steps[0]["grad_norms"] if a.time_steps else None
    tb = b.time_steps[0]["grad_norms"] if b.time_steps else None
    if ta or tb:
        t.add_row("||dL/dh_1|| / ||dL/dh_T||", fmt(ta[0] / ta[-1]) if ta else "-", fmt(tb[0] / tb[-1]) if tb else "-")
        da, db = (x.time_steps[0]["decades_per_step"] if x.time_steps else None for x in (a, b))
        t.add_row("decades lost per step back", fmt(da), fmt(db))
    t.add_row("verdict", ", ".join(v.label for v in a.verdicts), ", ".join(v.label for v in b.verdicts))
    from rich.columns import Columns

    norms = [[l["grad_norm"]["mean"] for l in x.param_layers] for x in (a, b)]
    scale = log_scale(norms[0] + norms[1])  # one scale, so the two models' bars compare
    bars = [
        Panel(
            log_bars([shown_name(l) for l in x.param_layers], n, width=16, scale=scale),
            title=label,
            border_style="blue",
            expand=False,
        )
        for x, n, label in zip((a, b), norms, (label_a, label_b))
    ]
    parts = [t, Columns(bars)]  # side by side when they fit, one above the other when not
    if ta or tb:
        series = []
        for label, g, c in ((label_a, ta, "cyan"), (label_b, tb, "magenta")):
            if g:
                series.append((label, [j / max(len(g) - 1, 1) for j in range(len(g))], g, c))
        parts.append(
            Panel(
                _PanelWideChart(series),
                title="||dL/dh_t|| (log scale): step 1 left .. step T right",
                title_align="left",
                border_style="blue",
            )
        )
    parts += [verdict_text(a, named=label_a), verdict_text(b, named=label_b)]
    return Group(*parts)
