"""Shared data machinery: the ``Batch`` a loop receives, collation, the caption/image dataset base class.

A dataset yields one dict per (image, caption) draw::

    {"images": [Tensor (3, s, s) in [-1, 1] per scale, smallest first],
     "caption": LongTensor (words_num,) zero-padded, "length": int >= 1,
     "class_id": int, "key": str, "text": str, optional "attributes": list[dict]}

and :func:`collate_batch` turns a list of them into a :class:`Batch`. Differences from the original
(reference section 3.3-3.5): the batch is **not** sorted by caption length (our text encoder accepts any
order); the caption is picked with a per-item generator seeded from ``(seed, epoch, index)`` instead of
the global numpy state, so batches do not depend on the number of workers; in eval mode images are
center-cropped without flipping (the original used the random training transforms in eval too).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import DataError
from ..text import Vocabulary, tokenize, truncate_ids

__all__ = [
    "Batch",
    "collate_batch",
    "TextImageDataset",
    "to_rgb",
    "image_to_tensor",
    "resize_shorter_side",
    "multiscale_transform",
    "make_loader",
    "set_epoch",
]

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """A collated batch (see docs/architecture.md, "Batches")."""

    images: list[torch.Tensor]  # one (B, 3, s, s) float tensor in [-1, 1] per scale, smallest first
    captions: torch.Tensor  # (B, T) long, zero-padded word ids; T = max(lengths)
    lengths: torch.Tensor  # (B,) long, >= 1
    mask: torch.Tensor  # (B, T) bool, True at padding
    class_ids: torch.Tensor  # (B,) long
    keys: list[str] = field(default_factory=list)
    attributes: list[list[dict]] | None = None  # built-in dataset only: ground truth per object
    texts: list[str] | None = None  # the words behind each caption (after truncation)

    def __len__(self) -> int:
        return int(self.captions.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""
        return replace(
            self,
            images=[im.to(device, non_blocking=non_blocking) for im in self.images],
            captions=self.captions.to(device, non_blocking=non_blocking),
            lengths=self.lengths.to(device, non_blocking=non_blocking),
            mask=self.mask.to(device, non_blocking=non_blocking),
            class_ids=self.class_ids.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)`` on custom batch types."""
        return replace(
            self,
            images=[im.pin_memory() for im in self.images],
            captions=self.captions.pin_memory(),
            lengths=self.lengths.pin_memory(),
            mask=self.mask.pin_memory(),
            class_ids=self.class_ids.pin_memory(),
        )


def collate_batch(samples: Sequence[dict[str, Any]]) -> Batch:
    """Stack samples into a :class:`Batch`; captions are trimmed to T = max length in the batch.

    The mask is True at positions ``>= length`` (the original's ``captions == 0`` over ``[:, :max_len]``).
    Samples keep their order (no sort by length).
    """
    if not samples:
        raise ValueError("collate_batch needs at least one sample")
    num_scales = len(samples[0]["images"])
    if any(len(s["images"]) != num_scales for s in samples):
        raise ValueError("samples disagree on the number of image scales")
    images = [torch.stack([s["images"][i] for s in samples]) for i in range(num_scales)]  # (B, 3, s, s)
    lengths = torch.tensor([int(s["length"]) for s in samples], dtype=torch.long)  # (B,)
    captions = torch.stack([torch.as_tensor(s["caption"], dtype=torch.long).reshape(-1) for s in samples])
    if int(lengths.min()) < 1 or int(lengths.max()) > captions.shape[1]:
        raise ValueError(
            f"caption lengths must be in [1, {captions.shape[1]}], got {lengths.tolist()}; "
            "an empty caption cannot be encoded"
        )
    t = int(lengths.max())
    captions = captions[:, :t]  # (B, T)
    mask = torch.arange(t).unsqueeze(0) >= lengths.unsqueeze(1)  # (B, T)
    captions = captions.masked_fill(mask, 0)
    class_ids = torch.tensor([int(s["class_id"]) for s in samples], dtype=torch.long)
    keys = [str(s["key"]) for s in samples]
    attributes = [s["attributes"] for s in samples] if all("attributes" in s for s in samples) else None
    texts = [s["text"] for s in samples] if all("text" in s for s in samples) else None
    return Batch(images, captions, lengths, mask, class_ids, keys, attributes, texts)


# --------------------------------------------------------------------------------------------------------
# Images


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, P, CMYK, RGBA, I;16, ...) to RGB; transparent pixels are put on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit greyscale (PIL reads 16-bit PNGs as I;16 or I): 0..65535 to 0..255 as the file means it, not
        # stretched to each image's own range; float images are taken as 0..1 when they stay within it.
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            scale = 255.0 if arr.size and arr.min() >= 0 and arr.max() <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return img.convert("RGB")


