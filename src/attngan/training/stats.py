"""One sink for training progress: tqdm bar, status lines, ``stats.jsonl``, ``log.txt``, TensorBoard.

Only the main process (rank 0) writes anything. ``stats.jsonl`` is always written (one JSON object per
log tick); TensorBoard is used when ``tensorboard`` is importable and skipped with a log message otherwise
(as stylegan2-ada's training loop does); ``log.txt`` receives every log record of the ``attngan`` loggers
while the run lasts, i.e. the console's status lines and messages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["StatsSink"]

log = logging.getLogger(__name__)


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _RunLogHandler(logging.FileHandler):
    """``log.txt`` of a run. When it cannot be written (a full disk), it says so once on stderr and stops,
    instead of printing logging's traceback for every record; the terminal keeps the log."""

    _failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self._failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._failed:
            self._failed = True
            sys.stderr.write(f"warning: cannot write {self.baseFilename} ({sys.exc_info()[1]}); it stops here\n")


class StatsSink:
    """Collects per-step scalars, averages them over each log interval, and reports them."""

    def __init__(
        self,
        run_dir: Path | None,  # None or a non-main process: report nothing
        total_steps: int | None,  # for the progress bar; None: unknown
        start_step: int = 0,
        images_per_step: int = 1,  # images per step over all processes (for images/s)
        progress: bool = True,  # show a tqdm bar (only on a terminal)
        tensorboard: bool = True,  # write TensorBoard events when tensorboard is installed
        name: str = "train",
    ) -> None:
        self.run_dir = run_dir
        self.enabled = run_dir is not None
        self.images_per_step = images_per_step
        self.name = name
        self._sums: dict[str, float] = {}
        self._count = 0
        self._tick_time = time.perf_counter()
        self._tick_step = start_step
        self._start = time.perf_counter()
        self._bar = None
        self._writer = None
        self._file_handler: logging.Handler | None = None
        if not self.enabled:
            return
        self._stats = open(run_dir / "stats.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._file_handler = _RunLogHandler(run_dir / "log.txt", encoding="utf-8")
        self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._file_handler.setLevel(logging.INFO)
        pkg = logging.getLogger("attngan")
        pkg.addHandler(self._file_handler)
        if pkg.level == logging.NOTSET or pkg.level > logging.INFO:
            self._old_level = pkg.level
            pkg.setLevel(logging.INFO)
        else:
            self._old_level = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=name, unit="step", disable=None, dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed; skipping TensorBoard events (pip install tensorboard)")
            else:
                self._writer = SummaryWriter(log_dir=str(run_dir))
                self._previous_hook = threading.excepthook
                threading.excepthook = self._writer_thread_error

    def _writer_thread_error(self, args: Any) -> None:
        """TensorBoard writes from its own thread: a full disk there is logged in one line (the training
        loop reports it with the step and the checkpoint), not printed as that thread's traceback."""
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard"):
            log.warning("TensorBoard events not written: %s", args.exc_value)
            return
        self._previous_hook(args)

    # ---------------------------------------------------------------------------------------- per step

    def update(self, step: int, values: dict[str, float]) -> None:
        """Add one step's scalars (already averaged over processes) and advance the bar."""
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._count += 1
        if self._bar is not None:
            rate = self.images_per_step * (step - self._tick_step) / max(time.perf_counter() - self._tick_time, 1e-9)
            shown = {k.split("/", 1)[-1]: f"{v:.3g}" for k, v in values.items() if k.startswith("loss/") or k == "G/damsm"}
            self._bar.set_postfix(shown | {"img/s": f"{rate:.1f}"}, refresh=False)
            self._bar.update(1)

    def tick(self, step: int, epoch: int, extra: dict[str, float] | None = None) -> dict[str, Any]:
        """Average the collected scalars, write a ``stats.jsonl`` line, a status line and TensorBoard."""
        now = time.perf_counter()
        steps = max(step - self._tick_step, 1)
        means = {k: v / max(self._count, 1) for k, v in self._sums.items()}
        rate = self.images_per_step * steps / max(now - self._tick_time, 1e-9)
        record: dict[str, Any] = {
            "step": step,
            "epoch": epoch,
            "kimg": step * self.images_per_step / 1000,
            "time": round(now - self._start, 3),
            "images_per_sec": round(rate, 2),
            **{k: (v if math.isfinite(v) else str(v)) for k, v in means.items()},
            **(extra or {}),
        }
        self._sums.clear()
        self._count = 0
        self._tick_time, self._tick_step = now, step
        if not self.enabled:
            return record
        self._stats.write(json.dumps(record) + "\n")
        self._stats.flush()
        losses = " ".join(f"{k} {v:.4g}" for k, v in means.items())
        lr = " ".join(f"{k} {v:.3g}" for k, v in (extra or {}).items())
        log.info(
            "%s step %d epoch %d | %s | %s | %.1f img/s | %s",
            self.name, step, epoch, losses, lr, rate, _format_duration(now - self._start),
        )  # fmt: skip
        if self._writer is not None:
            for k, v in {**means, **(extra or {})}.items():
                self._writer.add_scalar(k, v, step)
            self._writer.add_scalar("images_per_sec", rate, step)
            self._writer.flush()
        return record

    def record(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """Write a ``stats.jsonl`` line (and TensorBoard scalars) for values outside the running means,
        e.g. a validation result."""
        if not self.enabled:
            return
        self._stats.write(json.dumps({"step": step, "epoch": epoch, **values}) + "\n")
        self._stats.flush()
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, v, step)

    def pending(self) -> dict[str, Any]:
        """The scalars collected since the last log tick, for a training state: a resumed run's first
        ``stats.jsonl`` line then averages the whole interval, as an uninterrupted run's does."""
        return {"sums": dict(self._sums), "count": self._count}

    def restore(self, pending: dict[str, Any] | None) -> None:
        """Continue the interval of :meth:`pending` (None: nothing to continue)."""
        if pending:
            self._sums = {str(k): float(v) for k, v in pending.get("sums", {}).items()}
            self._count = int(pending.get("count", 0))

    def log_to_file(self, message: str) -> None:
        """One ERROR line in ``log.txt`` only (why training stopped: the console shows it as the error)."""
        if self._file_handler is not None:
            record = logging.LogRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
            self._file_handler.handle(record)

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A (3, H, W) float image in [0, 1] to TensorBoard (no-op without it)."""
        if self._writer is not None:
            self._writer.add_image(tag, image, step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if not self.enabled:
            return
        # Closing runs in a `finally`: a failure here (a full disk) must not hide the error being raised.
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as exc:  # noqa: BLE001 - TensorBoard's own errors
                log.warning("TensorBoard events not completed: %s", exc)
            self._writer = None
            if threading.excepthook == self._writer_thread_error:
                threading.excepthook = self._previous_hook
        if not self._stats.closed:
            with contextlib.suppress(OSError):  # every line was flushed when written
                self._stats.close()
        if self._file_handler is not None:
            pkg = logging.getLogger("attngan")
            pkg.removeHandler(self._file_handler)
            with contextlib.suppress(OSError):
                self._file_handler.close()
            self._file_handler = None
            if self._old_level is not None:
                pkg.setLevel(self._old_level)
