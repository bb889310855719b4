"""Measure a trained model the way the paper did (Xu et al., "AttnGAN", CVPR 2018, Sec. 4 "Evaluation").

``evaluate_model`` generates ``n_images`` images (the last stage, as the paper's 30,000) from randomly
drawn test captions (seeded), then computes the requested metrics of :mod:`attngan.metrics` on them:

* ``r_precision``: DAMSM global image vector of each generated image vs the sentence vectors of its
  caption and 99 random mismatching ones, R = 1, 10 splits (paper Sec. 4);
* ``is``: Inception score, 10 splits (ImageNet Inception-v3 by default; the paper's CUB numbers used a
  CUB-fine-tuned Inception, pass it as ``is_classifier``);
* ``fid``: FID against the real test images (standard FID Inception weights; real statistics cached);
* ``attributes``: colour / shape / size / position accuracy on the built-in shapes dataset;
* ``attention_grounding``: share of the colour and shape words' attention inside their objects, on the
  built-in shapes dataset (:mod:`attngan.metrics.grounding`);
* ``clip``: CLIP score with a user-supplied CLIP model (skipped otherwise).

Captions are drawn like the original evaluation loop, which went over the shuffled test set as often as
needed: the test images in a seeded random order (a new permutation per pass), one random caption of each
(truncated to the dataset's ``words_num``; ``attngan evaluate`` sets it to the original's evaluation length,
:data:`EVAL_WORDS_NUM`, for birds and coco). Image k uses noise seed ``seed + k``, so the images do not
depend on the batch size. Every figure names its protocol and sample count; a metric whose weights are
missing is reported as skipped with a message saying how to provide them.

Layer 4 (like ``training``): composes the pipeline, the data and the metrics; nothing imports it but the
CLI (``attngan evaluate``); the demo (training layer) computes its own small table.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from .data.base import TextImageDataset, make_loader
from .data.cache import source_fingerprint
from .data.synthetic import SHAPES, attributes_from_caption
from .errors import UserError
from .metrics import attributes as attr_mod
from .metrics import calc_metric
from .metrics import clip_score as clip_mod
from .metrics import fid as fid_mod
from .metrics import grounding as grounding_mod
from .metrics import inception_score as is_mod
from .metrics import r_precision as rp_mod
from .metrics.attributes import ATTRIBUTES, load_or_train_attribute_classifier
from .metrics.features import default_cache_dir
from .metrics.inception import FID_WEIGHTS_NAME, FID_WEIGHTS_URL
from .metrics.r_precision import encode_for_r_precision
from .pipeline import AttnGANPipeline
from .text import truncate_ids

__all__ = [
    "METRICS",
    "EVAL_WORDS_NUM",
    "parse_metrics",
    "EvalCaptions",
    "draw_test_captions",
    "ClipModel",
    "weights_problem",
    "evaluate_model",
    "format_table",
]

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
# Longest test caption of the original's evaluation (cfg/eval_bird.yml, cfg/eval_coco.yml: TEXT.WORDS_NUM);
# training cut captions to 18 (birds) and 12 (coco) words.
EVAL_WORDS_NUM: dict[str, int] = {"birds": 25, "coco": 20}
_ALIASES = {v: k for k, v in METRICS.items()} | {"rp": "r_precision", "r-precision": "r_precision", "grounding": "attention_grounding"}
ATTRIBUTE_CLASSIFIER_SIZE = 32  # resolution of the cached attribute classifier used here
_IN_MEMORY_LIMIT = 2 * 1024**3  # bytes of uint8 images kept in RAM; more go to a temporary memmap file
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


# ------------------------------------------------------------------------------------------- captions


@dataclass(frozen=True)
class EvalCaptions:
    """The test captions of an evaluation, one per generated image."""

    indices: np.ndarray  # (N,) index of the test image each caption belongs to
    caption_ids: list[list[int]]  # word ids (the dataset's vocabulary), truncated to words_num
    texts: list[str]  # the same words as text (what the pipeline is given)
    class_ids: np.ndarray  # (N,) class of the test image (for mismatching captions of other classes)
    seeds: list[int]  # noise seed of each image


def draw_test_captions(dataset: TextImageDataset, n: int, seed: int = 0) -> EvalCaptions:
    """``n`` captions of ``dataset`` (see the module docstring); a function of ``(dataset, n, seed)`` only."""
    if n < 1:
        raise UserError(f"the number of images must be >= 1, got {n}")
    if len(dataset) == 0:
        raise UserError("the test set is empty; check --dataset / --data-dir")
    rng = np.random.default_rng([seed, 0xE7A1])
    passes = -(-n // len(dataset))
    if passes > 1:
        log.info("%d images from %d test images: each image is drawn up to %d times", n, len(dataset), passes)
    indices = np.concatenate([rng.permutation(len(dataset)) for _ in range(passes)])[:n]  # (N,)
    caption_ids, texts = [], []
    itos = dataset.vocab.itos
    for index in indices.tolist():
        k = int(rng.integers(dataset.num_captions(index)))
        ids = truncate_ids(dataset.caption_ids(index, k), dataset.words_num, dataset.truncate, rng)
        caption_ids.append(ids)
        texts.append(" ".join(itos[i] for i in ids))
    return EvalCaptions(
        indices=indices,
        caption_ids=caption_ids,
        texts=texts,
        class_ids=np.asarray(dataset.class_ids)[indices],
        seeds=[seed + k for k in range(n)],
    )


# ------------------------------------------------------------------------------------------- images


class _ImageStore:
    """Generated images as uint8 (N, 3, S, S): in memory, or in a temporary memory-mapped file when large
    (30,000 images of 256 px are 5.9 GB)."""

    def __init__(self, n: int, size: int) -> None:
        shape = (n, 3, size, size)
        self._tmp: tempfile.TemporaryDirectory | None = None
        if n * 3 * size * size > _IN_MEMORY_LIMIT:  # the space was checked up front (check_image_space)
            self._tmp = tempfile.TemporaryDirectory(prefix="attngan-eval-")
            path = Path(self._tmp.name) / "images.npy"
            log.info("keeping the generated images in the temporary file %s", path)
            self.array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        else:
            self.array = np.empty(shape, dtype=np.uint8)

    def __len__(self) -> int:
        return self.array.shape[0]

    def write(self, start: int, images: torch.Tensor) -> None:
        """images (B, 3, S, S) float in [-1, 1], rounded to 8 bits as when saved as PNG."""
        x = torch.round((images.detach().float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)  # (B, 3, S, S)
        self.array[start : start + x.size(0)] = x.cpu().numpy()

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """(B, 3, S, S) uint8 batches in order."""
        for start in range(0, len(self), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(self.array[start : start + batch_size]))

    def close(self) -> None:
        self.array = np.empty((0, 3, 1, 1), dtype=np.uint8)  # drops the memmap before its file is removed
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def check_image_space(n: int, size: int) -> None:
    """Refuse before generating when ``n`` images of ``size`` px do not fit where they will be kept."""
    need = n * 3 * size * size
    if need <= _IN_MEMORY_LIMIT:
        return
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if need > free:
        raise UserError(
            f"{n} generated images of {size} px need {need / 1e9:.1f} GB in the temporary folder {folder}, which "
            f"has {free / 1e9:.1f} GB free: free space there, point TMPDIR to a larger disk, or lower --n-images"
        )


def _probe(network: Callable[[torch.Tensor], torch.Tensor], size: int, device: torch.device, option: str) -> None:
    """Run a metric network on two blank images now, so that a wrong file fails before any generation."""
    try:
        with torch.no_grad():
            out = network(torch.zeros(2, 3, size, size, device=device))
    except Exception as exc:  # noqa: BLE001 - any failure of a user network is reported as its mistake
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(
            f"{option} failed on two test images of {size} px ({type(exc).__name__}: {first}); it must take "
            "(B, 3, H, W) images in [-1, 1]"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.size(0) != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{option} returns {got} for two images; it must return (B, C) scores or features")


def _failed(metric: str, exc: Exception) -> dict[str, Any]:
    """A result saying that computing ``metric`` failed (the other metrics are kept)."""
    res = _skipped(metric, f"failed: {exc}", warn=False)
    log.error("%s failed: %s", metric, exc)
    res["failed"] = True
    return res


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float32 in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


@torch.no_grad()
def _generate(
    pipeline: AttnGANPipeline,
    draws: EvalCaptions,
    store: _ImageStore,
    batch_size: int,
    ca_mean: bool,
    progress: bool,
    maps: list | None = None,
) -> None:
    """Last-stage images of the drawn captions into ``store``, ``batch_size`` at a time; with ``maps``, the
    last attention stage's maps and the words of each image are appended to it."""
    starts: Any = range(0, len(draws.texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="generating", unit="batch")
    for start in starts:
        stop = start + batch_size
        out = pipeline(
            draws.texts[start:stop],
            seed=draws.seeds[start:stop],
            batch_size=batch_size,
            ca_mean=ca_mean,
            return_attention=maps is not None,
        )
        store.write(start, torch.stack([stages[-1] for stages in out.stage_tensors]))  # (B, 3, S, S)
        if maps is not None:
            maps += [(per_stage[-1], words) for per_stage, words in zip(out.attention_maps, out.tokens)]


# ------------------------------------------------------------------------------------------- weights


def _hub_file(url_or_name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url_or_name).path).name


