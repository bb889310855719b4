"""Figures: tensors in, PIL images out (attention maps as in Fig. 1/4, word swaps as in Fig. 5).

Word importance follows Eq. 15 of the paper: an attention weight beta_{j,i} is kept only where it is larger
than 1/T (T = the caption's true length), so that words which attend to nothing in particular drop out.
Nothing here reads or writes files; callers save the returned images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from attngan.errors import UserError

__all__ = [
    "attention_figure",
    "captioned_grid",
    "image_grid",
    "suppress_attention",
    "to_pil",
    "top_words",
    "upsample_map",
    "word_swap_figure",
]

LABEL_HEIGHT = 20  # px of the text strip above each cell of attention_figure
_HEAT_COLOR = (255, 0, 0)
_HEAT_ALPHA = 0.6


def _font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font; scalable where the installed Pillow supports ``size=`` (>= 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # older Pillow, or no FreeType
        return ImageFont.load_default()


def _check_length(length: int, num_words: int) -> int:
    length = int(length)
    if not 1 <= length <= num_words:
        raise UserError(
            f"caption length {length} must be between 1 and the number of attention rows ({num_words}); "
            "pass the true (unpadded) caption length"
        )
    return length


def suppress_attention(attn: torch.Tensor | np.ndarray, length: int) -> torch.Tensor:
    """Eq. 15: beta_hat = beta if beta > 1/T else 0, with T = ``length``; padding rows (>= length) are zeroed.

    ``attn`` is (T_max, h, w) or (T_max, N); the result is a float tensor of the same shape.
    """
    attn = torch.as_tensor(attn).detach().float().cpu()
    if attn.dim() not in (2, 3):
        raise UserError(f"attention must be (T, h, w) or (T, N), got shape {tuple(attn.shape)}")
    length = _check_length(length, attn.shape[0])
    out = torch.where(attn > 1.0 / length, attn, torch.zeros_like(attn))
    out[length:] = 0
    return out


def top_words(attn: torch.Tensor | np.ndarray, length: int, k: int = 5) -> list[tuple[int, float]]:
    """The ``k`` words with the largest sum over regions of beta_hat (Eq. 15), as (index, score).

    Sorted by score descending, ties by lower index; only indices < ``length``, at most ``length`` entries.
    """
    beta_hat = suppress_attention(attn, length)  # (T, h, w) or (T, N)
    scores = beta_hat.reshape(beta_hat.shape[0], -1).sum(dim=1)[:length].tolist()  # (length,)
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    return [(j, float(scores[j])) for j in order[: max(0, int(k))]]


def upsample_map(
    m: torch.Tensor | np.ndarray, size: int, sigma: float | None = None, mode: str = "bilinear"
) -> np.ndarray:
    """Upsample an (h, w) attention map to (size, size), smooth it and min-max normalise it to [0, 1].

    ``sigma`` defaults to 2 * upscale / 6, as skimage's ``pyramid_expand``; a constant map gives zeros.
    """
    m = torch.as_tensor(m).detach().float().cpu()
    if m.dim() != 2:
        raise UserError(f"attention map must be (h, w), got shape {tuple(m.shape)}")
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    up = F.interpolate(m[None, None], size=(size, size), mode=mode, **kwargs)[0, 0].numpy()  # (size, size)
    up = np.nan_to_num(up.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if sigma is None:
        sigma = 2.0 * (size / max(m.shape)) / 6.0
    if sigma > 0:
        up = gaussian_filter(up, sigma=sigma)
    lo, hi = float(up.min()), float(up.max())
    if not hi - lo > 1e-12:
        return np.zeros((size, size), dtype=np.float32)
    return ((up - lo) / (hi - lo)).clip(0.0, 1.0).astype(np.float32)


def _to_uint8(image: torch.Tensor, original_truncation: bool = False) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    x = torch.as_tensor(image).detach().float().cpu()
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise UserError(f"image must be (3, H, W) or (1, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    x = x.clamp(-1.0, 1.0)
    if original_truncation:
        arr = ((x + 1.0) * 127.5).numpy().astype(np.uint8)  # truncation, as the original code
    else:
        arr = ((x + 1.0) * 127.5).round().clamp(0, 255).numpy().astype(np.uint8)
    return np.ascontiguousarray(arr.transpose(1, 2, 0))  # (H, W, 3)


def to_pil(image: torch.Tensor, original_truncation: bool = False) -> Image.Image:
    """(3, H, W) tensor in [-1, 1] -> RGB image, via (x + 1) * 127.5 rounded and clipped to 0..255.

    ``original_truncation=True`` reproduces the original ``((x + 1) * 127.5).astype(uint8)``: values are
    clipped to [-1, 1] first (the original did not clip, so out-of-range values wrapped around), then truncated.
    """
    return Image.fromarray(_to_uint8(image, original_truncation), mode="RGB")


def _as_pil_list(images: Any) -> list[Image.Image]:
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(images)
        if t.dim() == 3:
            t = t[None]
        if t.dim() != 4:
            raise UserError(f"images must be (N, 3, H, W), got shape {tuple(t.shape)}")
        return [to_pil(x) for x in t]
    out = []
    for im in images:
        out.append(im.convert("RGB") if isinstance(im, Image.Image) else to_pil(im))
    if not out:
        raise UserError("no images to draw")
    return out


def image_grid(images: Any, nrow: int = 8, padding: int = 2) -> Image.Image:
    """Images ((N, 3, H, W) in [-1, 1] or a list of PIL) in rows of ``nrow``, like torchvision's make_grid.

    Size: (cols * (W + padding) + padding) x (rows * (H + padding) + padding), black padding.
    """
    pils = _as_pil_list(images)
    w, h = pils[0].size
    cols = max(1, min(int(nrow), len(pils)))
    rows = math.ceil(len(pils) / cols)
    grid = Image.new("RGB", (cols * (w + padding) + padding, rows * (h + padding) + padding))
    for i, im in enumerate(pils):
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        r, c = divmod(i, cols)
        grid.paste(im, (padding + c * (w + padding), padding + r * (h + padding)))
    return grid


def _wrap(text: str, font: Any, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """Greedy word wrap to ``width`` pixels (a word longer than a line gets a line of its own)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}" if line else word
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    if line:
        lines.append(line)
    return lines or [""]


