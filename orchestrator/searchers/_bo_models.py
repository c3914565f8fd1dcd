"""BoTorch pieces of the BO searcher: GP fitting with warm-started hyper-parameters, the
acquisition functions (single- and multi-objective) and their bounded optimisation.

Everything here is a pure function of its inputs plus the global torch RNG, so the caller makes
a suggestion reproducible by seeding torch around the call (`seeded`). Tensors are float64.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.exceptions.warnings import BotorchWarning, InputDataWarning, OptimizationWarning
from botorch.fit import fit_gpytorch_mll
from botorch.models import ModelListGP, SingleTaskGP
from botorch.models.transforms.input import ChainedInputTransform, InputTransform, Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.optim import optimize_acqf
from botorch.sampling.normal import SobolQMCNormalSampler
from botorch.utils.multi_objective.hypervolume import infer_reference_point
from botorch.utils.multi_objective.pareto import is_non_dominated
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import Tensor

from prunetune.errors import SearcherStateError

__all__ = [
    "AcqSettings",
    "GPSettings",
    "Hypers",
    "SnapCategorical",
    "fit_gps",
    "pareto_mask",
    "propose_multi",
    "propose_single",
    "reference_point",
    "seeded",
]

DTYPE = torch.float64

# Hyper-parameters of one GP: parameter name -> nested lists (JSON-able, exact float64 repr).
Hypers = dict[str, Any]


def _at_least(settings: GPSettings | AcqSettings, minima: dict[str, float]) -> None:
    for name, low in minima.items():
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            raise SearcherStateError(f"{name} must be a number >= {low:g}, got {value!r}")
    timeout = settings.timeout_s
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise SearcherStateError(f"timeout_s must be a positive number of seconds or None, got "
                                 f"{timeout!r}")


@dataclass(frozen=True)
class GPSettings:
    """How hard GP fitting works. Hyper-parameters are refitted only when the data grew by
    `refit_growth` (a fraction) since the last fit, or the space changed; in between the GP
    conditions on the new points with the previous hyper-parameters, which costs ~nothing.
    `maxiter` caps L-BFGS iterations when warm-started from the previous fit; `cold_maxiter`
    applies when there is nothing to warm-start from (first fit, or the dimension changed at a
    roll-back). `timeout_s` is a safety net only: a fit cut by the clock is not reproducible
    after `restore`."""

    refit_growth: float = 0.1
    maxiter: int = 40
    cold_maxiter: int = 100
    max_attempts: int = 2
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        _at_least(self, {"maxiter": 1, "cold_maxiter": 1, "max_attempts": 1,
                         "refit_growth": 0.0})


@dataclass(frozen=True)
class AcqSettings:
    """Acquisition optimisation budget: `restarts` L-BFGS starts chosen among `raw_samples`
    Sobol points, each at most `maxiter` iterations; `mc_samples` QMC samples for the MC
    acquisition value. `timeout_s` is a safety net, as for `GPSettings`."""

    restarts: int = 4
    raw_samples: int = 128
    maxiter: int = 60
    mc_samples: int = 64
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        _at_least(self, {"restarts": 1, "raw_samples": self.restarts, "maxiter": 1,
                         "mc_samples": 1})


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state after.

    BoTorch draws its random numbers (Sobol scrambles, QMC base samples, Boltzmann sampling of
    restarts, prior resampling of failed fits) from torch's global RNG, so seeding it here is
    what makes a suggestion a function of the searcher's saved state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % (2**63 - 1))
        yield


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # Capped iterations and small data make BoTorch warn on every call; the caps are deliberate.
    with warnings.catch_warnings():
        for category in (OptimizationWarning, InputDataWarning, BotorchWarning, RuntimeWarning):
            warnings.simplefilter("ignore", category)
        yield


class SnapCategorical(InputTransform):
    """Rounds categorical coordinates to the centre of their option's cell before the kernel.

    The space decodes a categorical coordinate `c` in [0, 1] with `n` options as option
    `floor(c * n)`, so the objective is constant on each cell; snapping makes the GP see that
    (the "rounding" treatment of categorical inputs, Garrido-Merchan & Hernandez-Lobato 2020)
    instead of a spurious trend inside a cell. `indices`: the categorical columns; `n_options`:
    options per column (1 = the column carries no information: it snaps to 0.5).
    """

    def __init__(self, indices: Sequence[int], n_options: Sequence[int]) -> None:
        super().__init__()
        self.transform_on_train = True
        self.transform_on_eval = True
        self.transform_on_fantasize = True
        self.register_buffer("indices", torch.as_tensor(list(indices), dtype=torch.long))
        self.register_buffer("n_options", torch.as_tensor(list(n_options), dtype=DTYPE))

    def transform(self, X: Tensor) -> Tensor:
        """X: `batch x n x d`; returns a copy with the categorical columns snapped."""
        n = self.n_options.to(X)
        cells = torch.minimum(torch.floor(X[..., self.indices] * n), n - 1).clamp_min(0)
        out = X.clone()
        out[..., self.indices] = (cells + 0.5) / n
        return out


def _get_hypers(model: SingleTaskGP) -> Hypers:
    return {name: p.detach().cpu().tolist() for name, p in model.named_parameters()}


def _set_hypers(model: SingleTaskGP, hypers: Hypers | None) -> bool:
    """Copy saved hyper-parameters into `model` where names and shapes match (a roll-back
    changes the lengthscale's shape: then nothing is copied). True if all were copied."""
    if not hypers:
        return False
    params = dict(model.named_parameters())
    if set(params) != set(hypers):
        return False
    values = {name: torch.as_tensor(hypers[name], dtype=DTYPE) for name in params}
    if any(values[n].shape != p.shape for n, p in params.items()):
        return False
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(values[name])
    return True


def _one_gp(X: Tensor, y: Tensor, bounds: Tensor, hypers: Hypers | None, fit: bool,
            settings: GPSettings, categorical: dict[int, int] | None) -> tuple[SingleTaskGP,
                                                                               Hypers]:
    # Inputs normalised over the current search box (which roll-back narrows), so BoTorch's
    # dimension-scaled lengthscale prior sees the box as the unit cube; points re-expressed
    # from earlier stages may lie outside it, which the GP handles as distant points.
    transform: InputTransform = Normalize(X.shape[-1], bounds=bounds)
    if categorical:
        transform = ChainedInputTransform(
            snap=SnapCategorical(list(categorical), list(categorical.values())),
            normalize=transform)
    with _quiet():  # re-expressed points outside the narrowed box are expected, not an error
        model = SingleTaskGP(X, y, input_transform=transform, outcome_transform=Standardize(1))
    warm = _set_hypers(model, hypers)
    if fit:
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        options = {"maxiter": settings.maxiter if warm else settings.cold_maxiter}
        kwargs: dict[str, Any] = {"options": options}
        if settings.timeout_s is not None:
            kwargs["timeout_sec"] = settings.timeout_s
        with _quiet():
            fit_gpytorch_mll(mll, optimizer_kwargs=kwargs, max_attempts=settings.max_attempts)
    elif not warm:
        raise SearcherStateError("a GP can be rebuilt without fitting only from matching saved "
                                 "hyper-parameters; fit it instead")
    model.eval()
    return model, _get_hypers(model)


def fit_gps(X: Tensor, Y: Tensor, bounds: Tensor, hypers: list[Hypers] | None, *, fit: bool,
            settings: GPSettings, categorical: dict[int, int] | None = None,
            ) -> tuple[SingleTaskGP | ModelListGP, list[Hypers]]:
    """One independent GP per column of `Y`.

    X: `n x d` training points; Y: `n x m` outcomes, all to be maximised; bounds: `2 x d`
    search box. `hypers` warm-starts (or, with `fit=False`, fully sets) each GP's
    hyper-parameters. `categorical` maps categorical columns to their number of options
    (see `SnapCategorical`). Returns a `SingleTaskGP` when `m == 1`, else a `ModelListGP`, and the
    fitted hyper-parameters per column.
    """
    m = Y.shape[-1]
    hypers = list(hypers) if hypers and len(hypers) == m else [None] * m
    models, out = [], []
    for j in range(m):
        model, h = _one_gp(X, Y[:, j:j + 1], bounds, hypers[j], fit, settings, categorical)
        models.append(model)
        out.append(h)
    return (models[0] if m == 1 else ModelListGP(*models)), out


def _optimize(acqf: AcquisitionFunction, bounds: Tensor, settings: AcqSettings) -> Tensor:
    kwargs: dict[str, Any] = {}
    if settings.timeout_s is not None:
        kwargs["timeout_sec"] = settings.timeout_s
    with _quiet():
        x, _ = optimize_acqf(acqf, bounds=bounds, q=1, num_restarts=settings.restarts,
                             raw_samples=settings.raw_samples,
                             # Raw samples scored in one batch, restarts optimised together:
                             # fewer, larger torch calls (Python overhead dominates here).
                             options={"maxiter": settings.maxiter,
                                      "batch_limit": settings.restarts,
                                      "init_batch_limit": settings.raw_samples},
                             retry_on_optimization_warning=False, **kwargs)
    return x.detach().reshape(-1)


def _pending(X_pending: Tensor) -> Tensor | None:
    return X_pending if X_pending.shape[0] else None


def propose_single(model: SingleTaskGP, X: Tensor, X_pending: Tensor, bounds: Tensor,
                   settings: AcqSettings) -> Tensor:
    """Maximise qLogNEI: X `n x d` observed points, X_pending `p x d` live points (possibly
    `0 x d`), bounds `2 x d`. Returns a length-`d` tensor."""
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([settings.mc_samples]))
    with _quiet():
        acqf = qLogNoisyExpectedImprovement(model=model, X_baseline=X, sampler=sampler,
                                            X_pending=_pending(X_pending), prune_baseline=True)
    return _optimize(acqf, bounds, settings)


