"""The training loop: optimizers against the references, schedules, clipping, seeds, the
NaN stop, the interrupt flag and resuming, and the spirals acceptance criterion."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import reference as ref

from dlcli import checkpoint, optim, run, spec
from dlcli.errors import CheckpointError
from dlcli.train import Callback, stop_on_interrupt

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
name: tiny
seed: {seed}
data: {{source: builtin:xor, options: {{samples: 240}}, validation_split: 0.25}}
model:
  input: [2]
  layers: [{{dense: 8}}, relu, {{dense: 8}}, tanh, {{dense: 2}}]
loss: cross_entropy
optimizer: {optimizer}
train: {{epochs: {epochs}, batch_size: 32}}
"""


def tiny(seed=0, epochs=3, optimizer="{name: adam, lr: 0.02}"):
    return spec.parse(TINY.format(seed=seed, epochs=epochs, optimizer=optimizer), "tiny.yaml")


# ---------------------------------------------------------------- optimizers over the flat buffer


def opt_spec(text):
    return spec.parse("data: builtin:xor\nmodel: {input: [2], layers: [dense: 2]}\noptimizer: " + text).optimizer


@pytest.mark.parametrize("dtype", [np.float32])  # training's dtype (see test_kernels_core.PARAM_DTYPES)
@pytest.mark.parametrize(
    "text",
    [
        "{name: sgd, lr: 0.1}",
        "{name: sgd, lr: 0.1, momentum: 0.9}",
        "{name: sgd, lr: 0.1, momentum: 0.9, nesterov: true}",
        "{name: sgd, lr: 0.05, momentum: 0.8, weight_decay: 0.01}",
        "{name: adam, lr: 0.01}",
        "{name: adam, lr: 0.01, weight_decay: 0.1, beta1: 0.8, beta2: 0.99}",
        "{name: adamw, lr: 0.01, weight_decay: 0.1}",
    ],
)
def test_optimizers_match_the_references(rng, dtype, text):
    s = opt_spec(text)
    n = 23
    opt = optim.make(s, n, dtype)
    p = rng.standard_normal(n).astype(dtype)
    rp = p.astype(np.float64)
    state = [np.zeros(n), np.zeros(n)]
    for t in range(1, 6):
        g = rng.standard_normal(n).astype(dtype)
        opt.step(p, g, s.lr)
        g64 = g.astype(np.float64)
        o = s.options
        if s.name == "sgd":
            rp, state[0] = ref.sgd(rp, g64, state[0], s.lr, o["momentum"], o["weight_decay"], o["nesterov"])
        else:
            rp, state[0], state[1] = ref.adam(
                rp,
                g64,
                state[0],
                state[1],
                s.lr,
                o["beta1"],
                o["beta2"],
                o["eps"],
                o["weight_decay"],
                s.name == "adamw",
                t,
            )
    assert opt.step_count == 5
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(p, rp, rtol=tol, atol=tol)


def test_optimizer_state_round_trips(rng):
    s = opt_spec("{name: adam, lr: 0.01}")
    a = optim.make(s, 10)
    p = rng.standard_normal(10).astype(np.float32)
    for _ in range(3):
        a.step(p, rng.standard_normal(10).astype(np.float32), 0.01)
    b = optim.make(s, 10)
    b.load_state_dict(a.state_dict())
    assert b.step_count == 3
    g = rng.standard_normal(10).astype(np.float32)
    pa, pb = p.copy(), p.copy()
    a.step(pa, g, 0.01)
    b.step(pb, g, 0.01)
    np.testing.assert_array_equal(pa, pb)


# ---------------------------------------------------------------- schedules and clipping


def lr_at(schedule, progress, total=10, lr=0.1):
    return optim.learning_rate(opt_spec(f"{{lr: {lr}, schedule: {schedule}}}"), progress, total)


