"""Pruning schemes as registered objects: the five built-ins are objects of one registry that
policies, the analysis, `apply_policy`, the mapping, the cost rows, a config and the pictures
look up; a toy scheme defined only in tests (`tests/toy_scheme.py`) goes through all of them
without an edit to the package."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunetune.errors import ConfigError
from prunetune.orchestrator.config import SHIPPED_SCHEMES, SpaceConfig, load_config
from prunetune.orchestrator.pictures import policy_figure, scheme_colour, scheme_colours
from prunetune.orchestrator.spaces import scheme_gains, space_from_analysis
from prunetune.search_spaces import (
    SCHEMES,
    Policy,
    PolicyError,
    PruningScheme,
    UnitPolicy,
    analyze,
    apply_policy,
    count_cost,
    get_scheme,
    map_schemes,
    register_scheme,
    scheme_names,
    sparse_keys,
)
from prunetune.search_spaces import schemes as registry
from prunetune.search_spaces.apply import nm_channel_multiples
from tests.toy_scheme import StripeScheme

TOY = "tests.toy_scheme:StripeScheme"
X = torch.randn(1, 3, 16, 16)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10)).eval()


@pytest.fixture(scope="module")
def model_and_analysis():
    get_scheme(TOY)  # imported (and registered under its path) before the analysis
    model = _model()
    return model, analyze(model, X)


def test_the_builtins_are_registered_objects() -> None:
    assert scheme_names()[:5] == SHIPPED_SCHEMES == tuple(SCHEMES)[:5]
    assert sparse_keys()[:5] == ("block", "nm4", "nm8", "unstructured", "pattern")
    found = [get_scheme(n) for n in SHIPPED_SCHEMES]
    assert all(isinstance(s, PruningScheme) and s.name == n
               for s, n in zip(found, SHIPPED_SCHEMES, strict=True))
    assert [s.structural for s in found] == [True, False, False, False, False]
    assert len({s.colour for s in found}) == 5
    # The kernel bridge: block masks run as BSR kernels, 2:4 as semi-structured; nothing else.
    bridge = {k: registry.key_scheme(k).kernel_format(k) for k in sparse_keys()[:5]}
    assert bridge == {"block": "bsr", "nm4": "nm", "nm8": None, "unstructured": None,
                      "pattern": None}
    assert scheme_gains({"bsr": 0.4, "nm": 0.7}) == {"block": 0.4, "nm4": 0.7}
    assert scheme_colours()["channel"] == "#1f77b4"


# The device rules as the mapping listed them before they were the schemes' own ranks.
RULES = {("gpu", "linear", False): ["block", "nm", "channel", "unstructured"],
         ("gpu", "conv1x1", False): ["block", "nm", "channel", "unstructured"],
         ("gpu", "conv3x3", False): ["channel", "pattern", "block", "unstructured"],
         ("gpu", "conv5x5", False): ["channel", "block", "unstructured"],
         ("cpu", "conv3x3", False): ["pattern", "channel", "unstructured"],
         ("cpu", "linear", False): ["channel", "unstructured"],
         ("cpu", "conv1x1", False): ["channel", "unstructured"],
         ("gpu", "depthwise", True): ["channel"], ("cpu", "conv3x3", True): ["channel"]}


@pytest.mark.parametrize(("device", "kind", "depthwise"), list(RULES))
def test_the_mapping_rules_are_the_schemes_ranks(device, kind, depthwise) -> None:
    ranks = {s: get_scheme(s).rule_rank(device, kind, depthwise) for s in SHIPPED_SCHEMES}
    ranked = sorted((s for s in SHIPPED_SCHEMES if ranks[s] is not None), key=ranks.__getitem__)
    assert ranked == RULES[device, kind, depthwise]
    assert get_scheme(TOY).rule_rank(device, kind, depthwise) is None


def test_policies_on_disk_load_and_write_as_before(tmp_path) -> None:
    raw = {"schema": 1, "importance": "magnitude", "round_to": None, "units": {
        "a": {"scheme": "channel", "ratio": 0.3},
        "b": {"scheme": "block", "ratio": 0.5, "block": [16, 16]},
        "c": {"scheme": "nm", "ratio": 0.5},
        "d": {"scheme": "unstructured", "ratio": 0.7},
        "e": {"scheme": "pattern", "ratio": 0.6},
        "f": {"scheme": "block", "ratio": 0.2}}}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(raw))
    policy = Policy.load(path)
    assert policy.units["b"].block == (16, 16)
    assert (policy.units["c"].n, policy.units["c"].m) == (2, 4)
    written = policy.to_dict()["units"]
    assert written["c"] == {"scheme": "nm", "ratio": 0.5, "n": 2, "m": 4}
    assert written["e"] == {"scheme": "pattern", "ratio": 0.6, "pattern": "patdnn"}
    assert written["f"] == {"scheme": "block", "ratio": 0.2, "block": [8, 8]}
    assert list(written["b"]) == ["scheme", "ratio", "block"]
    assert Policy.from_json(policy.to_json()) == policy
    assert policy.units["c"].with_ratio(0.75) == UnitPolicy("nm", 0.75, n=1, m=4)


def test_a_toy_scheme_is_known_by_its_path() -> None:
    toy = get_scheme(TOY)
    assert isinstance(toy, StripeScheme)
    assert (toy.name, toy.title, toy.colour) == (TOY, "stripe", "#17becf")
    assert TOY in SCHEMES and TOY in scheme_names() and TOY in sparse_keys()
    assert get_scheme(TOY) is toy  # imported once
    assert scheme_colour(TOY) == "#17becf" and scheme_colour("nope") == "grey"


def test_a_toy_scheme_policy_round_trips(tmp_path) -> None:
    policy = Policy({"0": UnitPolicy(TOY, 0.5), "3": UnitPolicy("channel", 0.25)})
    path = policy.save(tmp_path / "policy.json")
    assert json.loads(path.read_text())["units"]["0"] == {"scheme": TOY, "ratio": 0.5}
    assert Policy.load(path) == policy
    with pytest.raises(PolicyError, match=r"ratio must be in \[0, 0.9\]"):
        UnitPolicy(TOY, 0.95)
    with pytest.raises(PolicyError, match="'block' applies only to scheme 'block'"):
        UnitPolicy(TOY, 0.5, block=(8, 8))


def test_a_toy_scheme_prunes_through_analysis_and_apply(model_and_analysis) -> None:
    model, analysis = model_and_analysis
    units = [u for u in analysis.units if TOY in u.schemes]
    assert [u.name for u in units] == ["0", "3", "6"]  # the output layer "10" is protected
    policy = Policy({u.name: UnitPolicy(TOY, 0.5) for u in units})
    policy.validate(analysis)
    pruned = apply_policy(model, policy, X)
    for name in ("0", "3", "6"):
        layer = dict(pruned.named_modules())[name]
        columns = layer.weight_mask.flatten(1)
        assert bool((columns == columns[:1]).all())  # whole stripes: every filter the same
        assert columns[0].sum() == columns.shape[1] // 2
        assert torch.count_nonzero(layer.weight) <= layer.weight.numel() // 2
    assert pruned(X).shape == model(X).shape
    assert dict(model.named_modules())["0"]._buffers.get("weight_mask") is None  # untouched
    cost = count_cost(pruned, X)
    assert cost.effective_params < cost.params
    assert nm_channel_multiples(policy, analysis.units) == {}
    fig = policy_figure(policy, {u.name: {"channels": u.channels} for u in units}, "toy")
    assert fig.axes[0].patches[0].get_facecolor()[:3] == pytest.approx((0x17 / 255, 0xbe / 255,
                                                                        0xcf / 255))


def test_a_toy_scheme_named_in_a_config_builds_a_space(model_and_analysis, tmp_path) -> None:
    model, analysis = model_and_analysis
    config = tmp_path / "config.yaml"
    config.write_text(f"space: {{schemes: [{TOY}], budget: {{kind: flops, keep: 0.8}}, "
                      "groups: null}\n")
    cfg = load_config(config)
    assert cfg.space.schemes == [TOY]
    assert set(map_schemes(analysis, "gpu", [TOY]).values()) == {UnitPolicy(TOY, 0.0)}
    space = space_from_analysis(cfg, analysis)
    policy = space.decode([1.0] * space.dim)
    assert {up.scheme for up in policy.units.values()} == {TOY}
    pruned = apply_policy(model, policy, X)
    cost = count_cost(pruned, X)
    assert cost.effective_flops <= 0.8 * cost.flops * (1 + 1e-6)
    assert space.encode(policy).shape == (space.dim,)


def test_unknown_schemes_are_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"'channels' is not a pruning scheme; use any of "
                                          r"\['channel', 'block'"):
        load_config(None, {"space.schemes": ["channels"]})
    with pytest.raises(ConfigError, match="cannot be imported"):
        load_config(None, {"space.schemes": ["tests.no_such_module:Scheme"]})
    with pytest.raises(ConfigError, match="is not a pruning scheme"):
        load_config(None, {"space.schemes": ["tests.toy_scheme:math"]})
    with pytest.raises(PolicyError, match="unknown scheme 'prune' for unit 'x'; use one of "
                                          "channel, block, nm"):
        UnitPolicy.from_dict({"scheme": "prune", "ratio": 0.1}, "x")
    assert "tests.no_such_module:Scheme" not in SCHEMES


def test_a_scheme_registered_in_process_is_known_by_its_short_name(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())
    stripes = StripeScheme()
    stripes.name = "stripes"
    register_scheme(stripes)
    assert SpaceConfig(schemes=["channel", "stripes"]).schemes == ["channel", "stripes"]
    assert UnitPolicy("stripes", 0.3).to_dict() == {"scheme": "stripes", "ratio": 0.3}
    assert "stripes" in sparse_keys()
    with pytest.raises(PolicyError, match="not a pruning scheme"):
        register_scheme(object())
