"""One model measured end to end: :func:`evaluate_model` finds what can be computed, tries the metric
networks, generates the images once and computes each requested metric on them (see :mod:`attngan.evaluation`)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.base import TextImageDataset
from ..errors import UserError
from ..metrics import attributes as attr_mod
from ..metrics import calc_metric
from ..metrics import clip_score as clip_mod
from ..metrics import fid as fid_mod
from ..metrics import grounding as grounding_mod
from ..metrics import inception_score as is_mod
from ..metrics import r_precision as rp_mod
from ..metrics.attributes import AttributeTrainConfig, load_or_train_attribute_classifier
from ..metrics.features import default_cache_dir
from ..metrics.r_precision import encode_for_r_precision
from ..pipeline import AttnGANPipeline
from .captions import EvalCaptions, draw_test_captions
from .images import ImageStore, check_image_space, generate_images
from .networks import ClipModel, probe_network, weights_problem
from .reference import attribute_targets, dataset_identity, real_attribute_reference, real_images

__all__ = ["METRICS", "ATTRIBUTE_CLASSIFIER_SIZE", "MAX_IMAGES", "PROTOCOL", "parse_metrics", "evaluate_model"]

log = logging.getLogger(__name__)

# Names of the evaluate command (in this order in results) -> names in the metric registry.
METRICS: dict[str, str] = {
    "r_precision": "r_precision",
    "is": "inception_score",
    "fid": "fid",
    "attributes": "attribute_accuracy",
    "attention_grounding": "attention_grounding",
    "clip": "clip_score",
}
_ALIASES = {v: k for k, v in METRICS.items()} | {"rp": "r_precision", "r-precision": "r_precision", "grounding": "attention_grounding"}
ATTRIBUTE_CLASSIFIER_SIZE = 32  # resolution of the cached attribute classifier used here
MAX_IMAGES = 10_000_000  # a sanity bound on n_images (the paper: 30,000)
PROTOCOL = (
    "AttnGAN paper Sec. 4: {n} images (last stage, {size} px, 8-bit) generated from test captions drawn at "
    "random (seed {seed}; test images in random order, a new permutation per pass, one random caption "
    "each, truncated to {words} words); image k uses noise seed {seed} + k{ca}"
)


def parse_metrics(spec: str | Sequence[str]) -> list[str]:
    """``"r_precision,is,fid"`` (or a list) -> canonical names of :data:`METRICS`, in that table's order."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = set()
    for item in (s.strip().lower() for s in items):
        if not item:
            continue
        name = item if item in METRICS else _ALIASES.get(item)
        if name is None:
            raise UserError(f"unknown metric {item!r}; choose from {', '.join(METRICS)}")
        names.add(name)
    if not names:
        raise UserError(f"no metric given; choose from {', '.join(METRICS)}")
    return [m for m in METRICS if m in names]


# ------------------------------------------------------------------------------------------- results


def _skipped(metric: str, reason: str, warn: bool = True) -> dict[str, Any]:
    """A result saying that ``metric`` was not computed and why."""
    protocols = {
        "r_precision": rp_mod.PROTOCOL.format(m=99, cls="", splits=10),
        "is": is_mod.PROTOCOL.format(splits=10),
        "fid": fid_mod.PROTOCOL,
        "attributes": attr_mod.PROTOCOL.format(
            version=attr_mod.CLASSIFIER_VERSION, size=ATTRIBUTE_CLASSIFIER_SIZE, heldout="unknown"
        ),
        "clip": clip_mod.PROTOCOL,
        "attention_grounding": grounding_mod.PROTOCOL.format(n_words=0, n=0),
    }
    if warn:
        log.warning("%s skipped: %s", metric, reason)
    return {
        "metric": METRICS[metric],
        "skipped": reason,
        "n": 0,
        "feature_extractor": None,
        "protocol": protocols[metric],
    }


def _failed(metric: str, exc: Exception) -> dict[str, Any]:
    """A result saying that computing ``metric`` failed (the other metrics are kept)."""
    res = _skipped(metric, f"failed: {exc}", warn=False)
    log.error("%s failed: %s", metric, exc)
    res["failed"] = True
    return res


def _is_weights(is_classifier: Any, fid_weights: str | os.PathLike | None) -> str | os.PathLike | None:
    """The weights file of the Inception-score classifier: ``--fid-weights`` for fid-inception, else none."""
    return fid_weights if is_classifier == "fid-inception" else None


# ------------------------------------------------------------------------------------------- metrics


