"""Stop-and-resume and crashes, through `dlcli train` in a subprocess.

- Ctrl-C anywhere (mid-epoch, at an epoch's end, twice in one run), then `--resume`: the
  final parameters and optimizer state are bit for bit those of a run never stopped, with
  dropout in the model (its masks come from (seed, epoch, step, layer)).
- kill -9 at random moments: the checkpoint on disk always loads and is a whole epoch's,
  never a torn one; the next run leaves no temporary file behind.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlcli import checkpoint

pytestmark = pytest.mark.slow

SPEC = """\
name: resume
seed: 3
data: {{source: builtin:xor, options: {{samples: {samples}}}, validation_split: 0.2}}
model:
  input: [2]
  layers: [{{dense: 16}}, relu, {{dropout: 0.3}}, {{dense: 16}}, tanh, {{dropout: 0.2}}, {{dense: 2}}]
optimizer: {{name: adam, lr: 0.01}}
train: {{epochs: {epochs}, batch_size: 16}}
"""


def dlcli_train(*args, sigint_at=None, wait=True, quiet=True):
    env = {k: v for k, v in os.environ.items() if k != "DLCLI_TEST_SIGINT_AT_STEP"}
    if sigint_at is not None:
        env["DLCLI_TEST_SIGINT_AT_STEP"] = str(sigint_at)
    cmd = [sys.executable, "-m", "dlcli", "train", *map(str, args), *(["-q"] if quiet else []), "--threads", "1"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return p
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def state(path):
    """Every parameter and optimizer array of a checkpoint, and its step."""
    ck = checkpoint.load(path)
    arrays = {f"param.{k}": v for k, v in ck.params.items()}
    arrays.update({f"optim.{k}": v for k, v in ck.optimizer.items()})
    return arrays, ck.meta


def assert_same_bits(a, b):
    (xa, ma), (xb, mb) = state(a), state(b)
    assert sorted(xa) == sorted(xb)
    for k in xa:
        assert xa[k].dtype == xb[k].dtype and xa[k].tobytes() == xb[k].tobytes(), k
    assert (ma["epochs_done"], ma["step"]) == (mb["epochs_done"], mb["step"])


EPOCHS = 60  # 48 training samples: 3 steps and one checkpoint write an epoch


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The spec, and the checkpoint of a run never stopped."""
    folder = tmp_path_factory.mktemp("straight")
    spec = folder / "resume.yaml"
    spec.write_text(SPEC.format(samples=60, epochs=EPOCHS))
    code, _, err = dlcli_train(spec, "-o", folder / "straight.npz")
    assert code == 0, err
    return spec, folder / "straight.npz"


def test_stop_anywhere_then_resume_gives_the_same_bits(tmp_path, straight):
    """Ctrl-C mid-epoch (step 1 of epoch 2), resume; Ctrl-C again at an epoch's end
    (step 9) and once more mid-epoch (step 2 of epoch 5); resume to the end."""
    spec, reference = straight
    out = tmp_path / "a.npz"
    expected = [(1, 1, 4), (3, 0, 9), (4, 2, 14)]  # (epochs_done, epoch_step, step) at each stop
    for i, (at, want) in enumerate(zip((4, 9, 14), expected)):
        source = [spec, "-o", out] if i == 0 else ["--resume", out]
        code, _, err = dlcli_train(*source, sigint_at=at)
        assert code == 130 and "Stopped: interrupted" in err, err
        meta = checkpoint.load(out).meta
        assert (meta["epochs_done"], meta["epoch_step"], meta["step"]) == want
    code, _, err = dlcli_train("--resume", out)
    assert code == 0, err
    assert_same_bits(out, reference)


def test_the_run_says_where_it_stopped_and_where_it_goes_on(tmp_path):
    """Stopped inside epoch 2, the final line says so, and the resumed run says it goes on
    inside epoch 2 (on screen and in the log); stopped at an epoch's end, 'after epoch N'."""
    spec, out, log = tmp_path / "r.yaml", tmp_path / "r.npz", tmp_path / "m.jsonl"
    spec.write_text(SPEC.format(samples=60, epochs=3))  # 48 training samples: 3 steps an epoch
    code, stdout, err = dlcli_train(spec, "-o", out, sigint_at=4)
    assert code == 130 and "Stopped: interrupted at epoch 2, step 4." in err, err
    assert "final: epoch 1/3 (stopped in epoch 2 at step 4) train_loss " in stdout, stdout
    code, stdout, err = dlcli_train("--resume", out, "--log", log, sigint_at=6, quiet=False)
    assert code == 130 and f"resuming {out} at epoch 2, step 5\n" in stdout, stdout
    (resume,) = [r for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "resume"]
    assert resume == {"event": "resume", "from": str(out), "epoch": 1, "epoch_step": 1, "step": 4, "changes": {}}
    assert "final: epoch 2/3 train_loss " in stdout, stdout  # stopped after epoch 2's last step
    code, stdout, err = dlcli_train("--resume", out, quiet=False)
    assert code == 0 and f"resuming {out} after epoch 2\n" in stdout, stdout


