"""Figures written during training and by the demo: captioned sample grids and word-attention figures.

Drawing is ``attngan.viz``'s job (``captioned_grid``, ``attention_figure``); this module only batches its
calls and turns the result into PNG bytes for atomic writing. Without ``viz``, the grid falls back to a
plain PIL drawing and the attention figure is skipped.
"""

from __future__ import annotations

import io
import logging
import textwrap

import torch

__all__ = ["png_bytes", "captioned_grid_png", "attention_png", "real_vs_generated_png"]

log = logging.getLogger(__name__)


def png_bytes(image) -> bytes:
    """A PIL image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def captioned_grid_png(images: torch.Tensor, captions: list[str], ncol: int = 4) -> bytes:
    """Images (N, 3, H, W) in [-1, 1], each with its caption, as one PNG."""
    try:
        from .. import viz

        return png_bytes(viz.captioned_grid(list(images), list(captions), nrow=ncol))
    except (ImportError, AttributeError, TypeError) as exc:
        log.debug("viz.captioned_grid unavailable (%s); drawing a plain grid", exc)
    from PIL import Image, ImageDraw

    n, _, h, w = images.shape
    scale = max(1, -(-256 // w))
    cell_w, cell_h = w * scale, h * scale
    wrapped = [textwrap.wrap(c, width=max(8, cell_w // 7)) for c in captions]
    text_h = 14 * max(len(lines) for lines in wrapped) + 8
    rows = (n + ncol - 1) // ncol
    canvas = Image.new("RGB", (ncol * (cell_w + 8), rows * (cell_h + text_h + 8)), "white")
    draw = ImageDraw.Draw(canvas)
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        x, y = (i % ncol) * (cell_w + 8) + 4, (i // ncol) * (cell_h + text_h + 8) + 4
        canvas.paste(Image.fromarray(arr[i]).resize((cell_w, cell_h), Image.NEAREST), (x, y))
        draw.multiline_text((x, y + cell_h + 2), "\n".join(wrapped[i]), fill="black", spacing=1)
    return png_bytes(canvas)


def attention_png(
    stage_images: list[torch.Tensor],  # per stage, smallest first: (K, 3, s, s) in [-1, 1]
    attention: list[torch.Tensor],  # per attention stage: (K, T, h, w)
    tokens: list[list[str]],  # words of each caption (T_k <= T)
    captions: list[str] | None = None,  # the sentence written above each figure (None: its tokens)
) -> bytes:
    """One ``viz.attention_figure`` per sample (its caption, its stage images, then the top words' maps per
    attention stage, as Fig. 4 of the paper), stacked vertically, as PNG bytes (ImportError without viz)."""
    from PIL import Image

    from .. import viz

    figures = []
    for k in range(len(tokens)):
        n = len(tokens[k])
        images = [im[k].float().cpu() for im in stage_images]  # (3, s, s) per stage
        maps = [a[k, :n].float().cpu() for a in attention]  # (T_k, h, w) per attention stage
        caption = captions[k] if captions is not None else " ".join(tokens[k])
        figures.append(viz.attention_figure(images, maps, tokens[k], n, caption=caption).convert("RGB"))
    width = max(f.width for f in figures)
    canvas = Image.new("RGB", (width, sum(f.height for f in figures)), "white")
    y = 0
    for f in figures:
        canvas.paste(f, (0, y))
        y += f.height
    return png_bytes(canvas)


def real_vs_generated_png(reals: torch.Tensor, fakes: torch.Tensor, captions: list[str]) -> bytes:
    """Per caption, a real test image of it beside the image generated from it (each (N, 3, s, s) in
    [-1, 1]), as PNG bytes (ImportError without viz)."""
    from .. import viz

    rows = [(c, [r, f]) for c, r, f in zip(captions, reals, fakes)]
    return png_bytes(viz.captioned_rows(rows, titles=["real test image", "generated"]))