def test_constant_and_step_schedules():
    assert lr_at("constant", 7.5) == pytest.approx(0.1)
    step = "{name: step, step_size: 3, gamma: 0.5}"
    assert [lr_at(step, e) for e in (0, 2.99, 3, 5.5, 6, 9)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.0125])


def test_cosine_schedule():
    cos = "{name: cosine, min_lr: 0.01}"
    assert lr_at(cos, 0) == pytest.approx(0.1)
    assert lr_at(cos, 5) == pytest.approx(0.055)
    assert lr_at(cos, 2.5) == pytest.approx(0.01 + 0.09 * 0.5 * (1 + np.cos(np.pi / 4)))
    assert lr_at(cos, 10) == pytest.approx(0.01)
    values = [lr_at(cos, e / 4) for e in range(41)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_is_linear_then_the_schedule():
    warm = "{name: cosine, warmup_epochs: 2}"
    assert lr_at(warm, 0.5) == pytest.approx(0.025)
    assert lr_at(warm, 1.0) == pytest.approx(0.05)
    assert lr_at(warm, 1.5) == pytest.approx(0.075)
    assert lr_at(warm, 2.0) == pytest.approx(0.1)  # cosine starts after the warm-up
    assert lr_at(warm, 6.0) == pytest.approx(0.05)  # half way through the 8 cosine epochs
    assert lr_at(warm, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at("{name: constant, warmup_epochs: 4}", 1) == pytest.approx(0.025)
    assert lr_at("{name: constant, warmup_epochs: 4}", 4) == pytest.approx(0.1)


def test_step_schedule_counts_from_the_end_of_the_warm_up():
    """torch's SequentialLR([LinearLR, StepLR(step_size=3)], milestones=[5]) with lr 0.1:
    the warm-up reaches lr, then the steps count from there."""
    sched = "{name: step, warmup_epochs: 5, step_size: 3}"
    table = [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001]
    assert [lr_at(sched, e, total=12) for e in range(12)] == pytest.approx(table, abs=1e-9)
    assert lr_at(sched, 2.5, total=12) == pytest.approx(0.05)
    assert lr_at(sched, 7.9, total=12) == pytest.approx(0.1)


def plateau_rates(options, values, monitor="val_loss"):
    """The rate after each epoch's metric, as ReduceLROnPlateau's optimizer would see it."""
    sched = optim.schedule(opt_spec(f"{{lr: 0.1, schedule: {{name: plateau, {options}}}}}"))
    state, rates = {}, []
    for epoch, value in enumerate(values):
        sched.epoch_end(state, epoch, {monitor: value})
        rates.append(sched(0.1, epoch + 1, 100, state))
    return rates


def test_plateau_schedule_matches_reduce_lr_on_plateau():
    # worked by hand from torch's rules: better = below best * (1 - 1e-4); reduce when the
    # bad epochs exceed patience; then count again (after cooldown epochs)
    losses = [1.0, 0.9, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85]
    assert plateau_rates("factor: 0.5, patience: 1", losses) == pytest.approx(
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]
    )
    flat = [1.0] * 5
    assert plateau_rates("factor: 0.1, patience: 0, cooldown: 1, min_lr: 0.002", flat) == pytest.approx(
        [0.1, 0.01, 0.01, 0.002, 0.002]
    )
    accs = [0.5, 0.6, 0.6, 0.6]  # accuracy must rise
    assert plateau_rates("factor: 0.5, patience: 1, monitor: val_acc", accs, "val_acc") == pytest.approx(
        [0.1, 0.1, 0.1, 0.05]
    )


def test_plateau_state_survives_resume(tmp_path):
    opt = "{name: adam, lr: 0.01, schedule: {name: plateau, patience: 0, factor: 0.5, threshold: 0.5}}"
    rec = Record()
    straight = run.train(tiny(epochs=4, optimizer=opt), output=tmp_path / "s.npz", callbacks=[rec])[2]
    # the loss never halves from one epoch to the next: every epoch after the first is a plateau
    assert [e.lr for e in rec.epochs] == pytest.approx([0.01, 0.01, 0.005, 0.0025])
    out = tmp_path / "r.npz"
    run.train(tiny(epochs=2, optimizer=opt), output=out)
    assert checkpoint.load(out).meta["state"]["schedule"]["scale"] == 0.5
    resumed = run.train(tiny(epochs=4, optimizer=opt), resume=out)[2]
    np.testing.assert_allclose(resumed.model.params_flat, straight.model.params_flat, rtol=1e-6, atol=1e-7)


def test_clip_factor():
    assert optim.clip_factor(3.0, None) == 1.0
    assert optim.clip_factor(3.0, 5.0) == 1.0
    assert optim.clip_factor(3.0, 3.0) == 1.0
    assert optim.clip_factor(4.0, 1.0) == pytest.approx(0.25)
    assert optim.clip_factor(float("nan"), 1.0) == 1.0  # the NaN check, not clipping, deals with it


def test_trainer_clips_before_the_update():
    s = spec.parse(
        TINY.format(seed=0, epochs=1, optimizer="{name: sgd, lr: 1.0}").replace(
            "batch_size: 32}", "batch_size: 32, clip_norm: 0.001}"
        )
    )
    model, loss = run.build(s)
    from dlcli import data
    from dlcli.train import Trainer

    d = data.load(s, loss, model.output_shape)
    trainer = Trainer(model, loss, optim.for_model(s.optimizer, model), d, s)
    before = model.params_flat.copy()
    _, _, gnorm, layer_norms = trainer.train_step(d.x_train[:32], d.y_train[:32], 1.0)
    raw = model.grads_flat.copy()
    assert gnorm > 0.01  # the unclipped norm is reported
    np.testing.assert_allclose(gnorm, np.linalg.norm(raw), rtol=1e-5)
    step = before - model.params_flat  # plain SGD, lr 1: the clipped gradient
    np.testing.assert_allclose(np.linalg.norm(step), 0.001, rtol=1e-3)
    np.testing.assert_allclose(step, raw * (0.001 / gnorm), rtol=1e-3, atol=1e-7)  # float32 differences


# ---------------------------------------------------------------- whole runs


class Record(Callback):
    def __init__(self):
        self.steps, self.epochs, self.end = [], [], None

    def on_step(self, trainer, e):
        self.steps.append(e)

    def on_epoch(self, trainer, e):
        self.epochs.append(e)

    def on_end(self, trainer, result):
        self.end = result


def test_training_reduces_the_loss_and_emits_events(tmp_path):
    rec = Record()
    result, saved, trainer = run.train(tiny(epochs=4), output=tmp_path / "t.npz", callbacks=[rec])
    assert result.stopped == "finished" and result.epochs_done == 4
    assert saved == tmp_path / "t.npz" and saved.exists()
    steps_per_epoch = -(-180 // 32)
    assert [e.step for e in rec.steps] == list(range(1, 4 * steps_per_epoch + 1))
    assert [e.epoch_step for e in rec.steps[:steps_per_epoch]] == list(range(1, steps_per_epoch + 1))
    assert [e.epoch for e in rec.epochs] == [0, 1, 2, 3]
    assert rec.end is result and result.history == rec.epochs
    first, last = rec.epochs[0], rec.epochs[-1]
    assert last.train_loss < first.train_loss and last.val_loss < first.val_loss
    assert all(len(e.layer_grad_norms) == 3 and e.grad_norm > 0 for e in rec.steps)
    np.testing.assert_allclose(rec.steps[-1].grad_norm, np.linalg.norm(rec.steps[-1].layer_grad_norms), rtol=1e-6)
    # the reported validation metrics are those of the final parameters
    val_loss, val_acc = trainer.evaluate(trainer.dataset.x_val, trainer.dataset.y_val)
    assert val_loss == pytest.approx(last.val_loss) and val_acc == pytest.approx(last.val_acc)
    assert 0 <= last.val_acc <= 1 and last.val_acc == pytest.approx(
        np.mean(trainer.model.predict_raw(trainer.dataset.x_val).argmax(1) == trainer.dataset.y_val)
    )


def test_an_epochs_rate_leaves_out_a_first_step_that_waited_for_the_compiler(tmp_path, first_step_compiles):
    from dlcli.train import epoch_rate

    assert epoch_rate(100, 2.0) == 50.0
    assert epoch_rate(100, 11.0, first_rows=10, first_s=10.0) == 90.0  # 90 rows in the other second
    assert epoch_rate(10, 10.0, first_rows=10, first_s=10.0) == 1.0  # the first step alone: as is
    rec = Record()
    run.train(tiny(epochs=2), output=tmp_path / "t.npz", callbacks=[rec])
    first, second = rec.epochs[0].samples_per_s, rec.epochs[1].samples_per_s
    assert first > 180 / 1.0 and first > second / 10  # not dragged down to ~150 samples/s by the 1-s wait


def test_a_seed_gives_the_same_result_twice(tmp_path):
    runs = [run.train(tiny(seed=s), output=tmp_path / f"{i}.npz")[2] for i, s in enumerate((4, 4, 5))]
    a, b, c = (t.model.params_flat for t in runs)
    np.testing.assert_array_equal(a, b)
    assert [e.train_loss for e in runs[0].history] == [e.train_loss for e in runs[1].history]
    assert not np.allclose(a, c)


def test_dropout_runs_repeat_with_a_seed(tmp_path):
    text = TINY.format(seed=1, epochs=2, optimizer="adam").replace(
        "relu, {dense: 8}", "relu, {dropout: 0.3}, {dense: 8}"
    )
    runs = [run.train(spec.parse(text), output=tmp_path / f"{i}.npz")[2] for i in range(2)]
    np.testing.assert_array_equal(runs[0].model.params_flat, runs[1].model.params_flat)


class Spoil(Callback):
    """Puts a non-finite value into the parameters after a given global step, as an update
    with a huge learning rate would."""

    def __init__(self, at_step, value=np.nan, index=-1):
        self.at_step, self.value, self.index = at_step, value, index

    def on_step(self, trainer, e):
        if e.step == self.at_step:
            trainer.model.params_flat[self.index] = self.value


def test_gradients_that_overflow_under_a_finite_loss_are_named_as_such(tmp_path):
    """Targets of 1e5 and inputs of 100: the loss stays finite (~1e10) while the gradients
    overflow float32; the message said "loss became NaN", sending the user to the data."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((400, 4)) * 100).astype(np.float32)
    np.savez(tmp_path / "r.npz", x=x, y=(x.sum(1, keepdims=True) * 1e3).astype(np.float32))
    text = (
        f"data: {tmp_path / 'r.npz'}\nmodel: {{input: [4], layers: [{{dense: 8}}, relu, {{dense: 1}}]}}\n"
        "loss: mse\noptimizer: {name: sgd, lr: 0.02}\ntrain: {epochs: 2, batch_size: 32}\n"
    )
    log = tmp_path / "r.jsonl"
    result, saved, _ = run.train(spec.parse(text, "r.yaml"), output=tmp_path / "r.npz.out.npz", log=log)
    assert result.stopped == "diverged" and saved is None
    assert result.message.startswith("the gradients became infinite at epoch 1, step "), result.message
    last = json.loads(log.read_text().splitlines()[-1])  # the log says it too, not only stderr
    assert last == {"event": "stop", "stopped": "diverged", "epoch": 0, "step": result.step, "reason": result.message}


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "n.npz"
    result, saved, trainer = run.train(tiny(epochs=5), output=out, callbacks=[Spoil(at_step=8)])  # 6 steps/epoch
    assert result.stopped == "diverged"
    assert "loss became NaN at epoch 2, step 9" in result.message
    assert "last good checkpoint is kept" in result.message
    assert result.epochs_done == 1 and len(result.history) == 1
    ck = checkpoint.load(out)
    assert ck.meta["epochs_done"] == 1
    assert all(np.all(np.isfinite(v)) for v in ck.params.values())


@pytest.mark.parametrize("value,index", [(np.nan, -1), (np.inf, -1), (np.nan, 3)])
def test_parameters_spoilt_by_an_epochs_last_step_are_not_saved(tmp_path, value, index):
    """The last step of epoch 2 leaves non-finite parameters: the checkpoint must stay epoch 1's.
    (Index 3 is a first-layer weight: the ReLU after it hides the NaN from every loss.)"""
    out = tmp_path / "n.npz"
    result, saved, _ = run.train(tiny(epochs=5), output=out, callbacks=[Spoil(at_step=12, value=value, index=index)])
    assert result.stopped == "diverged", result
    assert "NaN or infinite at epoch 2, step 12" in result.message
    ck = checkpoint.load(out)
    assert ck.meta["epochs_done"] == 1
    assert all(np.all(np.isfinite(v)) for v in ck.params.values())


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, e):
        if e.step == self.step:
            trainer.interrupt["stop"] = True


def test_interrupt_flag_writes_a_resumable_checkpoint(tmp_path):
    full = run.train(tiny(epochs=3), output=tmp_path / "full.npz")[2]
    out = tmp_path / "int.npz"
    result, saved, _ = run.train(tiny(epochs=3), output=out, callbacks=[StopAt(9)])  # epoch 2, step 3 of 6
    assert result.stopped == "interrupted" and result.clean
    assert saved == out
    meta = checkpoint.load(out).meta
    assert (meta["epochs_done"], meta["epoch_step"], meta["step"]) == (1, 3, 9)
    rec = Record()
    result2, _, resumed = run.train(tiny(epochs=3), resume=out, output=out, callbacks=[rec])
    assert result2.stopped == "finished" and result2.epochs_done == 3
    assert rec.steps[0].step == 10 and rec.steps[0].epoch_step == 4 and rec.steps[0].epoch == 1
    assert resumed.step == full.step
    np.testing.assert_allclose(resumed.model.params_flat, full.model.params_flat, rtol=1e-6, atol=1e-7)
    assert checkpoint.load(out).meta["epoch_step"] == 0


class SecondCtrlCAt(StopAt):
    """A Ctrl-C while stopping was already asked: KeyboardInterrupt from inside a step."""

    def on_step(self, trainer, e):
        super().on_step(trainer, e)
        if e.step == self.step:
            raise KeyboardInterrupt


def test_a_second_ctrl_c_mid_step_says_which_checkpoint_is_kept(tmp_path):
    """The run stops at once in epoch 2, step 9: nothing of epoch 2 is saved, and the
    message says so (it named step 9 as if the run could go on from there)."""
    out = tmp_path / "c.npz"
    result, saved, _ = run.train(tiny(epochs=3), output=out, callbacks=[SecondCtrlCAt(9)])  # 6 steps an epoch
    assert result.stopped == "interrupted" and not result.clean and saved == out
    assert result.message == (
        "interrupted at epoch 2, step 9 by a second Ctrl-C, mid-step: the steps since are lost and "
        "the checkpoint keeps the end of epoch 1 (step 6)"
    )
    assert (checkpoint.load(out).meta["epochs_done"], checkpoint.load(out).meta["step"]) == (1, 6)


def test_interrupt_with_spoilt_parameters_does_not_save_them(tmp_path):
    out = tmp_path / "i.npz"
    result, _, _ = run.train(tiny(epochs=3), output=out, callbacks=[Spoil(at_step=9, index=3), StopAt(9)])
    assert result.stopped == "diverged"
    assert checkpoint.load(out).meta["epochs_done"] == 1


def test_interrupt_at_the_very_end_is_a_finished_run(tmp_path):
    result, saved, _ = run.train(tiny(epochs=2), output=tmp_path / "e.npz", callbacks=[StopAt(12)])  # the last step
    assert result.stopped == "finished", result.message
    assert checkpoint.load(saved).meta["epochs_done"] == 2


def test_resume_after_finishing_with_more_epochs(tmp_path):
    out = tmp_path / "r.npz"
    straight = run.train(tiny(epochs=4), output=tmp_path / "s.npz")[2]
    run.train(tiny(epochs=2), output=out)
    with pytest.raises(CheckpointError, match="already trained 2 epochs.*--epochs N with N > 2"):
        run.train(tiny(epochs=2), resume=out, output=out)
    rec = Record()
    result, _, resumed = run.train(tiny(epochs=4), resume=out, output=out, callbacks=[rec])
    assert [e.epoch for e in rec.epochs] == [2, 3]
    assert result.epochs_done == 4
    np.testing.assert_allclose(resumed.model.params_flat, straight.model.params_flat, rtol=1e-6, atol=1e-7)
    assert checkpoint.load(out).meta["epochs_done"] == 4


def test_resume_writes_back_to_the_checkpoint_it_continues(tmp_path):
    """`dlcli train --resume runs/x.npz --epochs N` continues *that* checkpoint."""
    out = tmp_path / "elsewhere" / "mine.npz"
    run.train(tiny(epochs=1), output=out)
    _, saved, _ = run.train(tiny(epochs=2), resume=out)
    assert Path(saved) == out
    assert checkpoint.load(out).meta["epochs_done"] == 2
    assert not Path("runs/tiny.npz").exists()


def test_ctrl_c_handler_sets_the_flag_then_interrupts():
    flag = {}
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_interrupt(flag):
        os.kill(os.getpid(), signal.SIGINT)
        assert flag == {"stop": True, "signal": "SIGINT"}
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal of either kind: at once
    assert flag["signal"] == "SIGINT"  # the first one says why the run stopped
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is before
    with stop_on_interrupt(flag := {}, terminate=False):  # under MPI: the launcher's SIGTERM is left alone
        assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_spirals_sample_config_reaches_97_percent(tmp_path):
    """The issue's acceptance criterion, on the sample config with fewer epochs (the full 40
    take ~25 s on this machine; they reach 100%, see the report)."""
    s = run.apply_overrides(run.load_spec(ROOT / "sample_configs" / "spirals_mlp.yaml"), epochs=8)
    result, _, _ = run.train(s, output=tmp_path / "spirals.npz")
    assert result.history[-1].val_acc >= 0.97, result.history[-1]


@pytest.mark.parametrize("stop_at", [2, 6, 9, 13])  # mid-epoch 1, end of epoch 1, mid-epoch 2 (6 steps an epoch)
def test_stop_anywhere_with_dropout_then_resume_gives_the_same_bits(tmp_path, stop_at):
    """Dropout masks come from (seed, epoch, step, layer), not from a generator that a
    resumed run would have to replay: stopping anywhere changes no bit of the result."""
    text = TINY.format(seed=2, epochs=3, optimizer="{name: adam, lr: 0.02}").replace(
        "relu, {dense: 8}", "relu, {dropout: 0.3}, {dense: 8}, {dropout: 0.2}"
    )
    full = run.train(spec.parse(text), output=tmp_path / "full.npz")[2]
    out = tmp_path / "int.npz"
    result, _, _ = run.train(spec.parse(text), output=out, callbacks=[StopAt(stop_at)])
    assert result.stopped == "interrupted"
    resumed = run.train(spec.parse(text), resume=out, output=out)[2]
    assert resumed.model.params_flat.tobytes() == full.model.params_flat.tobytes()
