"""prunetune: automatic pruning-policy search.

Sub-packages (the design card's top-level folders):
``prunetune.search_spaces`` (pruning domain), ``prunetune.kernels`` (Triton kernels, latency),
``prunetune.trainers`` (data, models, training, the trial function) and
``prunetune.orchestrator`` (config, CLI, searchers, tracking).
"""

__version__ = "0.1.0"
