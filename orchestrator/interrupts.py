"""SIGTERM handled as Ctrl-C.

Slurm, Kubernetes and `timeout` stop a program with SIGTERM. A search treats it as Ctrl-C: the
SIGINT handler in force runs (Ray Tune's during a stage, which stops the trials and saves the
experiment's state; Python's elsewhere, which raises KeyboardInterrupt), so the search ends the
same resumable way, and the command exits with its own code (`EXIT_TERMINATED`). `ray.init`
installs a SIGTERM handler of its own (a bare `sys.exit`, which aborts the driver while Tune's
threads run): `keep_sigterm_handler` puts ours back after it. Tune's `fit` installs a SIGINT
handler that stops the run it belongs to and leaves it installed after the run ends (a later
Ctrl-C, or a SIGTERM handled as one, would only be logged and ignored: ray-project/ray#37737):
`keep_sigint_handler` puts the one in force before back.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType

__all__ = ["handle_sigterm_as_interrupt", "keep_sigint_handler", "keep_sigterm_handler",
           "sigterm_count", "terminated"]

# SIGTERMs received in this process, and their count when the handler was last installed:
# `terminated()` and a stage whose trials all ended as one arrived (`sigterm_count`) read them.
_count = 0
_count_at_install = 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _count
    _count += 1
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored or default (a background job): still end as Ctrl-C would
        raise KeyboardInterrupt


def handle_sigterm_as_interrupt() -> None:
    """From now on SIGTERM runs the SIGINT handler in force (main thread only)."""
    global _count_at_install
    if threading.current_thread() is threading.main_thread():
        _count_at_install = _count
        signal.signal(signal.SIGTERM, _on_sigterm)


def terminated() -> bool:
    """Whether the interruption being handled came from SIGTERM."""
    return _count > _count_at_install


def sigterm_count() -> int:
    """How many SIGTERMs the handler has received in this process."""
    return _count


@contextmanager
def _kept_handler(signum: int, *, only: object = None) -> Iterator[None]:
    """Restore the handler of `signum` in force before the body (main thread only); `only`:
    restore it only when it is that handler."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signum) if main else None
    try:
        yield
    finally:
        if before is not None and (only is None or before is only):
            signal.signal(signum, before)


def keep_sigterm_handler() -> AbstractContextManager[None]:
    """Restore our SIGTERM handler after the body (`ray.init` replaces it)."""
    return _kept_handler(signal.SIGTERM, only=_on_sigterm)


def keep_sigint_handler() -> AbstractContextManager[None]:
    """Restore the SIGINT handler in force before the body (Tune's `fit` leaves its own)."""
    return _kept_handler(signal.SIGINT)