def weights_problem(
    network: Any,  # "torchvision-imagenet" | "fid-inception" | a file path | an nn.Module / callable
    weights: str | os.PathLike | None = None,  # weights file of a named network (None: the hub cache)
    allow_download: bool = False,  # torchvision may download its ImageNet weights into the hub cache
    option: str = "--is-classifier",  # the option that names another network (for the message)
) -> str | None:
    """Why the weights of a metric's network cannot be loaded (a message saying how to provide them), or
    None when they can. A missing file named explicitly is an error, not a skip."""
    if not isinstance(network, (str, os.PathLike)):
        return None  # a network object given by the caller
    name = os.fspath(network)
    if name not in ("torchvision-imagenet", "fid-inception"):
        if not Path(name).is_file():
            raise UserError(f"{option} {name} does not exist")
        return None
    if weights is not None:
        if not Path(weights).is_file():
            raise UserError(f"weights file {weights} does not exist")
        return None
    if name == "fid-inception":
        path = _hub_file(FID_WEIGHTS_NAME)
        if path.is_file():
            return None
        return (
            f"the FID Inception weights are not in the torch hub cache ({path}); download {FID_WEIGHTS_URL} "
            "to that path (pytorch-fid does so on first use) or pass the file with --fid-weights PATH"
        )
    from torchvision.models import Inception_V3_Weights

    url = Inception_V3_Weights.IMAGENET1K_V1.url
    path = _hub_file(url)
    if path.is_file() or allow_download:
        return None
    return (
        f"the ImageNet Inception-v3 weights are not in the torch hub cache ({path}); download {url} to that "
        f"path, or pass --allow-download, or give another network with {option} PATH"
    )


