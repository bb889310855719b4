"""The run folder of one training call: one process writes it, a resume cleans it, a failed start removes it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..atomic import FolderLock
from .state import remove_stale_temporaries

__all__ = ["RunFolder", "discard_empty_run"]

log = logging.getLogger(__name__)


class RunFolder:
    """The run folder of one training call: written by one process (a :class:`FolderLock` from the moment
    it is known), cleaned on resume of what a killed process left (:func:`remove_stale_temporaries`), and
    removed again when the call that created it fails before its first step."""

    def __init__(self, created: bool) -> None:
        self.created = created  # this call makes the folder (not a resume, not a given run_dir)
        self.path: Path | None = None
        self._lock: FolderLock | None = None

    def take(self, path: Path, resumed: bool) -> Path:
        self.path = Path(path)
        self._lock = FolderLock(self.path, "run folder").__enter__()
        if resumed:
            remove_stale_temporaries(self.path)
        return self.path

    def release(self, failed_before_training: bool) -> None:
        if failed_before_training and self.created:
            discard_empty_run(self.path)
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None


def discard_empty_run(run_dir: Path | None) -> None:
    """Remove a run folder that a failed start left without any training (no checkpoint, no step): retries
    would otherwise leave one such folder each. Called only for folders this call created."""
    if run_dir is None or not Path(run_dir).is_dir() or any((Path(run_dir) / "checkpoints").glob("state-*.pt")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("removed %s: the run stopped before its first step", run_dir)
