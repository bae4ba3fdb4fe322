"""Checkpoints: atomic .npz without pickle; round trip; every array checked against the spec."""

import json
import zipfile

import numpy as np
import pytest

from dlcli import checkpoint, optim, run, spec
from dlcli.errors import CheckpointError

TEXT = """\
name: ck
seed: 2
data: {source: builtin:moons, options: {samples: 120}, standardize: true}
model: {input: [2], layers: [{dense: 5}, relu, {dense: 2}, softmax]}
optimizer: {name: adam, lr: 0.01}
train: {epochs: 2, batch_size: 16}
"""


def trained(tmp_path, text=TEXT):
    s = spec.parse(text, "ck.yaml")
    return run.train(s, output=tmp_path / "ck.npz")


def test_round_trip(tmp_path):
    result, saved, trainer = trained(tmp_path)
    ck = checkpoint.load(saved)
    assert ck.spec_text == TEXT and ck.spec().name == "ck"
    model = trainer.model
    assert (
        set(ck.params) == set(model.state()) == {"layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"}
    )
    for k, v in model.state().items():
        np.testing.assert_array_equal(ck.params[k], v)
        assert ck.params[k].dtype == np.float32
    for k, v in trainer.optimizer.state.items():
        np.testing.assert_array_equal(ck.optimizer[k], v)
    assert int(ck.optimizer["step"]) == trainer.optimizer.step_count == result.step
    assert ck.meta["epochs_done"] == 2 and ck.meta["epoch_step"] == 0 and ck.meta["step"] == result.step
    assert ck.meta["metrics"]["val_loss"] == pytest.approx(result.history[-1].val_loss)
    assert ck.meta["dlcli_version"] and ck.meta["format"] == checkpoint.FORMAT
    assert ck.meta["classes"] == ["upper", "lower"]
    np.testing.assert_array_equal(ck.preprocessing["mean"], trainer.dataset.mean)
    np.testing.assert_array_equal(ck.preprocessing["std"], trainer.dataset.std)
    s2, m2 = checkpoint.build_model(ck)
    np.testing.assert_array_equal(m2.params_flat, model.params_flat)
    x = trainer.dataset.x_val
    np.testing.assert_array_equal(m2.predict_raw(x), model.predict_raw(x))


def test_no_pickle_inside(tmp_path):
    _, saved, _ = trained(tmp_path)
    with np.load(saved, allow_pickle=False) as f:
        for k in f.files:
            assert f[k].dtype != object
    json.loads(str(np.load(saved)["meta"]))


def test_write_is_atomic(tmp_path, monkeypatch):
    _, saved, trainer = trained(tmp_path)
    good = saved.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(CheckpointError, match="cannot write .*ck.npz: disk full"):
        checkpoint.save(saved, TEXT, trainer.model, trainer.optimizer, {"epochs_done": 9})
    assert saved.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["ck.npz"]  # no temporary left


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: None, "checkpoint not found"),
        (lambda p: p.write_text("garbage"), "not a dlcli checkpoint"),
        (lambda p: np.savez(p, x=np.zeros(3)), "no 'spec' entry"),
        (
            lambda p: np.savez(p, spec=np.array("x"), meta=np.array(["a", "b"], dtype=object)),
            "not a readable dlcli checkpoint",
        ),
        (
            lambda p: np.savez(
                p, spec=np.array("x"), meta=np.array(json.dumps({"format": 99, "dlcli_version": "9.0"}))
            ),
            "written by a newer dlcli",
        ),
        (lambda p: np.savez(p, spec=np.array("x"), meta=np.array("{not json")), "metadata is corrupt"),
    ],
)
def test_bad_checkpoints_are_clear_errors(tmp_path, make, match):
    p = tmp_path / "bad.npz"
    make(p)
    with pytest.raises(CheckpointError, match=match) as info:
        checkpoint.load(p)
    assert info.value.exit_code == 2


def test_truncated_checkpoint(tmp_path):
    _, saved, _ = trained(tmp_path)
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        checkpoint.load(saved)


def test_parameter_shapes_are_checked_against_the_spec(tmp_path):
    _, saved, _ = trained(tmp_path)
    ck = checkpoint.load(saved)
    ck.params["layers.2.weight"] = np.zeros((5, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"layers.2.weight has shape \(5, 3\), the spec's model needs \(5, 2\)"):
        checkpoint.build_model(ck)
    del ck.params["layers.0.bias"]
    with pytest.raises(CheckpointError, match="missing parameter layers.0.bias"):
        checkpoint.build_model(ck)


def test_embedded_spec_that_does_not_validate(tmp_path):
    _, saved, trainer = trained(tmp_path)
    checkpoint.save(saved, "model: 3\n", trainer.model)
    with pytest.raises(CheckpointError, match="embedded spec does not validate"):
        checkpoint.load(saved).spec()


def test_optimizer_state_survives_resume(tmp_path):
    _, saved, trainer = trained(tmp_path)
    opt = optim.for_model(trainer.spec.optimizer, trainer.model)
    opt.load_state_dict(checkpoint.load(saved).optimizer)
    assert opt.step_count == trainer.optimizer.step_count
    np.testing.assert_array_equal(opt.state["v"], trainer.optimizer.state["v"])
    assert zipfile.is_zipfile(saved)


def test_checkpoint_gets_ordinary_file_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        _, saved, _ = trained(tmp_path)
    finally:
        os.umask(old)
    assert saved.stat().st_mode & 0o777 == 0o644