# ------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class ClipModel:
    """A user CLIP model (e.g. from open_clip): ``encode_image``, ``encode_text``, tokenizer, preprocess."""

    model: Any
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable[[Any], torch.Tensor]
    name: str = "user CLIP model"


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


def _rp_batches(store: _ImageStore, encoded: Sequence[Any], batch_size: int) -> Iterator[tuple]:
    """(images (B, 3, S, S) in [-1, 1], captions (B, T), lengths (B,)) of the generated images in order."""
    for k, images in enumerate(store.batches(batch_size)):
        chunk = encoded[k * batch_size : k * batch_size + images.size(0)]
        lengths = torch.tensor([e.length for e in chunk], dtype=torch.long)  # (B,)
        captions = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)  # (B, T)
        for j, e in enumerate(chunk):
            captions[j, : e.length] = torch.tensor(e.ids, dtype=torch.long)
        yield _as_float(images), captions, lengths


def _dataset_identity(dataset: TextImageDataset) -> dict[str, Any]:
    """What determines the real test images (the key of the cached FID statistics)."""
    h = hashlib.sha256()
    for index, key in enumerate(dataset.keys):
        h.update(key.encode("utf-8") + b"\0")
        h.update(np.asarray(dataset.caption_ids(index, 0), dtype=np.int64).tobytes())
    root = getattr(dataset, "root", "")
    paths = getattr(dataset, "image_paths", None)
    extra = dataset.cache_extra() if hasattr(dataset, "cache_extra") else ""
    return {
        "type": type(dataset).__name__,
        "root": os.path.abspath(root) if root else "",
        # Every image file's path, size and modification time (and e.g. the crop boxes): replaced or edited
        # images, or another folder with the same names, make a new entry.
        "files": source_fingerprint(paths, extra)[:32] if paths is not None else None,
        "data_seed": getattr(dataset, "data_seed", None),
        "n": len(dataset),
        "image_size": dataset.image_sizes[-1],
        "train_transform": bool(dataset.train),
        "content": h.hexdigest()[:32],
    }


