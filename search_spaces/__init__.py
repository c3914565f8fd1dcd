"""The pruning domain: model analysis, pruning schemes, policies, cost and the search space.

Knows nothing of Ray or MLflow. See docs/CONTRACTS.md for the public API and the mask contract.
"""

from .analysis import ModelAnalysis, PrunableUnit, analyze, has_batchnorm
from .apply import apply_policy
from .clustering import cluster_units
from .cost import Cost, CostModel, LatencyWeights, count_cost
from .mapping import (
    MAPPING_METHODS,
    SCAN_RATIOS,
    SchemeProbe,
    SchemeScan,
    map_schemes,
    measured_scores,
    scan_candidates,
    scan_templates,
    unit_template,
)
from .policy import IMPORTANCES, POLICY_SCHEMA, Policy, PolicyError, UnitPolicy
from .protocol import STEP_FEATURES, SearchSpace, StepFeatures
from .schemes import (
    BLOCK_SHAPES,
    NM_M_VALUES,
    PATTERN_KINDS,
    SCHEMES,
    PruningScheme,
    block_sparse_weight,
    enforce_masks,
    from_gemm_view,
    gemm_view,
    get_scheme,
    register_scheme,
    scheme_names,
    sparse_keys,
)
from .space import Budget, BudgetError, PruningSpace, SpaceError

__all__ = [
    "BLOCK_SHAPES",
    "Budget",
    "BudgetError",
    "Cost",
    "CostModel",
    "IMPORTANCES",
    "LatencyWeights",
    "MAPPING_METHODS",
    "ModelAnalysis",
    "NM_M_VALUES",
    "PATTERN_KINDS",
    "POLICY_SCHEMA",
    "Policy",
    "PolicyError",
    "PrunableUnit",
    "PruningScheme",
    "PruningSpace",
    "SCAN_RATIOS",
    "SCHEMES",
    "STEP_FEATURES",
    "SchemeProbe",
    "SchemeScan",
    "SearchSpace",
    "SpaceError",
    "StepFeatures",
    "UnitPolicy",
    "analyze",
    "apply_policy",
    "block_sparse_weight",
    "cluster_units",
    "count_cost",
    "enforce_masks",
    "from_gemm_view",
    "gemm_view",
    "get_scheme",
    "has_batchnorm",
    "map_schemes",
    "measured_scores",
    "register_scheme",
    "scan_candidates",
    "scan_templates",
    "scheme_names",
    "sparse_keys",
    "unit_template",
]