@dataclass
class _Job:
    """What the metric computations of one evaluation read: the model, the test data, the drawn captions
    and the generated images, and the options of each metric (see :func:`evaluate_model`)."""

    pipeline: AttnGANPipeline
    dataset: TextImageDataset
    draws: EvalCaptions
    store: ImageStore
    encoded: Sequence[Any]  # the ids the text encoder sees per caption (unknown words dropped)
    maps: list | None  # (last attention stage's maps, words) per image, for attention grounding
    targets: list[dict[str, Any]] | str  # per image: the attributes its caption states
    batch_size: int
    seed: int
    device: torch.device
    cache: Path
    image_encoder: nn.Module | None
    r_precision_other_classes: bool
    n_mismatch: int
    splits: int
    is_classifier: Any
    fid_extractor: Any
    fid_weights: str | os.PathLike | None
    fid_extractor_id: str | None
    attribute_classifier: nn.Module | None
    clip: ClipModel | None

    @property
    def n_images(self) -> int:
        return len(self.draws.texts)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float32 in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def _rp_batches(store: ImageStore, encoded: Sequence[Any], batch_size: int) -> Iterator[tuple]:
    """(images (B, 3, S, S) in [-1, 1], captions (B, T), lengths (B,)) of the generated images in order."""
    for k, images in enumerate(store.batches(batch_size)):
        chunk = encoded[k * batch_size : k * batch_size + images.size(0)]
        lengths = torch.tensor([e.length for e in chunk], dtype=torch.long)  # (B,)
        captions = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)  # (B, T)
        for j, e in enumerate(chunk):
            captions[j, : e.length] = torch.tensor(e.ids, dtype=torch.long)
        yield _as_float(images), captions, lengths


def _r_precision(job: _Job) -> dict[str, Any]:
    job.image_encoder.to(job.device)
    image_vecs, text_vecs, _ = encode_for_r_precision(
        job.image_encoder, job.pipeline.text_encoder, _rp_batches(job.store, job.encoded, job.batch_size), job.device
    )
    indices = job.draws.indices
    return calc_metric(
        "r_precision",
        image_vecs=image_vecs,  # (N, D)
        text_vecs=text_vecs,  # (N, D)
        class_ids=torch.as_tensor(job.draws.class_ids),
        n_mismatch=min(job.n_mismatch, job.n_images - 1),
        splits=min(job.splits, job.n_images),
        seed=job.seed,
        exclude_same_class=job.r_precision_other_classes,
        # Another caption of the same test image is no mismatch (unless every sample has one).
        image_ids=torch.as_tensor(indices) if len(set(indices.tolist())) > 1 else None,
        encoder_name="the model's DAMSM",
    )


def _inception_score(job: _Job) -> dict[str, Any]:
    return calc_metric(
        "inception_score",
        images=job.store.batches(job.batch_size),
        classifier=job.is_classifier,
        weights=_is_weights(job.is_classifier, job.fid_weights),
        splits=min(job.splits, job.n_images),
        batch_size=job.batch_size,
        device=job.device,
    )


def _fid(job: _Job) -> dict[str, Any]:
    res = calc_metric(
        "fid",
        images=job.store.batches(job.batch_size),
        real_images=real_images(job.dataset, job.batch_size),
        extractor=job.fid_extractor,
        extractor_id=job.fid_extractor_id,
        weights=job.fid_weights,
        dataset_id=dataset_identity(job.dataset),
        cache_dir=job.cache / "fid",
        batch_size=job.batch_size,
        device=job.device,
    )
    if job.fid_extractor == "torchvision-imagenet":
        res["protocol"] = "NOT standard FID (torchvision ImageNet Inception features): " + res["protocol"]
    res["real"] = f"every test image once, center crop, {job.dataset.image_sizes[-1]} px"
    return res


def _attributes(job: _Job) -> dict[str, Any]:
    res = calc_metric(
        "attribute_accuracy",
        images=job.store.batches(job.batch_size),
        target_attributes=job.targets,
        classifier=job.attribute_classifier,
        device=job.device,
    )
    res["real_reference"] = real_attribute_reference(job.attribute_classifier, job.dataset, job.draws)
    return res


def _attention_grounding(job: _Job) -> dict[str, Any]:
    return calc_metric(
        "attention_grounding",
        attention=[m for m, _ in job.maps],
        tokens=[words for _, words in job.maps],
        scenes=[job.dataset.extra(i)["attributes"] for i in job.draws.indices.tolist()],
    )


def _clip(job: _Job) -> dict[str, Any]:
    images = job.store.batches(job.batch_size)
    return calc_metric(
        "clip_score", images=images, captions=job.draws.texts, batch_size=job.batch_size, device=job.device,
        **job.clip.metric_options(),
    )  # fmt: skip


_COMPUTE: dict[str, Callable[[_Job], dict[str, Any]]] = {
    "r_precision": _r_precision,
    "is": _inception_score,
    "fid": _fid,
    "attributes": _attributes,
    "attention_grounding": _attention_grounding,
    "clip": _clip,
}


