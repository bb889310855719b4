"""The device a loop computes on and its arithmetic: device choice, mixed precision, cuDNN autotuning, seeds.

Nothing here assumes CUDA: the device is picked as CUDA, then MPS, then CPU; mixed precision and the
GradScaler are used on CUDA only (the CPU default is float32; emulated bf16 is slower there). The
memory format (``gan_train.channels_last``) and the kernels (``*.fast_kernels``) are chosen by the loops.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import UserError

__all__ = [
    "resolve_device",
    "autocast",
    "cudnn_autotuner",
    "check_mixed_precision",
    "make_grad_scaler",
    "seed_everything",
    "MIXED_PRECISION",
]

log = logging.getLogger(__name__)

MIXED_PRECISION = ("auto", "no", "bf16", "fp16", "fast")


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


def autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context on CUDA (``bf16``/``fp16``) and on a CPU (``bf16``, as
    :func:`check_mixed_precision` allows it); a no-op elsewhere and for ``"no"``."""
    if mode == "no" or device.type not in ("cuda", "cpu") or (device.type == "cpu" and mode != "bf16"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def cpu_has_amx_bf16() -> bool:
    """The CPU multiplies bf16 matrices in hardware (Intel AMX, Linux's ``amx_bf16`` flag). Without AMX, bf16
    convolutions ran slower than float32 on the CPUs measured, AVX512-BF16 included (benchmarks/README.md)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def check_mixed_precision(device: torch.device, mode: str) -> str:
    """The mode actually used (a warning says when it is not the one asked for).

    ``auto`` is bf16 on a CUDA GPU with native bf16 and float32 everywhere else, CPUs included: a reduced
    precision is never a silent default for the float32 presets. ``bf16`` asked for on a CPU runs with bf16
    autocast where the CPU has AMX (a birds training step about 2 x faster than float32, with losses equal
    to about 3 digits and gradients within a few tens of per cent: benchmarks/README.md), else in float32.
    fp16 needs CUDA (on older GPUs with loss scaling, which stays a choice). ``fast`` is bf16 wherever the
    hardware computes it natively (a CUDA GPU with bf16, a CPU with AMX) and float32 elsewhere, without a
    warning: the ``shapes`` preset's, whose demo trains for a fixed time (benchmarks/TUNING.md).
    """
    if mode not in MIXED_PRECISION:
        raise UserError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {mode!r}")
    if mode == "auto":
        return "bf16" if device.type == "cuda" and _native_bf16(device) else "no"
    if mode == "fast":
        native = _native_bf16(device) if device.type == "cuda" else device.type == "cpu" and cpu_has_amx_bf16()
        return "bf16" if native else "no"
    if mode == "bf16" and device.type == "cpu":
        if cpu_has_amx_bf16():
            return "bf16"
        log.warning("mixed_precision=bf16 on a CPU needs AMX (bf16 would be emulated, slower); training in float32")
        return "no"
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


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global state and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