def _real_images(dataset: TextImageDataset, batch_size: int) -> Iterator[torch.Tensor]:
    """Every test image once, at the dataset's largest scale, (B, 3, S, S) in [-1, 1]."""
    for batch in make_loader(dataset, batch_size, shuffle=False, drop_last=False):
        yield batch.images[-1]


def _attribute_targets(dataset: TextImageDataset, draws: EvalCaptions) -> list[dict[str, Any]] | str:
    """Per image: the ground truth of its test image, restricted to what its caption states; or the
    reason why attribute accuracy does not apply."""
    if len(dataset) == 0 or "attributes" not in dataset.extra(0):
        return "attribute accuracy needs ground-truth attributes: only the built-in shapes dataset has them"
    targets = []
    for index, text in zip(draws.indices.tolist(), draws.texts):
        objects = dataset.extra(index)["attributes"]
        if len(objects) != 1:
            return "attribute accuracy is defined for single-object scenes (shapes with max_objects=1)"
        truth = objects[0]
        # A caption cut by words_num may end before its shape word; appending the true shape lets the parser
        # still read the colour, size and position it states. The shape counts only if the caption names one.
        parsed = attributes_from_caption(f"{text} {truth['shape']}")
        said = dict(parsed[0]) if len(parsed) == 1 else {}
        said["shape"] = truth["shape"] if set(text.split()) & set(SHAPES) else None
        targets.append({name: truth[name] if said.get(name) is not None else None for name in ATTRIBUTES})
    return targets


