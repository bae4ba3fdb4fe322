"""What `dlcli train` shows: a Rich Live dashboard on a terminal, plain lines elsewhere.

The dashboard is a callback: it only reads events, so it can be rendered into a recorded
console in tests exactly as it appears on a terminal.
"""

from __future__ import annotations

import math
import time

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

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


def fmt_duration(seconds):
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def line_chart(series, width=60, height=10, log=False):
    """Braille line chart of several series sharing one y axis.

    series: list of (label, xs, ys, style) with xs in [0, 1] (fraction of the run).
    Returns a Rich Text with a y-axis label column and a legend line.
    """
    points = [(x, y) for _, xs, ys, _ in series for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    if log:
        points = [(x, y) for x, y in points if y > 0]
    out = Text()
    if not points:
        out.append("(waiting for the first steps)\n", style="dim")
        return out
    tf = (lambda v: math.log10(v)) if log else (lambda v: v)
    lo = min(tf(y) for _, y in points)
    hi = max(tf(y) for _, y in points)
    if hi - lo < 1e-12:
        hi, lo = hi + 0.5, lo - 0.5
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
    axis = lambda v: fmt(10**v if log else v, 3)  # noqa: E731
    labels = {0: axis(hi), height - 1: axis(lo), (height - 1) // 2: axis((hi + lo) / 2)}
    pad = max(len(s) for s in labels.values())
    for r in range(height):
        out.append(labels.get(r, "").rjust(pad) + " ┤", style="dim")
        for c in range(width):
            ch = chr(BRAILLE_BASE + cells[r][c]) if cells[r][c] else " "
            out.append(ch, style=styles[r][c])
        out.append("\n")
    legend = Text(" " * (pad + 2))
    for label, _, _, style in series:
        legend.append("━━ ", style=style)
        legend.append(label + "   ")
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


def log_bars(names, values, width=30, scale=None):
    """Horizontal bars on a log10 scale, one per layer, with the value printed. `scale`
    (from `log_scale`) fixes the decades, so that bars in two tables compare."""
    table = Table.grid(padding=(0, 1))
    table.add_column(justify="left", no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    scale = scale or log_scale(values)
    if scale is None:
        for n in names:
            table.add_row(n, "", "-")
        return table
    lo, hi = scale
    for n, v in zip(names, values):
        if v is None or not math.isfinite(v) or v <= 0:
            table.add_row(n, Text("", style="red"), Text(fmt(v), style="red"))
            continue
        frac = (math.log10(v) - lo) / (hi - lo)
        eighths = int(round(frac * width * 8))
        bar = "█" * (eighths // 8) + ("▏▎▍▌▋▊▉"[eighths % 8 - 1] if eighths % 8 else "")
        style = "green" if 1e-4 <= v <= 1e2 else "yellow"
        table.add_row(n, Text(bar.ljust(width), style=style), fmt(v))
    return table


def summary_table(model, title=None):
    """Layer, output shape, parameters, FLOPs per sample: the model at a glance."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("layer")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    table.add_column("FLOPs/sample", justify="right")
    total_p = total_f = 0
    for row in model.summary():
        name = row.kind + (f" ({row.detail})" if row.detail else "")
        table.add_row(str(row.index), name, str(list(row.output_shape)), f"{row.params:,}", f"{row.flops:,}")
        total_p += row.params
        total_f += row.flops
    table.add_section()
    table.add_row("", "total", "", f"{total_p:,}", f"{total_f:,}", style="bold")
    return table


class Dashboard(Callback):
    """Rich Live view: loss chart, per-layer gradient norms, progress with ETA."""

    def __init__(self, console: Console | None = None, refresh_per_second=4, chart_width=56):
        self.console = console or Console()
        self.refresh = 1.0 / refresh_per_second
        self.chart_width = chart_width
        self.live = None

    def on_start(self, trainer):
        self.trainer = trainer
        m = trainer.model
        self.layer_names = [f"{m.layers[i].name}" for i in m.param_layers]
        self.steps, self.losses = [], []
        self.val_steps, self.val_losses = [], []
        self.last = None
        self.last_epoch = None
        self.total_steps = trainer.epochs * trainer.steps_per_epoch
        self.first_step = trainer.step
        self.t_start = time.perf_counter()
        self.last_draw = 0.0
        self.console.print(summary_table(m, title=f"model: {trainer.spec.name}"))
        self.live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def on_step(self, trainer, e):
        self.last = e
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
            self.live.stop()

    # ------------------------------------------------------------------ rendering
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

    def render(self):
        total = max(self.total_steps, 1)
        xs, ys = self._downsample(self.steps, self.losses, self.chart_width * 2)
        series = [("train loss", [x / total for x in xs], ys, "cyan")]
        if self.val_steps:
            series.append(("val loss", [x / total for x in self.val_steps], self.val_losses, "magenta"))
        chart = line_chart(series, width=self.chart_width, height=10, log=True)
        norms = list(self.last.layer_grad_norms) if self.last is not None else [None] * len(self.layer_names)
        bars = log_bars(self.layer_names, norms, width=24)
        grid = Table.grid(padding=(0, 2))
        grid.add_column()
        grid.add_column()
        grid.add_row(
            Panel(chart, title="loss (log scale)", border_style="blue"),
            Panel(bars, title="gradient norm per layer (log scale)", border_style="blue"),
        )
        return Group(grid, self._progress())

    def _progress(self):
        tr = self.trainer
        e = self.last
        done = (e.step if e else tr.step) - self.first_step
        remaining = self.total_steps - (e.step if e else tr.step)
        elapsed = time.perf_counter() - self.t_start
        rate = done / elapsed if done and elapsed > 0 else None
        eta = remaining / rate if rate else None
        frac = (e.step if e else tr.step) / max(self.total_steps, 1)
        width = 30
        filled = int(frac * width)
        line = Text()
        line.append("━" * filled, style="green")
        line.append("━" * (width - filled), style="grey35")
        line.append(f" {frac * 100:5.1f}%  ")
        epoch = (e.epoch + 1) if e else tr.start_epoch + 1
        line.append(f"epoch {epoch}/{tr.epochs}  ")
        if e:
            line.append(f"step {e.epoch_step}/{e.steps_per_epoch}  ")
            sps = done * tr.batch_size / elapsed if elapsed > 0 and done else e.samples_per_s
            line.append(f"{sps:,.0f} samples/s  ")
        line.append(f"elapsed {fmt_duration(elapsed)}  ETA {fmt_duration(eta)}")
        stats = Text()
        if e:
            stats.append(f"loss {fmt(e.loss)}  ")
            if e.acc is not None:
                stats.append(f"acc {e.acc:.3f}  ")
            stats.append(f"lr {fmt(e.lr)}  grad norm {fmt(e.grad_norm)}")
        ep = self.last_epoch
        if ep:
            stats.append("\n")
            stats.append(f"epoch {ep.epoch + 1}: train loss {fmt(ep.train_loss)}", style="bold")
            if ep.train_acc is not None:
                stats.append(f"  train acc {ep.train_acc:.3f}", style="bold")
            if ep.val_loss is not None:
                stats.append(f"  val loss {fmt(ep.val_loss)}", style="bold")
            if ep.val_acc is not None:
                stats.append(f"  val acc {ep.val_acc:.3f}", style="bold")
        return Group(line, stats)


class PlainProgress(Callback):
    """Progress as plain lines for pipes and CI logs: one line per epoch, and up to
    `lines_per_epoch` more within an epoch when it is long enough to leave the reader
    waiting (at least `min_interval` seconds since the last line)."""

    def __init__(self, echo, lines_per_epoch=4, show_summary=True, min_interval=2.0):
        self.echo = echo
        self.lines_per_epoch = lines_per_epoch
        self.show_summary = show_summary
        self.min_interval = min_interval

    def on_start(self, trainer):
        if self.show_summary:
            m = trainer.model
            self.echo(f"model {trainer.spec.name}: {m.n_params():,} parameters")
            for row in m.summary():
                detail = f" ({row.detail})" if row.detail else ""
                self.echo(f"  {row.index:>2} {row.kind}{detail:<24} -> {list(row.output_shape)}  params {row.params:,}")
        self.every = max(1, trainer.steps_per_epoch // self.lines_per_epoch)
        self.last_line = time.perf_counter()
        self.epoch_t0, self.samples = self.last_line, 0

    def on_step(self, trainer, e):
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
            self.echo(
                f"epoch {e.epoch + 1}/{trainer.epochs} step {e.epoch_step}/{e.steps_per_epoch} "
                f"loss {fmt(e.loss)}{acc} {rate:,.0f} samples/s"
            )

    def on_epoch(self, trainer, e):
        self.last_line = time.perf_counter()
        parts = [f"epoch {e.epoch + 1}/{e.epochs}", f"train_loss {fmt(e.train_loss)}"]
        if e.train_acc is not None:
            parts.append(f"train_acc {e.train_acc:.4f}")
        if e.val_loss is not None:
            parts.append(f"val_loss {fmt(e.val_loss)}")
        if e.val_acc is not None:
            parts.append(f"val_acc {e.val_acc:.4f}")
        parts.append(f"{e.samples_per_s:,.0f} samples/s")
        self.echo(" ".join(parts))
