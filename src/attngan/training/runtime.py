"""Where and how a training loop runs: device, mixed precision, processes, seeds, Ctrl-C.

Nothing here assumes CUDA: the device is picked as CUDA, then MPS, then CPU; mixed precision and the
GradScaler are used on CUDA only (the CPU default is float32; emulated bf16 is slower there). The
memory format (``gan_train.channels_last``) and the kernels (``*.fast_kernels``) are chosen by the loops. Distributed training is started by ``torchrun`` (environment variables
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``): gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import UserError
from .state import capture_rng_state

__all__ = [
    "DistInfo",
    "resolve_device",
    "init_distributed",
    "shutdown_distributed",
    "autocast",
    "make_grad_scaler",
    "seed_everything",
    "all_reduce_mean",
    "broadcast_object",
    "gather_rng_states",
    "InterruptGuard",
    "MIXED_PRECISION",
    "tune_cpu_allocator",
    "ThreadTuner",
]

log = logging.getLogger(__name__)

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this call initialised the process group (and destroys it at the end)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``None``/``"auto"``: CUDA (``cuda:LOCAL_RANK``), else MPS, else CPU; or an explicit device name.

    Raises UserError if the named device is not available here.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec is None or spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    from ..pipeline import check_device

    device = check_device(spec)  # unknown, absent or unusable devices are user errors
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {spec!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def init_distributed(device_spec: str | torch.device | None = None) -> tuple[DistInfo, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns this process's :class:`DistInfo` and its device. One process (no ``WORLD_SIZE`` > 1): rank 0 of
    1, nothing initialised. gloo is used on CPU/MPS, nccl on CUDA.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        device = resolve_device(device_spec)
        if device.type == "cuda":  # else pinned batches and cuda.* queries go to cuda:0's context
            torch.cuda.set_device(device)
        return DistInfo(), device
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing and not dist.is_initialized():
        raise UserError(
            f"WORLD_SIZE={world} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: start "
            "distributed training with torchrun (torchrun --nproc_per_node=N -m attngan ...), or unset WORLD_SIZE "
            "to train in one process"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_spec is not None and str(device_spec).startswith("cuda:"):  # every process would take that GPU
        raise UserError(
            f"--device {device_spec} under torchrun: each process takes the GPU of its LOCAL_RANK; use --device "
            "cuda (or auto), and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    device = resolve_device(device_spec, local_rank)
    if device.type == "mps":
        raise UserError("distributed training on MPS is not supported; use --device cpu or one process")
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        log.info(
            "joining the %d processes of this run at %s:%s (this waits until all have started)",
            world, os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"],
        )  # fmt: skip
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns)
    log.info("process %d of %d on %s (%s)", info.rank, info.world_size, device, dist.get_backend())
    return info, device


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group that :func:`init_distributed` joined.

    With gloo, torch 2.1 deadlocked at the end of one run in 5-15 here: the group's last reference went (with
    DDP's reducer) while one of its worker threads still released the tensors of the last collective. That
    needs the GIL, which the main thread held while it waited for the worker thread to end. So a short sleep
    without the GIL first, in which the worker threads finish their clean-up. (No barrier: after an error on one
    process the others are in another collective, and the barrier would wait for ever.)
    """
    if info.owns_group and dist.is_initialized():
        time.sleep(0.05)
        dist.destroy_process_group()


def autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context on CUDA (``bf16``/``fp16``); a no-op elsewhere and for ``"no"``."""
    if mode == "no" or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


@contextlib.contextmanager
def cudnn_autotuner(on: bool) -> Iterator[None]:
    """While training: cuDNN times its convolution algorithms once per shape and keeps the fastest (the
    image sizes are fixed, so there are few shapes). Left off where the user asked for determinism."""
    before = torch.backends.cudnn.benchmark
    if on and not torch.backends.cudnn.deterministic:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _native_bf16(device: torch.device) -> bool:
    """bf16 in hardware on this device (Ampere or newer, or ROCm); ``torch.cuda.is_bf16_supported()`` also
    says yes for the emulated bf16 of older GPUs (T4, V100), which is slower than float32, and it asks
    about the current device rather than ``device``."""
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8


def check_mixed_precision(device: torch.device, mode: str) -> str:
    """The mode actually used: mixed precision runs on CUDA only (a warning says so elsewhere).

    ``auto`` is bf16 on a CUDA GPU with native bf16 and float32 everywhere else: on the CPUs measured,
    bf16 and fp16 convolutions are slower than float32 (``benchmarks/bench_dtypes.py``), and fp16 on
    older GPUs needs loss scaling, which stays a choice (``fp16``).
    """
    if mode not in MIXED_PRECISION:
        raise UserError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {mode!r}")
    if mode == "auto":
        return "bf16" if device.type == "cuda" and _native_bf16(device) else "no"
    if mode != "no" and device.type != "cuda":
        log.warning("mixed_precision=%s needs CUDA; training on %s in float32", mode, device)
        return "no"
    if mode == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU does not support bf16; use gan_train.mixed_precision=fp16 or no")
    return mode


def make_grad_scaler(device: torch.device, mode: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 on CUDA; a disabled (pass-through) scaler otherwise."""
    enabled = mode == "fp16" and device.type == "cuda"
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


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


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global state and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_reduce_mean(values: dict[str, torch.Tensor], info: DistInfo, flags: int = 0) -> tuple[dict[str, float], int]:
    """Average scalar tensors over the processes (one collective) and OR an integer bit field of flags.

    Every process gets the same numbers back, so decisions taken on them (a non-finite loss, a stop
    request) are the same everywhere and no process is left waiting in a collective.
    """
    names = list(values)
    if not info.distributed:  # one device-to-host copy for all values
        host = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist() if values else []
        return dict(zip(names, host)), flags
    device = next(iter(values.values())).device if values else torch.device("cpu")
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    scalars = [values[k].detach().float().reshape(()).to(device) for k in names]
    bits = torch.tensor([float((flags >> b) & 1) for b in range(8)], device=device)  # one copy, not eight
    buf = torch.cat([torch.stack(scalars), bits]) if scalars else bits  # (n + 8,)
    dist.all_reduce(buf)
    n = len(names)
    host = buf.tolist()
    out = {k: host[i] / info.world_size for i, k in enumerate(names)}
    merged = sum(1 << b for b in range(8) if host[n + b] > 0)
    return out, merged


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every process (e.g. the run folder it created)."""
    if not info.distributed:
        return obj
    box = [obj]
    try:
        dist.broadcast_object_list(box, src=0)
    except RuntimeError as exc:  # rank 0 stopped (its own message says why); say so instead of a traceback
        raise UserError(f"process {info.rank}: process 0 stopped before training started ({exc})") from exc
    return box[0]


def gather_rng_states(info: DistInfo) -> list[dict]:
    """Every process's RNG states in rank order (a collective: all processes call it; rank 0 saves them)."""
    mine = capture_rng_state()
    if not info.distributed:
        return [mine]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, mine)
    return out


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


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode for a block and restore each one's previous mode."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


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
