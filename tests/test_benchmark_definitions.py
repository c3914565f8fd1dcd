"""The committed search-efficiency runs stay current while the searchers gain options: a run is
redone only when its method's definition changed (`search_efficiency.method_config`), and an
option added at the default that keeps what earlier runs did must not make them stale."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCH / "results"


def _module(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_the_committed_peers_table_keeps_every_prunetune_run_it_was_made_with() -> None:
    committed = json.loads((RESULTS / "peers.json").read_text())
    peers = _module("peers")
    now = peers.prunetune_runs(RESULTS / "search_efficiency.json", committed["objective"],
                               committed["summary"]["trials"])
    made = committed["prunetune"]

    def runs(section: dict) -> list[tuple]:
        return sorted((r["method"], r["seed"], r.get("alias_of") or "") for r in section["runs"])

    assert runs(now) == runs(made), (
        "a prunetune run the committed table used is now stale: a searcher option added since "
        "changed the methods' definitions; if its default keeps what the runs did, list it in "
        "search_efficiency.UNCHANGED_BEHAVIOUR")
    assert now["stale_runs_left_out"] == made["stale_runs_left_out"]


def test_an_option_at_its_old_behaviour_is_not_part_of_a_definition() -> None:
    se = _module("search_efficiency")
    defaults = se.method_config("bo-default")["searcher_defaults"]
    for option, value in se.UNCHANGED_BEHAVIOUR:
        assert defaults.get(option) != value
    assert "n_init" in defaults  # the searcher's other defaults still define it
