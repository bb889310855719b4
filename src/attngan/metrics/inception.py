"""The Inception-v3 networks of the metrics: the FID Inception graph and torchvision's ImageNet Inception-v3.

* :func:`fid_inception_v3`: the TensorFlow ``inception-2015-12-05`` graph of the original TTUR FID code as
  ported by ``mseitzer/pytorch-fid``: torchvision's Inception-v3 with the patched blocks below
  (``FIDInceptionA/C/E_1/E_2``, the same code as pytorch-fid's ``inception.py``, Apache-2.0) and the
  weights ``pt_inception-2015-12-05-6726825d.pth`` (a local path, or the torch hub cache where pytorch-fid
  puts it; it is never downloaded here). FID uses its 2048-d pool3 features, the Inception score its
  1008-class logits.
* :func:`torchvision_inception`: torchvision's ImageNet Inception-v3 (``IMAGENET1K_V1``, 1000 classes), or
  the same architecture with weights from a state dict or file.
* :class:`InceptionPoolFeatures`: images in [-1, 1] -> pool features of either network (fc = Identity).

Both :mod:`~attngan.metrics.fid` and :mod:`~attngan.metrics.inception_score` build their networks here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..errors import UserError
from .features import resize_images

__all__ = [
    "FID_WEIGHTS_NAME",
    "FID_WEIGHTS_URL",
    "FIDInceptionA",
    "FIDInceptionC",
    "FIDInceptionE_1",
    "FIDInceptionE_2",
    "fid_weights_path",
    "fid_inception_v3",
    "torchvision_inception",
    "InceptionPoolFeatures",
]

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"


# ------------------------------------------------------------------------------- FID Inception network
# The TensorFlow graph differs from torchvision's Inception-v3 in its pooling: TF's average pool ignores
# the zero padding, and the last block uses max pooling (pytorch-fid: "likely an error" in that graph).


class FIDInceptionA(torchvision.models.inception.InceptionA):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(torchvision.models.inception.InceptionC):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_2(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_3(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_4(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class _FIDInceptionE(torchvision.models.inception.InceptionE):
    max_pool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        if self.max_pool:
            branch_pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionE_1(_FIDInceptionE):  # noqa: N801 - pytorch-fid's name
    max_pool = False


class FIDInceptionE_2(_FIDInceptionE):  # noqa: N801 - pytorch-fid's name
    max_pool = True


def fid_weights_path(weights: str | os.PathLike | None) -> Path:
    """The FID Inception weights file: ``weights``, or the torch hub cache's copy (None); missing: UserError."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"FID Inception weights {path} do not exist")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME
    if not path.is_file():
        raise UserError(
            f"the FID Inception weights are not in the torch hub cache ({path}). Download {FID_WEIGHTS_URL} "
            "to that path (pytorch-fid does so on first use), or pass the file's path as weights"
        )
    return path


def fid_inception_v3(
    weights: str | os.PathLike | dict[str, torch.Tensor] | None = None,  # file, state dict, None: hub cache
    with_fc: bool = False,  # keep the 1008-class fc (for the Inception score); False: fc = Identity
    load: bool = True,  # False: random weights (tests)
) -> nn.Module:
    """pytorch-fid's ``fid_inception_v3()``, with the weights read from a local file instead of a URL."""
    net = torchvision.models.inception_v3(
        weights=None, num_classes=1008, aux_logits=False, init_weights=False
    )
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    if load:
        if isinstance(weights, dict):
            state = weights
        else:
            from ..checkpoint import load_state_dict_file

            state = load_state_dict_file(fid_weights_path(weights))
        net.load_state_dict(state)
    net.transform_input = False
    if not with_fc:
        net.fc = nn.Identity()
    return net.eval()


class InceptionPoolFeatures(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> 2048-d pool features of an Inception-v3 whose fc is Identity."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_images(images, 299)  # (B, 3, 299, 299) bilinear, align_corners=False
        out = self.net(x)
        return out[0] if isinstance(out, tuple) else out  # (B, 2048)


def torchvision_inception(weights: Any, num_classes: int = 1000) -> nn.Module:
    """torchvision's Inception-v3 (no aux logits, eval mode) with ``weights``: None or ``"imagenet"`` (the
    ImageNet weights, torch hub cache), a state dict or a weights file; inputs in [-1, 1]."""
    from torchvision.models import Inception_V3_Weights, inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=num_classes)
    if weights is None or weights == "imagenet":
        state = Inception_V3_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    elif isinstance(weights, dict):
        state = weights
    else:
        from ..checkpoint import load_state_dict_file

        state = load_state_dict_file(weights)
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    net.load_state_dict(state)
    net.transform_input = False  # inputs are already in [-1, 1], the range the Google weights expect
    return net.eval()
