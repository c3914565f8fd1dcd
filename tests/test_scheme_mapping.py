"""The measured scheme mapping: a sensitivity scan on a device clock decides each unit's scheme
(`search_spaces.mapping`, `trainers.sensitivity`), and `prunetune map` prints and saves it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from prunetune.errors import SearchError, SpaceError
from prunetune.kernels import LatencyPredictor, LatencyTable
from prunetune.kernels.modules import BlockSparseConv2d, BlockSparseLinear
from prunetune.orchestrator.cli import main
from prunetune.orchestrator.config import load_config
from prunetune.orchestrator.scheme_map import measured_scan
from prunetune.orchestrator.spaces import build_space
from prunetune.search_spaces import (
    PolicyError,
    PruningSpace,
    SchemeProbe,
    SchemeScan,
    UnitPolicy,
    analyze,
    map_schemes,
)
from prunetune.trainers import (
    DataConfig,
    FinetuneConfig,
    build_model,
    load_data,
    pretrain_dense,
)
from prunetune.trainers.sensitivity import scan_schemes

from .search_helpers import write_config
from .test_latency_budget import MacsClock

SCHEMES = ("channel", "block", "nm", "unstructured")


_SPARSE = (BlockSparseConv2d, BlockSparseLinear)


class SparseKernelClock(MacsClock):
    """A device whose dense GEMMs take 1 ms whatever their size (launch-bound: removing
    channels saves nothing) and whose block-sparse kernels take half that per stored block."""

    name = "sparse-kernel-clock"
    layer_types = (nn.Conv2d, nn.Linear, *_SPARSE)

    def macs(self, m: nn.Module, out: torch.Tensor) -> float:
        return 1e6 * (0.5 * m.density if isinstance(m, _SPARSE) else 1.0)


class DenseKernelClock(MacsClock):
    """Every layer costs its dense MACs, zeros or not: sparse schemes never pay."""

    name = "dense-kernel-clock"
    layer_types = (nn.Conv2d, nn.Linear, *_SPARSE)

    def macs(self, m: nn.Module, out: torch.Tensor) -> float:
        if isinstance(m, _SPARSE):
            return out.numel() * m.taps * m.channels
        return super().macs(m, out)


class ClockOracle:
    """The scan's latency from the latency table on a fake clock."""

    def __init__(self, clock: MacsClock, dense: nn.Module, x: torch.Tensor) -> None:
        self.predictor = LatencyPredictor(dense, x, LatencyTable(), measurer=clock)

    def predict_ms(self, model: nn.Module, dense: nn.Module, x: torch.Tensor) -> float:
        return self.predictor(model)


# MobileNetV2 units whose 1x1 convolutions take the kernels' 16- and 32-blocks.
UNITS = ("features.10.conv.0", "features.16.conv.6", "features.17.conv.0")


@pytest.fixture(scope="module")
def digits_mobilenet() -> tuple[nn.Module, Any, Any]:
    torch.manual_seed(0)
    data = load_data(DataConfig(name="digits", val_subset=60))
    model = build_model("mobilenetv2", num_classes=10, in_channels=1).eval()
    return model, data, analyze(model, data.example_input(1))


def _scan(clock: MacsClock, digits_mobilenet: tuple) -> tuple[SchemeScan, Any]:
    model, data, analysis = digits_mobilenet
    oracle = ClockOracle(clock, model, data.example_input(1))
    scan = scan_schemes(model, data, analysis, oracle, device_name=clock.name, schemes=SCHEMES,
                        ratios=(0.5,), units=UNITS, proxy=FinetuneConfig(bn_calibration=64))
    return scan, analysis


def test_the_measured_mapping_picks_what_the_clock_makes_fastest(digits_mobilenet) -> None:
    scan, analysis = _scan(SparseKernelClock(), digits_mobilenet)
    mapped = map_schemes(analysis, "cpu", SCHEMES, method="measured", scan=scan)
    scanned = {p.unit for p in scan.probes}
    assert scanned == set(UNITS)
    for name in scanned:
        saved: dict[str, float] = {}
        for p in scan.of_unit(name):  # the best of each scheme's candidates
            saved[p.template.scheme] = max(p.saved_ms, saved.get(p.template.scheme, -1e9))
        assert saved["block"] > 0.1 and abs(saved["channel"]) < 1e-6 and saved["nm"] <= 1e-9, \
            saved
        assert mapped[name].scheme == "block", (name, mapped[name])
    # Units the scan did not probe keep the rule-based choice.
    rules = map_schemes(analysis, "cpu", SCHEMES)
    assert all(mapped[n] == rules[n] for n in mapped if n not in scanned)


