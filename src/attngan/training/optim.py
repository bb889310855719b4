"""Adam for channels-last parameters on the CPU: the same update, state and state dict as ``torch.optim.Adam``.

On the CPU ``torch.optim.Adam`` runs its per-parameter loop, whose ``sqrt``, ``div`` and ``add`` allocate a
new tensor of the parameter's size for each weight at every step. For the birds discriminators (a 33 M-weight
layer among others) that cost about 0.6 s per iteration of 3 s, mostly page faults of fresh allocations.
PyTorch's fused Adam kernel updates in place, but ``Adam(fused=True)`` copies every channels-last parameter
to a contiguous tensor and back. The update is elementwise, so :class:`FlatAdam` hands the fused kernel flat
views of the dense storage of each parameter, its gradient and its two moments instead: no copies, no
temporaries. Parameter groups, ``state_dict`` and ``load_state_dict`` are Adam's own, so checkpoints are
interchangeable with ``torch.optim.Adam``. Falls back to Adam's own step where the fused kernel is missing
(torch < 2.4 on CPU) or an option it does not cover is set (amsgrad, weight decay, maximize, a closure).
"""

from __future__ import annotations

import torch

__all__ = ["FlatAdam"]


def _has_fused_adam() -> bool:
    """Whether ``torch.optim.adam.adam`` takes ``fused`` (its CPU kernel arrived in torch 2.4)."""
    import inspect

    from torch.optim.adam import adam

    try:
        version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
        return "fused" in inspect.signature(adam).parameters and version >= (2, 4)
    except (TypeError, ValueError):  # pragma: no cover - unusual version strings or builtins
        return False


_FUSED_ADAM = _has_fused_adam()  # read once at import


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor (contiguous or channels-last) as a 1-D view of its storage; raises if it is not dense."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).view(-1)
    return t.view(-1)


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _like(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of ``p`` (itself when they agree, else a copy), so both flatten alike."""
    if t.stride() == p.stride():
        return t
    out = torch.empty_like(p, memory_format=torch.preserve_format)
    return out.copy_(t)


class FlatAdam(torch.optim.Adam):
    """``torch.optim.Adam`` whose step runs the fused kernel on flat views (see the module docstring)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps)

    @staticmethod
    def _fused_available(device: torch.device) -> bool:
        return _FUSED_ADAM and device.type in ("cpu", "cuda")

    @torch.no_grad()
    def step(self, closure=None):
        from torch.optim.adam import adam

        unsupported = closure is not None or any(
            g["amsgrad"] or g["weight_decay"] or g["maximize"] or g.get("differentiable") or torch.is_tensor(g["lr"])
            for g in self.param_groups
        )
        with_grad = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if unsupported or any(
            p.grad.is_sparse or p.is_complex() or not _dense(p) or not self._fused_available(p.device) for p in with_grad
        ):
            return super().step(closure)
        for group in self.param_groups:
            params, grads, avgs, sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                # Moments loaded from a checkpoint in another layout are re-laid out once, for good.
                state["exp_avg"], state["exp_avg_sq"] = _like(state["exp_avg"], p), _like(state["exp_avg_sq"], p)
                if state["step"].device != p.device or state["step"].dtype != torch.float32:
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
                params.append(_flat(p))
                grads.append(_flat(_like(p.grad, p)))
                avgs.append(_flat(state["exp_avg"]))
                sqs.append(_flat(state["exp_avg_sq"]))
                steps.append(state["step"])
            if not params:
                continue
            beta1, beta2 = group["betas"]
            adam(
                params,
                grads,
                avgs,
                sqs,
                [],
                steps,
                fused=True,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=0.0,
                eps=group["eps"],
                maximize=False,
            )
        return None
