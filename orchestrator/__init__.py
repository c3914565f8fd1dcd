"""`prunetune.orchestrator`: everything that runs a search and keeps its results.

- `config`: the YAML config (`load_config`, `PrunetuneConfig`); `spaces`: config to search space;
- `driver.run_search`: one search as a Ray Tune experiment (local Ray or a cluster);
- `searchers`: Ray Tune `Searcher`s over a pruning space (`RandomSearcher`,
  `SameRatioSearcher`, `BOSearcher`, `RLSearcher`, `make_searcher`), usable in plain Ray Tune
  code too, with a conformance suite in `searchers.testing`;
- `tracking.MLflowTracker`: the Tune callback that is MLflow's only writer; `results`: reading a
  search back (`find_search`, `search_trials`, `pareto_front`);
- `registry`: `promote` a trial to the MLflow model registry, `load_promoted` it back;
- `jobs`: Ray Jobs API submission; `cli`: the `prunetune` command.

Modules are imported on use, so `import prunetune.orchestrator` costs nothing.
"""
