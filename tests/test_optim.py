"""FlatAdam: the update and the state dict of torch.optim.Adam, on channels-last and other parameters."""

from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
from torch import nn

from attngan.training.optim import FlatAdam
from tolerance import assert_close_to_scale


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    return m.to(memory_format=torch.channels_last)


def _grads(model: nn.Module, step: int, channels_last_grads: bool) -> None:
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        grad = torch.randn(p.shape, generator=g) * (1 + step)
        if channels_last_grads and grad.dim() == 4:
            grad = grad.contiguous(memory_format=torch.channels_last)
        p.grad = grad  # 4-D gradients alternate between the two layouts


@pytest.mark.parametrize("lr", [1e-3, 2e-4])
def test_flat_adam_equals_adam_and_shares_its_state_dict(lr):
    a, b = _model(), _model()
    assert a[0].weight.is_contiguous(memory_format=torch.channels_last) and not a[0].weight.is_contiguous()
    ref = torch.optim.Adam(a.parameters(), lr=lr, betas=(0.5, 0.999), foreach=False)
    flat = FlatAdam(b.parameters(), lr=lr, betas=(0.5, 0.999))
    for step in range(6):
        for model in (a, b):
            _grads(model, step, channels_last_grads=step % 2 == 0)
        ref.step()
        flat.step()
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert_close_to_scale(q, p, msg=name)
    # Parameters keep their layout; the moments are stored like them.
    assert b[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert flat.state[b[0].weight]["exp_avg"].stride() == b[0].weight.stride()
    # State dicts are interchangeable both ways (a resume across the two optimizers continues the same).
    sd = flat.state_dict()
    assert set(sd["state"][0]) == set(ref.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    for k in ("exp_avg", "exp_avg_sq"):
        assert_close_to_scale(sd["state"][0][k], ref.state_dict()["state"][0][k])
    c = copy.deepcopy(b)
    again = FlatAdam(c.parameters(), lr=lr, betas=(0.5, 0.999))
    # (a copy, as from a checkpoint file: load_state_dict keeps the step tensors, shared with ref otherwise)
    loaded = copy.deepcopy(ref.state_dict())
    for state in loaded["state"].values():  # moments saved in the default layout (another writer)
        state["exp_avg"], state["exp_avg_sq"] = state["exp_avg"].contiguous(), state["exp_avg_sq"].contiguous()
    again.load_state_dict(loaded)
    for model in (a, c):
        _grads(model, 99, channels_last_grads=False)
    ref.step()
    again.step()
    for p, q in zip(a.parameters(), c.parameters()):
        assert_close_to_scale(q, p)


def test_flat_adam_falls_back_for_options_the_fused_path_does_not_cover():
    a, b = _model(), _model()
    ref = torch.optim.Adam(a.parameters(), lr=1e-3, amsgrad=True, foreach=False)
    flat = FlatAdam(b.parameters(), lr=1e-3)
    for group in flat.param_groups:
        group["amsgrad"] = True
    for step in range(3):
        for model in (a, b):
            _grads(model, step, channels_last_grads=True)
        ref.step()
        flat.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert_close_to_scale(q, p)


_MALLOC_PROBE = r"""
import ctypes, ctypes.util, sys
from attngan.training import tune_cpu_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
applied = tune_cpu_allocator() if sys.argv[1] == "tuned" else False
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblkhd  # bytes in mmap'ed blocks (returned to the system when freed)
libc.free(block)
print(applied, mapped >= 64 << 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_cpu_allocator_keeps_large_blocks_in_the_heap():
    import ctypes
    import ctypes.util
    import subprocess

    if not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults

    def run(mode: str) -> list[str]:
        cmd = [sys.executable, "-c", _MALLOC_PROBE, mode]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.split()

    assert run("default") == ["False", "True"]  # a 64 MB block is mmap'ed by default ...
    assert run("tuned") == ["True", "False"]  # ... and comes from the reusable heap once tuned
