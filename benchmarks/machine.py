"""The machine the benchmarks run on and what they measure there: CPU features, native bf16, a description
for the tables' header, timing of calls (device synchronised), peak memory (CUDA's allocator statistics or
the process's RSS high-water mark), FLOP counts and the machine's matmul rate."""

from __future__ import annotations

import ctypes
import functools
import gc
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether bf16 pays: CUDA with bf16, or a CPU with AMX, or with AVX512-BF16 where a bf16 matmul is
    measured faster than a float32 one (one host with AVX512-BF16 but no AMX ran bf16 at 190 against
    343 GFLOP/s for float32, 2026-11-27)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return True
    if "avx512_bf16" not in flags:
        return False
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(1024, 1024, dtype=dtype)
        a @ a
        start = time.perf_counter()
        for _ in range(5):
            a @ a
        rates[dtype] = 1 / (time.perf_counter() - start)
    return rates[torch.bfloat16] > 1.2 * rates[torch.float32]


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "")
    bf16 = (
        "native bf16"
        if native_bf16(device)
        else ("bf16 slower than fp32" if "avx512_bf16" in flags else "no native bf16")
    )
    return f"{model}, {torch.get_num_threads()} threads, {isa}, {bf16}, torch {torch.__version__}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(
    device: torch.device, n: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """Median rate of an (n x n) @ (n x n) matmul in GFLOP/s: the machine's practical peak."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    times = time_calls(lambda: a @ b, device, warmup=2, reps=reps)
    return 2 * n**3 / statistics.median(times) / 1e9


def reference_matmul_dtype(device: torch.device) -> torch.dtype:
    """The dtype whose matmul rate the tables compare against: bf16 on a GPU that has it, else float32."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:  # native, not emulated bf16
        return torch.bfloat16
    return torch.float32


def time_calls(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int,
    reps: int,
    cpu_times: list[float] | None = None,
) -> list[float]:
    """Wall-clock seconds of ``reps`` calls of ``fn`` after ``warmup`` calls (device synchronised).

    ``cpu_times`` (optional) receives the process CPU seconds of each timed call: with one thread a
    measure of the work that other processes on a shared machine barely disturb.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu)
    return times


def _proc_status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def release_freed_memory() -> None:
    """Return memory freed by Python/torch to the OS (glibc ``malloc_trim``), so that RSS is live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak: CUDA's peak stats, or the process's RSS high-water mark (Linux clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    rss = _proc_status_mb("VmRSS")
    return rss if rss is not None else peak_memory_mb(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last reset: ``max_memory_allocated`` on CUDA, the RSS high-water mark on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()