def captioned_grid(
    images: Any, captions: Sequence[str], nrow: int = 4, cell: int | None = None
) -> Image.Image:
    """Each image (resized to ``cell`` x ``cell``, default: the first image's width) with its wrapped caption under it."""
    pils = _as_pil_list(images)
    if len(captions) != len(pils):
        raise UserError(f"got {len(pils)} images but {len(captions)} captions; pass one caption per image")
    cell = int(cell or pils[0].size[0])
    pad = 4
    font = _font(12)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(str(c), font, cell - 2 * pad, scratch) for c in captions]
    line_h = int(math.ceil(font.getbbox("Ag")[3])) + 2
    text_h = max(len(w) for w in wrapped) * line_h + 2 * pad
    cols = max(1, min(int(nrow), len(pils)))
    rows = math.ceil(len(pils) / cols)
    cw, ch = cell + pad, cell + text_h
    canvas = Image.new("RGB", (cols * cw + pad, rows * ch + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (im, lines) in enumerate(zip(pils, wrapped)):
        r, c = divmod(i, cols)
        x, y = pad + c * cw, pad + r * ch
        canvas.paste(im.resize((cell, cell), Image.BILINEAR), (x, y))
        for n, line in enumerate(lines):
            draw.text((x + pad, y + cell + pad + n * line_h), line, fill="black", font=font)
    return canvas


def _overlay(base: np.ndarray, heat: np.ndarray) -> Image.Image:
    """Alpha-blend a [0, 1] heat map (size, size) in red over an (size, size, 3) uint8 image."""
    a = (_HEAT_ALPHA * heat)[..., None]  # (size, size, 1)
    color = np.asarray(_HEAT_COLOR, dtype=np.float32)
    out = base.astype(np.float32) * (1.0 - a) + color * a
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8), mode="RGB")


