"""Opt-in speed-ups that keep the mathematics of the networks (results differ by float rounding only).

- :func:`set_fast_upsample`: every up-block computes ``conv3x3(upsample_2x(x))`` as one stride-2
  transposed conv with a 4x4 kernel (16 instead of 36 multiply-adds per output pixel and channel pair).
- :func:`set_matmul_conv`: convs with few output pixels (the discriminators' 8x8 and 4x4 layers) run as
  im2col + one matmul, which CPUs do several times faster than the direct conv kernels.
- :func:`fold_batchnorm`: an inference copy in which each eval-mode BatchNorm that follows a conv or
  linear layer is folded into that layer's weight and bias (one op and one activation fewer). For frozen
  networks only (the DAMSM image encoder, a generator used for sampling): the copy is not trained and its
  state dict has different keys, so it is never saved.

The parameters of the original modules, their names and the defaults are untouched.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import Conv2d, UpBlock

__all__ = ["set_fast_upsample", "set_matmul_conv", "fold_batchnorm"]


def set_fast_upsample(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every :class:`UpBlock` inside ``module`` to (or back from) the transposed-conv form."""
    for m in module.modules():
        if isinstance(m, UpBlock):
            m.fast_upsample = enabled
    return module


def set_matmul_conv(module: nn.Module, max_pixels: int = 64, min_weight: int = 0) -> nn.Module:
    """On CPU, run the convs of ``module`` with at most ``max_pixels`` output pixels as im2col + matmul
    (:func:`attngan.nn.layers.conv2d_matmul`); 0 switches it off. Only this package's ``Conv2d`` layers,
    and only those with at least ``min_weight`` weights: the im2col form pays off for the wide layers of
    the birds/coco networks (millions of weights on 8x8 and 4x4 maps), not for narrow ones, where the copy
    of the unfolded input costs more than the matmul saves (a small model trained 1.5x slower with it)."""
    for m in module.modules():
        if isinstance(m, Conv2d):
            m.matmul_max_pixels = max_pixels if m.weight.numel() >= min_weight else 0
    return module


@torch.no_grad()
def _fold(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
    # Eval BN: y = (x - mean) / sqrt(var + eps) * gamma + beta = scale * x + shift.
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if layer.bias is not None:
        shift = shift + layer.bias * scale
    out_ch = layer.weight.size(0)
    layer.weight.mul_(scale.view(out_ch, *([1] * (layer.weight.dim() - 1))))
    layer.bias = nn.Parameter(shift.to(layer.weight.dtype), requires_grad=layer.weight.requires_grad)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` with BatchNorm folded into the conv/linear layer before it.

    Folds ``Sequential`` neighbours (``[conv, bn, ...]``, ``[linear, bn1d, ...]``) and modules with
    ``conv`` and ``bn`` attributes (torchvision's Inception ``BasicConv2d``); the BN becomes ``Identity``.
    The copy is for inference or as a frozen feature extractor; its parameters keep ``requires_grad``.
    """
    folded = copy.deepcopy(module).eval()
    for m in folded.modules():
        if isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                layer, bn = m[i], m[i + 1]
                if isinstance(layer, (nn.Conv2d, nn.Linear)) and isinstance(
                    bn, (nn.BatchNorm1d, nn.BatchNorm2d)
                ):
                    _fold(layer, bn)
                    m[i + 1] = nn.Identity()
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            _fold(conv, bn)
            m.bn = nn.Identity()
    return folded
