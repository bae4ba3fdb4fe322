"""Helpers for the bad-input corpus and the fuzz tests: good files to start from, ways to
spoil them, and the one check every bad input must pass (one line, the documented exit
code, no traceback, nothing the user had changed)."""

from __future__ import annotations

import functools
import hashlib
import io
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from dlcli.cli import main

GOOD_SPEC = """\
name: good
seed: 3
data: {source: builtin:moons, options: {samples: 64}}
model: {input: [2], layers: [{dense: 4}, relu, {dense: 2}]}
optimizer: {name: adam, lr: 0.01}
train: {epochs: 1, batch_size: 16}
"""


def spec_for(source, extra=""):
    """A small valid spec reading `source` (a file beside it); `extra` adds data fields."""
    return (
        "name: filedata\nseed: 1\n"
        f"data: {{source: {source}{extra}, validation_split: 0.25}}\n"
        "model: {input: [2], layers: [{dense: 4}, relu, {dense: 2}]}\n"
        "train: {epochs: 1, batch_size: 8}\n"
    )


def good_data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2)).astype(np.float32), rng.integers(0, 2, n)


def npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def _checkpoint_arrays():
    """The arrays of a valid checkpoint of GOOD_SPEC (a fresh model: no training needed)."""
    from dlcli import optim, spec
    from dlcli.model import Model

    s = spec.parse(GOOD_SPEC, "good.yaml")
    model = Model.from_spec(s.model, seed=s.seed, loss=s.loss)
    arrays = {"spec": np.array(GOOD_SPEC)}
    arrays.update({"param." + k: v.copy() for k, v in model.state().items()})
    arrays.update({"optim." + k: v.copy() for k, v in optim.for_model(s.optimizer, model).state_dict().items()})
    meta = {"epochs_done": 1, "epoch_step": 0, "step": 4, "format": 1, "dlcli_version": "0.1.0", "classes": []}
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def checkpoint_arrays():
    return {k: v.copy() for k, v in _checkpoint_arrays().items()}


def checkpoint_bytes(**changes):
    """A valid checkpoint's bytes with entries replaced (`None` removes one); keys use '__'
    for '.', e.g. param__layers__0__weight."""
    arrays = checkpoint_arrays()
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            arrays.pop(key, None)
        else:
            arrays[key] = np.asarray(value)
    return npz_bytes(**arrays)


def meta_bytes(meta):
    return checkpoint_bytes(meta=np.array(meta if isinstance(meta, str) else json.dumps(meta)))


def snapshot(folder):
    """sha256 of every file under folder, by relative path."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def check_refused(result, code=2, fragments=(), before=None, after=None):
    """The promise for bad input: the exit code, exactly one `Error: ...` line on stderr that
    says what is wrong, no traceback, and (given snapshots) no existing file changed."""
    where = f"stdout={result.stdout!r} stderr={result.stderr!r} exception={result.exception!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), where
    assert result.exit_code == code, where
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), where
    assert "Traceback" not in result.output, where
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), f"{fragment!r} not in {lines[0]!r}"
    if before is not None:
        changed = [name for name, digest in before.items() if after.get(name) != digest]
        assert not changed, f"changed or removed: {changed}"
    return lines[0]
