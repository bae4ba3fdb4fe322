"""Checkpoints: one .npz with the spec's text, parameters, optimizer state and metadata.

No pickle anywhere: strings are stored as NumPy unicode arrays, metadata as JSON text,
and loading uses `allow_pickle=False`, so a checkpoint from someone else cannot run code.
Writes go through `files.atomic_path`: a crash never leaves a half-written checkpoint
where a good one was.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from . import spec as spec_mod
from .errors import CheckpointError, SpecError
from .files import LOAD_ERRORS, atomic_path
from .model import Model
from .text import checkpoint_vocabulary

FORMAT = 1


@dataclass
class Checkpoint:
    spec_text: str
    params: dict
    optimizer: dict
    meta: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)  # mean, std arrays when standardised
    path: str = ""

    def spec(self):
        try:
            s = spec_mod.parse(self.spec_text, f"{self.path} (embedded spec)")
        except SpecError as e:
            raise CheckpointError(f"{self.path}: its embedded spec does not validate: {e}") from None
        if self.meta.get("spec_path"):  # relative data paths resolve beside the spec it came from
            s.path = self.meta["spec_path"]
        s.overrides = dict(self.meta.get("overrides") or {})
        if isinstance(self.meta.get("name"), str):  # else the name would be the checkpoint file's
            s.name = self.meta["name"]
        return s


def save(path, spec_text, model, optimizer=None, meta=None, dataset=None):
    path = Path(path)
    arrays = {"spec": np.array(spec_text)}
    for k, v in model.state().items():
        arrays["param." + k] = v
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            arrays["optim." + k] = v
    meta = dict(meta or {})
    meta.update(format=FORMAT, dlcli_version=__version__)
    if dataset is not None:
        meta["classes"] = list(dataset.classes)
        if getattr(dataset, "fingerprint", None) is not None:  # a resumed run checks it has the same data
            meta["data"] = dataset.fingerprint
        if getattr(dataset, "features", None):
            meta["features"] = list(dataset.features)
        if getattr(dataset, "vocab", None) is not None:  # JSON, like the rest of the metadata
            meta["text"] = dataset.vocab.to_meta()
        if dataset.mean is not None:
            arrays["pre.mean"] = dataset.mean
            arrays["pre.std"] = dataset.std
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_path(path, CheckpointError) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def load(path) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # else np.load reports it as pickled data
        if path.suffix.lower() in (".yaml", ".yml"):  # `export spec.yaml`: the spec, not what it trains
            raise CheckpointError(
                f"{path}: a spec, not a checkpoint: train it first (dlcli train {path}) and give the .npz it writes"
            )
        raise CheckpointError(f"{path}: not a dlcli checkpoint (not a .npz file, or truncated)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except LOAD_ERRORS as e:
        raise CheckpointError(f"{path}: not a readable dlcli checkpoint ({type(e).__name__}: {e})") from None
    for key in ("spec", "meta"):
        if key not in arrays or arrays[key].dtype.kind != "U":
            raise CheckpointError(f"{path}: not a dlcli checkpoint (no '{key}' entry)")
    try:
        meta = json.loads(str(arrays["meta"]))
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: its metadata is corrupt (not JSON)") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its metadata is corrupt (a JSON {type(meta).__name__}, not an object)")
    if not isinstance(meta.get("format", 0), int) or meta.get("format", 0) > FORMAT:
        raise CheckpointError(
            f"{path}: written by a newer dlcli (checkpoint format {meta.get('format')}, "
            f"version {meta.get('dlcli_version')}); this is dlcli {__version__}, which reads format {FORMAT}"
        )
    for key in ("epochs_done", "epoch_step", "epoch_samples", "step"):
        value = meta.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"{path}: its metadata is corrupt ({key} is {value!r}, not a count)")
    problem = _run_record_problem(meta)
    if problem:
        raise CheckpointError(f"{path}: its metadata is corrupt ({problem})")
    if not isinstance(meta.get("classes", []), list):
        raise CheckpointError(f"{path}: its metadata is corrupt (classes is not a list)")
    return Checkpoint(
        spec_text=str(arrays["spec"]),
        params={k[6:]: v for k, v in arrays.items() if k.startswith("param.")},
        optimizer={k[6:]: v for k, v in arrays.items() if k.startswith("optim.")},
        meta=meta,
        preprocessing={k[4:]: v for k, v in arrays.items() if k.startswith("pre.")},
        path=str(path),
    )


def _run_record_problem(meta):
    """What is wrong with the run's record in `meta` (overrides, spec path, the state of
    schedules and callbacks), or None: a resumed run must not trip over a bad value."""
    if not isinstance(meta.get("overrides") or {}, dict):
        return "overrides is not an object"
    if not isinstance(meta.get("spec_path") or "", str):
        return "spec_path is not a string"
    state = meta.get("state") or {}
    if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
        return "state is not an object of objects"
    for part in state.values():
        for key, value in part.items():
            if key == "stopped":
                ok = isinstance(value, bool)
            elif key == "monitor":
                ok = isinstance(value, str)
            else:
                ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
            if not ok:
                return f"state {key} is {value!r}"
    return None


def build_model(ckpt: Checkpoint, dtype=np.float32, fuse=True):
    """The checkpoint's model with its trained parameters, shape-checked against its spec."""
    spec = ckpt.spec()
    vocab = checkpoint_vocabulary(ckpt)
    size = vocab.size if vocab is not None else None
    model = Model.from_spec(
        spec.model, dtype=dtype, seed=spec.seed, loss=spec.loss, fuse=fuse, vocab_size=size, loading=True
    )
    model.load_state(ckpt.params, source=ckpt.path)
    return spec, model
