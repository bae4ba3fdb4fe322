"""The dashboard rendered into a recorded Rich console, its pieces, and plain progress."""

import io
import json
import re
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from rich.cells import cell_len
from rich.console import Console
from rich.live import Live

from dlcli import dashboard, run, spec
from dlcli.cli import main
from dlcli.dashboard import Dashboard, PlainProgress, fmt, line_chart, log_bars, log_scale
from dlcli.train import Callback

TEXT = """\
name: dash
data: {source: builtin:xor, options: {samples: 200}, validation_split: 0.2}
model: {input: [2], layers: [{dense: 6}, relu, {dense: 4}, tanh, {dense: 2}]}
optimizer: {name: adam, lr: 0.02}
train: {epochs: 3, batch_size: 16}
"""
BRAILLE = re.compile("[\u2801-\u28ff]")


def recorded_console():
    return Console(file=io.StringIO(), record=True, width=160, force_terminal=True, color_system=None)


def test_dashboard_renders_everything(tmp_path):
    console = recorded_console()
    dash = Dashboard(console=console)
    result, _, _ = run.train(spec.parse(TEXT, "dash.yaml"), output=tmp_path / "d.npz", display=dash)
    text = console.export_text()
    # the model summary
    assert "model: dash" in text
    for row in ("dense (6 units", "tanh", "[4]", "total", "params", "FLOPs/sample", "56"):  # 18 + 0 + 28 + 0 + 10
        assert row in text, row
    # the final frame, rendered on its own
    frame = recorded_console()
    frame.print(dash.render())
    final = frame.export_text()
    assert "loss (log scale)" in final and "train loss" in final and "val loss" in final
    assert len(BRAILLE.findall(final)) > 20  # the chart has a line
    assert "gradient norm per layer" in final
    for name in ("layers[0] dense", "layers[2] dense", "layers[4] dense"):
        assert name in final
    assert "█" in final  # bars
    assert "epoch 3/3" in final and "step 10/10" in final and "100.0%" in final
    assert re.search(r"[\d,]+ samples/s", final)
    assert re.search(r"elapsed \d+:\d\d", final) and "ETA" not in final  # the end: the run's time, no ETA
    last = result.history[-1]
    assert f"val acc {last.val_acc:.3f}" in final
    assert f"train loss {last.train_loss:.4f}" in final or f"train loss {last.train_loss:.2e}" in final


def test_line_chart_draws_a_falling_curve_from_top_left_to_bottom_right():
    xs = [i / 49 for i in range(50)]
    ys = [10 ** (-i / 20) for i in range(50)]
    chart = line_chart([("train loss", xs, ys, None)], width=20, height=5, log=True).plain
    rows = chart.split("\n")[:5]
    body = [r.split("┤", 1)[1] for r in rows]
    assert body[0][0] != " " and body[-1][0] == " "  # starts high
    assert body[-1][-1] != " " and body[0][-1] == " "  # ends low
    assert rows[0].lstrip().startswith("1.000") and "train loss" in chart
    assert "waiting" in line_chart([("train loss", [], [], None)]).plain


def test_log_bars_grow_with_the_norm():
    con = recorded_console()
    con.print(log_bars(["small", "big", "dead"], [1e-4, 10.0, 0.0], width=20))
    lines = {ln.split()[0]: ln for ln in con.export_text().splitlines() if ln.strip()}
    assert lines["big"].count("█") > lines["small"].count("█") >= 1
    assert "█" not in lines["dead"]
    assert "1.00e-04" in lines["small"] and "10.0000" in lines["big"]


def test_log_bars_on_a_shared_scale_compare():
    """Two tables drawn on one scale: the same value gets the same bar, a bigger one a
    longer bar, whatever else each table holds (inspect-gradients --compare)."""

    def bar(values, scale):
        con = recorded_console()
        con.print(log_bars(["a", "b"], values, width=20, scale=scale))
        return [ln.count("█") for ln in con.export_text().splitlines() if ln.strip()]

    scale = log_scale([11.9, 5.3, 7.0, 2.5])
    left, right = bar([11.9, 5.3], scale), bar([7.0, 5.3], scale)
    assert left[1] == right[1] and left[0] > right[0]
    assert log_scale([0.0, None, float("nan")]) is None


