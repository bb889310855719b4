"""``shapes``: a built-in procedural text-to-image dataset with ground truth (no download).

Each image holds 1 to ``max_objects`` (<= 3) flat-coloured shapes on a muted, slightly noisy background,
one per cell of a 3 x 3 grid. Every object has a shape (:data:`SHAPES`), one of 8 well-separated colours
(:data:`COLORS`, never close to a background tone), a size (:data:`SIZES`) and a grid position
(:data:`POSITIONS`). Captions are drawn from varied templates; every caption names the colour and shape of
every object, and most also its size and position, e.g. "a small red circle at the top left" or
"there is a blue square below a yellow triangle". :func:`attributes_from_caption` parses them back, so
metrics can check what a generator drew.

Everything is a function of ``(seed, split, index)``: scenes and captions are drawn when the dataset is
built, images are rendered on demand with numpy at the largest scale and downsampled (antialiased) for the
smaller ones. Train and test use disjoint random streams. Unlike the image datasets, no random crop or flip
is applied, since either would make the position words wrong. The vocabulary holds every word any template
can produce, so it is the same for every seed and split.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_write_bytes
from ..config import DataConfig
from ..errors import DataError
from ..text import END_TOKEN, Vocabulary, tokenize
from .base import TextImageDataset, image_to_tensor

__all__ = [
    "SHAPES",
    "COLORS",
    "SIZES",
    "POSITIONS",
    "BACKGROUNDS",
    "sample_scene",
    "vary_scene",
    "CONTRAST_WEIGHTS",
    "render_scene",
    "object_mask",
    "make_captions",
    "attributes_from_caption",
    "caption_words",
    "shapes_vocabulary",
    "class_id_of",
    "ShapesDataset",
    "write_folder",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
# Saturated or extreme colours, far from each other and from every background tone (RGB, 0-255).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 235),
    "yellow": (250, 225, 30),
    "purple": (150, 40, 190),
    "orange": (250, 135, 10),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
SIZES: tuple[str, ...] = ("small", "large")
# Row-major 3 x 3 grid: POSITIONS[3 * row + col].
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
# Muted background tones (grey, taupe, brown, dark teal, slate, olive grey).
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128),
    (150, 130, 110),
    (105, 80, 60),
    (40, 95, 100),
    (85, 95, 120),
    (115, 120, 90),
)

_HALF_SIZE = {"small": 0.085, "large": 0.135}  # half-width of a shape, in units of the image side
_EXTENT = 1.2  # no shape reaches further than _EXTENT * half-size from its centre
_CELL = 1.0 / 3.0
# The largest object scale: a large shape then spans 0.65 of the image side.
MAX_OBJECT_SCALE = 2.0

# ------------------------------------------------------------------------------------------ caption text

_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("at the top left", "in the top left corner", "in the upper left corner"),
    "top": ("at the top", "near the top", "at the top of the image"),
    "top right": ("at the top right", "in the top right corner", "in the upper right corner"),
    "left": ("on the left", "at the left", "on the left side"),
    "center": ("in the center", "in the middle", "at the center of the image"),
    "right": ("on the right", "at the right", "on the right side"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left corner"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the image"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right corner"),
}
# Object phrases; {a} is "a" or "an" as the next word needs.
_OBJECT_FORMS: tuple[str, ...] = (
    "{a} {size} {color} {shape}",
    "{a} {size} {color} {shape}",
    "{a} {color} {shape} that is {size}",
    "{a} {size} {shape} colored {color}",
    "{a} {size} {shape} in {color}",
)
_OBJECT_FORMS_NO_SIZE: tuple[str, ...] = ("{a} {color} {shape}",)
# One object. {obj} is an object phrase, {pos} a position phrase.
_SINGLE_TEMPLATES: tuple[str, ...] = (
    "{obj} {pos}",
    "there is {obj} {pos}",
    "the picture shows {obj} {pos}",
    "this image contains {obj} {pos}",
    "{pos} there is {obj}",
    "{obj} is drawn {pos}",
    "{obj} on a plain background",
    "a picture of {obj}",
)
# Templates with positions are drawn more often (repeated in the bag).
_SINGLE_BAG: tuple[str, ...] = tuple(
    t for t, w in zip(_SINGLE_TEMPLATES, (3, 3, 2, 2, 2, 2, 1, 1)) for _ in range(w)
)
_RELATIONS = ("above", "below", "to the left of", "to the right of")
_NUMBERS = ("one", "two", "three")
# Several objects. {list} lists every object with its position; {rel} relates object 1 to object 2.
_MULTI_TEMPLATES: tuple[str, ...] = (
    "{list}",
    "there is {list}",
    "the picture shows {n} shapes {list}",
    "there is {obj1} {rel} {obj2}{rest}",
    "{obj1} {rel} {obj2}{rest}",
)

_SEPARATORS = re.compile(r",|;|:|\band\b|\babove\b|\bbelow\b|\bto the (?:left|right) of\b")
_POSITION_PATTERNS = (
    (re.compile(r"\b(?:top|upper) left\b"), "top left"),
    (re.compile(r"\b(?:top|upper) right\b"), "top right"),
    (re.compile(r"\b(?:bottom|lower) left\b"), "bottom left"),
    (re.compile(r"\b(?:bottom|lower) right\b"), "bottom right"),
    (re.compile(r"\btop\b"), "top"),
    (re.compile(r"\bbottom\b"), "bottom"),
    (re.compile(r"\bleft\b"), "left"),
    (re.compile(r"\bright\b"), "right"),
    (re.compile(r"\b(?:center|middle)\b"), "center"),
)


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _object_phrase(obj: dict[str, Any], rng: np.random.Generator, with_size: bool = True) -> str:
    forms = _OBJECT_FORMS if with_size else _OBJECT_FORMS_NO_SIZE
    form = forms[int(rng.integers(len(forms)))]
    filled = form.replace("{a} ", "").format(size=obj["size"], color=obj["color"], shape=obj["shape"])
    return f"{_article(filled)} {filled}" if form.startswith("{a}") else filled


def _position_phrase(obj: dict[str, Any], rng: np.random.Generator) -> str:
    phrases = _POSITION_PHRASES[obj["position"]]
    return phrases[int(rng.integers(len(phrases)))]


def _relation(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Where ``a`` is relative to ``b`` (they occupy different grid cells)."""
    if a["row"] != b["row"]:
        return "above" if a["row"] < b["row"] else "below"
    return "to the left of" if a["col"] < b["col"] else "to the right of"