# ------------------------------------------------------------------------------------------- evaluation


def _check_counts(n_images: int, batch_size: int) -> None:
    if n_images < 2:
        raise UserError(
            f"n_images must be >= 2 (R-precision and the Inception score need several), got {n_images}"
        )
    if n_images > MAX_IMAGES:
        raise UserError(f"n_images must be at most {MAX_IMAGES:,} (the paper: 30,000), got {n_images:,}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")


def _unavailable(
    names: list[str],
    pipeline: AttnGANPipeline,
    dataset: TextImageDataset,
    draws: EvalCaptions,
    image_encoder: nn.Module | None,
    is_classifier: Any,
    fid_extractor: Any,
    fid_weights: str | os.PathLike | None,
    allow_download: bool,
    clip: ClipModel | None,
) -> tuple[dict[str, str], list[dict[str, Any]] | str]:
    """(metric -> why it cannot be computed, the attribute targets of the draws); a DAMSM image encoder of
    another width than the text encoder, or a network file that does not exist, is an error."""
    skipped: dict[str, str] = {}
    if "r_precision" in names and image_encoder is None:
        skipped["r_precision"] = (
            "the model has no DAMSM image encoder (image_encoder/ in the model folder); pass the original "
            "release's image_encoder*.pth with --original-image-encoder"
        )
    if "r_precision" in names and image_encoder is not None:
        dims = (getattr(image_encoder, "config", None), pipeline.text_encoder.config)
        if dims[0] is not None and dims[0].embed_dim != dims[1].embed_dim:
            raise UserError(
                f"the DAMSM image encoder's width {dims[0].embed_dim} != the text encoder's "
                f"{dims[1].embed_dim}: R-precision needs the image encoder trained with this text encoder"
            )
    if "is" in names:
        problem = weights_problem(is_classifier, _is_weights(is_classifier, fid_weights), allow_download, "--is-classifier")
        if problem:
            skipped["is"] = problem
    if "fid" in names:
        problem = weights_problem(fid_extractor, fid_weights, allow_download, "--fid-extractor")
        if problem:
            skipped["fid"] = problem
    targets: list[dict[str, Any]] | str = []
    if "attributes" in names:
        targets = attribute_targets(dataset, draws)
        if isinstance(targets, str):
            skipped["attributes"] = targets
    if "attention_grounding" in names:
        if len(dataset) == 0 or "attributes" not in dataset.extra(0):
            skipped["attention_grounding"] = "attention grounding needs object regions: only the built-in shapes dataset has them"
        elif pipeline.generator.config.num_stages < 2:
            skipped["attention_grounding"] = "the generator has no attention stage (one stage)"
    if "clip" in names and clip is None:
        skipped["clip"] = (
            "no CLIP model given (pass --clip-model ARCH --clip-pretrained FILE with open_clip installed)"
        )
    return skipped, targets


def _probe_networks(
    wanted: list[str], is_classifier: Any, fid_extractor: Any, fid_weights: Any, size: int, device: torch.device
) -> None:
    """Load and try the Inception networks of the ``wanted`` metrics on two blank images."""
    if "is" in wanted and isinstance(is_classifier, (str, os.PathLike, nn.Module)):
        classifier, _ = is_mod.load_classifier(is_classifier, _is_weights(is_classifier, fid_weights), device)
        probe_network(classifier, size, device, f"--is-classifier {is_classifier}")
        del classifier
    if "fid" in wanted and isinstance(fid_extractor, str):
        extractor, _, _ = fid_mod.load_fid_extractor(fid_extractor, fid_weights, device)
        probe_network(extractor, size, device, f"--fid-extractor {fid_extractor}")
        del extractor


