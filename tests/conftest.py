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
