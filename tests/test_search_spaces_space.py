"""PruningSpace: budget projection, clustering, roll-back, pickling."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from prunetune.search_spaces import (
    Budget,
    BudgetError,
    Policy,
    PruningSpace,
    analyze,
    apply_policy,
    cluster_units,
    count_cost,
)
from prunetune.trainers import build_model

X = torch.randn(1, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet20():
    model = build_model("resnet20").eval()
    return model, analyze(model, X)


@pytest.fixture(scope="module")
def resnet56():
    return analyze(build_model("resnet56").eval(), X)


def test_1000_random_vectors_meet_a_half_flops_budget(resnet20):
    model, analysis = resnet20
    space = PruningSpace(model, X, budget=Budget("flops", 0.5), analysis=analysis)
    assert space.dim == len(analysis.units) and space.bounds.shape == (2, space.dim)
    rng = np.random.default_rng(0)
    xs = rng.random((1000, space.dim))
    shares = np.array([space.cost(x)["flops_share"] for x in xs])
    assert shares.max() <= 0.5  # the analytic cost of every decoded policy meets the budget
    light = [space.cost(x * 0.2)["flops_share"] for x in xs[:50]]  # all over budget unprojected
    assert min(light) > 0.47  # the action wall stops just inside the budget, not far below
    for x in xs[:4]:  # the real pruned model agrees within 1%
        pruned = apply_policy(model, space.decode(x), X)
        assert count_cost(pruned, X).effective_flops <= 0.5 * analysis.dense_flops * 1.01
    assert space.decode(xs[0]) == space.decode(torch.tensor(xs[0]))  # deterministic


def test_sparse_and_params_budget(resnet20):
    model, analysis = resnet20
    space = PruningSpace(model, X, schemes=("unstructured",), ratio_bounds=(0.0, 0.9),
                         budget=Budget("params", 0.4), analysis=analysis)
    x = np.full(space.dim, 0.1)
    policy = space.decode(x)
    assert {u.scheme for u in policy.units.values()} == {"unstructured"}
    cost = count_cost(apply_policy(model, policy, X), X)
    assert cost.effective_params <= 0.4 * analysis.dense_params * 1.01


def test_infeasible_budget_and_bad_vectors(resnet20):
    model, analysis = resnet20
    with pytest.raises(BudgetError, match="budget keep=0.01 of flops cannot be met"):
        PruningSpace(model, X, budget=Budget("flops", 0.01), analysis=analysis)
    with pytest.raises(ValueError, match="budget kind must be one of flops, params, latency"):
        Budget("time", 0.5)
    space = PruningSpace(model, X, n_groups=3, analysis=analysis)
    with pytest.raises(ValueError, match="x must have length 3"):
        space.decode([0.1, 0.2])
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]\^3"):
        space.decode([0.1, 0.2, 1.5])


def test_refine_to_full_dimension_preserves_every_policy(resnet56):
    space = PruningSpace(None, schemes=("channel",), budget=Budget("flops", 0.5), n_groups=4,
                         analysis=resnet56)
    assert space.dim == 4 and sum(len(g) for g in space.groups) == len(resnet56.units)
    rng = np.random.default_rng(1)
    xs, ys = rng.random((40, 4)), rng.random(40)
    mid, xs_mid = space.refine(xs, ys, n_groups=9)
    for g in mid.groups:  # the finer groups split the coarser ones
        assert any(set(g) <= set(old) for old in space.groups)
    full, xs_full = mid.refine(torch.tensor(xs_mid), torch.tensor(ys), top_n=5)
    assert full.dim == len(resnet56.units) and isinstance(xs_full, torch.Tensor)
    for x, x_mid, x_full in zip(xs, xs_mid, xs_full, strict=True):
        policy = space.decode(x)
        assert mid.decode(x_mid) == policy and full.decode(x_full) == policy
    lo, hi = full.bounds
    assert torch.all(lo <= hi) and torch.all((lo >= 0) & (hi <= 1))
    assert torch.any(hi - lo < 1)  # narrowed around the best points
    best = xs_full[np.argsort(-ys)[:5]]
    assert torch.all((best >= lo) & (best <= hi))


def test_scheme_search_space_refines_and_pickles(resnet56):
    space = PruningSpace(None, schemes=("channel", "block", "unstructured", "pattern"),
                         budget=Budget("flops", 0.6), n_groups="auto", scheme_search=True,
                         analysis=resnet56)
    assert space.dim == 2 * space.k
    rng = np.random.default_rng(2)
    xs, ys = rng.random((15, space.dim)), rng.random(15)
    full, xs_full = space.refine(xs, ys)
    schemes = set()
    for x, x_full in zip(xs, xs_full, strict=True):
        policy = space.decode(x)
        schemes |= {u.scheme for u in policy.units.values()}
        assert full.decode(x_full) == policy
        assert space.cost(x)["flops_share"] <= 0.6
    assert len(schemes) >= 3
    clone = pickle.loads(pickle.dumps(space))
    assert clone.decode(xs[0]) == space.decode(xs[0])
    desc = json.loads(json.dumps(space.describe()))
    assert desc["dim"] == space.dim and desc["options"][0][0] in ("channel", "pattern")
    assert len(pickle.dumps(space)) < 1_000_000


def test_clustering_is_nested_and_auto(resnet56):
    units = resnet56.units
    coarse = cluster_units(units, 3)
    fine = cluster_units(units, 8)
    assert len(coarse) == 3 and len(fine) == 8
    assert all(any(set(f) <= set(c) for c in coarse) for f in fine)
    auto = cluster_units(units, "auto")
    # The silhouette alone splits ResNet-56's 30 units into 2 groups; auto keeps at least
    # ceil(sqrt(30)) = 6, so a clustered BO stage is more than a near-uniform policy.
    assert len(auto) == max(6, len(auto)) and len(auto) <= 10
    assert sorted(n for g in auto for n in g) == sorted(u.name for u in units)


def test_fill_budget_prunes_no_more_than_the_budget_requires(resnet20):
    model, analysis = resnet20
    common = {"budget": Budget("flops", 0.5), "analysis": analysis}
    plain = PruningSpace(model, X, **common)
    filled = PruningSpace(model, X, fill_budget=True, **common)
    rng = np.random.default_rng(3)
    for x in rng.random((40, plain.dim)):
        under, onto = plain.cost(x)["flops_share"], filled.cost(x)["flops_share"]
        # On the budget, up to one channel's step: whole channels make the cost a staircase.
        assert 0.48 < onto <= 0.5
        assert under <= onto  # less pruning than the plain decoding, never more
        # the policy keeps its shape: every ratio scaled by one factor toward the lower bound
        a = np.array([u.ratio for u in plain.decode(x).units.values()])
        b = np.array([u.ratio for u in filled.decode(x).units.values()])
        assert np.all(b <= a + 1e-12)
        k = b[a > 0.05] / a[a > 0.05]
        assert np.ptp(k) < 1e-6
    over = np.full(plain.dim, 0.05)  # prunes too little: both move it up onto the budget
    assert filled.decode(over) == plain.decode(over)
    loose = PruningSpace(model, X, fill_budget=True, budget=Budget("flops", 1.0),
                         analysis=analysis)  # no pruning needed: the bounds' least pruning
    assert all(u.ratio == 0.0 for u in loose.decode(rng.random(plain.dim)).units.values())
    assert filled.describe()["fill_budget"] is True


def test_encode_inverts_decode(resnet20):
    model, analysis = resnet20
    space = PruningSpace(model, X, budget=Budget("flops", 0.5), n_groups=2, analysis=analysis)
    policy = space.decode([0.3, 0.9])
    assert space.decode(space.encode(policy)) == policy
    assert isinstance(Policy.from_json(policy.to_json()), Policy)


def test_fair_share_is_the_uniform_rest_that_meets_the_budget(resnet20):
    model, analysis = resnet20
    space = PruningSpace(model, X, budget=Budget("flops", 0.5), analysis=analysis)
    x = np.zeros(space.dim)
    x[:3] = [0.0, 0.9, 0.1]  # some pruning already chosen for the first steps
    for i in (3, space.k // 2):
        fair = space.fair_share(x, i)
        assert space.action_floor(x, i) <= fair <= 1.0
        rest = x.copy()
        rest[i:space.k] = fair  # every remaining step at the fair share: just meets it
        # (within one channel step: over 1% of the MACs in these 16-channel units)
        assert 0.48 < space.cost(rest, project=False)["flops_share"] <= 0.5 + 1e-9
        rest[i:space.k] = fair - 0.01  # a little less pruning does not
        assert space.cost(rest, project=False)["flops_share"] > 0.5
    free = PruningSpace(model, X, analysis=analysis)  # no budget: nothing is owed
    assert free.fair_share(np.zeros(free.dim), 0) == float(free.bounds[0, 0])
    with pytest.raises(ValueError, match="ratio dimension"):
        space.fair_share(x, space.k)


@pytest.mark.parametrize("schemes", [("channel", "nm"),
                                     ("channel", "block", "nm", "unstructured", "pattern")])
def test_mixed_schemes_always_apply_and_meet_the_budget(schemes: tuple[str, ...]) -> None:
    """N:M after a channel cut: a channel-pruned unit feeding a layer pruned N:M keeps its
    channels in multiples of M, so the layer's reduction size still divides; and every mask
    prunes at least the share the cost model counted, so measured cost never exceeds the
    budget (torchvision's ResNet-18 and DenseNet-121: most models failed this way before)."""
    import torchvision

    from prunetune.search_spaces.apply import nm_channel_multiples

    x = torch.randn(1, 3, 64, 64)
    rng = np.random.default_rng(1)
    for name in ("resnet18", "densenet121"):
        model = torchvision.models.get_model(name, weights=None).eval()
        analysis = analyze(model, x)
        space = PruningSpace(None, schemes=schemes, scheme_search=True, n_groups="auto",
                             budget=Budget("flops", 0.5), analysis=analysis)
        for _ in range(3):
            policy = space.decode(rng.random(space.dim))
            policy.validate(analysis)
            pruned = apply_policy(model, policy, x)
            assert pruned(x).shape == model(x).shape
            assert count_cost(pruned, x).effective_flops <= 0.5 * analysis.dense_flops
            modules = dict(pruned.named_modules())
            for unit, m in nm_channel_multiples(policy, analysis.units).items():
                kept = modules[unit].weight.shape[0]
                assert kept % m == 0, (name, unit, kept, m)


def test_the_cost_model_counts_an_output_layer_behind_a_dropout_whole() -> None:
    """The protected output layer keeps all its outputs even when a dropout separates it from
    the channel-pruned layer before it (AlexNet's and VGG's classifiers): counting its outputs
    as pruned would under-count it and let a decoded policy overshoot its budget."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(16 * 6 * 6, 64), torch.nn.ReLU(), torch.nn.Dropout(),
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Dropout(),
        torch.nn.Linear(64, 10)).eval()
    for predicted, measured in _predicted_and_measured(model, torch.randn(1, 3, 8, 8), 5):
        assert measured == pytest.approx(predicted, rel=1e-6)


def _predicted_and_measured(model: torch.nn.Module, x: torch.Tensor, n: int
                            ) -> list[tuple[float, float]]:
    """(cost-model FLOPs, FLOPs counted on the pruned model) of `n` random points of a space
    under a 50% FLOPs budget, each checked to meet the budget as measured."""
    analysis = analyze(model, x)
    space = PruningSpace(None, budget=Budget("flops", 0.5), analysis=analysis)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        point = rng.random(space.dim)
        measured = count_cost(apply_policy(model, space.decode(point), x), x).effective_flops
        assert measured <= 0.5 * analysis.dense_flops
        out.append((space.cost(point)["flops"], measured))
    return out


def test_scheme_choices_that_cannot_reach_the_budget_move_to_ones_that_can(resnet20):
    """A point whose groups pick schemes that cannot meet the budget even at full ratios (N:M
    stops at 1 - n/m) still decodes onto the budget: groups move to their most-pruning scheme,
    the most effective first, instead of the decode raising BudgetError."""
    _, analysis = resnet20
    space = PruningSpace(None, schemes=("channel", "block", "nm", "unstructured", "pattern"),
                         scheme_search=True, n_groups="auto", budget=Budget("flops", 0.2),
                         analysis=analysis)
    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(60):
        x = rng.random(space.dim)
        full = np.concatenate([np.ones(space.k), x[space.k:]])
        moved += space.cost(full, project=False)["flops"] > space.limit
        assert space.cost(x)["flops"] <= space.limit * (1 + 1e-9)
        policy = space.decode(x)
        assert set(policy.units) == {u.name for u in space.units}
    assert moved > 0  # the points this test is about were drawn


class _ReusedReLU(torch.nn.Module):
    """One ReLU module run on two tensors of different widths, as torchvision's blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.conv2, self.bn2 = torch.nn.Conv2d(8, 64, 3, padding=1), torch.nn.BatchNorm2d(64)
        self.relu = torch.nn.ReLU()
        self.pool, self.fc = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def test_a_module_run_twice_is_never_under_counted() -> None:
    """The cost model scales an activation with the layer feeding it; one called on two
    layers' outputs has no single such layer, so it counts whole and the measured cost of a
    decoded policy stays within what the model predicted (and within the budget)."""
    for predicted, measured in _predicted_and_measured(_ReusedReLU().eval(),
                                                      torch.randn(1, 3, 16, 16), 10):
        assert measured <= predicted * (1 + 1e-9)