def _one_caption(attrs: Sequence[dict[str, Any]], rng: np.random.Generator) -> str:
    with_size = rng.random() >= 0.15  # most captions name the size
    if len(attrs) == 1:
        obj = attrs[0]
        template = _SINGLE_BAG[int(rng.integers(len(_SINGLE_BAG)))]
        return template.format(obj=_object_phrase(obj, rng, with_size), pos=_position_phrase(obj, rng))
    template = _MULTI_TEMPLATES[int(rng.integers(len(_MULTI_TEMPLATES)))]
    phrases = [f"{_object_phrase(o, rng, with_size)} {_position_phrase(o, rng)}" for o in attrs]
    listing = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    rest = "".join(f" and {p}" for p in phrases[2:])
    return template.format(
        list=listing,
        n=_NUMBERS[len(attrs) - 1],
        obj1=_object_phrase(attrs[0], rng, with_size),
        obj2=_object_phrase(attrs[1], rng, with_size),
        rel=_relation(attrs[0], attrs[1]),
        rest=rest,
    )


def make_captions(attrs: Sequence[dict[str, Any]], rng: np.random.Generator, n: int) -> list[str]:
    """``n`` captions of a scene, distinct where the templates allow; each names every object's colour
    and shape."""
    if not attrs:
        raise ValueError("a scene needs at least one object")
    captions: list[str] = []
    for _ in range(n):
        for _attempt in range(8):
            cap = _one_caption(attrs, rng)
            if cap not in captions:
                break
        captions.append(cap)
    return captions


def attributes_from_caption(text: str) -> list[dict[str, Any]]:
    """Objects a caption mentions, in order: ``{"shape", "color", "size", "position"}`` (None if unsaid).

    The caption is split at connectives ("and", commas, "above", "below", "to the left/right of"); each
    part naming a shape is one object. Positions stated relative to another object are not recovered.
    """
    words_re = re.compile(r"[a-z]+")
    objects = []
    for part in _SEPARATORS.split(text.lower()):
        words = words_re.findall(part)
        shape = next((w for w in words if w in SHAPES), None)
        if shape is None:
            continue
        position = None
        for pattern, name in _POSITION_PATTERNS:
            if pattern.search(part):
                position = name
                break
        objects.append(
            {
                "shape": shape,
                "color": next((w for w in words if w in COLORS), None),
                "size": next((w for w in words if w in SIZES), None),
                "position": position,
            }
        )
    return objects


