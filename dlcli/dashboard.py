"""What `dlcli train` shows: a Rich Live dashboard on a terminal, plain lines elsewhere.

The dashboard is a callback: it only reads events, so it can be rendered into a recorded
console in tests exactly as it appears on a terminal.
"""

from __future__ import annotations

import math
import threading
import time

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .spec import as_yaml
from .text import bits_name, scores
from .train import Callback

BRAILLE_BASE = 0x2800
# dot bit for (column 0..1, row 0..3) within one braille cell
BRAILLE_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


def fmt(v, digits=4):
    if v is None:
        return "-"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.2e}"
    return f"{v:.{digits}f}"


def fmt_metric(name, v):
    """A monitored metric (val_loss, val_acc) as the epoch lines print it: a loss by `fmt`,
    so a tiny loss keeps its digits instead of showing 0.0000; an accuracy with 4 decimals."""
    return fmt(v) if name.endswith("loss") else f"{v:.4f}"


def fmt_duration(seconds):
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def line_chart(series, width=60, height=10, log=False, fit_width=None):
    """Braille line chart of several series sharing one y axis.

    series: list of (label, xs, ys, style) with xs in [0, 1] (fraction of the run).
    Returns a Rich Text with a y-axis label column and a legend line. With `fit_width`,
    the plot is as wide as fits in that many cells, labels included, so no row ever wraps.
    """
    points = [(x, y) for _, xs, ys, _ in series for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    if log:
        points = [(x, y) for x, y in points if y > 0]
    out = Text(no_wrap=True, overflow="crop")
    if not points:
        out.append("(waiting for the first steps)\n", style="dim")
        return out
    tf = (lambda v: math.log10(v)) if log else (lambda v: v)
    lo = min(tf(y) for _, y in points)
    hi = max(tf(y) for _, y in points)
    if hi - lo < 1e-12:
        hi, lo = hi + 0.5, lo - 0.5
    axis = lambda v: fmt(10**v if log else v, 3)  # noqa: E731
    labels = {0: axis(hi), height - 1: axis(lo), (height - 1) // 2: axis((hi + lo) / 2)}
    pad = max(len(s) for s in labels.values())
    if fit_width is not None:
        width = max(fit_width - pad - 2, 1)
    cols, rows = width * 2, height * 4
    cells = [[0] * width for _ in range(height)]
    styles = [[None] * width for _ in range(height)]
    for _, xs, ys, style in series:
        prev = None
        for x, y in zip(xs, ys):
            if y is None or not math.isfinite(y) or (log and y <= 0):
                prev = None
                continue
            cx = min(int(x * (cols - 1) + 0.5), cols - 1)
            cy = min(int((tf(y) - lo) / (hi - lo) * (rows - 1) + 0.5), rows - 1)
            cy = rows - 1 - cy
            steps = [(cx, cy)] if prev is None else _segment(prev, (cx, cy))
            for px, py in steps:
                r, c = py // 4, px // 2
                cells[r][c] |= BRAILLE_BITS[px % 2][py % 4]
                styles[r][c] = style
            prev = (cx, cy)
    for r in range(height):
        out.append(labels.get(r, "").rjust(pad) + " ┤", style="dim")
        for c in range(width):
            ch = chr(BRAILLE_BASE + cells[r][c]) if cells[r][c] else " "
            out.append(ch, style=styles[r][c])
        out.append("\n")
    legend = Text(" " * (pad + 2))
    for i, (label, _, _, style) in enumerate(series):
        legend.append(("   " if i else "") + "━━ ", style=style)
        legend.append(label)
    out.append_text(legend)
    return out


def _segment(a, b):
    """Points from a to b (exclusive of a), so a line has no gaps."""
    (x0, y0), (x1, y1) = a, b
    n = max(abs(x1 - x0), abs(y1 - y0), 1)
    return [(x0 + (x1 - x0) * i // n, y0 + (y1 - y0) * i // n) for i in range(1, n + 1)]


def log_scale(values):
    """(lo, hi) decades that hold every positive finite value, or None if there is none."""
    finite = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not finite:
        return None
    lo = math.floor(math.log10(min(finite))) - 1
    return lo, max(math.ceil(math.log10(max(finite))), lo + 1)


def log_bars(names, values, width=30, scale=None, notes=None, room=None):
    """Horizontal bars on a log10 scale, one per layer, with the value printed. `scale`
    (from `log_scale`) fixes the decades, so that bars in two tables compare. The name and
    value columns never shrink: a narrow terminal gets shorter bars, not "0.…". A row with
    a note (a merge point of a graph) shows the note in place of a bar: a string, or its
    wordings from the longest to the shortest, of which the longest that fits is shown;
    the bar column widens up to `room` cells for the longest."""
    notes = [(n,) if isinstance(n, str) else n for n in notes or [None] * len(names)]
    texts = ["" if note is not None else fmt(v) for v, note in zip(values, notes)]
    longest_note = max((len(n[0]) for n in notes if n is not None), default=0)
    note_w = max(width, min(longest_note, room or width))
    table = Table.grid(padding=(0, 1))
    table.add_column(justify="left", no_wrap=True, min_width=max(map(len, names), default=0))
    table.add_column(no_wrap=True, width=note_w)
    table.add_column(justify="right", no_wrap=True, min_width=max(map(len, texts), default=1))
    scale = scale or log_scale(values)
    lo, hi = scale or (0, 1)
    for n, v, t, note in zip(names, values, texts, notes):
        if note is not None:  # the longest wording that fits, else the shortest, cut
            said = next((w for w in note if len(w) <= note_w), note[-1])
            table.add_row(n, Text(said, style="magenta", overflow="ellipsis", no_wrap=True), "")
            continue
        if scale is None:
            table.add_row(n, "", "-")
            continue
        if v is None or not math.isfinite(v) or v <= 0:
            table.add_row(n, Text("", style="red"), Text(t, style="red"))
            continue
        frac = (math.log10(v) - lo) / (hi - lo)
        eighths = int(round(frac * width * 8))
        bar = "█" * (eighths // 8) + ("▏▎▍▌▋▊▉"[eighths % 8 - 1] if eighths % 8 else "")
        style = "green" if 1e-4 <= v <= 1e2 else "yellow"
        table.add_row(n, Text(bar.ljust(width), style=style), t)
    return table


def summary_table(model, title=None):
    """Layer, output shape, parameters, FLOPs per sample: the model at a glance. A graph
    (not a plain stack) also shows each node's name and what feeds it; merge points
    (add, concat) stand out."""
    graph = not model.is_chain()
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("#", justify="right")
    if graph:
        table.add_column("name")
    table.add_column("layer")
    if graph:
        table.add_column("inputs")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    table.add_column("FLOPs/sample", justify="right")
    total_p = total_f = 0
    for row in model.summary():
        name = row.kind + (f" ({row.detail})" if row.detail else "")
        cells = [str(row.index), name]
        if graph:
            merge = len(row.inputs) > 1
            cells = [str(row.index), row.name or "", Text(name, style="bold magenta" if merge else "")]
            cells.append(Text(", ".join(row.inputs), style="magenta" if merge else "dim"))
        table.add_row(*cells, str(list(row.output_shape)), f"{row.params:,}", f"{row.flops:,}")
        total_p += row.params
        total_f += row.flops
    table.add_section()
    blank = [""] * (2 if graph else 0)
    table.add_row("", *blank[:1], "total", *blank[1:], "", f"{total_p:,}", f"{total_f:,}", style="bold")
    return table


def gradient_rows(model):
    """The gradient panel's rows in graph order: (name, k) for the k-th layer with
    parameters and, in a graph, (name, ("add: a + b", "a + b", "2 inputs", "add")) for each
    merge point, so a residual connection shows between the norms on either side of it
    (in the longest wording that fits; the name beside it says the kind)."""
    rows, k = [], 0
    with_params = set(model.param_layers)
    graph = not model.is_chain()
    for i, layer in enumerate(model.layers):
        if i in with_params:
            rows.append((layer.name, k))
            k += 1
        elif graph and len(model.inputs[i]) > 1:
            sources = [
                "input" if j < 0 else model.labels[j] or model.layers[j].name.split()[0] for j in model.inputs[i]
            ]
            joint = " + " if layer.kind == "add" else ", "
            said = joint.join(sources)
            rows.append((layer.name, (f"{layer.kind}: {said}", said, f"{len(sources)} inputs", layer.kind)))
    return rows


def processes_note(sync, elapsed):
    """How many MPI processes train, and the share of the time they spent communicating."""
    share = sync.comm_seconds / elapsed if elapsed > 0 else 0.0
    return f"{sync.size} processes, {share:.0%} of the time in communication"


def pack(pieces, width, sep="  "):
    """Lines of at most `width` cells made of whole pieces: a status line re-flows
    between pieces on a narrow terminal instead of wrapping in the middle of one."""
    lines = []
    for piece in pieces:
        if lines and lines[-1].cell_len + len(sep) + piece.cell_len <= width:
            lines[-1].append(sep)
            lines[-1].append_text(piece)
        else:
            lines.append(piece.copy())
    for line in lines:
        line.truncate(width)  # a single piece wider than the terminal: crop it, never wrap
        line.no_wrap = True
    return lines


def one_line_len(pieces, sep="  "):
    """Cells `pieces` take side by side on one line."""
    return sum(p.cell_len for p in pieces) + len(sep) * max(len(pieces) - 1, 0)


def fitting(variants, width, sep="  "):
    """The first of `variants` (lists of pieces, fullest first) that fits on one line of
    `width` cells, else the last: an 80-column terminal gets shorter labels on one line
    rather than a lone piece wrapped onto the next."""
    return next((v for v in variants if one_line_len(v, sep) <= width), variants[-1])


SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def compile_notice(trainer):
    """'compiling kernels for dense, lstm (first run only)', or '' when the cache is warm;
    with who shares the work: '2 processes' (a helper process, dlcli/precompile.py),
    '2 ranks' (MPI)."""
    if not trainer.compiling:
        return ""
    shared = f", {trainer.compile_shared}" if trainer.compile_shared else ""
    return f"compiling kernels for {', '.join(trainer.compiling)} (first run only{shared})"


# The cache check sees whether a layer's kernels were ever compiled, not for which dtype:
# after `gradcheck` (float64) a float32 run still compiles for seconds. So a first step
# that keeps the reader waiting this long is explained even when the cache looked warm.
FIRST_STEP_PATIENCE = 2.0
FIRST_STEP_NOTICE = "waiting for the first step (a kernel's first use compiles it, once)"
# A first step that compiles takes seconds: without this line a Ctrl-C seemed unheard.
STOPPING_NOTICE = "stopping after this step (Ctrl-C again stops at once, keeping the last checkpoint)"


def notice_lines(notice, width):
    """A notice word-wrapped to `width`, never cropped (a long list of layer kinds), its
    aside in parentheses kept whole on a line of its own when it does not fit."""
    what, _, aside = notice.partition(" (")
    pieces = [Text(word, style="yellow") for word in what.split(" ")]
    if aside:
        pieces.append(Text(f"({aside}", style="yellow"))
    return pack(pieces, width, sep=" ")


def waiting_notice(trainer, waited):
    """The line that explains the wait for the first step, or '' (see FIRST_STEP_PATIENCE)."""
    return compile_notice(trainer) or (FIRST_STEP_NOTICE if waited >= FIRST_STEP_PATIENCE else "")


def start_lines(trainer):
    """How many processes and threads train, where the run writes and, when it continues
    a checkpoint, what changed."""
    out = []
    if trainer.sync is not None:
        from . import runtime

        n = runtime.threads()
        out.append(
            f"{trainer.sync.size} processes x {n} thread{'s' if n > 1 else ''}, each on its share of every "
            f"global batch of {trainer.batch_size}"
        )
        out.extend(trainer.sync.how())
    if trainer.output is not None:
        out.append(f"checkpoint: {trainer.output}")
    r = trainer.resumed
    if r:
        changed = ", ".join(f"{k} {as_yaml(a)} -> {as_yaml(b)}" for k, (a, b) in r["changes"].items())
        out.append(f"resuming {r['from']} {resume_point(r)}" + (f"; changed: {changed}" if changed else ""))
        if r.get("lr_moves"):
            before, after = r["lr_moves"]
            out.append(
                f"the lr schedule now spans {trainer.epochs} epochs: the next step's lr is {fmt(after)} "
                f"(it was going to be {fmt(before)})"
            )
    return out


def resume_point(resumed):
    """Where a resumed run goes on: 'after epoch 3' from an epoch's end, 'at epoch 4, step
    295' (the global step, as 'Stopped: interrupted at epoch 4, step 294' counts) from
    inside an interrupted epoch."""
    if resumed.get("epoch_step"):
        return f"at epoch {resumed['epoch'] + 1}, step {resumed['step'] + 1}"
    return f"after epoch {resumed['epoch']}"


def text_scores(trainer, loss, label=""):
    """['bpc 1.234', 'ppl 2.35'] for a text model's loss (bits per word at word level);
    [] for other models."""
    vocab = trainer.dataset.vocab
    if vocab is None or loss is None:
        return []
    sc = scores(loss, vocab.level)
    name = "bpc" if vocab.level == "char" else "bits/word"
    return [f"{label}{name} {fmt(sc[bits_name(vocab.level)], 3)}", f"{label}ppl {fmt(sc['perplexity'], 2)}"]


class Dashboard(Callback):
    """Rich Live view: loss chart, per-layer gradient norms, progress with ETA.

    Each frame is laid out when Rich draws it, for the terminal's size at that moment: the
    chart and the gradient norms sit side by side from `SIDE_BY_SIDE` columns, one above
    the other below that; on a short terminal the chart gets fewer rows and the bars list
    the first layers and "+N more"; the status lines re-flow. No line is ever wider than
    the terminal, and the frame is never taller."""

    SIDE_BY_SIDE = 100  # columns from which the two panels share a row
    CHART_ROWS = 10  # plot rows when the terminal is tall enough

    def __init__(self, console: Console | None = None, refresh_per_second=4):
        self.console = console or Console()
        self.refresh = 1.0 / refresh_per_second
        self.live = None

    def on_start(self, trainer):
        self.trainer = trainer
        m = trainer.model
        self.grad_rows = gradient_rows(m)
        self.layer_names = [name for name, what in self.grad_rows if isinstance(what, int)]
        self.steps, self.losses = [], []
        self.val_steps, self.val_losses = [], []
        self.last = None
        self.last_epoch = None
        self.total_steps = trainer.epochs * trainer.steps_per_epoch
        self.t_start = time.perf_counter()
        self.after_first = None  # (time, step) when the run's first step ended: it may have compiled for seconds
        self.last_draw = 0.0
        self.console.print(summary_table(m, title=f"model: {trainer.spec.name}"))
        for line in start_lines(trainer):  # whole lines (a path is copied from them), the terminal wraps them
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)
        self.live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def on_step(self, trainer, e):
        self.last = e
        if self.after_first is None:
            self.after_first = (time.perf_counter(), e.step)
        self.steps.append(e.step)
        self.losses.append(e.loss)
        now = time.perf_counter()
        if now - self.last_draw >= self.refresh:
            self.last_draw = now
            self.live.update(self.render())

    def on_epoch(self, trainer, e):
        self.last_epoch = e
        if e.val_loss is not None:
            self.val_steps.append(e.step)
            self.val_losses.append(e.val_loss)
        self.live.update(self.render())

    def on_end(self, trainer, result):
        if self.live:
            self.live.update(self.render())
        self.close()

    def close(self):
        """Leave Live mode (idempotent): the terminal gets its cursor back whatever happened."""
        if self.live is not None:
            live, self.live = self.live, None
            live.stop()

    # ------------------------------------------------------------------ rendering
    def render(self):
        """A frame of what is known now; Rich lays it out for the terminal's size."""
        return _Frame(self, len(self.steps), len(self.val_steps), self.last, self.last_epoch)

    def _downsample(self, xs, ys, n):
        if len(xs) <= n:
            return xs, ys
        k = len(xs) / n
        out_x, out_y = [], []
        for i in range(n):
            a, b = int(i * k), max(int((i + 1) * k), int(i * k) + 1)
            chunk = [y for y in ys[a:b] if math.isfinite(y)]
            out_x.append(xs[b - 1])
            out_y.append(sum(chunk) / len(chunk) if chunk else float("nan"))
        return out_x, out_y

    def layout(self, frame, width, height):
        """The renderables of `frame` for a terminal of width x height cells."""
        status = self._status(frame, width)
        room = height - len(status) - 1  # Live keeps one row for the cursor
        layer_norms = frame.last.layer_grad_norms if frame.last is not None else None
        names = [name for name, _ in self.grad_rows]
        notes = [None if isinstance(what, int) else what for _, what in self.grad_rows]
        norms = [
            None if note is not None or layer_norms is None else float(layer_norms[what])
            for (_, what), note in zip(self.grad_rows, notes)
        ]
        name_w = max(map(len, names), default=0)
        value_w = max((len(fmt(v)) for v in norms), default=1)
        bars_fixed = name_w + value_w + 2 + 4  # grid gaps, panel border and padding
        if room < 5 or width < 30:  # no room for a chart: the status lines alone
            return Group(*status)
        panels = []
        if width >= self.SIDE_BY_SIDE and names:
            bar_w = max(6, min(24, width // 8))
            bars_w = bars_fixed + bar_w
            chart_rows = max(min(room - 3, self.CHART_ROWS), 2)
            chart = self._chart_panel(frame, width - bars_w - 2, chart_rows)
            bars = self._bars_panel(names, norms, notes, bar_w, bars_w, room - 2, bars_w - bars_fixed)
            grid = Table.grid(padding=(0, 2))
            grid.add_column(no_wrap=True)
            grid.add_column(no_wrap=True)
            grid.add_row(chart, bars)
            panels.append(grid)
        else:
            wanted_bar_rows = min(len(names), 6) + 2 if names else 0
            chart_rows = max(min(room - 3 - wanted_bar_rows, self.CHART_ROWS), min(4, room - 3))
            panels.append(self._chart_panel(frame, width, chart_rows))
            rows_left = room - chart_rows - 3
            bar_w = min(24, width - bars_fixed)
            if names and rows_left >= 3 and bar_w >= 4:
                panels.append(self._bars_panel(names, norms, notes, bar_w, width, rows_left - 2, width - bars_fixed))
        return Group(*panels, *status)

    def _chart_panel(self, frame, width, rows):
        total = max(self.total_steps, 1)
        steps, losses = self.steps[: frame.n_steps], self.losses[: frame.n_steps]
        xs, ys = self._downsample(steps, losses, width * 2)
        series = [("train loss", [x / total for x in xs], ys, "cyan")]
        if frame.n_val:
            val_xs = [x / total for x in self.val_steps[: frame.n_val]]
            series.append(("val loss", val_xs, self.val_losses[: frame.n_val], "magenta"))
        chart = line_chart(series, height=rows, log=True, fit_width=width - 4)
        return Panel(chart, title="loss (log scale)", border_style="blue", width=width)

    def _bars_panel(self, names, norms, notes, bar_w, width, rows, room):
        """One row per layer (and merge point) while they fit; when they do not, the merge
        points go first (they carry no norm), then the first layers and "+N more".
        `room`: the cells the panel leaves for the bar column (a merge point's note may use them)."""
        scale = log_scale(norms)
        if len(names) > rows:
            layers = [i for i, note in enumerate(notes) if note is None]
            names, norms, notes = [names[i] for i in layers], [norms[i] for i in layers], [None] * len(layers)
        shown = len(names) if len(names) <= rows else max(rows - 1, 0)
        bars = log_bars(names[:shown], norms[:shown], width=bar_w, scale=scale, notes=notes[:shown], room=room)
        if shown < len(names):
            bars.add_row(Text(f"+{len(names) - shown} more", style="dim"), "", "")
        inner = width - 4
        title = next(
            (
                t
                for t in ("gradient norm per layer (log scale)", "grad norm per layer (log)", "grad norms")
                if len(t) + 4 <= inner
            ),
            None,
        )
        return Panel(bars, title=title, border_style="blue", width=width)

    def _status(self, frame, width):
        """Progress, the last step and the last epoch, as whole pieces packed into lines."""
        tr = self.trainer
        e = frame.last
        step = e.step if e else tr.step
        elapsed = frame.elapsed
        rate = frame.steps_per_s  # steps since the first one: a cold run's compile is not the pace
        eta = (self.total_steps - step) / rate if rate else None
        frac = step / max(self.total_steps, 1)
        pieces = [Text(f"epoch {(e.epoch + 1) if e else tr.start_epoch + 1}/{tr.epochs}")]
        if e:
            pieces.append(Text(f"step {e.epoch_step}/{e.steps_per_epoch}"))
            sps = rate * tr.batch_size if rate else e.samples_per_s
            pieces.append(Text(f"{sps:,.0f} samples/s"))
        eta_text = Text(f"ETA {fmt_duration(eta)}")
        # beside a bar of at least 10 cells and " 100.0%"; elapsed is the first to go (ETA says
        # more), except at the end, where an ETA of 0:00 says nothing and the run's time a lot
        elapsed_text = Text(f"elapsed {fmt_duration(elapsed)}")
        if step >= self.total_steps:
            pieces = fitting([pieces + [elapsed_text]], width - 19)
        else:
            pieces = fitting([pieces + [elapsed_text, eta_text], pieces + [eta_text]], width - 19)
        room = width - one_line_len(pieces) - 9
        bar_w = min(30, room) if room >= 10 else max(10, min(30, width - 8))  # else the pieces re-flow
        filled = int(frac * bar_w)
        bar = Text()
        bar.append("━" * filled, style="green")
        bar.append("━" * (bar_w - filled), style="grey35")
        bar.append(f" {frac * 100:5.1f}%")
        progress = [bar, *pieces]
        if tr.sync is not None:
            progress.append(Text(processes_note(tr.sync, elapsed), style="dim"))
        lines = pack(progress, width)
        notice = "" if e else waiting_notice(tr, elapsed)
        if notice:  # the first step waits for the compiler: say so, with a spinner
            spin = SPINNER[int(time.perf_counter() * 10) % len(SPINNER)]
            lines += notice_lines(f"{spin} {notice}", width)
        if tr.interrupt.get("stop") and step < self.total_steps:  # a Ctrl-C is heard at once, seen at once
            lines += notice_lines(STOPPING_NOTICE, width)
        if e:
            stats = [Text(f"loss {fmt(e.loss)}")]
            stats += [Text(t) for t in text_scores(tr, e.loss)]
            if e.acc is not None:
                stats.append(Text(f"acc {e.acc:.3f}"))
            stats += [Text(f"lr {fmt(e.lr)}"), Text(f"grad norm {fmt(e.grad_norm)}")]
            lines += pack(stats, width)
        ep = frame.last_epoch
        if ep:
            val = []
            if ep.val_loss is not None:
                val.append(f"val loss {fmt(ep.val_loss)}")
            if ep.val_acc is not None:
                val.append(f"val acc {ep.val_acc:.3f}")
            val += text_scores(tr, ep.val_loss, "val ")
            variants = []
            for label in ("train ", ""):  # "epoch 230: loss ...  acc ..." when the long form does not fit
                train = [f"epoch {ep.epoch + 1}: {label}loss {fmt(ep.train_loss)}"]
                if ep.train_acc is not None:
                    train.append(f"{label}acc {ep.train_acc:.3f}")
                train += text_scores(tr, ep.train_loss, label)  # as the val part has them
                variants.append(train + val)
            variants.append(["  ".join(train), "  ".join(val)] if val else train)  # two lines: train, val
            summary = fitting([[Text(t, style="bold") for t in v] for v in variants], width)
            lines += pack(summary, width)
        return lines


class _Frame:
    """What the dashboard knew at one moment (counts into its append-only lists, the last
    events), laid out by Rich at draw time: a resized terminal re-flows the same frame."""

    def __init__(self, dash, n_steps, n_val, last, last_epoch):
        self.dash, self.n_steps, self.n_val, self.last, self.last_epoch = dash, n_steps, n_val, last, last_epoch
        now = time.perf_counter()
        self.elapsed = now - dash.t_start
        self.steps_per_s = None
        if dash.after_first is not None and last is not None and last.step > dash.after_first[1]:
            self.steps_per_s = (last.step - dash.after_first[1]) / max(now - dash.after_first[0], 1e-9)

    def __rich_console__(self, console, options):
        yield self.dash.layout(self, options.max_width, options.max_height)


class PlainProgress(Callback):
    """Progress as plain lines for pipes and CI logs: one line per epoch, and up to
    `lines_per_epoch` more within an epoch when it is long enough to leave the reader
    waiting (at least `min_interval` seconds since the last line)."""

    def __init__(self, echo, lines_per_epoch=4, show_summary=True, min_interval=2.0):
        self.echo = echo
        self.lines_per_epoch = lines_per_epoch
        self.show_summary = show_summary
        self.min_interval = min_interval
        self.waiting = None  # a timer that explains a long wait for the first step

    def _stop_waiting(self):
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None

    def close(self):
        self._stop_waiting()

    def on_start(self, trainer):
        if self.show_summary:
            m = trainer.model
            self.echo(f"model {trainer.spec.name}: {m.n_params():,} parameters")
            rows = [
                (
                    str(r.index),
                    r.kind + (f" ({r.detail})" if r.detail else ""),
                    str(list(r.output_shape)),
                    f"{r.params:,}",
                )
                for r in m.summary()
            ]
            w = [max(len(row[k]) for row in rows) for k in range(4)]  # columns as wide as their longest cell
            for index, layer, shape, params in rows:
                self.echo(f"  {index:>{w[0]}} {layer:<{w[1]}} -> {shape:<{w[2]}}  params {params:>{w[3]}}")
        for line in start_lines(trainer):
            self.echo(line)
        if compile_notice(trainer):
            self.echo(compile_notice(trainer) + " ...")
        else:  # a cache that looked warm may still lack this run's variants: say so if it waits
            self.waiting = threading.Timer(FIRST_STEP_PATIENCE, lambda: self.echo(FIRST_STEP_NOTICE + " ..."))
            self.waiting.daemon = True
            self.waiting.start()
        self.every = max(1, trainer.steps_per_epoch // self.lines_per_epoch)
        self.start = self.last_line = time.perf_counter()
        self.epoch_t0, self.samples = self.last_line, 0

    def on_step(self, trainer, e):
        self._stop_waiting()
        if e.epoch_step == 1:
            self.epoch_t0, self.samples = time.perf_counter(), 0
        self.samples += trainer.batch_size
        now = time.perf_counter()
        if (
            e.epoch_step % self.every == 0
            and e.epoch_step != e.steps_per_epoch
            and now - self.last_line >= self.min_interval
        ):
            self.last_line = now
            acc = f" acc {e.acc:.3f}" if e.acc is not None else ""
            rate = self.samples / max(now - self.epoch_t0, 1e-9)
            bits = "".join(f" {t}" for t in text_scores(trainer, e.loss)[:1])
            self.echo(
                f"epoch {e.epoch + 1}/{trainer.epochs} step {e.epoch_step}/{e.steps_per_epoch} "
                f"loss {fmt(e.loss)}{bits}{acc} {rate:,.0f} samples/s"
            )

    def on_epoch(self, trainer, e):
        self.last_line = time.perf_counter()
        parts = [f"epoch {e.epoch + 1}/{e.epochs}", f"train_loss {fmt(e.train_loss)}"]
        parts += text_scores(trainer, e.train_loss, "train_")[:1]  # bits per character (or word)
        if e.train_acc is not None:
            parts.append(f"train_acc {e.train_acc:.4f}")
        if e.val_loss is not None:
            parts.append(f"val_loss {fmt(e.val_loss)}")
        if e.val_acc is not None:
            parts.append(f"val_acc {e.val_acc:.4f}")
        parts += text_scores(trainer, e.val_loss, "val_")
        if trainer.spec.optimizer.schedule.name != "constant":
            parts.append(f"lr {fmt(e.lr)}")
        parts.append(f"{e.samples_per_s:,.0f} samples/s")
        if trainer.sync is not None:
            parts.append(f"({processes_note(trainer.sync, time.perf_counter() - self.start)})")
        self.echo(" ".join(parts))
