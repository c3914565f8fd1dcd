"""A pruning scheme a user adds in one module, touching nothing in the package: stripes.

A stripe is one column of a layer's GEMM view `weight.flatten(1)`: one input position (an input
channel's tap, or a Linear input) zeroed across every filter. The weakest columns by L2 norm go
first, `ceil(ratio * columns)` of them, so a layer keeps at most `1 - ratio` of its weights (the
density the cost model counts). Named in a config as
`space.schemes: [tests.toy_scheme:StripeScheme]`; no kernel runs it (`kernel_format` None).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prunetune.search_spaces import PruningScheme


class StripeScheme(PruningScheme):
    name = "stripe"
    colour = "#17becf"
    max_ratio = 0.9

    def applies(self, layer: nn.Module, key: str) -> bool:
        return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d)
                                                and layer.groups == 1)

    def mask(self, weight: torch.Tensor, up: object) -> torch.Tensor:
        columns = weight.detach().flatten(1)
        k = min(columns.shape[1], math.ceil(up.ratio * columns.shape[1] - 1e-9))
        keep = torch.ones(columns.shape[1], dtype=weight.dtype)
        keep[torch.argsort(columns.float().pow(2).sum(0), stable=True)[:k]] = 0
        return keep.expand_as(columns).reshape(weight.shape).clone()
