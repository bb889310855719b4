"""The response bodies' images: every stage's image and the top words' attention maps as PNG data URLs.

Drawing is :mod:`attngan.viz`'s (``top_words``, ``upsample_maps``, ``overlays``, ``attention_figure``,
``png_from_array``); this module picks what a response shows and lays it out as JSON-ready dicts. A word's
map is sent on its stage's grid (16-128 regions a side, greyscale: the data itself, which the web page
upsamples and tints in the browser); the upsampled, tinted picture is drawn here only when a request asks
for it (``overlays``), a stage's top words in one batch. Every image is encoded from its numpy pixels.
"""

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..pipeline import AttnGANOutput
from ..viz import attention_figure, overlays, png_from_array, top_words, upsample_maps

__all__ = ["TOP_WORDS", "data_url", "grid_map", "render_generate", "render_bird"]

TOP_WORDS = 5  # words shown per attention stage (Fig. 1 shows the top 5)
MAP_SIZE_RANGE = (64, 128)  # attention overlays are drawn at the image's size, clamped to this range
HEAT_ALPHA = 0.6  # opacity of the red tint of the overlays where a word's map is 1


def data_url(image: Image.Image | np.ndarray) -> str:
    """A PNG data URL of an RGB image, or of (H, W, 3) or (H, W) greyscale uint8 pixels
    (:func:`~attngan.viz.png_from_array`: one PNG filter and Huffman coding; several times faster than
    Pillow's encoder)."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return "data:image/png;base64," + base64.b64encode(png_from_array(pixels)).decode("ascii")


def _map_size(image_size: int) -> int:
    lo, hi = MAP_SIZE_RANGE
    return max(lo, min(hi, image_size))


def grid_map(weights: np.ndarray) -> tuple[np.ndarray, float]:
    """A word's attention weights on its stage's grid (h, w) as 8-bit pixels scaled to their largest weight,
    and that weight: weight ~= pixel / 255 * largest (0 where the word drew no attention)."""
    top = float(weights.max(initial=0.0))
    if not np.isfinite(top) or top <= 0.0:
        return np.zeros(weights.shape, dtype=np.uint8), 0.0
    scaled = np.nan_to_num(weights, nan=0.0, posinf=top, neginf=0.0) * (255.0 / top)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8), top


def _attention_stages(
    stages: Sequence[Image.Image], maps: Sequence[Any], tokens: Sequence[str], with_overlays: bool
) -> list[dict]:
    """Per attention stage k (which drew image k + 1): its top words (Eq. 15), each with its map on the grid
    and, if asked, that map upsampled and tinted over the stage's image."""
    out = []
    for k, attn in enumerate(maps):  # (T, h, w)
        attn = torch.as_tensor(attn).detach().cpu().float().numpy()  # no copy for a CPU float32 tensor
        length = attn.shape[0]
        ranked = top_words(attn, length, k=length)  # every word, best first
        total = sum(score for _, score in ranked) or 1.0
        shown = ranked[:TOP_WORDS]
        words = []
        for j, score in shown:
            pixels, top = grid_map(attn[j])
            words.append({
                "word": tokens[j], "index": j, "score": score, "share": score / total, "map": data_url(pixels),
                "map_max": top,
            })  # fmt: skip
        if with_overlays and shown:
            target = stages[min(k + 1, len(stages) - 1)]
            size = _map_size(target.size[0])
            base = np.asarray(target.convert("RGB").resize((size, size), Image.BILINEAR))  # (s, s, 3)
            heats = upsample_maps(attn[[j for j, _ in shown]], size)  # (K, s, s) in [0, 1]
            tinted = overlays(base, heats, "heat", alpha=HEAT_ALPHA)  # (K, s, s, 3) uint8
            for word, picture in zip(words, tinted):
                word["overlay"] = data_url(picture)
        out.append({"stage": k + 1, "size": int(attn.shape[-1]), "words": words})
    return out


def render_generate(
    caption: str,
    out: AttnGANOutput,  # the request's images
    queue_ms: float,  # time the request waited for the model
    compute_ms: float,  # time of the model's batch
    batch_images: int,  # images in that batch
    with_overlays: bool = False,  # also each word's map upsampled and tinted over its stage's image
) -> dict[str, Any]:
    """The body of ``POST /api/v1/generate`` (:class:`~attngan.serve.schema.GenerateResponse`) without
    ``warnings`` and ``time_ms``, which the route adds."""
    images = []
    for stages, maps, tokens, seed in zip(out.images, out.attention_maps, out.tokens, out.seeds):
        images.append(
            {
                "seed": seed,
                "stages": [
                    {"stage": s, "size": im.size[0], "image": data_url(im)} for s, im in enumerate(stages)
                ],
                "attention": _attention_stages(stages, maps, tokens, with_overlays),
            }
        )
    return {
        "caption": caption,
        "tokens": out.tokens[0],
        "unknown_words": out.unknown_words[0],
        "seeds": list(out.seeds),
        "images": images,
        "queue_ms": queue_ms,
        "compute_ms": compute_ms,
        "batch_images": batch_images,
    }


def render_bird(caption: str, out: AttnGANOutput, elapsed: float) -> dict[str, Any]:
    """The original eval/ API's response: one URL per stage and one attention figure per attention stage."""
    stages, maps, tokens = out.images[0], out.attention_maps[0], out.tokens[0]
    names = ["small", "medium", "large"] if len(stages) <= 3 else [f"stage{s}" for s in range(len(stages))]
    bird: dict[str, Any] = {name: data_url(im) for name, im in zip(names, stages)}
    size = _map_size(stages[-1].size[0])
    for k, attn in enumerate(maps):
        fig = attention_figure(stages[: k + 2], [attn], tokens, attn.shape[0], k=TOP_WORDS, size=size)
        bird[f"map{k + 1}"] = data_url(fig)
    bird |= {"caption": caption, "elapsed": elapsed, "seed": out.seeds[0]}
    return {"bird": bird}
