"""The README's "Using the searchers in your own Ray Tune code" example, run exactly as
written (its python block is read from README.md), with a real Ray."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using the searchers in your own Ray Tune code", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    assert len(blocks) == 1, "the section must hold exactly one python block"
    return blocks[0]


@pytest.mark.slow
def test_readme_ray_tune_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_example())
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ,
                                                       "RAY_AIR_NEW_OUTPUT": "0"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("best loss")]
    assert line, done.stdout[-2000:]
    loss = float(line[0].split()[2])
    assert 0.0 <= loss < 0.16  # a real policy's loss (ratios in [0, 0.8]), learned from
    # The objective reports no `final`: the searcher said once that it learns from last results.
    assert "carry no 'final' flag" in done.stdout + done.stderr