def caption_words() -> list[str]:
    """Every word a caption can contain, sorted (read from the templates, not from sampled data)."""
    placeholder = re.compile(r"\{\w+\}")
    texts = [
        *SHAPES,
        *COLORS,
        *SIZES,
        *POSITIONS,
        "a an",
        *_RELATIONS,
        *_NUMBERS,
        *(p for ps in _POSITION_PHRASES.values() for p in ps),
        *_OBJECT_FORMS,
        *_OBJECT_FORMS_NO_SIZE,
        *_SINGLE_TEMPLATES,
        *_MULTI_TEMPLATES,
        "and",
    ]
    return sorted({t for s in texts for t in tokenize(placeholder.sub(" ", s))})


def shapes_vocabulary() -> Vocabulary:
    """The fixed vocabulary of the shapes dataset: ``'<end>'`` then :func:`caption_words` alphabetically."""
    return Vocabulary([END_TOKEN, *caption_words()])


# ------------------------------------------------------------------------------------------------ scenes


def class_id_of(attrs: Sequence[dict[str, Any]]) -> int:
    """Class of a scene: colour and shape of its first object (``color_index * len(SHAPES) + shape_index``)."""
    first = attrs[0]
    return list(COLORS).index(first["color"]) * len(SHAPES) + SHAPES.index(first["shape"])


def sample_scene(rng: np.random.Generator, max_objects: int = 1, object_scale: float = 1.0) -> list[dict[str, Any]]:
    """1..``max_objects`` objects in distinct grid cells with distinct colours, of the sizes of
    :data:`SIZES` times ``object_scale`` (see :func:`_placed`).

    Each object: ``shape``, ``color``, ``size``, ``position`` (name), ``row``, ``col``, ``center`` (x, y)
    and ``half_size`` in units of the image side, ``bbox`` (x0, y0, x1, y1) in the same units.
    """
    if not 1 <= max_objects <= 3:
        raise ValueError(f"max_objects must be 1, 2 or 3, got {max_objects}")
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    colors = rng.choice(len(COLORS), size=n, replace=False)
    shapes = rng.integers(len(SHAPES), size=n)
    sizes = rng.integers(len(SIZES), size=n)
    jitter = rng.uniform(-1.0, 1.0, size=(n, 2))
    color_names = list(COLORS)
    return [
        _placed(
            SHAPES[int(shapes[k])], color_names[int(colors[k])], SIZES[int(sizes[k])], int(cells[k]), jitter[k],
            object_scale,
        )
        for k in range(n)
    ]


RENDER_CACHE_BYTES = 512 << 20  # ShapesDataset keeps its rendered images while they fit in this many bytes

# Which attribute a contrast group changes from one scene to the next, and how often: shape, the attribute
# the generator learns last, most. Neighbours in a batch are the discriminators' mismatched pairs and the
# DAMSM's hardest negatives, so 3 in 4 of those differ in one attribute, 0.6 of them in shape (0.4 before:
# the 10-minute demo on seed 2 drew the right shape in 0.906 of test images against 0.756, benchmarks/TUNING.md).
CONTRAST_WEIGHTS: dict[str, float] = {"shape": 0.6, "position": 0.2, "color": 0.1, "size": 0.1}


