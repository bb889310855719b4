"""Captioned figures: sample grids, attention maps of the top words (Fig. 1/4), word swaps (Fig. 5)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from attngan.errors import UserError

from .images import _as_pil_list, enlarge, to_pil
from .maps import _STYLES, _as_map, overlay, suppress_attention, top_words, upsample_map

FIGURE_CELL = 256  # px: the least width of one image in a figure (smaller model outputs are enlarged)


LABEL_HEIGHT = 26  # px of the text strip above each cell of attention_figure


_LABEL_FONT = 18  # px; shrunk until the label fits its cell


_CHANGED_COLOR = (200, 0, 0)  # words of a word-swap caption that differ from the first row


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font (scalable DejaVu-like font since Pillow 10.1; bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow or a build without FreeType
        return ImageFont.load_default()


def _fit_font(text: str, width: int, size: int, draw: ImageDraw.ImageDraw) -> Any:
    """The largest font of at most ``size`` px (down to 8 px) in which ``text`` fits in ``width`` px."""
    font = _font(size)
    while size > 8 and draw.textlength(text, font=font) > width:
        size -= 1
        font = _font(size)
    return font


def _line_height(font: Any) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return int(math.ceil(bottom)) + 2


def _wrap(words: Sequence[str], font: Any, width: int, draw: ImageDraw.ImageDraw) -> list[list[int]]:
    """Greedy word wrap to ``width`` px: lists of word indices (an over-long word gets a line of its own)."""
    lines: list[list[int]] = []
    line: list[int] = []
    for i in range(len(words)):
        trial = " ".join(words[j] for j in [*line, i])
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = [i]
        else:
            line.append(i)
    if line:
        lines.append(line)
    return lines or [[]]


def _draw_words(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    words: Sequence[str],
    lines: list[list[int]],
    font: Any,
    colors: Sequence[Any],
) -> None:
    """Draw wrapped ``words`` line by line from ``xy``, word i in ``colors[i]``."""
    x0, y = xy
    space = draw.textlength(" ", font=font)
    for line in lines:
        x = float(x0)
        for i in line:
            draw.text((x, y), words[i], fill=colors[i], font=font)
            x += draw.textlength(words[i], font=font) + space
        y += _line_height(font)


def captioned_grid(
    images: Any, captions: Sequence[str], nrow: int = 4, cell: int | None = None
) -> Image.Image:
    """Each image (resized to ``cell`` x ``cell`` by :func:`enlarge`; default: the first image's width, at least
    ``FIGURE_CELL``) with its caption under it.

    Captions are word-wrapped to the cell width, never cut; every row of the grid gets room for the longest.
    """
    pils = _as_pil_list(images)
    if len(captions) != len(pils):
        raise UserError(f"got {len(pils)} images but {len(captions)} captions; pass one caption per image")
    cell = int(cell or max(FIGURE_CELL, pils[0].size[0]))
    pad = 4
    font = _font(max(10, min(16, cell // 10)))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    words = [str(c).split() for c in captions]
    wrapped = [_wrap(ws, font, cell - 2 * pad, scratch) for ws in words]
    line_h = _line_height(font)
    text_h = max(len(w) for w in wrapped) * line_h + 2 * pad + line_h // 2  # room for the last line's descenders
    cols = max(1, min(int(nrow), len(pils)))
    rows = math.ceil(len(pils) / cols)
    cw, ch = cell + pad, cell + text_h
    canvas = Image.new("RGB", (cols * cw + pad, rows * ch + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (im, ws, lines) in enumerate(zip(pils, words, wrapped)):
        r, c = divmod(i, cols)
        x, y = pad + c * cw, pad + r * ch
        canvas.paste(enlarge(im, cell), (x, y))
        _draw_words(draw, (x + pad, y + cell + pad), ws, lines, font, ["black"] * len(ws))
    return canvas


def attention_figure(
    image: Any,
    attention: Sequence[Any],
    tokens: Sequence[str],
    length: int,
    k: int = 5,
    size: int = 256,
    sigma: float | None = None,
    style: str = "spotlight",
    caption: str | None = None,
) -> Image.Image:
    """Fig. 1/4: the stage images in the first row, then per attention stage the top-k words and their maps.

    ``image``: (3, H, W) in [-1, 1], or a list of stage images (tensors or PIL), smallest first; each is
    resized to ``size`` by :func:`enlarge`. ``attention``: per attention stage a (T, h, w) map (Eq. 2, row i = word i;
    batch element already selected). ``length``: the caption's true length (Eq. 15's T).

    Layout: ``cols = max(number of stage images, k)`` cells of ``size`` px, ``1 + len(attention)`` rows of
    ``LABEL_HEIGHT + size`` px, a label strip above every cell: width ``cols * size``, height
    ``(1 + len(attention)) * (LABEL_HEIGHT + size)``. Row r + 1 shows the top-k words of attention stage r
    (Eq. 15), each map upsampled with ``upsample_map(..., sigma)`` and blended over the image that stage
    produced (image r + 1 when there is one more image than attention stages, as F_i^attn feeds G_i; else
    the last image) in ``style`` ("spotlight", "heat" or "original", see :func:`overlay`), labelled with the
    word and its share of the stage's Eq. 15 mass. Cells of words beyond ``length`` stay white. With
    ``caption``, the sentence is written, word-wrapped, in a strip above all that (the figure grows by it).
    """
    if style not in _STYLES:
        raise UserError(f"style must be one of {', '.join(_STYLES)}, got {style!r}")
    if int(k) < 1 or int(size) < 8:
        raise UserError(f"need k >= 1 and size >= 8 px, got k={k}, size={size}")
    k, size = int(k), int(size)
    if isinstance(image, Image.Image) or (isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 3):
        stages = [image]
    else:
        stages = list(image)
    if not stages:
        raise UserError("attention_figure needs at least one image")
    stage_pils = [to_pil(x) for x in stages]
    resized = [enlarge(im, size) for im in stage_pils]
    maps = [_as_map(a) for a in attention]  # (T, h, w) per attention stage
    shift = 1 if len(resized) == len(maps) + 1 else None

    cols = max(len(resized), k)
    cell_h = LABEL_HEIGHT + size
    canvas = Image.new("RGB", (cols * size, (1 + len(maps)) * cell_h), "white")
    draw = ImageDraw.Draw(canvas)

    def label(text: str, x: int, y: int, fill: Any = "black") -> None:
        strip = Image.new("RGB", (size, LABEL_HEIGHT), "white")  # clips text that cannot shrink enough
        font = _fit_font(text, size - 6, _LABEL_FONT, draw)
        top = max(0, (LABEL_HEIGHT - _line_height(font)) // 2 + 1)
        ImageDraw.Draw(strip).text((3, top), text, fill=fill, font=font)
        canvas.paste(strip, (x, y))

    for c, (im, orig) in enumerate(zip(resized, stage_pils)):
        label(f"{orig.size[0]}x{orig.size[1]}", c * size, 0, fill=(90, 90, 90))
        canvas.paste(im, (c * size, LABEL_HEIGHT))

    for r, att in enumerate(maps):
        beta_hat = suppress_attention(att, length)  # (T, h, w), Eq. 15
        ranked = top_words(att, length, k)
        total = float(beta_hat[:length].double().sum()) or 1.0
        base = np.asarray(resized[r + shift] if shift else resized[-1])  # (size, size, 3)
        y = (r + 1) * cell_h
        for c, (i, score) in enumerate(ranked):
            word = tokens[i] if i < len(tokens) else f"<{i}>"
            label(f"{word} {score / total:.2f}", c * size, y)
            heat = upsample_map(beta_hat[i], size, sigma)  # (size, size) in [0, 1]
            canvas.paste(overlay(base, heat, style), (c * size, y + LABEL_HEIGHT))
    return canvas if caption is None else _with_title(canvas, caption)


def _with_title(figure: Image.Image, text: str) -> Image.Image:
    """``figure`` below a strip holding ``text``, word-wrapped to the figure's width."""
    pad = 6
    font = _font(_LABEL_FONT)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    words = str(text).split()
    lines = _wrap(words, font, figure.width - 2 * pad, scratch)
    strip_h = len(lines) * _line_height(font) + 2 * pad
    canvas = Image.new("RGB", (figure.width, strip_h + figure.height), "white")
    _draw_words(ImageDraw.Draw(canvas), (pad, pad), words, lines, font, ["black"] * len(words))
    canvas.paste(figure, (0, strip_h))
    return canvas