def evaluate_model(
    pipeline: AttnGANPipeline,  # the model to measure (moved to ``device``)
    dataset: TextImageDataset,  # the test split, eval mode, built with vocab=pipeline.vocab
    metrics: str | Sequence[str] = ("r_precision", "is", "fid"),  # names of METRICS (or "r_precision,is")
    n_images: int = 30_000,  # images generated (the paper: 30,000)
    batch_size: int = 50,  # images per forward pass (generation and metric networks); no effect on results
    seed: int = 0,  # draws the captions, the noise (image k: seed + k) and the mismatching captions
    device: str | torch.device = "cpu",
    *,
    image_encoder: nn.Module | None = None,  # DAMSM image encoder for R-precision (None: pipeline's)
    r_precision_other_classes: bool = False,  # mismatching captions of other classes only (DM-GAN on CUB)
    n_mismatch: int = 99,  # mismatching captions per image (at most N - 1)
    splits: int = 10,  # splits of R-precision and IS (at most N)
    is_classifier: Any = "torchvision-imagenet",  # "torchvision-imagenet" | "fid-inception" | file | module
    fid_extractor: Any = "fid-inception",  # "fid-inception" | "torchvision-imagenet" | images -> (B, D)
    fid_weights: str | os.PathLike | None = None,  # FID Inception weights (None: the torch hub cache)
    fid_extractor_id: str | None = None,  # name of a callable fid_extractor (keys its cached statistics)
    cache_dir: str | os.PathLike | None = None,  # FID statistics and attribute classifier (None: default)
    attribute_classifier: nn.Module | None = None,  # None: the cached 32-px classifier (trained if missing)
    clip: ClipModel | None = None,  # None: the CLIP score is skipped
    allow_download: bool = False,  # let torchvision download its ImageNet Inception weights
    ca_mean: bool = False,  # condition on the CA mean instead of sampling (the paper samples)
    progress: bool = True,  # tqdm bar while generating
) -> dict[str, Any]:
    """Generate ``n_images`` from test captions and compute ``metrics`` on them (see :mod:`attngan.evaluation`).

    Returns ``{"protocol", "n_images", "seed", "image_size", "dataset", "metrics": {name: result},
    "time_s"}``; each result names its ``protocol``, ``n`` and ``feature_extractor``, or has ``skipped``
    with the reason. Raises UserError when no requested metric can be computed.
    """
    t0 = time.perf_counter()
    names = parse_metrics(metrics)
    _check_counts(n_images, batch_size)
    device = torch.device(device)
    size = pipeline.generator.config.image_sizes[-1]  # of the generated images
    check_image_space(n_images, size)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    image_encoder = image_encoder if image_encoder is not None else pipeline.image_encoder
    draws = draw_test_captions(dataset, n_images, seed)

    # Find out first what cannot be computed, so that nothing is generated for nothing.
    skipped, targets = _unavailable(
        names, pipeline, dataset, draws, image_encoder, is_classifier, fid_extractor, fid_weights, allow_download, clip
    )
    if len(skipped) == len(names):
        raise UserError("nothing to evaluate: " + "; ".join(f"{m}: {skipped[m]}" for m in names))
    wanted = [name for name in names if name not in skipped]
    # Load and try the metric networks now: a wrong file must fail before an hour of generation.
    _probe_networks(wanted, is_classifier, fid_extractor, fid_weights, size, device)
    if "attributes" in wanted and attribute_classifier is None:
        attribute_classifier = load_or_train_attribute_classifier(
            cache / "attributes",
            ATTRIBUTE_CLASSIFIER_SIZE,
            AttributeTrainConfig(object_scale=getattr(dataset, "object_scale", 1.0)),
            device=device,
        )

    # Generate the images.
    pipeline.to(device)
    encoded = pipeline.encode_prompts(draws.texts)  # the ids the text encoder sees (unknown words dropped)
    if dataset.image_sizes[-1] != size:
        log.warning("real test images are %d px, generated ones %d px", dataset.image_sizes[-1], size)
    job = _Job(
        pipeline=pipeline, dataset=dataset, draws=draws, store=ImageStore(n_images, size), encoded=encoded,
        maps=[] if "attention_grounding" in wanted else None, targets=targets, batch_size=batch_size, seed=seed,
        device=device, cache=cache, image_encoder=image_encoder, r_precision_other_classes=r_precision_other_classes,
        n_mismatch=n_mismatch, splits=splits, is_classifier=is_classifier, fid_extractor=fid_extractor,
        fid_weights=fid_weights, fid_extractor_id=fid_extractor_id, attribute_classifier=attribute_classifier,
        clip=clip,
    )  # fmt: skip
    results: dict[str, Any] = {}
    try:
        generate_images(pipeline, draws, job.store, batch_size, ca_mean, progress, job.maps)

        # Compute the metrics.
        for name in names:
            if name in skipped:
                results[name] = _skipped(name, skipped[name])
                continue
            log.info("computing %s on %d images", name, n_images)
            try:
                results[name] = _COMPUTE[name](job)
            except (UserError, ValueError, RuntimeError, OSError) as exc:  # keep the metrics already computed
                results[name] = _failed(name, exc)
    finally:
        job.store.close()
    protocol = PROTOCOL.format(
        n=n_images,
        size=size,
        seed=seed,
        words=dataset.words_num,
        ca=" (CA mean, no CA noise)" if ca_mean else "",
    )
    return {
        "protocol": protocol,
        "n_images": n_images,
        "seed": seed,
        "image_size": size,
        "dataset": dataset_identity(dataset) | {"test_images": len(dataset)},
        "metrics": results,
        "time_s": round(time.perf_counter() - t0, 3),
    }
