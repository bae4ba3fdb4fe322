import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# No compile helper process beside the runs the tests start (they share 2 cores with the
# other test worker); tests/test_precompile.py turns it on where it is the subject.
os.environ.setdefault("DLCLI_PRECOMPILE", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def write_spec(tmp_path):
    """Write YAML text to a spec file in a temp folder; returns its path."""

    def write(text, name="spec.yaml"):
        p = tmp_path / name
        p.write_text(text)
        return p

    return write


@pytest.fixture(autouse=True)
def _chdir_tmp(tmp_path, monkeypatch):
    """Commands write runs/ into the working directory: keep it in the test's folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def first_step_compiles(monkeypatch):
    """The run's first training step takes 1 s longer, as when it waits for the compiler."""
    import time

    from dlcli.train import Trainer

    real_step = Trainer.train_step

    def slow_first(self, *args):
        if self.step == self.first_step:
            time.sleep(1.0)
        return real_step(self, *args)

    monkeypatch.setattr(Trainer, "train_step", slow_first)
