"""Inception score (Salimans et al., "Improved Techniques for Training GANs", NeurIPS 2016).

IS = exp(E_x KL(p(y|x) || p(y))), computed in ``splits`` (default 10) consecutive parts of the samples;
the result is the mean and the *population* standard deviation (``np.std``) of the per-part scores,
exactly as ``openai/improved-gan:inception_score/model.py`` (``get_inception_score``) and
``hanzhanggit/StackGAN-inception-model`` (``inception_score.py``), the two tools the AttnGAN README
points to (reference/original-attngan.md 6.5). Part ``i`` holds samples ``[i*N//splits, (i+1)*N//splits)``
and p(y) is the mean of p(y|x) over the part, as there.

The classifier is injectable: any callable mapping images (B, 3, H, W) in [-1, 1] to class probabilities
(B, C). :func:`load_classifier` builds one from

* ``"torchvision-imagenet"``: torchvision's ImageNet Inception-v3 (``Inception_V3_Weights.IMAGENET1K_V1``,
  1000 classes; loaded from the torch hub cache, downloaded by torchvision only when asked for);
* ``"fid-inception"``: the 2015-12-05 TensorFlow graph that improved-gan used (1008 classes), as ported by
  pytorch-fid (weights ``pt_inception-2015-12-05-6726825d.pth``, a local path or the torch hub cache);
  its logits omit the softmax bias like improved-gan's ``tf.matmul(pool3, w)``;
* a user classifier: an ``nn.Module``, a ``torch.export`` program (``.pt2``) or a TorchScript file
  returning logits for 299 x 299 inputs in [-1, 1], or a state-dict file (``.pth``/``.safetensors``) of a
  torchvision Inception-v3 whose class count is read from ``fc``.
  The paper's CUB figures used an Inception fine-tuned on CUB (StackGAN-inception-model); scores from
  different classifiers are not comparable, which is why each result names its classifier.

Images are resized to 299 x 299 with bilinear interpolation (align_corners=False, as pytorch-fid's
InceptionV3); the TensorFlow graph's own ResizeBilinear differs slightly, so numbers can differ from the
TF tools in the second decimal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .features import ImageInput, as_image_batches, prepare_images, resize_images
from .inception import fid_inception_v3, torchvision_inception
from .registry import register_metric

__all__ = ["inception_score", "classifier_probabilities", "load_classifier", "inception_score_metric"]

logger = logging.getLogger(__name__)

PROTOCOL = (
    "Inception score, Salimans et al. 2016 as openai/improved-gan inception_score.py: "
    "exp(mean KL(p(y|x) || p(y))) over {splits} splits, mean and population std, "
    "images quantized to 8 bits and resized to 299 bilinear"
)


def inception_score(probs: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of exp(E KL(p(y|x) || p(y))) over ``splits`` parts of ``probs`` (N, C).

    Rows are class probabilities. Terms with p(y|x) = 0 contribute 0 (the limit of p log p), where the
    reference would produce NaN.
    """
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().to("cpu", torch.float64).numpy()
    p = np.asarray(probs, dtype=np.float64)  # (N, C)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, C), got shape {p.shape}")
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in 1..N={n}, got {splits}")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("each row must be a probability distribution (non-negative, summing to 1)")
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]  # (n_i, C)
        py = part.mean(axis=0, keepdims=True)  # (1, C) marginal p(y) of the part
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0)  # (n_i, C)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


@torch.no_grad()
def classifier_probabilities(
    classifier: Callable[[torch.Tensor], torch.Tensor],  # images (B, 3, H, W) in [-1, 1] -> probs (B, C)
    images: ImageInput,  # a (N, 3, H, W) tensor or an iterable of batches; uint8 or float in [-1, 1]
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    quantize: bool = True,  # round float images to 8-bit levels first
) -> np.ndarray:
    """Class probabilities (N, C) of ``classifier`` over ``images``."""
    out = []
    for batch in as_image_batches(images, batch_size):
        p = classifier(prepare_images(batch.to(device), quantize))
        if p.dim() != 2 or p.size(0) != batch.size(0):
            raise ValueError(f"the classifier must return (B, C) probabilities, got {tuple(p.shape)}")
        out.append(p.detach().to("cpu", torch.float64).numpy())
    if not out:
        raise UserError("no images to score")
    return np.concatenate(out)