def test_plain_progress_lines():
    lines = []
    run.train(
        spec.parse(TEXT, "dash.yaml"),
        output="p.npz",
        display=PlainProgress(lines.append, lines_per_epoch=2, min_interval=0),
    )
    assert lines[0] == "model dash: 56 parameters"
    layers = lines[1:6]
    assert layers[0] == "  0 dense (6 units, relu fused in) -> [6]  params 18"
    assert len({ln.index(" -> ") for ln in layers}) == 1 and len({len(ln) for ln in layers}) == 1, layers
    epochs = [ln for ln in lines if "train_loss" in ln]
    assert [ln.split()[1] for ln in epochs] == ["1/3", "2/3", "3/3"]
    assert all("val_acc" in ln and "samples/s" in ln for ln in epochs)
    steps = [ln for ln in lines if " step " in ln]
    assert len(steps) == 3 * 1 and all(re.search(r"step 5/10 loss \S+ acc \S+ [\d,]+ samples/s", s) for s in steps)


def test_a_long_wait_for_the_first_step_is_explained_even_with_a_warm_looking_cache(monkeypatch):
    """The cache check cannot see which dtype a kernel was compiled for, so a first step
    slower than FIRST_STEP_PATIENCE gets a line (plain) or a spinner line (dashboard)."""
    import time as _time

    from dlcli import dashboard, runtime
    from dlcli.train import Trainer

    monkeypatch.setattr(runtime, "uncompiled_kernels", lambda model: [])  # the cache looks warm
    monkeypatch.setattr(dashboard, "FIRST_STEP_PATIENCE", 0.05)
    real_step = Trainer.train_step

    def slow_first(self, *args):
        if self.step == 0:
            _time.sleep(0.5)  # a first step that compiles
        return real_step(self, *args)

    monkeypatch.setattr(Trainer, "train_step", slow_first)
    lines = []
    run.train(spec.parse(TEXT, "dash.yaml"), output="w.npz", display=PlainProgress(lines.append))
    waits = [i for i, ln in enumerate(lines) if ln.startswith(dashboard.FIRST_STEP_NOTICE)]
    first_epoch = next(i for i, ln in enumerate(lines) if "train_loss" in ln)
    assert len(waits) == 1 and waits[0] < first_epoch, lines
    # no wait, no line: the timer is cancelled by the first step
    monkeypatch.setattr(Trainer, "train_step", real_step)
    monkeypatch.setattr(dashboard, "FIRST_STEP_PATIENCE", 2.0)
    lines = []
    run.train(spec.parse(TEXT, "dash.yaml"), output="v.npz", display=PlainProgress(lines.append))
    _time.sleep(0.1)
    assert not any(dashboard.FIRST_STEP_NOTICE in ln for ln in lines)

    class Waiting:
        compiling = []
        compile_shared = ""

    assert dashboard.waiting_notice(Waiting, 0.01) == ""
    monkeypatch.setattr(dashboard, "FIRST_STEP_PATIENCE", 0.05)
    assert dashboard.waiting_notice(Waiting, 0.5) == dashboard.FIRST_STEP_NOTICE


def test_the_rate_and_eta_leave_out_a_first_step_that_waited_for_the_compiler(tmp_path, first_step_compiles):
    """A cold run's first step takes seconds: the progress line's samples/s and ETA are
    the pace since then, not the whole run's average (which read 1,177 samples/s at the
    end of a cold shapes_cnn run that trains at ~10,000)."""
    dash = Dashboard(console=recorded_console())
    run.train(spec.parse(TEXT, "dash.yaml"), output=tmp_path / "d.npz", display=dash)
    frame = recorded_console()
    frame.print(dash.render())
    shown = int(re.search(r"([\d,]+) samples/s", frame.export_text()).group(1).replace(",", ""))
    assert shown > 2 * 480  # the whole run's 3 x 160 rows over its > 1 s would be at most 480 / s


def test_the_compile_notice_says_when_a_second_process_helps():
    class Cold:
        compiling = ["conv2d", "dense"]
        compile_shared = ""

    assert dashboard.compile_notice(Cold) == "compiling kernels for conv2d, dense (first run only)"
    Cold.compile_shared = "2 processes"
    assert dashboard.compile_notice(Cold) == "compiling kernels for conv2d, dense (first run only, 2 processes)"
    Cold.compiling = []
    assert dashboard.compile_notice(Cold) == ""


