"""`benchmarks/importance.py --smoke`: four policies of a small ResNet, each under every
within-layer importance criterion at both fidelities; then a rerun that reuses every piece."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_criterion_keeps_the_ratios_and_a_rerun_resumes(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    bench = importlib.import_module("importance")
    criteria = set(bench.IMPORTANCES)
    result = bench.main(["--smoke", "--work", str(tmp_path / "work")])
    assert result["complete"] and result["policies"] == 4
    for row in result["rows"].values():
        for fid in bench.FIDELITIES:
            scores = row["scores"][fid]
            assert set(scores) == criteria
            # only which channels go changes: the same channel counts, so the same FLOPs
            assert len({round(s["flops_ratio"], 9) for s in scores.values()}) == 1
            # LAMP rescales magnitudes within a layer without reordering them: a per-unit
            # ratio removes the same channels as magnitude does
            assert scores["lamp"]["accuracy"] == scores["magnitude"]["accuracy"]
    for fid in bench.FIDELITIES:
        summary = result["summary"][fid]
        assert summary["policies"] == 4
        assert sum(c["wins"] for c in summary["criteria"].values()) == 4
        assert summary["criteria"]["magnitude"]["difference"] == 0.0
        assert summary["best_per_policy_lead"]["mean"] >= 0.0
    saved = json.loads((tmp_path / "work-smoke" / "importance.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    capsys.readouterr()
    again = bench.main(["--smoke", "--work", str(tmp_path / "work")])
    assert "== score/" not in capsys.readouterr().out  # every piece reused
    assert again["summary"] == result["summary"]
