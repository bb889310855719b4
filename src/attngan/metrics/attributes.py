"""Attribute accuracy on the built-in procedural ``shapes`` dataset (:mod:`attngan.data.synthetic`).

Not in the AttnGAN paper, whose datasets have no ground truth of what an image shows; the built-in
dataset has, so a generator can be checked directly: does the image of "a small red circle at the top
left" show a small red circle at the top left? A small CNN with one head per attribute (colour, shape,
size, grid position of the single object) is trained on real procedural images rendered on the fly from
a fixed seed, and measured on held-out rendered images. It is trained once per image size and setting,
then cached (``model.safetensors``-style weights + a JSON description, written atomically). The same
idea as the "semantic object accuracy" of Hinz et al. (TPAMI 2020), with an exact synthetic oracle.

:func:`attribute_accuracy` classifies generated images (any resolution: they are resized to the
classifier's size) and compares with the target attributes, e.g. the scene's ground truth or the
attributes parsed from the caption by :func:`attngan.data.synthetic.attributes_from_caption`
(attributes the caption does not state are not counted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import atomic_write_bytes, atomic_write_json
from ..data.synthetic import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    attributes_from_caption,
    render_scene,
    sample_scene,
)
from ..errors import UserError
from .features import ImageInput, as_image_batches, default_cache_dir, prepare_images
from .registry import register_metric

__all__ = [
    "ATTRIBUTES",
    "CLASSIFIER_VERSION",
    "AttributeClassifier",
    "AttributeTrainConfig",
    "render_attribute_batch",
    "train_attribute_classifier",
    "evaluate_attribute_classifier",
    "load_or_train_attribute_classifier",
    "attribute_accuracy",
    "attribute_accuracy_metric",
]

logger = logging.getLogger(__name__)

CLASSIFIER_VERSION = "1"  # bump when the architecture, the rendering or the training changes
# Attribute -> its class names, in head order.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": tuple(SHAPES),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
}
PROTOCOL = (
    "attribute accuracy on the built-in shapes dataset: CNN classifier (v{version}, {size}px) trained on "
    "rendered single-object scenes, held-out accuracy {heldout}; per attribute, fraction of images whose "
    "predicted colour/shape/size/grid position equals the target (unstated attributes not counted)"
)
_TRAIN_STREAM, _HELDOUT_STREAM = 0, 1  # random streams of the training and the held-out images


class AttributeClassifier(nn.Module):
    """Strided CNN down to a 4 x 4 grid, a flattening FC layer (keeps where the object is) and one
    linear head per attribute. Input: images (B, 3, H, W) in [-1, 1], resized to ``image_size``."""

    def __init__(self, image_size: int = 64, width: int = 16) -> None:
        super().__init__()
        blocks = int(math.log2(image_size // 4)) if image_size >= 8 else 0
        if image_size < 8 or 4 * 2**blocks != image_size:
            raise ValueError(f"image_size must be 4 * 2**k >= 8, got {image_size}")
        self.image_size = image_size
        self.width = width
        self.heldout_accuracy: dict[str, float] | None = None  # set when trained or loaded from the cache
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        ch = width
        for _ in range(blocks):  # each block halves the resolution: image_size -> 4
            out = min(2 * ch, 128)
            layers += [nn.Conv2d(ch, out, 3, 2, 1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            ch = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(ch * 16, 128), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict(
            {name: nn.Linear(128, len(classes)) for name, classes in ATTRIBUTES.items()}
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        s = self.image_size
        if tuple(images.shape[-2:]) != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        h = self.fc(self.features(images))  # (B, 128)
        return {name: head(h) for name, head in self.heads.items()}  # name -> (B, classes)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class index per attribute, (B,) long each."""
        return {name: logits.argmax(dim=1) for name, logits in self(images).items()}


@dataclasses.dataclass(frozen=True)
class AttributeTrainConfig:
    """How the classifier is trained (part of its cache key)."""

    width: int = 16  # channels of the first conv (doubling per block, at most 128)
    steps: int = 600  # optimiser steps; every step sees fresh rendered images
    batch_size: int = 64
    lr: float = 3e-3  # peak of the one-cycle schedule (Adam)
    seed: int = 0  # scenes, rendering and initialisation
    heldout: int = 1000  # held-out images for the stored accuracy
    object_scale: float = 1.0  # the shapes' size factor of the data measured (DataConfig.object_scale)