def propose_multi(model: ModelListGP, X: Tensor, X_pending: Tensor, bounds: Tensor,
                  ref_point: Tensor, settings: AcqSettings) -> Tensor:
    """Maximise qLogNEHVI (all outcomes maximised; `ref_point` is a length-`m` tensor in the
    same orientation). Shapes as in `propose_single`."""
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([settings.mc_samples]))
    with _quiet():
        acqf = qLogNoisyExpectedHypervolumeImprovement(
            model=model, ref_point=ref_point, X_baseline=X, sampler=sampler,
            X_pending=_pending(X_pending), prune_baseline=True)
    return _optimize(acqf, bounds, settings)


def pareto_mask(Y: Tensor) -> Tensor:
    """Boolean length-`n` mask of the non-dominated rows of `Y` (`n x m`, maximised)."""
    return is_non_dominated(Y)


def reference_point(Y: Tensor, known: Sequence[float | None]) -> Tensor:
    """The hypervolume reference point (maximisation orientation), a length-`m` tensor.

    `known[j]`, when given, is used as is (e.g. minus the dense model's latency: a pruned model
    slower than the dense one is worth nothing). The others follow BoTorch's
    `infer_reference_point`: the nadir of the observed Pareto front minus 10% of its range."""
    inferred = infer_reference_point(Y[pareto_mask(Y)])
    return torch.tensor([inferred[j].item() if k is None else float(k)
                         for j, k in enumerate(known)], dtype=DTYPE)