def image_to_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    """uint8 RGB image (H, W, 3) -> float tensor (3, H, W) in [-1, 1] (ToTensor + Normalize(.5, .5))."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def resize_shorter_side(img: Image.Image, short: int) -> Image.Image:
    """``img`` with its shorter side resized to ``short`` (bilinear), the aspect ratio kept (the original's
    ``transforms.Resize(int)``); an image already of that size is returned as is."""
    w, h = img.size
    if w <= h:
        new_w, new_h = short, max(short, int(short * h / w))
    else:
        new_w, new_h = max(short, int(short * w / h)), short
    return img if (new_w, new_h) == (w, h) else img.resize((new_w, new_h), Image.BILINEAR)


def multiscale_transform(
    img: Image.Image,
    sizes: Sequence[int],
    train: bool,
    rng: np.random.Generator | None = None,
) -> list[torch.Tensor]:
    """The original's image pipeline (reference section 3.4) for scales ``sizes`` (smallest first).

    The shorter side is resized to ``int(final * 76 / 64)`` (bilinear), then a ``final`` x ``final`` crop
    is taken: random with a random horizontal flip in train mode, centered without flip in eval mode
    (the original used the random transforms in eval too). Each smaller scale is resized from the crop.
    """
    sizes = sorted(int(s) for s in sizes)
    final = sizes[-1]
    img = resize_shorter_side(to_rgb(img), int(final * 76 / 64))
    new_w, new_h = img.size
    if train:
        rng = np.random.default_rng() if rng is None else rng
        x = int(rng.integers(0, new_w - final + 1))
        y = int(rng.integers(0, new_h - final + 1))
    else:
        x, y = (new_w - final) // 2, (new_h - final) // 2
    crop = img.crop((x, y, x + final, y + final))
    if train and rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    out = [crop if s == final else crop.resize((s, s), Image.BILINEAR) for s in sizes]
    return [image_to_tensor(im) for im in out]


# --------------------------------------------------------------------------------------------------------
# Dataset base class


class TextImageDataset(Dataset):
    """Images with one or more captions each; yields the sample dicts described in the module docstring.

    Subclasses implement :meth:`load_image` (a PIL image; the default :meth:`get_images` applies
    :func:`multiscale_transform`) or override :meth:`get_images` directly. Captions are given per image as
    strings (tokenised and encoded here, unknown words dropped) or as lists of word ids (the original
    ``captions.pickle``); any number of captions per image (>= 1).
    """

    def __init__(
        self,
        captions: Sequence[Sequence[str | Sequence[int]]],  # per image: its captions
        keys: Sequence[str],  # per image: a unique name (file stem)
        vocab: Vocabulary,
        words_num: int,  # T: captions are truncated to this many words and zero-padded to it
        image_sizes: Sequence[int],  # scales returned, e.g. [64, 128, 256]
        class_ids: Sequence[int] | None = None,  # per image; None: the image index (no class masking)
        truncate: str = "first",  # "first" or "random" (the original's random word dropping)
        train: bool = True,  # random caption choice and random crop/flip; eval: fixed caption, center crop
        seed: int = 0,  # seeds the per-item generators (with the epoch and the index)
        caption_index: int = 0,  # eval mode: which caption of each image (modulo its caption count)
    ):
        if len(captions) != len(keys):
            raise DataError(f"{len(keys)} images but {len(captions)} caption lists")
        if class_ids is not None and len(class_ids) != len(keys):
            raise DataError(f"{len(keys)} images but {len(class_ids)} class ids")
        if words_num < 1:
            raise DataError(f"words_num must be >= 1, got {words_num}")
        if truncate not in ("first", "random"):
            raise DataError(f"truncate must be 'first' or 'random', got {truncate!r}")
        if not image_sizes:
            raise DataError("image_sizes is empty; give at least one scale, e.g. [64]")
        self.vocab = vocab
        self.words_num = int(words_num)
        self.truncate = truncate
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        self.caption_index = int(caption_index)
        self.image_sizes = sorted(int(s) for s in image_sizes)
        self.keys = [str(k) for k in keys]
        self.class_ids = np.asarray(
            range(len(keys)) if class_ids is None else [int(c) for c in class_ids], dtype=np.int64
        )
        self._encode_all(captions)

    def _encode_all(self, captions: Sequence[Sequence[str | Sequence[int]]]) -> None:
        """Encode every caption once into a flat id array (compact and cheap to send to workers)."""
        flat: list[int] = []
        starts: list[int] = []  # caption c spans flat[starts[c]:starts[c + 1]]
        first: list[int] = []  # image i owns captions first[i]:first[i + 1]
        unknown: set[str] = set()
        n_known = n_unknown = 0  # word occurrences in the text captions
        skipped: list[str] = []  # the image of each caption skipped
        n_words = len(self.vocab)
        for key, caps in zip(self.keys, captions):
            first.append(len(starts))
            for cap in caps:
                if isinstance(cap, str):
                    ids, unk = self.vocab.encode(tokenize(cap))
                    unknown.update(unk)
                    n_known += len(ids)
                    n_unknown += len(unk)
                else:
                    ids = [int(i) for i in cap]
                    if any(i <= 0 or i >= n_words for i in ids):
                        raise DataError(f"a caption of {key!r} holds word ids outside 1..{n_words - 1}")
                if not ids:
                    skipped.append(key)
                    continue
                starts.append(len(flat))
                flat.extend(ids)
            if first[-1] == len(starts):
                raise DataError(
                    f"image {key!r} has no caption with a word in the vocabulary; "
                    "give it at least one non-empty caption"
                )
        starts.append(len(flat))
        first.append(len(starts) - 1)
        if skipped:
            log.warning(
                "skipped %d captions without any word of the vocabulary (images %s%s)",
                len(skipped), ", ".join(sorted(set(skipped))[:5]), ", ..." if len(set(skipped)) > 5 else "",
            )  # fmt: skip
        if unknown:
            log.info(
                "dropped %d unknown words from the captions, e.g. %s", len(unknown), sorted(unknown)[:10]
            )
        # Share of caption words outside the vocabulary (0 when the vocabulary was built from these captions);
        # a trainer given another model's vocabulary uses it to tell data and model apart.
        self.unknown_word_share = n_unknown / max(n_known + n_unknown, 1)
        self.unknown_word_examples = sorted(unknown)[:10]
        self._ids = np.asarray(flat, dtype=np.int32)
        self._starts = np.asarray(starts, dtype=np.int64)
        self._first = np.asarray(first, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def set_epoch(self, epoch: int) -> None:
        """Change the random draws (caption choice, word dropping, crops) for a new epoch."""
        self.epoch = int(epoch)

    def num_captions(self, index: int) -> int:
        return int(self._first[index + 1] - self._first[index])

    def caption_ids(self, index: int, k: int) -> list[int]:
        """Full (untruncated) word ids of caption ``k`` of image ``index``."""
        c = int(self._first[index]) + k
        return self._ids[self._starts[c] : self._starts[c + 1]].tolist()

    def item_rng(self, index: int) -> np.random.Generator:
        """The generator of one ``__getitem__``: a function of (seed, epoch, index) only."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def load_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def get_images(self, index: int, rng: np.random.Generator) -> list[torch.Tensor]:
        """Images of ``index`` at every scale, (3, s, s) in [-1, 1], smallest first."""
        return multiscale_transform(self.load_image(index), self.image_sizes, self.train, rng)

    def extra(self, index: int) -> dict[str, Any]:
        """Additional sample entries (e.g. ``attributes``); none by default."""
        return {}

    def get_caption(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """One caption of image ``index``: ids (words_num,) zero-padded, and its length."""
        n = self.num_captions(index)
        k = int(rng.integers(n)) if self.train else self.caption_index % n
        ids = truncate_ids(self.caption_ids(index, k), self.words_num, self.truncate, rng)
        caption = torch.zeros(self.words_num, dtype=torch.long)
        caption[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return caption, len(ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        rng = self.item_rng(index)
        caption, length = self.get_caption(index, rng)
        sample = {
            "images": self.get_images(index, rng),
            "caption": caption,
            "length": length,
            "class_id": int(self.class_ids[index]),
            "key": self.keys[index],
            "text": " ".join(self.vocab.itos[i] for i in caption[:length].tolist()),
        }
        sample.update(self.extra(index))
        return sample


# --------------------------------------------------------------------------------------------------------
# Loaders


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    workers: int = 0,
    distributed: bool = False,  # shard with the initialised process group
    seed: int = 0,  # shuffling order: a function of (seed, epoch) only, see set_epoch
) -> DataLoader:
    """A DataLoader yielding :class:`Batch` objects.

    Shuffling goes through a ``DistributedSampler`` (one replica when not distributed) so that the order
    of epoch e is a function of ``(seed, e)``: call :func:`set_epoch` before each epoch, which also
    reseeds the dataset's per-item draws.
    """
    n = len(dataset)
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed)
    if drop_last and len(sampler) < batch_size:
        raise DataError(
            f"the dataset has {n} items ({len(sampler)} per process), fewer than one batch of {batch_size}; "
            "use a smaller batch size or more data"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        collate_fn=collate_batch,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the loader's sampler and dataset (new shuffle order and new random draws)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