def _real_attribute_reference(
    classifier: nn.Module, dataset: TextImageDataset, draws: EvalCaptions, limit: int = 2000
) -> dict[str, Any]:
    """Accuracy of the classifier on the real test images behind the first ``limit`` distinct draws (full
    ground truth): what a perfect generator would reach under this classifier."""
    from .metrics.attributes import attribute_accuracy

    unique = list(dict.fromkeys(draws.indices.tolist()))[:limit]
    images = torch.stack([dataset[i]["images"][-1] for i in unique])  # (M, 3, S, S) in [-1, 1]
    targets = [dataset.extra(i)["attributes"][0] for i in unique]
    res = attribute_accuracy(classifier, images, targets)
    return {k: res[k] for k in ("all_acc", *(f"{a}_acc" for a in ATTRIBUTES), "n")}


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
    """Generate ``n_images`` from test captions and compute ``metrics`` on them (see the module docstring).

    Returns ``{"protocol", "n_images", "seed", "image_size", "dataset", "metrics": {name: result},
    "time_s"}``; each result names its ``protocol``, ``n`` and ``feature_extractor``, or has ``skipped``
    with the reason. Raises UserError when no requested metric can be computed.
    """
    t0 = time.perf_counter()
    names = parse_metrics(metrics)
    if n_images < 2:
        raise UserError(
            f"n_images must be >= 2 (R-precision and the Inception score need several), got {n_images}"
        )
    if n_images > MAX_IMAGES:
        raise UserError(f"n_images must be at most {MAX_IMAGES:,} (the paper: 30,000), got {n_images:,}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    size = pipeline.generator.config.image_sizes[-1]  # of the generated images
    check_image_space(n_images, size)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    image_encoder = image_encoder if image_encoder is not None else pipeline.image_encoder
    draws = draw_test_captions(dataset, n_images, seed)

    # Find out first what cannot be computed, so that nothing is generated for nothing.
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
        is_weights = fid_weights if is_classifier == "fid-inception" else None
        problem = weights_problem(is_classifier, is_weights, allow_download, "--is-classifier")
        if problem:
            skipped["is"] = problem
    if "fid" in names:
        problem = weights_problem(fid_extractor, fid_weights, allow_download, "--fid-extractor")
        if problem:
            skipped["fid"] = problem
    targets: list[dict[str, Any]] | str = []
    if "attributes" in names:
        targets = _attribute_targets(dataset, draws)
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
    if len(skipped) == len(names):
        raise UserError("nothing to evaluate: " + "; ".join(f"{m}: {skipped[m]}" for m in names))
    # Load and try the metric networks now: a wrong file must fail before an hour of generation.
    if "is" in names and "is" not in skipped and isinstance(is_classifier, (str, os.PathLike, nn.Module)):
        classifier, _ = is_mod.load_classifier(
            is_classifier, fid_weights if is_classifier == "fid-inception" else None, device
        )
        _probe(classifier, size, device, f"--is-classifier {is_classifier}")
        del classifier
    if "fid" in names and "fid" not in skipped and isinstance(fid_extractor, str):
        extractor, _, _ = fid_mod.load_fid_extractor(fid_extractor, fid_weights, device)
        _probe(extractor, size, device, f"--fid-extractor {fid_extractor}")
        del extractor
    if "attributes" in names and "attributes" not in skipped and attribute_classifier is None:
        attribute_classifier = load_or_train_attribute_classifier(
            cache / "attributes", ATTRIBUTE_CLASSIFIER_SIZE, device=device
        )

    # Generate the images.
    pipeline.to(device)
    encoded = pipeline.encode_prompts(draws.texts)  # the ids the text encoder sees (unknown words dropped)
    if dataset.image_sizes[-1] != size:
        log.warning("real test images are %d px, generated ones %d px", dataset.image_sizes[-1], size)
    store = _ImageStore(n_images, size)

    def _compute_metric(name: str) -> dict[str, Any]:
        if name == "r_precision":
            image_encoder.to(device)
            image_vecs, text_vecs, _ = encode_for_r_precision(
                image_encoder, pipeline.text_encoder, _rp_batches(store, encoded, batch_size), device
            )
            return calc_metric(
                "r_precision",
                image_vecs=image_vecs,  # (N, D)
                text_vecs=text_vecs,  # (N, D)
                class_ids=torch.as_tensor(draws.class_ids),
                n_mismatch=min(n_mismatch, n_images - 1),
                splits=min(splits, n_images),
                seed=seed,
                exclude_same_class=r_precision_other_classes,
                # Another caption of the same test image is no mismatch (unless every sample has one).
                image_ids=torch.as_tensor(draws.indices) if len(set(draws.indices.tolist())) > 1 else None,
                encoder_name="the model's DAMSM",
            )
        if name == "is":
            return calc_metric(
                "inception_score",
                images=store.batches(batch_size),
                classifier=is_classifier,
                weights=fid_weights if is_classifier == "fid-inception" else None,
                splits=min(splits, n_images),
                batch_size=batch_size,
                device=device,
            )
        if name == "fid":
            res = calc_metric(
                "fid",
                images=store.batches(batch_size),
                real_images=_real_images(dataset, batch_size),
                extractor=fid_extractor,
                extractor_id=fid_extractor_id,
                weights=fid_weights,
                dataset_id=_dataset_identity(dataset),
                cache_dir=cache / "fid",
                batch_size=batch_size,
                device=device,
            )
            if fid_extractor == "torchvision-imagenet":
                res["protocol"] = (
                    "NOT standard FID (torchvision ImageNet Inception features): " + res["protocol"]
                )
            res["real"] = f"every test image once, center crop, {dataset.image_sizes[-1]} px"
            return res
        if name == "attributes":
            res = calc_metric(
                "attribute_accuracy",
                images=store.batches(batch_size),
                target_attributes=targets,
                classifier=attribute_classifier,
                device=device,
            )
            res["real_reference"] = _real_attribute_reference(attribute_classifier, dataset, draws)
            return res
        if name == "attention_grounding":
            return calc_metric(
                "attention_grounding",
                attention=[m for m, _ in maps],
                tokens=[words for _, words in maps],
                scenes=[dataset.extra(i)["attributes"] for i in draws.indices.tolist()],
            )
        if name == "clip":
            return calc_metric(
                "clip_score",
                images=store.batches(batch_size),
                captions=draws.texts,
                model=clip.model,
                tokenizer=clip.tokenizer,
                preprocess=clip.preprocess,
                model_name=clip.name,
                batch_size=batch_size,
                device=device,
            )
        raise AssertionError(name)

    results: dict[str, Any] = {}
    maps: list | None = [] if "attention_grounding" in names and "attention_grounding" not in skipped else None
    try:
        _generate(pipeline, draws, store, batch_size, ca_mean, progress, maps)

        # Compute the metrics.
        for name in names:
            if name in skipped:
                results[name] = _skipped(name, skipped[name])
                continue
            log.info("computing %s on %d images", name, n_images)
            try:
                results[name] = _compute_metric(name)
            except (UserError, ValueError, RuntimeError, OSError) as exc:  # keep the metrics already computed
                results[name] = _failed(name, exc)
    finally:
        store.close()
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
        "dataset": _dataset_identity(dataset) | {"test_images": len(dataset)},
        "metrics": results,
        "time_s": round(time.perf_counter() - t0, 3),
    }