def render_attribute_batch(
    image_size: int, indices: Sequence[int], seed: int, stream: int = _TRAIN_STREAM, object_scale: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Render single-object scenes ``indices`` of a stream: images (B, 3, S, S) in [-1, 1] and labels."""
    images, labels = [], {name: [] for name in ATTRIBUTES}
    for i in indices:
        rng = np.random.default_rng([seed, stream, int(i)])
        obj = sample_scene(rng, 1, object_scale)[0]
        images.append(render_scene([obj], image_size, rng))
        for name, classes in ATTRIBUTES.items():
            labels[name].append(classes.index(obj[name]))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x, {name: torch.tensor(v) for name, v in labels.items()}


@torch.no_grad()
def evaluate_attribute_classifier(
    classifier: AttributeClassifier, n: int = 1000, seed: int = 0, batch_size: int = 250, object_scale: float = 1.0
) -> dict[str, float]:
    """Accuracy per attribute on ``n`` held-out rendered images (a stream the training never sees)."""
    mode = classifier.training
    classifier.eval()
    correct = dict.fromkeys(ATTRIBUTES, 0)
    for start in range(0, n, batch_size):
        x, y = render_attribute_batch(
            classifier.image_size, range(start, min(n, start + batch_size)), seed, _HELDOUT_STREAM, object_scale
        )
        pred = classifier.predict(x.to(next(classifier.parameters()).device))
        for name in ATTRIBUTES:
            correct[name] += int((pred[name].cpu() == y[name]).sum())
    classifier.train(mode)
    return {name: correct[name] / n for name in ATTRIBUTES}


def train_attribute_classifier(
    image_size: int = 64,
    config: AttributeTrainConfig = AttributeTrainConfig(),
    device: str | torch.device = "cpu",
) -> tuple[AttributeClassifier, dict[str, float]]:
    """Train the classifier on fresh rendered images; returns it (eval mode) and its held-out accuracy."""
    torch.manual_seed(config.seed)  # initialisation
    model = AttributeClassifier(image_size, config.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps)
    model.train()
    for step in range(config.steps):
        first = step * config.batch_size
        x, y = render_attribute_batch(
            image_size, range(first, first + config.batch_size), config.seed, object_scale=config.object_scale
        )
        logits = model(x.to(device))
        loss = sum(F.cross_entropy(logits[name], y[name].to(device)) for name in ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == config.steps - 1:
            logger.info(
                "attribute classifier %dpx: step %d/%d loss %.4f", image_size, step, config.steps, loss.item()
            )
    model.eval()
    acc = evaluate_attribute_classifier(model, config.heldout, config.seed, object_scale=config.object_scale)
    logger.info("attribute classifier %dpx held-out accuracy %s", image_size, acc)
    if min(acc.values()) < 0.95:
        logger.warning("attribute classifier reaches only %s on held-out images; train longer", acc)
    return model, acc


def _cache_stem(image_size: int, config: AttributeTrainConfig) -> str:
    fields = dataclasses.asdict(config)
    if fields["object_scale"] == 1.0:
        del fields["object_scale"]  # the key of the classifiers cached before the setting existed
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return f"attribute-classifier-{image_size}px-v{CLASSIFIER_VERSION}-{digest}"


def load_or_train_attribute_classifier(
    cache_dir: str | os.PathLike | None = None,  # None: default_cache_dir()/attributes
    image_size: int = 64,
    config: AttributeTrainConfig = AttributeTrainConfig(),
    device: str | torch.device = "cpu",
) -> AttributeClassifier:
    """The cached classifier for ``image_size`` and ``config``, trained and cached on the first call.

    Files: ``<stem>.safetensors`` (weights) and ``<stem>.json`` (version, size, settings, held-out
    accuracy); the stem carries the size, :data:`CLASSIFIER_VERSION` and a hash of ``config``.
    """
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "attributes"
    stem = _cache_stem(image_size, config)
    weights, meta_path = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    if weights.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            model = AttributeClassifier(meta["image_size"], meta["config"]["width"])
            model.load_state_dict(st_load(weights.read_bytes()))
            model.heldout_accuracy = meta["heldout_accuracy"]
            logger.info("attribute classifier from cache %s", weights)
            return model.to(device).eval()
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            logger.warning("ignoring unreadable cached attribute classifier %s: %s", weights, exc)
    logger.info("training the attribute classifier (%d px, once; cached in %s)", image_size, folder)
    model, acc = train_attribute_classifier(image_size, config, device)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights, st_save(state))
    atomic_write_json(
        meta_path,
        {
            "version": CLASSIFIER_VERSION,
            "image_size": image_size,
            "config": dataclasses.asdict(config),
            "heldout_accuracy": acc,
            "attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
        },
    )
    model.heldout_accuracy = acc
    return model


def _target(entry: Any) -> Mapping[str, Any]:
    """One image's target: a dict, or a one-object list of dicts (a scene's ground truth)."""
    if isinstance(entry, Mapping):
        return entry
    if isinstance(entry, (list, tuple)) and len(entry) == 1 and isinstance(entry[0], Mapping):
        return entry[0]
    if isinstance(entry, (list, tuple)) and len(entry) > 1:
        raise UserError(
            f"a target names {len(entry)} objects; attribute accuracy is defined for single-object scenes "
            "(shapes dataset with max_objects=1)"
        )
    raise UserError(
        f"each target must be a dict of attributes or a one-object list, got {type(entry).__name__}"
    )


@torch.no_grad()
def attribute_accuracy(
    classifier: AttributeClassifier,
    images: ImageInput,  # (N, 3, H, W) in [-1, 1] (or uint8), or an iterable of batches
    target_attributes: Sequence[Any],  # per image: {"color", "shape", "size", "position"} (None: unstated)
    batch_size: int = 256,
    quantize: bool = True,  # round float images to 8-bit levels first, as when saved as PNG
) -> dict[str, Any]:
    """``{"color_acc", "shape_acc", "size_acc", "position_acc", "all_acc", "n", "n_per_attribute",
    "chance"}``: per attribute, the fraction of images (that state it) classified as the target.
    ``all_acc``: fraction of images with every stated attribute right."""
    targets = [_target(t) for t in target_attributes]
    mode = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    preds: dict[str, list[torch.Tensor]] = {name: [] for name in ATTRIBUTES}
    n_images = 0
    for batch in as_image_batches(images, batch_size):
        for name, p in classifier.predict(prepare_images(batch.to(device), quantize)).items():
            preds[name].append(p.cpu())
        n_images += batch.size(0)
    classifier.train(mode)
    if n_images != len(targets):
        raise UserError(f"{n_images} images but {len(targets)} targets; give one target per image")
    if n_images == 0:
        raise UserError("no images to classify")
    right = torch.ones(n_images, dtype=torch.bool)
    result: dict[str, Any] = {"n": n_images, "n_per_attribute": {}, "chance": {}}
    for name, classes in ATTRIBUTES.items():
        pred = torch.cat(preds[name])  # (N,)
        stated = [(i, t[name]) for i, t in enumerate(targets) if t.get(name) is not None]
        unknown = sorted({v for _, v in stated if v not in classes})
        if unknown:
            raise UserError(f"unknown {name} value(s) {unknown}; known: {', '.join(classes)}")
        idx = torch.tensor([i for i, _ in stated], dtype=torch.long)
        want = torch.tensor([classes.index(v) for _, v in stated], dtype=torch.long)
        ok = pred[idx] == want
        right[idx] &= ok
        result[f"{name}_acc"] = float(ok.double().mean()) if len(stated) else None
        result["n_per_attribute"][name] = len(stated)
        result["chance"][name] = 1.0 / len(classes)
    result["all_acc"] = float(right.double().mean())
    return result


@register_metric("attribute_accuracy")
def attribute_accuracy_metric(
    *,
    images: ImageInput,  # generated images (N, 3, H, W) in [-1, 1], or an iterable of batches
    target_attributes: Sequence[Any] | None = None,  # per image: ground-truth scene or attribute dict
    captions: Sequence[str] | None = None,  # or the captions, parsed by attributes_from_caption
    classifier: AttributeClassifier | None = None,  # None: load_or_train_attribute_classifier(...)
    cache_dir: str | os.PathLike | None = None,
    image_size: int = 64,  # classifier resolution when it is loaded or trained here
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Attribute accuracy of generated shapes images against their targets (see :func:`attribute_accuracy`)."""
    if target_attributes is None:
        if captions is None:
            raise UserError("attribute accuracy needs target_attributes or captions")
        target_attributes = [attributes_from_caption(c) for c in captions]
    if classifier is None:
        classifier = load_or_train_attribute_classifier(cache_dir, image_size, device=device)
    result = attribute_accuracy(classifier, images, target_attributes)
    heldout = getattr(classifier, "heldout_accuracy", None)
    result["classifier_heldout_accuracy"] = heldout
    result["feature_extractor"] = f"AttributeClassifier v{CLASSIFIER_VERSION} {classifier.image_size}px"
    result["protocol"] = PROTOCOL.format(
        version=CLASSIFIER_VERSION,
        size=classifier.image_size,
        heldout="unknown" if heldout is None else ", ".join(f"{k} {v:.3f}" for k, v in heldout.items()),
    )
    return result