def _as_map(a: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(T, h, w), or (T, N) with square N -> (T, h, w)."""
    a = torch.as_tensor(a).detach().float().cpu()
    if a.dim() == 2:
        side = math.isqrt(a.shape[1])
        if side * side != a.shape[1]:
            raise UserError(f"attention (T, N) needs a square number of regions, got N={a.shape[1]}")
        a = a.reshape(a.shape[0], side, side)
    if a.dim() != 3:
        raise UserError(f"attention must be (T, h, w), got shape {tuple(a.shape)}")
    return a


def attention_figure(
    images: Any,
    attention: Sequence[torch.Tensor],
    tokens: Sequence[str],
    length: int,
    k: int = 5,
    size: int = 128,
) -> Image.Image:
    """Fig. 1/4: the stage images, then per attention stage the top-k words (Eq. 15) and their maps.

    Layout: ``cols = max(len(images), k)`` cells of ``size`` px wide, ``1 + len(attention)`` rows of
    ``LABEL_HEIGHT + size`` px (a text strip above each cell): width ``cols * size``, height
    ``(1 + len(attention)) * (LABEL_HEIGHT + size)``. Each map is upsampled with ``upsample_map`` and tinted
    red over the last-stage image; its label is the word and its share of the stage's total Eq. 15 score.
    """
    stages = [images] if isinstance(images, torch.Tensor) and images.dim() == 3 else list(images)
    if not stages:
        raise UserError("attention_figure needs at least one image")
    stage_pils = [to_pil(x) if not isinstance(x, Image.Image) else x.convert("RGB") for x in stages]
    resized = [im.resize((size, size), Image.BILINEAR) for im in stage_pils]
    base = np.asarray(resized[-1])  # (size, size, 3)
    cols = max(len(resized), int(k))
    cell_h = LABEL_HEIGHT + size
    canvas = Image.new("RGB", (cols * size, (1 + len(attention)) * cell_h), "white")
    font = _font(14)

    def label(text: str, x: int, y: int) -> None:
        strip = Image.new("RGB", (size, LABEL_HEIGHT), "white")  # clipped to its cell
        ImageDraw.Draw(strip).text((2, 2), text, fill="black", font=font)
        canvas.paste(strip, (x, y))

    for c, (im, orig) in enumerate(zip(resized, stage_pils)):
        label(f"{orig.size[0]}x{orig.size[1]}", c * size, 0)
        canvas.paste(im, (c * size, LABEL_HEIGHT))

    for r, att in enumerate(attention, start=1):
        att = _as_map(att)  # (T, h, w)
        beta_hat = suppress_attention(att, length)
        ranked = top_words(att, length, k)
        total = sum(s for _, s in top_words(att, length, length)) or 1.0
        y = r * cell_h
        for c, (j, score) in enumerate(ranked):
            word = tokens[j] if j < len(tokens) else f"<{j}>"
            label(f"{word} {score / total:.2f}", c * size, y)
            canvas.paste(_overlay(base, upsample_map(beta_hat[j], size)), (c * size, y + LABEL_HEIGHT))
    return canvas


def word_swap_figure(rows: Sequence[tuple[str, Any]], size: int = 128) -> Image.Image:
    """Fig. 5: images of captions that differ by one word, side by side, each caption under its image."""
    if not rows:
        raise UserError("word_swap_figure needs at least one (caption, image) pair")
    captions = [c for c, _ in rows]
    images = [im if isinstance(im, Image.Image) else to_pil(im) for _, im in rows]
    return captioned_grid(images, captions, nrow=len(rows), cell=size)
