"""Ctrl-C and SIGTERM around a search stage. Ray Tune's `fit` installs a SIGINT handler that
stops its own run and leaves it installed afterwards, so a later Ctrl-C (or a SIGTERM handled
as one) would be logged and ignored; a stage puts back the handler in force before it
(`keep_sigint_handler`). A SIGTERM that lands as a stage's last trials end stops the search
even though every trial finished (`stage_stopped`)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray import tune

from prunetune.orchestrator.interrupts import handle_sigterm_as_interrupt, sigterm_count
from prunetune.orchestrator.stages import _fit, stage_stopped


def _objective(config: dict) -> dict:
    return {"score": float(config["x"])}


@pytest.fixture
def own_handlers() -> Iterator[None]:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, before[0])
    signal.signal(signal.SIGTERM, before[1])


def _interrupted_by(signum: int) -> bool:
    try:
        os.kill(os.getpid(), signum)
        time.sleep(2)  # the handler runs in the main thread between bytecodes
    except KeyboardInterrupt:
        return True
    return False


@pytest.mark.slow  # a Ray worker's start: seconds alone, minutes beside a running search
def test_ctrl_c_and_sigterm_interrupt_again_once_a_stage_returns(local_ray, own_handlers,
                                                                 tmp_path: Path) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    handle_sigterm_as_interrupt()
    sigterms = sigterm_count()
    tuner = tune.Tuner(_objective, param_space={"x": 1},
                       run_config=tune.RunConfig(name="stage", storage_path=str(tmp_path)))
    grid = _fit(None, None, 0, tuner, None)  # the run and stage only name a failure
    assert len(grid) == 1 and grid.num_errors == 0
    assert not stage_stopped(grid, 1, sigterms) and stage_stopped(grid, 2, sigterms)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert _interrupted_by(signal.SIGINT)
    assert _interrupted_by(signal.SIGTERM)
    # every trial finished, but a SIGTERM came since the stage began: the search stops
    assert stage_stopped(grid, 1, sigterms)
