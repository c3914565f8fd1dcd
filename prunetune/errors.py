"""Every error prunetune raises for a person to read, under one root.

`PrunetuneError` is the root, in the manner of BoTorch's `BotorchError`: the CLI catches it alone
and prints `prunetune COMMAND: error: MESSAGE` with exit code `EXIT_USER_ERROR`, never a
traceback. Each subclass also keeps the built-in base a caller would expect (`ConfigError` is a
`ValueError`, `DatasetNotFoundError` a `FileNotFoundError`, ...), so code written against those
keeps working. A message says the rule, the value that broke it and what to do.

This module imports nothing, so every part of prunetune (the pruning engine included) can use it.
"""

from __future__ import annotations

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_NO_RESULT",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USER_ERROR",
    "BudgetError",
    "CLIError",
    "CheckpointError",
    "ClusterError",
    "ConfigError",
    "DatasetError",
    "DatasetNotFoundError",
    "JobNotFoundError",
    "KernelError",
    "KernelInputError",
    "KernelUnavailableError",
    "LatencyBackendError",
    "LatencyBackendUnavailableError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "NoMatchingTrialError",
    "PolicyError",
    "PromotionError",
    "PrunetuneError",
    "SearchError",
    "SearchNotFoundError",
    "SearcherError",
    "SearcherStateError",
    "SelectionError",
    "SpaceError",
]

# Exit codes of the `prunetune` command (README, "Exit codes").
EXIT_OK = 0
EXIT_NO_RESULT = 1  # the command ran, but produced nothing (a search where no trial finished)
EXIT_USER_ERROR = 2  # a PrunetuneError: bad input or an unusable environment, told in one line
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM), ended the way Ctrl-C ends a command


class PrunetuneError(Exception):
    """Root of the errors prunetune reports to a person (one line, no traceback)."""


# ---- the pruning engine (search_spaces) ---------------------------------------------------
class PolicyError(PrunetuneError, ValueError):
    """A policy that cannot be applied: unknown unit, ratio out of range, wrong scheme, bad file."""


class SpaceError(PrunetuneError, ValueError):
    """A search space that cannot be built from the arguments given."""


class BudgetError(SpaceError):
    """The budget cannot be met inside the space's ratio bounds."""


# ---- data, models, checkpoints (trainers) -------------------------------------------------
class DatasetNotFoundError(PrunetuneError, FileNotFoundError):
    """The dataset's files are not where the config says (nothing downloads unless allowed)."""


class DatasetError(PrunetuneError, ValueError):
    """Dataset files that are there but cannot be used (not the format, an empty split)."""


class ModelNotFoundError(PrunetuneError, ValueError):
    """A model name that is not in the zoo, torchvision or an importable factory."""


class CheckpointError(PrunetuneError, ValueError):
    """A checkpoint file is missing, unreadable or not a prunetune checkpoint."""


class ModelMismatchError(PrunetuneError, ValueError):
    """A model (or checkpoint) that does not fit the dataset: its input channels, image size or
    number of classes differ from the data's (e.g. a factory that ignores `in_channels`)."""


# ---- kernels and latency measurement (kernels) --------------------------------------------
class KernelError(PrunetuneError, ValueError):
    """A sparse kernel, latency table or measurement asked for with arguments it cannot take
    (unknown backend or clock, a block that does not fit, a damaged latency table, ...)."""


class KernelInputError(KernelError, TypeError):
    """A sparse kernel given a module or tensor of the wrong type (dtype, layer class)."""


class KernelUnavailableError(PrunetuneError, RuntimeError):
    """A kernel that cannot run here: Triton not installed, no CUDA device, or a backend that
    only runs inference asked to train."""


class LatencyBackendError(KernelError):
    """A latency backend asked for that does not exist or cannot take the model (an unknown
    name, a `module:attr` that is not a backend, a model the backend cannot export)."""


class LatencyBackendUnavailableError(KernelUnavailableError):
    """A latency backend that cannot run here: its package is not installed, or the device it
    needs (TensorRT: a CUDA GPU) is not on this machine."""


# ---- searches, searchers, tracking, registry, clusters (orchestrator) ----------------------
class ConfigError(PrunetuneError, ValueError):
    """The config file is missing, not YAML, or has fields with values that are not allowed."""


class SearcherError(PrunetuneError, RuntimeError):
    """A searcher was used in a way it does not support (bad state file, unknown metric, ...)."""


class SearcherStateError(SearcherError, ValueError):
    """A searcher's saved state (or options) that does not fit this searcher or search."""


class SearchError(PrunetuneError, RuntimeError):
    """A search could not be started or resumed (nothing to resume, cluster unreachable, ...)."""


class SearchNotFoundError(PrunetuneError, LookupError):
    """No search with that name or parent run id in the tracking store."""


class SelectionError(PrunetuneError, ValueError):
    """A `--select` expression that does not parse, or a `--trial` that is not in the search."""


class NoMatchingTrialError(SelectionError):
    """No finished trial of the search satisfies the selection."""


class PromotionError(PrunetuneError, RuntimeError):
    """The chosen policy could not be rebuilt, logged or registered."""


class ClusterError(PrunetuneError, RuntimeError):
    """The Ray cluster or its Jobs API cannot be reached or refused the request."""


class JobNotFoundError(PrunetuneError, LookupError):
    """No job with that id on the cluster."""


class CLIError(PrunetuneError):
    """A command-line usage problem the parser cannot see (a file that does not fit, ...)."""
