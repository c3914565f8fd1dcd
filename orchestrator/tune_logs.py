"""Ray Tune log records the driver drops because they report nothing a user must act on.

Tune saves its experiment state into a staging folder by writing a temporary file and renaming
it, while a background thread copies that folder to the storage path. When a save lands during
a copy, the copy fails on the temporary file the rename took away, and the next forced save
(every save on stop, Ctrl-C or SIGTERM) logs that failure with a traceback, then uploads the
newer state itself. The driver saves every second (`TUNE_GLOBAL_CHECKPOINT_S`), so a user would
see that traceback on many interrupts though nothing was lost.
"""

from __future__ import annotations

import logging

STATE_LOGGER = "ray.tune.execution.experiment_state"
_UPLOAD_FAILED = "Saving experiment state to storage"


class StateUploadRaceFilter(logging.Filter):
    """Drops Tune's "Saving experiment state to storage ... failed" record when the failure is
    a temporary file that vanished mid-copy (the race above); any other failure is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_UPLOAD_FAILED) or not record.exc_info:
            return True
        err = record.exc_info[1]
        return not (isinstance(err, FileNotFoundError) and ".tmp" in str(err))


def drop_state_upload_races() -> None:
    """Installs `StateUploadRaceFilter` on Tune's experiment-state logger (once)."""
    log = logging.getLogger(STATE_LOGGER)
    if not any(isinstance(f, StateUploadRaceFilter) for f in log.filters):
        log.addFilter(StateUploadRaceFilter())
