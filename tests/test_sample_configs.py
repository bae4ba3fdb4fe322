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


def test_the_readme_spec_examples_build(tmp_path):
    """Each YAML example in the README with a model (the reference spec, the graph, the text
    model) passes `dlcli summary`: one that did not (a graph whose `add` nothing read) told a
    user that the README's own example is an error. Examples without data get spirals'."""
    import re

    root = SAMPLES[0].parents[1]
    blocks = re.findall(r"```yaml\n(.*?)```", (root / "README.md").read_text(), re.S)
    specs = [b for b in blocks if b.startswith(("model:", "name:", "data:")) and "layers:" in b]
    assert len(specs) >= 3
    for i, text in enumerate(specs):
        if not text.startswith(("name:", "data:")):
            text = "data: {source: builtin:spirals}\n" + text
        text = text.replace("source: ../README.md", f"source: {root / 'README.md'}")
        p = tmp_path / f"readme_{i}.yaml"
        p.write_text(text)
        result = CliRunner().invoke(main, ["summary", str(p)])
        assert result.exit_code == 0, (text, result.output)
