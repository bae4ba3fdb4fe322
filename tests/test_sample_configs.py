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