def test_a_long_compile_notice_wraps_between_words_and_keeps_its_aside_whole():
    kinds = "conv1d, batchnorm, relu, maxpool1d, add, global_avgpool, dense"
    notice = f"⠋ compiling kernels for {kinds} (first run only, 2 processes)"
    lines = [ln.plain for ln in dashboard.notice_lines(notice, 80)]
    assert all(len(ln) <= 80 for ln in lines)
    assert " ".join(lines) == notice  # every word kept: cropped at 80 columns before
    assert len(lines) == 2 and lines[-1].endswith(" (first run only, 2 processes)")  # the aside whole


def test_a_fused_relu_reads_the_same_after_every_layer_type():
    text = """\
name: conv
data: {source: builtin:shapes}
model: {input: [1, 8, 8], layers: [{conv2d: {filters: 2, kernel: 3}}, relu, flatten, {dense: 4}, relu, {dense: 4}]}
"""
    model, _ = run.build(spec.parse(text, "conv.yaml"))
    details = [r.detail for r in model.summary() if r.kind in ("conv2d", "dense")]
    assert details == ["2 filters 3x3, relu fused in", "4 units, relu fused in", "4 units"]


def test_cli_prints_plain_lines_when_stdout_is_not_a_terminal(write_spec):
    p = write_spec(TEXT)
    out = CliRunner().invoke(main, ["train", str(p), "-o", "c.npz"])
    assert out.exit_code == 0, out.output
    assert "\x1b[" not in out.output and not BRAILLE.search(out.output)
    assert "epoch 3/3 train_loss" in out.output
    assert "final: epoch 3/3" in out.output and "checkpoint: c.npz" in out.output


# ---------------------------------------------------------------- layout at every terminal size

DEEP = """\
name: deep
data: {source: builtin:xor, options: {samples: 120}, validation_split: 0.2}
model: {input: [2], layers: [%s{dense: 2}]}
optimizer: {name: adam, lr: 0.02}
train: {epochs: 2, batch_size: 16}
"""
SIZES = [(60, 24), (80, 24), (100, 24), (120, 24), (200, 24), (80, 50)]


@pytest.fixture(scope="module", params=[2, 11], ids=["3-layers", "12-layers"])
def trained_dashboard(request, tmp_path_factory):
    """A dashboard after a real (tiny) run; its frames are then laid out at each size."""
    hidden = "{dense: 6}, relu, " * request.param
    console = Console(file=io.StringIO(), record=True, width=120, force_terminal=True, color_system=None)
    dash = Dashboard(console=console)
    out = tmp_path_factory.mktemp("dash") / "d.npz"
    run.train(spec.parse(DEEP % hidden, "deep.yaml"), output=out, display=dash)
    return dash


def frame_text(dash, width, height):
    con = Console(file=io.StringIO(), record=True, width=width, height=height, force_terminal=True, color_system=None)
    con.print(dash.render())
    return con.export_text()