def test_where_sparse_schemes_do_not_pay_it_picks_channel(digits_mobilenet) -> None:
    scan, analysis = _scan(DenseKernelClock(), digits_mobilenet)
    mapped = map_schemes(analysis, "cpu", SCHEMES, method="measured", scan=scan)
    for name in {p.unit for p in scan.probes}:
        assert mapped[name].scheme == "channel"
        assert all(p.saved_ms <= 1e-9 for p in scan.of_unit(name)
                   if p.template.scheme != "channel")
    # A space built on the measured templates uses them, and the scan survives JSON.
    space = PruningSpace(None, schemes=SCHEMES, analysis=analysis, templates=mapped)
    assert space.templates == mapped
    again = SchemeScan.from_dict(json.loads(json.dumps(scan.to_dict())))
    assert map_schemes(analysis, "cpu", SCHEMES, method="measured", scan=again) == mapped


def test_bad_mapping_input_is_refused_with_the_fix(digits_mobilenet) -> None:
    _, _, analysis = digits_mobilenet
    with pytest.raises(PolicyError, match="prunetune map"):
        map_schemes(analysis, "cpu", SCHEMES, method="measured")
    with pytest.raises(PolicyError, match="rules, measured"):
        map_schemes(analysis, "cpu", SCHEMES, method="guessed")
    with pytest.raises(PolicyError, match="scan again"):
        SchemeScan.from_dict({"device": "x"})
    name = analysis.units[0].name
    with pytest.raises(SpaceError, match="not one of the space's schemes"):
        PruningSpace(None, schemes=("channel",), analysis=analysis,
                     templates={name: UnitPolicy("block", 0.0, block=(4, 4))})
    probe = SchemeProbe(name, UnitPolicy("channel", 0.0), 0.5, 1.0, 0.01)
    assert probe.to_dict()["unit"] == name


def test_prunetune_map_prints_and_saves_the_mapping(tmp_path: Path, capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path, "map", space={"schemes": ["channel", "block", "pattern"]},
                       finetune={"epochs": 0, "bn_calibration": 64})
    out = tmp_path / "mapping.json"
    assert main(["map", str(cfg), "--ratios", "0.5", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "<==" in text and "measured mapping on" in text
    saved = json.loads(out.read_text())
    assert set(saved["choice"]) == {r["unit"] for r in saved["rows"]}
    assert Path(saved["scan_file"]).exists()
    # Mapping again reads the cached scan: the same choice, no new measurement.
    assert main(["map", str(cfg), "--ratios", "0.5", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["choice"] == saved["choice"]
    assert main(["map", str(cfg), "--ratios", "1.5"]) != 0
    assert "--ratios must lie in (0, 1)" in capsys.readouterr().err
    with monkeypatch.context() as m:  # no GPU: refused before any pretraining or scan
        m.setattr(torch.cuda, "is_available", lambda: False)
        assert main(["map", str(cfg), "--device", "cuda"]) != 0
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    # A search with `space.mapping: measured` builds its space on the same (cached) scan.
    conf = load_config(cfg).model_copy(update={"space": load_config(cfg).space.model_copy(
        update={"mapping": "measured"})})
    dense = pretrain_dense(conf.model, conf.data, conf.pretrain, cache_dir=conf.cache_dir).model
    scan, path = measured_scan(conf, dense, device="cpu", ratios=(0.5,), progress=False)
    assert str(path) == saved["scan_file"]
    space = build_space(conf, dense, load_data(conf.data).example_input(1), scan=scan)
    assert {n: t.to_dict() for n, t in space.templates.items()} == saved["choice"]
    with pytest.raises(SearchError, match="prunetune map"):
        build_space(conf, dense, load_data(conf.data).example_input(1))
