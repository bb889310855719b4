"""Training in several processes: the process group that ``torchrun`` describes and the collectives of a loop.

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; the group uses gloo
on CPU and nccl on CUDA. Without ``WORLD_SIZE`` > 1 a loop is rank 0 of 1 and every collective here is a
local no-op.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError
from .devices import resolve_device
from .state import capture_rng_state

__all__ = [
    "DistInfo",
    "init_distributed",
    "shutdown_distributed",
    "all_reduce_mean",
    "broadcast_object",
    "gather_rng_states",
]

log = logging.getLogger(__name__)


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