def _changed_colors(reference: Sequence[str], words: Sequence[str]) -> list[Any]:
    """Black for the words that ``words`` shares with ``reference`` (longest matching blocks), red for the rest."""
    colors: list[Any] = [_CHANGED_COLOR] * len(words)
    for block in difflib.SequenceMatcher(
        a=list(reference), b=list(words), autojunk=False
    ).get_matching_blocks():
        colors[block.b : block.b + block.size] = ["black"] * block.size
    return colors


def word_swap_figure(
    rows: Sequence[tuple[str, Any]], size: int = FIGURE_CELL, text_width: int | None = None
) -> Image.Image:
    """Fig. 5: one row per caption (same z and CA noise, one word changed), its caption written beside it.

    ``rows``: (caption, images) pairs; images are the last-stage images of that caption (one per seed):
    (N, 3, H, W), a list of (3, H, W) tensors or PIL images, or a single image. Column n shows the same seed
    in every row, so reading down a column shows what the changed word does. Words that differ from the
    first row's caption (by a word diff; the first row is compared with the second) are drawn in red.
    Layout as :func:`captioned_rows`.
    """
    if not rows:
        raise UserError("word_swap_figure needs at least one (caption, images) row")
    words = [str(c).split() for c, _ in rows]
    # the first row is compared with the second, every other row with the first
    colors = [_changed_colors(words[1 if r == 0 and len(rows) > 1 else 0], w) for r, w in enumerate(words)]
    return captioned_rows(rows, size=size, text_width=text_width, colors=colors)