def vary_scene(
    attrs: Sequence[dict[str, Any]], rng: np.random.Generator, object_scale: float = 1.0
) -> list[dict[str, Any]]:
    """A copy of a scene whose first object differs in exactly one attribute (drawn by
    :data:`CONTRAST_WEIGHTS`): another shape, colour, size or grid cell (a new jitter inside it). Colours and
    cells stay distinct between the objects."""
    names = list(CONTRAST_WEIGHTS)
    weights = np.asarray([CONTRAST_WEIGHTS[n] for n in names])
    attribute = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    first, others = dict(attrs[0]), [dict(o) for o in attrs[1:]]
    if attribute == "shape":
        first["shape"] = SHAPES[int(rng.choice([i for i, s in enumerate(SHAPES) if s != first["shape"]]))]
    elif attribute == "color":
        taken = {o["color"] for o in attrs}
        first["color"] = str(rng.choice([c for c in COLORS if c not in taken]))
    elif attribute == "size":
        first["size"] = "large" if first["size"] == "small" else "small"
    cells = {3 * o["row"] + o["col"] for o in attrs}
    cell = 3 * first["row"] + first["col"]
    if attribute == "position":
        cell = int(rng.choice([c for c in range(len(POSITIONS)) if c not in cells]))
    jitter = rng.uniform(-1.0, 1.0, size=2)
    return [_placed(first["shape"], first["color"], first["size"], cell, jitter, object_scale), *others]


def _placed(
    shape: str, color: str, size: str, cell: int, jitter: np.ndarray, object_scale: float = 1.0
) -> dict[str, Any]:
    """An object of ``shape``, ``color`` and ``size`` (half-width ``_HALF_SIZE[size] * object_scale``) in grid
    ``cell``, moved by ``jitter`` (in [-1, 1]^2) as far as it stays inside its cell. A shape too large for its
    cell (``object_scale`` > 1) stays centred in it, moved inwards only as far as needed to stay inside the
    image; it may then reach into the neighbouring cells."""
    row, col = divmod(int(cell), 3)
    half = _HALF_SIZE[size] * object_scale
    room = max(0.0, _CELL / 2 - _EXTENT * half - 0.01)  # keep the shape inside its cell
    reach = _EXTENT * half
    cx = min(max((col + 0.5) * _CELL + room * float(jitter[0]), reach), 1.0 - reach)
    cy = min(max((row + 0.5) * _CELL + room * float(jitter[1]), reach), 1.0 - reach)
    return {
        "shape": shape,
        "color": color,
        "size": size,
        "position": POSITIONS[int(cell)],
        "row": row,
        "col": col,
        "center": (cx, cy),
        "half_size": half,
        "bbox": _bbox(shape, cx, cy, half),
    }


