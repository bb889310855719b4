"""Images: tensors in [-1, 1] to uint8 pixels and PIL images, PNG encoding, enlarging and plain grids."""

from __future__ import annotations

import io
import math
import struct
import zlib
from typing import Any

import numpy as np
import torch
from PIL import Image

from attngan.errors import UserError


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
    """(H, W, 3) uint8 pixels as RGB PNG bytes, or (H, W) as greyscale, for images made on demand: every row
    with PNG's "Up" filter (the difference from the row above: one numpy subtraction), then zlib with
    run-length matching only.

    Pillow tries PNG's five filters on every row; on a 2-core Xeon that made PNG encoding the largest cost of
    a served birds request. For photos resized to 128 and 256 px this was 2.0-2.2x as fast as
    ``png_bytes(image, 1, run_length=True)`` and 3-8 % larger; for the smooth images of an untrained birds
    generator, about 37 % larger. ``compress_level`` 0 stores the bytes uncompressed.
    """
    a = np.ascontiguousarray(pixels)
    grey = a.ndim == 2
    if a.dtype != np.uint8 or not (grey or (a.ndim == 3 and a.shape[2] == 3)) or min(a.shape[:2], default=0) < 1:
        raise UserError(f"pixels must be a non-empty (H, W, 3) or (H, W) uint8 array, got {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    channels = 1 if grey else 3
    rows = a.reshape(h, channels * w)
    filtered = np.empty((h, 1 + channels * w), dtype=np.uint8)  # each row: its filter type, then its bytes
    filtered[:, 0] = 2  # Up
    filtered[0, 1:] = rows[0]  # the row above the first one counts as zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG's filters
    deflate = zlib.compressobj(compress_level, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    idat = deflate.compress(filtered) + deflate.flush()
    colour_type = 0 if grey else 2  # greyscale or RGB
    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)  # 8 bits, deflate, filters, no interlace
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
