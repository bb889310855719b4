"""CPU tuning for training: glibc's allocator, and fewer threads while other processes compete for the cores."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import time
from typing import Any

import numpy as np
import torch

__all__ = ["tune_cpu_allocator", "ThreadTuner"]

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def tune_cpu_allocator() -> bool:
    """Make glibc's malloc keep freed memory for reuse; True if applied (Linux with glibc only).

    By default glibc serves blocks over 32 MB by ``mmap`` and returns them to the system when freed, so
    every large tensor of a CPU training step (activations, weight gradients of the wide discriminator
    layers) is fresh memory whose pages fault in again at first touch. With ``mmap`` off, a 2 GB trim
    threshold and a 1 GB top pad (the settings of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...
    MALLOC_TOP_PAD_=...`` in the environment, which glibc reads only at start-up) freed blocks are reused:
    a CPU training step with the birds settings is 7 % faster with the fast kernels and 30 % faster without
    them, and the process keeps about 10 % more memory (benchmarks/README.md). It changes the whole
    process, so the library never calls it by itself: the ``attngan`` training commands do (``--no-tune-malloc``
    to skip), and API users may.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 1 << 30))
    return all(mallopt(param, value) == 1 for param, value in settings)


class _BusyElsewhere:
    """Cores kept busy by other processes since the previous call: the whole machine's busy time
    (``/proc/stat``) minus this process's CPU time, over the wall time between calls. Elsewhere (no
    ``/proc/stat``): the 1-minute load average minus this process's threads."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = (sum(fields[:8]) - fields[3] - (fields[4] if len(fields) > 4 else 0)) / self.tick  # not idle/iowait
        own = sum(os.times()[:2])
        return time.monotonic(), busy, own

    def __call__(self) -> float:
        now = self._sample()
        if now is None or self.last is None:
            return max(0.0, os.getloadavg()[0] - torch.get_num_threads()) if hasattr(os, "getloadavg") else 0.0
        (t0, busy0, own0), (t1, busy1, own1) = self.last, now
        self.last = now
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-3))


class ThreadTuner:
    """Fewer CPU threads when other processes compete for the cores (for time-budgeted CPU runs: the demo).

    OpenMP threads spin while they wait for each other, so on a CPU shared with other work all cores busy
    can be much slower than one: with the shapes preset on 2 cores and one other busy process, a GAN step
    took 0.55 s with 2 threads and 0.18-0.22 s with 1 (0.14-0.16 s with 2 on the idle machine).
    After ``warmup`` steps, and then every ``check_every`` steps, when other processes kept more than half
    a core busy (or, at 1 thread, left a core free), the other thread count is tried for ``trial_steps``
    steps and kept only if its median step is ``gain`` times faster. On an idle machine nothing is tried,
    so the run is the same as without the tuner (thread counts change float rounding).
    """

    def __init__(
        self,
        enabled: bool = True,
        check_every: int = 100,
        trial_steps: int = 10,
        warmup: int = 3,
        gain: float = 1.2,
        busy_elsewhere: Any = None,  # () -> cores other processes kept busy since the last call
        cpus: int | None = None,
    ) -> None:
        self.high = torch.get_num_threads()
        self.cpus = cpus or os.cpu_count() or 1
        self.enabled = enabled and self.high > 1
        self.busy_elsewhere = busy_elsewhere or (_BusyElsewhere() if self.enabled else None)
        self.check_every, self.trial_steps, self.gain, self.warmup = check_every, trial_steps, gain, warmup
        self.times: list[float] = []  # step seconds at the current thread count, since the last change
        self.trial: tuple[int, float] | None = None  # (threads before the trial, their median step)
        self.steps = 0
        self.last_check = -check_every  # the first check comes as soon as trial_steps steps are measured

    def step(self, seconds: float) -> None:
        """Record one step's duration; may change ``torch.set_num_threads`` for the next steps."""
        if not self.enabled:
            return
        self.steps += 1
        if self.steps <= self.warmup:  # first steps: allocation, caches
            if self.steps == self.warmup:
                self.busy_elsewhere()  # measure from here
            return
        self.times = (self.times + [seconds])[-self.trial_steps :]
        if len(self.times) < self.trial_steps:
            return
        current = torch.get_num_threads()
        median = float(np.median(self.times))
        if self.trial is not None:  # the trial is over: keep the faster count
            before, before_median = self.trial
            keep = median * self.gain <= before_median
            log.info(
                "CPU threads: %d -> %d gave %.3f s per step against %.3f s; %s",
                before, current, median, before_median, f"keeping {current}" if keep else f"back to {before}",
            )  # fmt: skip
            if not keep:
                torch.set_num_threads(before)
            self.trial, self.times, self.last_check = None, [], self.steps
            self.busy_elsewhere()
            return
        if self.steps - self.last_check < self.check_every:
            return
        self.last_check = self.steps
        elsewhere = self.busy_elsewhere()
        if current > 1 and elsewhere > 0.5:  # other processes keep a core busy
            other = 1
        elif current == 1 and elsewhere + current < self.cpus - 0.5:  # a core is free again
            other = self.high
        else:
            return
        self.trial, self.times = (current, median), []
        torch.set_num_threads(other)

    def restore(self) -> None:
        """The thread count of the start."""
        if self.enabled:
            torch.set_num_threads(self.high)