def _bbox(shape: str, cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    if shape == "triangle":  # centroid at the centre: apex 1.2 r above, base 0.6 r below
        w = 1.2 * r * math.sqrt(3) / 2
        return (cx - w, cy - 1.2 * r, cx + w, cy + 0.6 * r)
    e = {"circle": 1.0, "square": 1.0, "diamond": 1.2, "cross": 1.1}[shape] * r
    return (cx - e, cy - e, cx + e, cy + e)


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) to the outline of a shape of half-size r."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(ax, ay) - r
    if shape == "diamond":
        return (ax + ay - 1.2 * r) * (1 / math.sqrt(2))
    if shape == "cross":
        arm, w = 1.1 * r, 0.35 * r
        return np.minimum(np.maximum(ax - arm, ay - w), np.maximum(ax - w, ay - arm))
    if shape == "triangle":  # equilateral, apex up, circumradius 1.2 r
        big = 1.2 * r
        s3 = math.sqrt(3) / 2
        edges = np.maximum(s3 * ax - 0.5 * dy, dy)  # two slanted edges (by symmetry) and the base
        return edges - 0.5 * big
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def object_mask(obj: dict[str, Any], size: int) -> np.ndarray:
    """Where an object of a scene lies in a ``size`` x ``size`` grid: bool (size, size), True at the cells
    whose centre is inside its outline (the region its colour covers in :func:`render_scene`)."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    cx, cy = obj["center"]
    dx = (coords - cx * size)[None, :]
    dy = (coords - cy * size)[:, None]
    mask = _signed_distance(obj["shape"], dx, dy, obj["half_size"] * size) <= 0
    if not mask.any():  # smaller than a cell: the cell holding its centre
        mask[min(int(cy * size), size - 1), min(int(cx * size), size - 1)] = True
    return mask


def render_scene(
    attrs: Sequence[dict[str, Any]], size: int, rng: np.random.Generator, texture: bool = True
) -> np.ndarray:
    """Draw a scene as a uint8 (size, size, 3) RGB array: muted background (with ``texture``, a gradient and
    slight noise, from ``rng``; without, one flat tone), flat antialiased shapes."""
    if not 8 <= size <= 4096:
        raise ValueError(f"image size must be in [8, 4096], got {size}")
    coords = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    base = np.asarray(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], dtype=np.float32)
    if texture:
        gx, gy = rng.uniform(-12.0, 12.0, size=2).astype(np.float32)
        ramp = (coords / size - 0.5)[None, :] * gx + (coords / size - 0.5)[:, None] * gy  # (S, S)
        field = ramp + (rng.random((size, size), dtype=np.float32) - 0.5) * 10.0  # (S, S) uniform noise, std ~3
    else:
        field = np.zeros((size, size), dtype=np.float32)
    img = np.empty((size, size, 3), dtype=np.float32)
    for ch in range(3):  # per channel: much faster than broadcasting over a trailing axis of 3
        img[:, :, ch] = field + base[ch]
    for obj in attrs:
        x0, y0, x1, y1 = obj["bbox"]
        # Only the window around the object (plus one pixel for the antialiased edge) is touched.
        c0, r0 = max(0, int(x0 * size) - 1), max(0, int(y0 * size) - 1)
        c1, r1 = min(size, int(math.ceil(x1 * size)) + 2), min(size, int(math.ceil(y1 * size)) + 2)
        cx, cy = obj["center"]
        dx = (coords[c0:c1] - cx * size)[None, :]  # (1, w)
        dy = (coords[r0:r1] - cy * size)[:, None]  # (h, 1)
        sdf = _signed_distance(obj["shape"], dx, dy, obj["half_size"] * size)  # (h, w)
        cover = np.clip(0.5 - sdf, 0.0, 1.0)[:, :, None]  # (h, w, 1)
        color = np.asarray(COLORS[obj["color"]], dtype=np.float32)
        window = img[r0:r1, c0:c1]
        img[r0:r1, c0:c1] = window + cover * (color - window)
    img += 0.5  # round to nearest
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- dataset

_SPLITS = {"train": 0, "test": 1}


class ShapesDataset(TextImageDataset):
    """The procedural shapes dataset; samples carry ``attributes`` (the ground-truth objects).

    ``class_id`` is :func:`class_id_of` the scene (colour and shape of the first object).
    """

    def __init__(
        self,
        split: str = "train",  # "train" or "test": disjoint random streams
        num_images: int = 2000,
        image_sizes: Sequence[int] = (32, 64),  # scales returned, each in 8..4096 (32..256 intended)
        words_num: int = 12,  # T: captions are truncated to this many words
        captions_per_image: int = 5,
        max_objects: int = 1,  # 1..3 objects per image
        seed: int = 0,
        vocab: Vocabulary | None = None,  # None: shapes_vocabulary(), identical for every seed
        train: bool | None = None,  # random caption per draw; None: True for the train split
        truncate: str = "first",
        contrast_group: int = 1,  # train split: groups of this many scenes, each one attribute from the last
        texture: bool = True,  # backgrounds with a gradient and noise (False: one flat tone)
        object_scale: float = 1.0,  # shapes are this many times the sizes of SIZES (see sample_scene)
    ):
        if split not in _SPLITS:
            raise DataError(f"split must be 'train' or 'test', got {split!r}")
        if num_images < 1:
            raise DataError(f"num_images must be >= 1, got {num_images}")
        if captions_per_image < 1:
            raise DataError(f"captions_per_image must be >= 1, got {captions_per_image}")
        if not 1 <= max_objects <= 3:
            raise DataError(f"max_objects must be 1, 2 or 3, got {max_objects}")
        if contrast_group < 1:
            raise DataError(f"contrast_group must be >= 1, got {contrast_group}")
        if not 0 < object_scale <= MAX_OBJECT_SCALE:
            raise DataError(f"object_scale must be in (0, {MAX_OBJECT_SCALE}], got {object_scale}")
        self.split = split
        self.texture = bool(texture)
        self.max_objects = int(max_objects)
        self.object_scale = float(object_scale)
        self.data_seed = int(seed)
        # Training order keeps each group's images together (see attngan.training.data.epoch_loader).
        self.group_size = int(contrast_group) if split == "train" else 1
        self.scenes: list[list[dict[str, Any]]] = []
        self.texts: list[list[str]] = []
        for index in range(num_images):
            rng = np.random.default_rng([self.data_seed, _SPLITS[split], index, 0])
            if index % self.group_size == 0:
                scene = sample_scene(rng, max_objects, object_scale)
            else:  # the group's previous scene with one attribute of its first object changed
                scene = vary_scene(self.scenes[-1], rng, object_scale)
            self.scenes.append(scene)
            self.texts.append(make_captions(scene, rng, captions_per_image))
        super().__init__(
            captions=self.texts,
            keys=[f"{split}_{i:06d}" for i in range(num_images)],
            vocab=shapes_vocabulary() if vocab is None else vocab,
            words_num=words_num,
            image_sizes=image_sizes,
            class_ids=[class_id_of(s) for s in self.scenes],
            truncate=truncate,
            train=split == "train" if train is None else train,
            seed=seed,
        )
        cache_bytes = num_images * sum(3 * s * s for s in self.image_sizes)
        self._rendered: dict[int, list[np.ndarray]] | None = {} if cache_bytes <= RENDER_CACHE_BYTES else None

    @classmethod
    def from_config(
        cls,
        data: DataConfig,
        image_sizes: Sequence[int],
        split: str = "train",
        vocab: Vocabulary | None = None,
        train: bool | None = None,
    ) -> ShapesDataset:
        """Build from a :class:`~attngan.config.DataConfig` (``dataset="shapes"``)."""
        return cls(
            split=split,
            num_images=data.num_images,
            image_sizes=image_sizes,
            words_num=data.words_num,
            captions_per_image=data.captions_per_image,
            max_objects=data.max_objects,
            seed=data.seed,
            vocab=vocab,
            train=train,
            truncate=data.truncate,
            contrast_group=data.contrast_group,
            texture=data.texture,
            object_scale=data.object_scale,
        )

    def render(self, index: int, size: int | None = None) -> np.ndarray:
        """Image ``index`` as uint8 (size, size, 3); the same pixels on every call and in every epoch."""
        rng = np.random.default_rng([self.data_seed, _SPLITS[self.split], index, 1])
        return render_scene(self.scenes[index], size or self.image_sizes[-1], rng, self.texture)

    def scales(self, index: int) -> list[np.ndarray]:
        """Image ``index`` at every scale of ``image_sizes`` as uint8 (s, s, 3), smallest first.

        The pixels are a function of the index alone, so they are rendered once and kept while the scales
        of all images fit in :data:`RENDER_CACHE_BYTES` (4000 images at 16, 32 and 64 px: 65 MB); a larger
        dataset renders on every access. A batch of 32 at 16, 32 and 64 px loads in 2.6 ms kept, 10 ms rendered.
        """
        cached = self._rendered.get(index) if self._rendered is not None else None
        if cached is not None:
            return cached
        final = self.image_sizes[-1]
        big = Image.fromarray(self.render(index, final))
        # PIL's bilinear resize widens its filter when shrinking, so smaller scales are antialiased.
        arrays = [np.asarray(big if s == final else big.resize((s, s), Image.BILINEAR)) for s in self.image_sizes]
        if self._rendered is not None:
            for a in arrays:
                a.setflags(write=False)
            self._rendered[index] = arrays
        return arrays

    def get_images(self, index: int, rng: np.random.Generator) -> list[torch.Tensor]:
        return [image_to_tensor(a) for a in self.scales(index)]

    def extra(self, index: int) -> dict[str, Any]:
        return {"attributes": [dict(o) for o in self.scenes[index]]}


def write_folder(dataset: ShapesDataset, out_dir: str | os.PathLike, size: int | None = None) -> list[Path]:
    """Write every image as ``<key>.png`` (largest scale, or ``size``) with ``<key>.txt`` (its captions, one
    per line): the own-data folder format. Refuses to overwrite: raises DataError if any file exists."""
    out = Path(out_dir)
    names = [(out / f"{k}.png", out / f"{k}.txt") for k in dataset.keys]
    existing = [p for pair in names for p in pair if p.exists()]
    if existing:
        raise DataError(
            f"{out} already holds {len(existing)} of the files to write (e.g. {existing[0].name}); "
            "choose an empty folder or delete them first"
        )
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (png, txt) in enumerate(names):
        buf = io.BytesIO()
        Image.fromarray(dataset.render(index, size)).save(buf, format="PNG")
        atomic_write_bytes(png, buf.getvalue())
        atomic_write_bytes(txt, ("\n".join(dataset.texts[index]) + "\n").encode("utf-8"))
        written.append(png)
    return written