def test_a_ctrl_c_from_outside_then_resume_gives_the_same_bits(tmp_path, straight):
    """The signal comes from another process, at a moment the test does not choose."""
    spec, reference = straight
    out = tmp_path / "x.npz"
    p = dlcli_train(spec, "-o", out, wait=False)
    deadline = time.monotonic() + 120
    while not out.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # the first epoch's checkpoint: training (and the handler) is under way
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    if p.returncode == 130:
        assert "Stopped: interrupted" in err, err
        assert dlcli_train("--resume", out)[0] == 0
    else:  # it was already past its last step
        assert p.returncode == 0, err
    assert_same_bits(out, reference)


def test_kill_9_leaves_a_whole_checkpoint_and_the_next_run_no_temporary_file(tmp_path, straight):
    """Six SIGKILLs at seeded random moments while training writes a checkpoint every few
    milliseconds: the file on disk always loads and is a whole epoch's (the one before or
    a newer one), and resuming from it ends on the same bits as a run never killed."""
    spec, reference = straight
    out = tmp_path / "k.npz"
    rng = np.random.default_rng(2026)
    done = 0
    for _ in range(6):  # each a fresh process (~1.5 s): six keep the suite quick
        if done == EPOCHS:  # it finished before the kill: start again
            out.unlink()
            done = 0
        before = out.stat().st_mtime_ns if out.exists() else 0
        p = dlcli_train(*(["--resume", out] if out.exists() else [spec, "-o", out]), wait=False)
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:  # wait for this run's first write
            if out.exists() and out.stat().st_mtime_ns != before:
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.4))
        p.kill()
        p.communicate()
        ck = checkpoint.load(out)
        _, model = checkpoint.build_model(ck)  # every shape checked
        assert np.isfinite(model.params_flat).all()
        assert ck.meta["epochs_done"] >= max(done, 1) and ck.meta["epoch_step"] == 0
        done = ck.meta["epochs_done"]
    if done < EPOCHS:
        code, _, err = dlcli_train("--resume", out)
        assert code == 0, err
    assert_same_bits(out, reference)
    assert not list(tmp_path.glob("*.tmp")), sorted(p.name for p in tmp_path.iterdir())


def test_a_second_ctrl_c_while_the_stopped_run_saves_still_says_how_to_resume(tmp_path, monkeypatch):
    """The first Ctrl-C stops the loop; a second one lands while the run writes its last
    checkpoint: the write is abandoned (the file on disk is the last whole one) and the
    run says so, with the command that resumes it, exit 130."""
    from click.testing import CliRunner

    from dlcli.callbacks import Checkpointer
    from dlcli.cli import main

    def interrupted_save(self, trainer, result):
        raise KeyboardInterrupt  # as a Ctrl-C arriving during the final save

    monkeypatch.setattr(Checkpointer, "on_end", interrupted_save)
    monkeypatch.setenv("DLCLI_TEST_SIGINT_AT_STEP", "30")  # in epoch 2 (20 steps each): epoch 1's checkpoint is written
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(samples=400, epochs=5))
    out = CliRunner().invoke(main, ["train", str(spec), "-o", str(tmp_path / "m.npz"), "-q", "--threads", "1"])
    assert out.exit_code == 130, out.output
    assert "Interrupted. The last checkpoint written is kept." in out.output
    assert f"\nResume with: dlcli train --resume {tmp_path / 'm.npz'}\n" in out.output
    assert checkpoint.load(tmp_path / "m.npz").meta["epochs_done"] == 1


def test_a_stopped_run_with_a_log_resumes_into_it_and_a_closed_pipe_still_says_so(tmp_path):
    """The resume command keeps --log (without it the resumed run recorded nothing more);
    `train ... | tail` with tail gone at the Ctrl-C exited 1 in silence: now 130, and
    stderr names the kept checkpoint."""
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(samples=400, epochs=5))
    log = tmp_path / "my log.jsonl"
    env = dict(os.environ, DLCLI_TEST_SIGINT_AT_STEP="30")
    cmd = [sys.executable, "-m", "dlcli", "train", str(spec), "-o", str(tmp_path / "m.npz"), "--threads", "1"]
    p = subprocess.Popen(
        [*cmd, "--log", str(log), "--log-grad-norms"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    p.stdout.close()  # the reader has gone
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 130, err
    assert f"Resume with: dlcli train --resume {tmp_path / 'm.npz'} --log '{log}' --log-grad-norms" in err, err
    assert "Traceback" not in err


def test_sigterm_stops_like_ctrl_c_saving_the_run(tmp_path):
    """`timeout` or a batch system ends a job with SIGTERM: the run exited 143 at once and
    lost its partial epoch, saying nothing. Now it stops between steps, saves, says how
    to resume, exit 143; the checkpoint holds the partial epoch."""
    import signal
    import time

    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(samples=4000, epochs=200))
    out = tmp_path / "m.npz"
    p = dlcli_train(spec, "-o", out, wait=False)
    deadline = time.monotonic() + 120
    while not out.exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)  # the first epoch's checkpoint: training is under way
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "Stopped: terminated (SIGTERM) at epoch" in err and f"Resume with: dlcli train --resume {out}" in err
    meta = checkpoint.load(out).meta
    assert meta["step"] > 0 and "Traceback" not in err