class _SoftmaxClassifier(nn.Module):
    """Resize to 299, run ``net`` (logits), softmax.

    ``unbiased_fc``: logits = pool3 @ fc.weight.T without the bias, as improved-gan's
    ``tf.matmul(tf.squeeze(pool3), w)``; ``net.fc`` is taken over (``net`` must be owned by the caller).
    """

    def __init__(self, net: nn.Module, unbiased_fc: bool = False) -> None:
        super().__init__()
        self.fc_weight = None
        if unbiased_fc:
            self.fc_weight = nn.Parameter(net.fc.weight.detach().clone(), requires_grad=False)  # (C, 2048)
            net.fc = nn.Identity()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_images(images, 299)  # (B, 3, 299, 299) in [-1, 1]
        logits = self.net(x)  # (B, C), or (B, 2048) pool3 features when unbiased_fc
        if isinstance(logits, tuple):  # torchvision InceptionOutputs in train mode
            logits = logits[0]
        if self.fc_weight is not None:
            logits = logits @ self.fc_weight.T  # (B, C)
        return F.softmax(logits.float(), dim=1)


def load_classifier(
    classifier: str | os.PathLike | nn.Module = "torchvision-imagenet",
    weights: str | os.PathLike | None = None,  # weights of a named classifier (None: torch hub cache)
    device: str | torch.device = "cpu",
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """Build ``(classifier(images in [-1, 1]) -> probabilities, description)``; see the module docstring."""
    if isinstance(classifier, nn.Module):
        return _SoftmaxClassifier(classifier).to(device).eval(), f"user module {type(classifier).__name__}"
    name = os.fspath(classifier)
    if name == "torchvision-imagenet":
        net = torchvision_inception(weights)
        desc = "torchvision Inception-v3 IMAGENET1K_V1 (1000 classes)"
        desc = desc if weights is None else f"{desc} from {weights}"
        return _SoftmaxClassifier(net).to(device).eval(), desc
    if name == "fid-inception":
        net = fid_inception_v3(weights, with_fc=True)
        desc = "FID Inception (TF inception-2015-12-05, 1008 classes, unbiased logits as improved-gan)"
        return _SoftmaxClassifier(net, unbiased_fc=True).to(device).eval(), desc
    path = Path(name)
    if not path.is_file():
        raise UserError(
            f"classifier {name!r} is neither 'torchvision-imagenet', 'fid-inception' nor an existing file"
        )
    if path.suffix == ".pt2":  # torch.export.save of an ExportedProgram
        if not hasattr(torch.export, "load") or not hasattr(torch.export.ExportedProgram, "module"):
            raise UserError(f"reading the exported program {path.name} needs torch >= 2.2 (this is {torch.__version__})")
        net = torch.export.load(str(path)).module()
        return _SoftmaxClassifier(net).to(device), f"exported classifier {path.name}"
    if _is_torchscript(path):
        net = torch.jit.load(str(path), map_location="cpu")
        return _SoftmaxClassifier(net).to(device).eval(), f"TorchScript classifier {path.name}"
    from ..checkpoint import load_state_dict_file

    state = load_state_dict_file(path)
    if "fc.weight" not in state:
        raise UserError(
            f"{path} is not a torchvision Inception-v3 state dict (no 'fc.weight'); pass a TorchScript file "
            "or an nn.Module instead"
        )
    net = torchvision_inception(state, num_classes=int(state["fc.weight"].shape[0]))
    return _SoftmaxClassifier(net).to(device).eval(), f"Inception-v3 state dict {path.name}"


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())  # torch.jit.save writes code/, torch.save does not


@register_metric("inception_score")
def inception_score_metric(
    *,
    images: ImageInput,  # generated images: (N, 3, H, W) tensor or iterable of batches, uint8 or [-1, 1]
    classifier: Any = "torchvision-imagenet",  # name, file, nn.Module, or a callable images -> probs
    weights: str | os.PathLike | None = None,  # weights for a named classifier (None: torch hub cache)
    splits: int = 10,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    quantize: bool = True,
) -> dict[str, Any]:
    """Inception score of ``images``: ``{"is_mean", "is_std", "n", "splits", "protocol", ...}``."""
    if callable(classifier) and not isinstance(classifier, nn.Module):
        fn, desc = classifier, getattr(classifier, "__name__", type(classifier).__name__)
    else:
        fn, desc = load_classifier(classifier, weights, device)
    probs = classifier_probabilities(fn, images, batch_size, device, quantize)
    mean, std = inception_score(probs, splits)
    return {
        "is_mean": mean,
        "is_std": std,
        "n": int(probs.shape[0]),
        "splits": splits,
        "num_classes": int(probs.shape[1]),
        "feature_extractor": desc,
        "protocol": PROTOCOL.format(splits=splits),
    }
