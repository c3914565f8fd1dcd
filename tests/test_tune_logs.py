"""The driver drops Tune's state-upload traceback only for the temporary-file race."""

from __future__ import annotations

import logging
import os
from unittest import mock

import pytest

from prunetune.orchestrator.tune_logs import STATE_LOGGER, drop_state_upload_races

MESSAGE = "Saving experiment state to storage at '/x/ray_results/s' failed with exception: "


def _log_failure(err: BaseException) -> None:
    try:
        raise err
    except BaseException:
        logging.getLogger(STATE_LOGGER).error(MESSAGE, exc_info=True)


@pytest.mark.parametrize(("err", "kept"), [
    (FileNotFoundError(2, "Failed to open local file '/tmp/ray/a/..searcher-state.pkl.x1.tmp'"),
     False),
    (FileNotFoundError(2, "Failed to open local file '/tmp/ray/a/experiment_state.json'"), True),
    (PermissionError(13, "Permission denied: '/x/ray_results/s/.tmp'"), True),
    (OSError(28, "No space left on device"), True),
])
def test_only_the_vanished_temporary_file_is_dropped(err: BaseException, kept: bool,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    drop_state_upload_races()
    drop_state_upload_races()  # once is enough; twice adds no second filter
    assert len(logging.getLogger(STATE_LOGGER).filters) == 1
    with caplog.at_level(logging.WARNING, logger=STATE_LOGGER):
        _log_failure(err)
        logging.getLogger(STATE_LOGGER).warning("Experiment has been interrupted")
    messages = [r.getMessage() for r in caplog.records]
    assert (MESSAGE in messages) is kept, messages
    assert "Experiment has been interrupted" in messages  # other records pass


def test_the_driver_installs_it() -> None:
    from prunetune.orchestrator import driver

    log = logging.getLogger(STATE_LOGGER)
    log.filters.clear()
    with mock.patch.dict(os.environ):  # its environment settings stay in this test
        driver._quiet_start_up()
    assert len(log.filters) == 1