def captioned_rows(
    rows: Sequence[tuple[str, Any]],
    size: int = FIGURE_CELL,
    text_width: int | None = None,
    titles: Sequence[str] | None = None,
    colors: Sequence[Sequence[Any]] | None = None,
) -> Image.Image:
    """One row per caption: the caption, word-wrapped in a column ``text_width`` px wide (default
    ``2 * size``), then its images, each resized to ``size`` by :func:`enlarge`.

    ``rows``: (caption, images) pairs, images as in :func:`word_swap_figure`. ``titles``: optional labels
    written above the image columns (e.g. "real", "generated"). ``colors``: optional colour per word of each
    caption (default black). Size: ``text_width + cols * (size + 4) + 4`` wide, where cols = the longest row.
    """
    if not rows:
        raise UserError("captioned_rows needs at least one (caption, images) row")
    size = int(size)
    text_w = int(text_width or 2 * size)
    pad = 4
    captions = [str(c) for c, _ in rows]
    images = [_as_pil_list(ims) for _, ims in rows]
    font = _font(max(11, min(18, size // 8)))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_words, row_lines, row_h = [], [], []
    for cap in captions:
        words = cap.split()
        lines = _wrap(words, font, text_w - 2 * pad, scratch)
        row_words.append(words)
        row_lines.append(lines)
        row_h.append(max(size, len(lines) * _line_height(font) + 2 * pad))
    ncols = max(len(ims) for ims in images)
    width = text_w + ncols * (size + pad) + pad
    title_h = LABEL_HEIGHT if titles else 0
    canvas = Image.new("RGB", (width, title_h + sum(row_h) + (len(rows) + 1) * pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles or []):
        draw.text((text_w + c * (size + pad) + 3, pad), str(title), fill=(90, 90, 90), font=_fit_font(str(title), size - 6, _LABEL_FONT, draw))
    y = pad + title_h
    for r, (words, lines, h, ims) in enumerate(zip(row_words, row_lines, row_h, images)):
        word_colors = list(colors[r]) if colors is not None else ["black"] * len(words)
        text_h = len(lines) * _line_height(font)
        _draw_words(draw, (pad, y + max(pad, (h - text_h) // 2)), words, lines, font, word_colors)
        for c, im in enumerate(ims):
            canvas.paste(enlarge(im, size), (text_w + c * (size + pad), y))
        y += h + pad
    return canvas
