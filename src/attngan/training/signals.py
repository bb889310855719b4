"""Ctrl-C and SIGTERM during training: a request to stop after the current step, not an abort."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

__all__ = ["InterruptGuard"]

log = logging.getLogger(__name__)


class InterruptGuard:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM (``kill``, a batch scheduler's stop) into a request to
    stop at the end of the current step.

    The loop polls :attr:`requested` between steps, so the checkpoint it then writes holds a consistent
    state. A second signal raises KeyboardInterrupt at once (the unfinished step is then dropped and the
    last checkpoint stays the newest). Only the main thread can install signal handlers; elsewhere the
    guard does nothing and KeyboardInterrupt behaves as usual.
    """

    SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the first signal received
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if os.environ.get("RANK", "0") == "0":  # once, not once per torchrun process
            log.warning("%s: stopping after this step and saving a checkpoint (a second one aborts at once)", name)

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
