"""Figures: tensors in, PIL images out (attention maps as in Fig. 1/4, word swaps as in Fig. 5, grids).

Word importance follows Eq. 15 of the paper: an attention weight beta_{j,i} (Eq. 2) is kept only where it is
larger than 1/T, T being the caption's true length, so that words which attend to nothing in particular drop
out; the top-k words are those with the largest sum over regions j of beta_hat_{j,i}. Each kept map is
upsampled "with Gaussian filters" (Sec. 5.2) as the original's ``skimage.transform.pyramid_expand``: bilinear
resize with mirrored borders, then a Gaussian blur with sigma proportional to the upscale factor.

Differences from the original ``build_super_images2`` (taoxugit/AttnGAN ``code/miscc/utils.py``), on purpose:
- it selected words by ``sum(beta * [beta > 4/T])`` and drew ``beta * [beta > 2/T]``; we follow Eq. 15;
- it blurred with a fixed ``sigma=20`` for every upscale (pass ``sigma=20`` to ``upsample_map`` to match);
- it normalised an all-zero map to NaN; we return zeros.

Nothing here reads or writes files; callers save the returned images.
"""

from __future__ import annotations

import difflib
import functools
import io
import math
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from attngan.errors import UserError

__all__ = [
    "FIGURE_CELL",
    "LABEL_HEIGHT",
    "attention_figure",
    "captioned_grid",
    "captioned_rows",
    "enlarge",
    "image_grid",
    "overlay",
    "overlays",
    "png_bytes",
    "png_from_array",
    "suppress_attention",
    "to_pil",
    "to_pil_batch",
    "top_words",
    "uint8_pixels",
    "upsample_map",
    "upsample_maps",
    "word_swap_figure",
]

FIGURE_CELL = 256  # px: the least width of one image in a figure (smaller model outputs are enlarged)
LABEL_HEIGHT = 26  # px of the text strip above each cell of attention_figure
_LABEL_FONT = 18  # px; shrunk until the label fits its cell
_SPOTLIGHT_FLOOR = 0.2  # brightness of the unattended parts of the image in the "spotlight" style
_HEAT_COLOR = (255, 0, 0)  # attention tint of the "heat" style
_HEAT_ALPHA = 0.65  # opacity of the tint where the normalised map is 1
_ORIGINAL_ALPHA = 180 / 255  # the original pasted the gray map over the image with a constant alpha of 180
_STYLES = ("spotlight", "heat", "original")  # see overlay
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


def _check_length(length: int, num_words: int) -> int:
    length = int(length)
    if not 1 <= length <= num_words:
        raise UserError(
            f"caption length {length} must be between 1 and the number of attention rows ({num_words}); "
            "pass the true (unpadded) caption length"
        )
    return length


def suppress_attention(attn: torch.Tensor | np.ndarray, length: int) -> torch.Tensor:
    """Eq. 15: beta_hat_{j,i} = beta_{j,i} if beta_{j,i} > 1/T else 0, with T = ``length``.

    ``attn`` is (T_max, h, w) or (T_max, N), row i = word i; rows at and after ``length`` are padding and
    are zeroed. Returns a float32 tensor of the same shape.
    """
    attn = torch.as_tensor(attn).detach().float().cpu()
    if attn.dim() not in (2, 3):
        raise UserError(f"attention must be (T, h, w) or (T, N), got shape {tuple(attn.shape)}")
    length = _check_length(length, attn.shape[0])
    out = torch.where(attn > 1.0 / length, attn, torch.zeros_like(attn))  # (T_max, ...)
    out[length:] = 0
    return out


def top_words(attn: torch.Tensor | np.ndarray, length: int, k: int = 5) -> list[tuple[int, float]]:
    """The ``k`` words with the largest sum_j beta_hat_{j,i} (Eq. 15), as (word index, score).

    Sorted by score descending, ties by lower index; only indices < ``length``, so at most ``length`` entries.
    Computed in numpy (as :func:`suppress_attention`, float32 comparison, float64 sums): a few small torch
    ops per call wait for all of torch's threads, which on a busy CPU cost up to 100 ms.
    """
    a = torch.as_tensor(attn).detach().cpu().float().numpy()  # no copy for a CPU float32 tensor
    if a.ndim not in (2, 3):
        raise UserError(f"attention must be (T, h, w) or (T, N), got shape {a.shape}")
    length = _check_length(length, a.shape[0])
    words = a[:length].reshape(length, -1)  # (length, regions)
    scores = np.where(words > np.float32(1.0 / length), words, np.float32(0.0)).sum(axis=1, dtype=np.float64)
    scores = scores.tolist()  # (length,)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return [(i, float(scores[i])) for i in order[: max(0, int(k))]]