# ------------------------------------------------------------------------------------------- table


_LABELS = {
    "r_precision": "R-precision (%)",
    "is": "Inception score",
    "fid": "FID",
    "attributes": "attributes: all correct",
    "attention_grounding": "attention grounding",
    "clip": "CLIP score",
}


PAPER_MISMATCHES = 99  # R-precision: mismatching captions per image in the paper (Sec. 4)
PAPER_SPLITS = 10  # R-precision and Inception score: splits in the paper


def protocol_changes(name: str, res: dict[str, Any]) -> list[str]:
    """How ``res`` was measured unlike the paper, in words (fewer mismatches or splits than it used)."""
    changes = []
    mismatches = res.get("n_mismatch")
    if name == "r_precision" and mismatches is not None and mismatches != PAPER_MISMATCHES:
        changes.append(
            f"{mismatches} mismatches: not comparable with the paper's {PAPER_MISMATCHES}"
            f" (chance {100 / (1 + mismatches):.1f}% instead of {100 / (1 + PAPER_MISMATCHES):.0f}%)"
        )
    splits = res.get("splits")
    if name in ("r_precision", "is") and splits is not None and splits != PAPER_SPLITS:
        changes.append(f"{splits} splits instead of the paper's {PAPER_SPLITS}")
    return changes


def _rows(name: str, res: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(label, value, sample count) rows of one metric result."""

    def pm(mean: Any, std: Any, digits: int = 2) -> str:
        if mean is None:
            return "n/a"
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"

    n = int(res.get("n") or 0)
    if "skipped" in res:
        return [(_LABELS[name], "failed" if res.get("failed") else "skipped", n)]
    if name == "r_precision":
        label = _LABELS[name] + (", other classes" if res.get("exclude_same_class") else "")
        return [(label, pm(res["r_precision"], res["r_precision_std"]), n)]
    if name == "is":
        return [(_LABELS[name], pm(res["is_mean"], res["is_std"]), n)]
    if name == "fid":
        variant = " (torchvision-imagenet, not standard)" if res["protocol"].startswith("NOT") else ""
        return [(_LABELS[name] + variant, pm(res["fid"], None), n)]
    if name == "attributes":
        chance, counts = res.get("chance", {}), res.get("n_per_attribute", {})
        rows = [(_LABELS[name], pm(res["all_acc"], None, 3), n)]
        real = res.get("real_reference")
        if real:
            rows.append(
                ("attributes: all correct, real test images", pm(real["all_acc"], None, 3), real["n"])
            )
        for attr in ATTRIBUTES:
            label = f"attributes: {attr} (chance {chance.get(attr, 0):.3f})"
            rows.append((label, pm(res.get(f"{attr}_acc"), None, 3), int(counts.get(attr, n))))
        return rows
    if name == "attention_grounding":
        label = f"{_LABELS[name]} (chance {res['chance']:.3f})" if res.get("chance") is not None else _LABELS[name]
        return [(label, pm(res["attention_grounding"], None, 3), n)]
    return [(_LABELS[name], pm(res["clip_score"], res.get("clip_score_std")), n)]


def format_table(result: dict[str, Any]) -> str:
    """The result of :func:`evaluate_model` as a text table; each row refers to its protocol below."""
    lines = [f"{'metric':<44}{'value':>18}{'n':>8}  protocol"]
    notes: list[str] = []
    for name, res in result["metrics"].items():
        why = (" -- " if res.get("failed") else " -- skipped: ") + str(res.get("skipped"))
        notes.append(res["protocol"] + (why if "skipped" in res else ""))
        changes = "" if "skipped" in res else "; ".join(protocol_changes(name, res))
        for k, (label, value, n) in enumerate(_rows(name, res)):
            remark = f"  {changes}" if changes and k == 0 else ""
            lines.append(f"{label:<44}{value:>18}{n:>8}  [{len(notes)}]{remark}")
    lines.append("")
    lines.append(f"images: {result['protocol']}")
    lines += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines)
