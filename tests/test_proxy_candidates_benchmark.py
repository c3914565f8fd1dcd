"""`benchmarks/proxy_candidates.py --smoke`: a tiny ViT on tiny Fashion-MNIST subsets, four
policies at the 50% FLOPs budget, every first-stage proxy candidate and the fine-tuned target;
then a rerun that reuses every finished piece. Needs scipy (the peers extra) and timm."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("scipy", reason="the peers extra is not installed (pip install -e .[peers])")
pytest.importorskip("timm", reason="the timm extra is not installed (pip install -e .[timm])")

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):  # noqa: ANN202 - a benchmark script imported by name
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_every_candidate_has_a_correlation_and_a_cost_and_a_rerun_resumes(tmp_path: Path
                                                                          ) -> None:
    bench = _module("proxy_candidates")
    work = tmp_path / "work"
    result = bench.main(["--smoke", "--work", str(work)])
    assert result["complete"] and result["policies"] == 4
    saved = json.loads((work.with_name("work-smoke") / "proxy_candidates.json").read_text())
    assert saved["candidates"] == json.loads(json.dumps(result["candidates"]))
    for c in bench.CANDIDATES:
        row = result["candidates"][c]
        assert row["scored"] == 4 and row["seconds_per_policy"] > 0, (c, row)
        for truth in ("test", "val"):
            corr = row[truth]
            assert corr["n"] == 4, (c, corr)
            rho, tau = corr["spearman_rho"], corr["kendall_tau"]
            # nan only where a score (or the truth) is the same for every policy
            assert (math.isnan(rho) or -1.0 <= rho <= 1.0) and (
                math.isnan(tau) or -1.0 <= tau <= 1.0), (c, corr)
            assert len(corr["spearman_ci95"]) == 2 and len(corr["kendall_ci95"]) == 2
    for label, row in result["rows"].items():
        assert set(row["scores"]) == set(bench.CANDIDATES), label
        target = row["target"]
        assert 0.0 <= target["test_accuracy"] <= 1.0 and len(target["val_curve"]) == 1
        # every policy at the budget (one dimension per unit, filled onto it)
        assert 0.45 <= target["flops_ratio"] <= 0.5 + 1e-6, (label, target["flops_ratio"])
    assert result["candidates"]["ft300"]["extra_s"] > 0  # a fine-tune costs more than none
    # the target's seed noise: the first two policies fine-tuned again under seed 1
    assert result["candidates"]["target"]["seed_noise"] == {"n": 2}
    seeded = [label for label, row in result["rows"].items() if row.get("target_seed1")]
    assert seeded == list(result["rows"])[:2]
    again = bench.main(["--smoke", "--work", str(work)])
    assert again["rows"] == json.loads(json.dumps(result["rows"]))
    assert "| ft100 |" in bench.report(again)


def test_bias_correction_matches_the_dense_output_means() -> None:
    import torch
    from torch import nn

    bench = _module("proxy_candidates")
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4), nn.LayerNorm(4))
    with torch.no_grad():
        dense[3].bias.copy_(torch.randn(4))
    # a "pruned" copy: hidden channels 1, 4 and 6 removed (the dense biases at the kept ones)
    keep = torch.tensor([0, 2, 3, 5, 7])
    pruned = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.LayerNorm(4))
    with torch.no_grad():
        pruned[0].weight.copy_(dense[0].weight[keep])
        pruned[0].bias.copy_(dense[0].bias[keep])
        pruned[2].weight.copy_(dense[2].weight[:, keep])
        pruned[2].bias.copy_(dense[2].bias)
        pruned[3].load_state_dict(dense[3].state_dict())
    x = torch.randn(256, 6)
    assert bench.recalibrate(pruned, dense, x, "bias+ln") == 0
    with torch.no_grad():
        got, want = pruned[:3](x).mean(0), dense[:3](x).mean(0)
        assert torch.allclose(got, want, atol=1e-5)
        out, ref = pruned(x), dense(x)
        assert torch.allclose(out.mean(0), ref.mean(0), atol=1e-5)
        assert torch.allclose(out.std(0), ref.std(0), atol=1e-4)