@pytest.mark.parametrize("width,height", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_dashboard_fits_the_terminal(trained_dashboard, width, height):
    dash = trained_dashboard
    lines = frame_text(dash, width, height).rstrip("\n").split("\n")
    assert max(cell_len(ln) for ln in lines) <= width, "\n".join(lines)
    assert len(lines) <= height - 1  # the frame never scrolls; Live keeps the cursor row
    # the chart: every plot row starts with the y axis, the top and bottom rows labelled
    rows = [ln for ln in lines if "┤" in ln]
    assert len(rows) >= 4
    label = re.compile(r"^│ +(\d+\.\d+|\d\.\d\de[+-]\d\d) ┤")
    assert label.match(rows[0]) and label.match(rows[-1]), rows
    assert len({ln.index("┤") for ln in rows}) == 1  # no row wrapped onto the next one
    assert any("━━ train loss" in ln and "━━ val loss" in ln for ln in lines)
    # every layer named with its whole value, or counted in "+N more"
    norms = dash.last.layer_grad_norms
    shown = 0
    for name, v in zip(dash.layer_names, norms):
        row = [ln for ln in lines if re.search(re.escape(name) + r" ", ln)]
        if row:
            shown += 1
            assert re.search(r" " + re.escape(fmt(v)) + r" +│", row[0]), row[0]
    more = re.search(r"\+(\d+) more", "\n".join(lines))
    assert shown + (int(more.group(1)) if more else 0) == len(dash.layer_names)
    assert shown >= 3
    text = "\n".join(lines)
    assert "…" not in text
    for piece in ("100.0%", "epoch 2/2", "step 6/6", "samples/s", "elapsed ", f"grad norm {fmt(dash.last.grad_norm)}"):
        assert piece in text, piece


def test_dashboard_shows_extreme_values_whole(trained_dashboard):
    """NaN, infinity, tiny and huge norms keep every character even at 60 columns."""
    dash = trained_dashboard
    values = [float("nan"), float("inf"), 1.234e-12, 12345.6789] + [0.5] * (len(dash.layer_names) - 4)
    values = values[: len(dash.layer_names)]
    dash.last = replace(dash.last, layer_grad_norms=np.array(values))
    for width in (60, 100):
        text = frame_text(dash, width, 40)
        for name, v in zip(dash.layer_names, values):
            assert re.search(re.escape(name) + r" .* " + re.escape(fmt(v)) + r" +│", text), (name, fmt(v), text)


@pytest.mark.parametrize("width", [60, 80])
def test_long_status_lines_fit_an_80_column_terminal(trained_dashboard, monkeypatch, width):
    """A late epoch of a long run: at 80 columns the progress and the epoch's figures each
    stay on one line (shorter labels, no elapsed); at 60 they break between whole pieces."""
    dash = trained_dashboard
    monkeypatch.setattr(dash.trainer, "epochs", 300)
    monkeypatch.setattr(dash, "total_steps", 300 * 75)
    monkeypatch.setattr(dash, "last", replace(dash.last, epoch=229, step=230 * 75, epoch_step=75, steps_per_epoch=75))
    ep = replace(dash.last_epoch, epoch=229, train_loss=1.1e-7, train_acc=1.0, val_loss=9.14e-7, val_acc=1.0)
    monkeypatch.setattr(dash, "last_epoch", ep)
    lines = frame_text(dash, width, 24).rstrip("\n").split("\n")
    assert max(cell_len(ln) for ln in lines) <= width, "\n".join(lines)
    text = "\n".join(lines)
    for piece in ("epoch 230/300", "step 75/75", "samples/s", "ETA ", "loss 1.10e-07", "val loss 9.14e-07"):
        assert piece in text, piece
    epoch = [ln for ln in lines if ln.startswith("epoch 230:")][0]
    if width == 80:
        assert "val acc 1.000" in epoch and "acc 1.000  val" in epoch, text
        assert any("%" in ln and "ETA " in ln and "samples/s" in ln for ln in lines), text
    else:  # the train figures on one line, the validation figures on the next
        assert epoch.endswith("acc 1.000") and "val loss 9.14e-07  val acc 1.000" in text, text


def test_dashboard_on_a_tiny_terminal_keeps_the_status_lines(trained_dashboard):
    text = frame_text(trained_dashboard, 40, 8)
    assert max(cell_len(ln) for ln in text.splitlines()) <= 40
    assert "epoch 2/2" in text and "┤" not in text  # no room for the chart: not a broken one


RESIDUAL = """\
name: res
data: {source: builtin:xor, options: {samples: 200}, validation_split: 0.2}
model:
  input: [2]
  layers:
    - {dense: 8, name: stem}
    - residual: [{dense: 8}, relu, {dense: 8}]
    - {name: wide, dense: 8}
    - {name: both, concat: null, input: [wide, stem]}
    - dense: 2
train: {epochs: 1, batch_size: 16}
"""


@pytest.mark.parametrize("width", [80, 100, 160])
def test_dashboard_shows_the_merge_points_of_a_graph_between_the_layers(tmp_path, width):
    dash = Dashboard(console=recorded_console())
    run.train(spec.parse(RESIDUAL, "res.yaml"), output=tmp_path / "r.npz", display=dash)
    text = frame_text(dash, width, 40)
    lines = text.splitlines()
    assert max(cell_len(ln) for ln in lines) <= width

    def row(pattern):
        found = [k for k, ln in enumerate(lines) if re.search(pattern, ln)]
        assert found, (pattern, text)
        return found[0]

    # in graph order: the residual's two dense layers, its add (of the stem and the
    # block's output), the branch from the stem, the concat, the head; each layer with its norm
    norms = dict(zip(dash.layer_names, dash.last.layer_grad_norms))
    order = [row(re.escape(name) + r" .* " + re.escape(fmt(v)) + r" +│") for name, v in norms.items()]
    add = row(r"layers\[4\] add +(add: )?(stem \+ |2 inputs)")
    concat = row(r"layers\[6\] concat +(concat: )?(wide, stem|2 inputs)")
    assert "…" not in lines[add] + lines[concat]  # a whole wording, never "add: layers[1].resid…"
    assert order == sorted(order) and len(norms) == 5
    assert order[2] < add < order[3] < concat < order[4]
    if width > 80:  # side by side, the bars have room for every row
        return
    # short of rows (80 x 24): the merge points give way first, so every layer keeps its norm
    short = frame_text(dash, width, 24)
    assert not re.search(r"layers\[4\] add|layers\[6\] concat|more", short), short
    for name, v in norms.items():
        assert re.search(re.escape(name) + r" .* " + re.escape(fmt(v)) + r" +│", short), (name, short)


class Boom(Callback):
    def on_step(self, trainer, e):
        if e.step == 3:
            raise RuntimeError("boom")


def test_an_exception_mid_run_closes_the_dashboard_and_the_log(tmp_path):
    raw = io.StringIO()
    console = Console(file=raw, record=True, width=100, force_terminal=True, color_system=None)
    dash = Dashboard(console=console)
    log = tmp_path / "m.jsonl"
    with pytest.raises(RuntimeError, match="boom"):
        run.train(spec.parse(TEXT, "dash.yaml"), output=tmp_path / "b.npz", display=dash, log=log, callbacks=[Boom()])
    # Live mode is over: the cursor is shown again and the console takes a new Live display
    out = raw.getvalue()
    assert "\x1b[?25l" in out and out.rfind("\x1b[?25h") > out.rfind("\x1b[?25l")
    live = Live(console=console)
    live.start()  # raises LiveError while another Live display is active
    live.stop()
    # the log has every step before the failure, flushed and closed
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["event"] for r in rows] == ["start", "step", "step"] and [r["step"] for r in rows[1:]] == [1, 2]