def upsample_map(m: torch.Tensor | np.ndarray, size: int, sigma: float | None = None) -> np.ndarray:
    """Upsample an (h, w) attention map to (size, size) with a Gaussian filter, min-max normalised to [0, 1].

    As ``skimage.transform.pyramid_expand(m, upscale=size / h)``: bilinear resize with mirrored borders,
    then a Gaussian blur (reflected borders) of ``sigma``, by default ``2 * upscale / 6`` (the filter then
    spans about twice the upscale factor). The original used ``sigma=20``. A constant or all-zero map gives
    zeros, never NaN.
    """
    m = torch.as_tensor(m).detach().cpu().double().numpy()
    if m.ndim != 2:
        raise UserError(f"attention map must be (h, w), got shape {m.shape}")
    return upsample_maps(m[None], size, sigma)[0]


def upsample_maps(maps: torch.Tensor | np.ndarray, size: int, sigma: float | None = None) -> np.ndarray:
    """:func:`upsample_map` of each of K (h, w) maps at once: (K, h, w) -> (K, size, size) float32 in [0, 1].

    The bilinear resize reads, for every output pixel, two input pixels per axis (:func:`_zoom_taps`, from
    scipy's own ``zoom`` of an identity), so it runs as a few whole-array numpy operations; the blur is
    scipy's ``gaussian_filter`` over the K maps at once. Single-threaded throughout (BLAS matrix products
    would be faster on an idle CPU, but their threads wait for each other on a busy one); the result
    differs from a per-map ``ndimage.zoom`` by float64 rounding (below 1e-15 before the cast to float32).
    """
    if isinstance(maps, np.ndarray):
        m = maps.astype(np.float64)  # a copy: the steps below work in place
    else:
        m = torch.as_tensor(maps).detach().cpu().double().numpy().copy()
    if m.ndim != 3:
        raise UserError(f"attention maps must be (K, h, w), got shape {m.shape}")
    if int(size) < 1:
        raise UserError(f"size must be a positive number of pixels, got {size}")
    size = int(size)
    if not np.isfinite(m).all():
        m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    h, w = m.shape[1:]
    if sigma is None:
        sigma = 2.0 * (size / max(h, w)) / 6.0
    up = m
    if h != size:  # a zoom by 1 reads each pixel with weight 1: nothing to do
        up = _resize_rows(up, *_zoom_taps(h, size))  # (K, size, w)
    if w != size:  # the columns as rows, and back
        cols = np.ascontiguousarray(up.transpose(0, 2, 1))  # (K, w, size)
        up = _resize_rows(cols, *_zoom_taps(w, size)).transpose(0, 2, 1)  # (K, size, size)
    if sigma > 0:
        up = ndimage.gaussian_filter(up, sigma=(0.0, float(sigma), float(sigma)), mode="reflect")
    lo = up.min(axis=(1, 2), keepdims=True)
    hi = up.max(axis=(1, 2), keepdims=True)
    flat = ~(hi - lo > 1e-12 * np.maximum(1.0, np.abs(hi)))  # (K, 1, 1): constant maps give zeros
    up -= lo
    up /= np.where(flat, 1.0, hi - lo)
    if flat.any():
        up[flat[:, 0, 0]] = 0.0
    np.clip(up, 0.0, 1.0, out=up)
    return up.astype(np.float32)


