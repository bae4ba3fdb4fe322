"""Every shipped sample config is a valid spec whose model builds (`dlcli summary`)."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from dlcli.cli import main

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "sample_configs").glob("*.yaml"))


def test_there_are_samples():
    assert len(SAMPLES) >= 9


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_config_summarises(path):
    result = CliRunner().invoke(main, ["summary", str(path)])
    assert result.exit_code == 0, result.output
    assert "total" in result.output


def test_the_scripts_the_samples_and_the_readme_name_exist():
    """A sample's comment or the README pointing at a script that is not there (an
    arithmetic sample once named benchmarks/arithmetic_accuracy.py) sends a user nowhere."""
    import re

    root = SAMPLES[0].parents[1]
    texts = [p.read_text() for p in SAMPLES] + [(root / "README.md").read_text()]
    named = {m for t in texts for m in re.findall(r"\b((?:benchmarks|sample_configs)/[\w.-]+\.(?:py|yaml))", t)}
    assert any(n.startswith("benchmarks/") for n in named)
    missing = sorted(n for n in named if not (root / n).is_file())
    assert not missing, missing
