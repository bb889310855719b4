"""Attention maps: word importance (Eq. 15), upsampling "with Gaussian filters" (Sec. 5.2) and overlays
on an image. Arrays in, arrays out (see the package docstring for the differences from the original)."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from attngan.errors import UserError

_SPOTLIGHT_FLOOR = 0.2  # brightness of the unattended parts of the image in the "spotlight" style


_HEAT_COLOR = (255, 0, 0)  # attention tint of the "heat" style


_HEAT_ALPHA = 0.65  # opacity of the tint where the normalised map is 1


_ORIGINAL_ALPHA = 180 / 255  # the original pasted the gray map over the image with a constant alpha of 180


_STYLES = ("spotlight", "heat", "original")  # see overlay


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