def test_a_text_models_epoch_line_scores_training_as_it_scores_validation(tmp_path):
    """bpc and perplexity for the training loss too, not for validation's alone, on one
    line when there is room and on the training line when it breaks in two."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 30)
    text = f"""\
name: chars
data: {{source: {corpus}, text: {{level: char, seq_len: 16}}, validation_split: 0.2}}
model: {{layers: [{{embedding: 8}}, {{lstm: {{units: 8, return_sequences: true}}}}, {{dense: {{units: vocab}}}}]}}
optimizer: {{name: adam, lr: 0.01}}
train: {{epochs: 1, batch_size: 16}}
"""
    dash = Dashboard(console=recorded_console())
    run.train(spec.parse(text, "chars.yaml"), output=tmp_path / "c.npz", display=dash)
    wide = [ln for ln in frame_text(dash, 200, 40).splitlines() if "epoch 1:" in ln]
    assert len(wide) == 1 and re.search(r"train bpc [\d.]+ +train ppl [\d.]+ +val loss .* val bpc", wide[0]), wide
    lines = frame_text(dash, 80, 40).splitlines()
    first = next(k for k, ln in enumerate(lines) if "epoch 1:" in ln)
    assert re.search(r"epoch 1: loss [\d.]+ +acc [\d.]+ +bpc [\d.]+ +ppl [\d.]+", lines[first]), lines[first:]
    assert "val bpc" in lines[first + 1]


def test_the_lines_before_the_run_are_never_broken_inside_a_path(tmp_path):
    """An 80-column terminal got `checkpoint:` and its path on two lines joined by a real
    newline (copy-paste broke); a path with brackets must not read as Rich markup."""
    console = Console(file=io.StringIO(), record=True, width=80, force_terminal=True, color_system=None)
    out = tmp_path / ("a-long-folder-name-" * 4) / "[run]" / "d.npz"
    out.parent.mkdir(parents=True)
    run.train(spec.parse(TEXT, "dash.yaml"), output=out, display=Dashboard(console=console))
    assert f"checkpoint: {out}\n" in console.export_text()


def test_a_ctrl_c_is_shown_at_once_while_the_step_runs(trained_dashboard):
    """During a cold first step (seconds of compiling) a Ctrl-C showed nothing for ~6 s."""
    from dlcli import dashboard

    dash = trained_dashboard
    total = dash.total_steps
    try:
        dash.total_steps = total + 10  # a run with steps still to go
        dash.trainer.interrupt["stop"] = True
        assert "stopping after this step" in frame_text(dash, 80, 24)
        dash.trainer.interrupt.clear()
        assert "stopping after this step" not in frame_text(dash, 80, 24)
    finally:
        dash.total_steps = total
    assert dashboard.STOPPING_NOTICE.startswith("stopping after this step")