@functools.lru_cache(maxsize=32)
def _zoom_taps(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The bilinear resize of an axis of n pixels to ``size`` as two (size, taps) arrays (read-only, cached):
    the input pixels that output pixel i reads and their weights.

    Taken from ``ndimage.zoom`` of an identity, so that the resize is the one upsample_map always did:
    grid_mode=True puts pixel centres at half-integers, as skimage's resize (align_corners=False), and
    borders are mirrored.
    """
    op = ndimage.zoom(np.eye(n), (size / n, 1), order=1, mode="mirror", grid_mode=True)  # (size, n)
    nonzero = op != 0
    first = nonzero.argmax(axis=1)
    last = n - 1 - nonzero[:, ::-1].argmax(axis=1)
    taps = int((last - first).max()) + 1
    index = np.minimum(first, n - taps)[:, None] + np.arange(taps)  # (size, taps)
    weight = np.take_along_axis(op, index, axis=1)  # (size, taps), zeros outside a row's own pixels
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


def _resize_rows(m: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(K, n, w) -> (K, size, w): row i is sum_t weight[i, t] * m[:, index[i, t]]."""
    out = np.take(m, index[:, 0], axis=1)
    out *= weight[:, :1]
    for t in range(1, index.shape[1]):
        part = np.take(m, index[:, t], axis=1)
        part *= weight[:, t : t + 1]
        out += part
    return out


def _to_uint8(image: Any, original_truncation: bool = False) -> np.ndarray:
    """(3, H, W) or (1, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    x = torch.as_tensor(image).detach()
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise UserError(f"image must be (3, H, W) or (1, H, W), got shape {tuple(x.shape)}")
    return uint8_pixels(x[None], original_truncation)[0]


def uint8_pixels(images: Any, original_truncation: bool = False) -> np.ndarray:
    """(N, 3, H, W) or (N, 1, H, W) in [-1, 1] -> (N, H, W, 3) uint8: (x + 1) * 127.5, rounded (see to_pil).

    The arithmetic runs in numpy on the whole batch: numpy's single-threaded loops cost the same whatever
    else runs on the CPU, where each small multi-threaded torch op waits for all its threads (on a
    2-core machine shared with other work, 18 such ops took over 100 ms against 0.2 ms in numpy).
    """
    x = torch.as_tensor(images).detach()
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"images must be (N, 3, H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
    a = x.cpu().float().permute(0, 2, 3, 1).numpy()  # (N, H, W, C): a view, no copy for channels-last input
    if a.shape[-1] == 1:
        a = np.broadcast_to(a, (*a.shape[:-1], 3))
    y = np.clip(a, np.float32(-1.0), np.float32(1.0))  # a new float32 array: the ops below are in place
    y += np.float32(1.0)  # float32 arithmetic, as the original's numpy float32
    y *= np.float32(127.5)
    if not original_truncation:
        np.rint(y, out=y)  # half to even, as torch.round
    return y.astype(np.uint8)  # in 0..255 after the clip; astype truncates toward zero


def to_pil(image: Any, original_truncation: bool = False) -> Image.Image:
    """(3, H, W) tensor in [-1, 1] -> RGB image: (x + 1) * 127.5, rounded, in 0..255.

    ``original_truncation=True`` reproduces the original ``((x + 1) * 127.5).astype(uint8)`` (it truncates,
    so 0.999 -> 254 where rounding gives 255). Values are first clipped to [-1, 1] in both modes; the
    original did not clip, which only matters outside the generator's tanh range, where it wrapped around.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(_to_uint8(image, original_truncation), mode="RGB")


def to_pil_batch(images: Any, original_truncation: bool = False) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> N RGB images, each as :func:`to_pil` makes it, converted as one batch."""
    return [Image.fromarray(a, mode="RGB") for a in uint8_pixels(images, original_truncation)]


def png_bytes(image: Image.Image, compress_level: int = 6, run_length: bool = False) -> bytes:
    """``image`` as PNG bytes. ``compress_level``: zlib's 0-9 (Pillow's default 6). ``run_length``: zlib
    matches runs only (``Z_RLE``, libpng's suggestion for images); with level 1, after PNG's filters about as
    small as level 6 and several times faster (for images made on demand)."""
    buf = io.BytesIO()
    strategy = {"compress_type": zlib.Z_RLE} if run_length else {}
    image.save(buf, format="PNG", compress_level=compress_level, **strategy)
    return buf.getvalue()


def png_from_array(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """(H, W, 3) uint8 pixels as RGB PNG bytes, for images made on demand: every row with PNG's "Up" filter
    (the difference from the row above: one numpy subtraction), then zlib with run-length matching only.

    Pillow tries PNG's five filters on every row; on a 2-core Xeon that made PNG encoding the largest cost of
    a served birds request. For photos resized to 128 and 256 px this was 2.0-2.2x as fast as
    ``png_bytes(image, 1, run_length=True)`` and 3-8 % larger; for the smooth images of an untrained birds
    generator, about 37 % larger. ``compress_level`` 0 stores the bytes uncompressed.
    """
    a = np.ascontiguousarray(pixels)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 1:
        raise UserError(f"pixels must be a non-empty (H, W, 3) uint8 array, got {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    rows = a.reshape(h, 3 * w)
    filtered = np.empty((h, 1 + 3 * w), dtype=np.uint8)  # each row: its filter type, then its bytes
    filtered[:, 0] = 2  # Up
    filtered[0, 1:] = rows[0]  # the row above the first one counts as zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG's filters
    deflate = zlib.compressobj(compress_level, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    idat = deflate.compress(filtered) + deflate.flush()
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, filters, no interlace
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def enlarge(image: Image.Image, size: int) -> Image.Image:
    """``image`` resized to ``size`` x ``size``: nearest-neighbour when enlarged (each model pixel stays a
    sharp block), bilinear when reduced."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.NEAREST if size >= max(image.size) else Image.BILINEAR)


def _as_pil_list(images: Any) -> list[Image.Image]:
    """A PIL image, a (3, H, W) / (N, 3, H, W) tensor or array, or a sequence of those -> list of RGB images."""
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(images)
        if t.dim() == 3:
            t = t[None]
        if t.dim() != 4:
            raise UserError(f"images must be (N, 3, H, W), got shape {tuple(t.shape)}")
        out = [to_pil(x) for x in t]
    else:
        out = [to_pil(im) for im in images]
    if not out:
        raise UserError("no images to draw; pass at least one image")
    return out


def image_grid(images: Any, nrow: int = 8, padding: int = 2) -> Image.Image:
    """Images ((N, 3, H, W) in [-1, 1] or a list of PIL) in rows of ``nrow``, like torchvision's make_grid.

    Size: (cols * (W + padding) + padding) x (rows * (H + padding) + padding), cols = min(nrow, N); black
    padding; images of another size are resized to the first one's.
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


def overlay(base: np.ndarray, heat: np.ndarray, style: str, alpha: float | None = None) -> Image.Image:
    """Blend a [0, 1] map (S, S) over an (S, S, 3) uint8 image.

    "spotlight": the image at full brightness where attended, dimmed elsewhere (works for any image colour);
    "heat": red tint with opacity ``alpha`` times the map (default 0.65), so unattended regions show the plain
    image; "original": the gray map pasted over the image with a constant ``alpha`` (default 180/255, as the
    original). ``alpha`` does not apply to "spotlight".
    """
    return Image.fromarray(overlays(base, np.asarray(heat)[None], style, alpha)[0], mode="RGB")


def overlays(base: np.ndarray, heats: np.ndarray, style: str, alpha: float | None = None) -> np.ndarray:
    """:func:`overlay` of K maps (K, S, S) over the same (S, S, 3) uint8 image: (K, S, S, 3) uint8, the same
    pixels as K calls.

    The arithmetic runs on channel planes (3, S, S), one map at a time, and each result is interleaved as it
    is stored: numpy's loops over a last axis of 3 channels cost several times more per pixel, and one
    map's planes stay in the CPU's cache where K maps' would not.
    """
    img = np.ascontiguousarray(np.asarray(base).transpose(2, 0, 1), dtype=np.float32)  # (3, S, S)
    heats = np.asarray(heats)  # (K, S, S)
    out = np.empty((len(heats), *img.shape[1:], 3), dtype=np.uint8)  # (K, S, S, 3)
    for k, heat in enumerate(heats):
        if style == "spotlight":
            blend = img * (_SPOTLIGHT_FLOOR + (1.0 - _SPOTLIGHT_FLOOR) * heat)
        elif style == "heat":
            a = (_HEAT_ALPHA if alpha is None else alpha) * heat  # (S, S)
            blend = img * (1.0 - a)
            blend += np.asarray(_HEAT_COLOR, dtype=np.float32)[:, None, None] * a  # same dtype as blend
        else:
            a = _ORIGINAL_ALPHA if alpha is None else alpha
            gray = np.uint8(heat * 255.0).astype(np.float32)  # (S, S), truncated like the original
            blend = img * (1.0 - a) + gray * a
        np.rint(blend, out=blend)
        np.clip(blend, 0, 255, out=blend)
        out[k] = blend.transpose(1, 2, 0)  # in 0..255: the cast to uint8 is exact
    return out


def _as_map(a: Any) -> torch.Tensor:
    """(T, h, w), or (T, N) with square N -> (T, h, w)."""
    a = torch.as_tensor(a).detach().float().cpu()
    if a.dim() == 2:
        side = math.isqrt(a.shape[1])
        if side * side != a.shape[1]:
            raise UserError(f"attention (T, N) needs a square number of regions, got N={a.shape[1]}")
        a = a.reshape(a.shape[0], side, side)
    if a.dim() != 3:
        raise UserError(f"attention must be (T, h, w) or (T, N), got shape {tuple(a.shape)}")
    return a


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
