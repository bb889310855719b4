"""The response bodies' images: every stage's image and the top words' attention maps as PNG data URLs.

Drawing is :mod:`attngan.viz`'s (``top_words``, ``upsample_maps``, ``overlays``, ``attention_figure``,
``png_from_array``); this module picks what a response shows and lays it out as JSON-ready dicts. A stage's
top words are upsampled and tinted in one batch, and every image is encoded from its numpy pixels.
"""

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..pipeline import AttnGANOutput
from ..viz import attention_figure, overlays, png_from_array, top_words, upsample_maps

__all__ = ["TOP_WORDS", "data_url", "render_generate", "render_bird"]

TOP_WORDS = 5  # words shown per attention stage (Fig. 1 shows the top 5)
MAP_SIZE_RANGE = (64, 128)  # attention overlays are drawn at the image's size, clamped to this range
HEAT_ALPHA = 0.6  # opacity of the red tint of the overlays where a word's map is 1


def data_url(image: Image.Image | np.ndarray) -> str:
    """A PNG data URL of an RGB image or (H, W, 3) uint8 pixels (:func:`~attngan.viz.png_from_array`: one
    PNG filter and Huffman coding; several times faster than Pillow's encoder)."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return "data:image/png;base64," + base64.b64encode(png_from_array(pixels)).decode("ascii")


def _map_size(image_size: int) -> int:
    lo, hi = MAP_SIZE_RANGE
    return max(lo, min(hi, image_size))


def _attention_stages(
    stages: Sequence[Image.Image], maps: Sequence[Any], tokens: Sequence[str]
) -> list[dict]:
    """Per attention stage k (which drew image k + 1): its top words (Eq. 15) and their overlaid maps."""
    out = []
    for k, attn in enumerate(maps):  # (T, h, w)
        attn = torch.as_tensor(attn).detach().cpu().float().numpy()  # no copy for a CPU float32 tensor
        length = attn.shape[0]
        target = stages[min(k + 1, len(stages) - 1)]
        size = _map_size(target.size[0])
        base = np.asarray(target.convert("RGB").resize((size, size), Image.BILINEAR))  # (s, s, 3)
        ranked = top_words(attn, length, k=length)  # every word, best first
        total = sum(score for _, score in ranked) or 1.0
        shown = ranked[:TOP_WORDS]
        heats = upsample_maps(attn[[j for j, _ in shown]], size)  # (K, s, s) in [0, 1]
        tinted = overlays(base, heats, "heat", alpha=HEAT_ALPHA)  # (K, s, s, 3) uint8
        words = [
            {"word": tokens[j], "index": j, "score": score, "share": score / total, "map": data_url(pixels)}
            for (j, score), pixels in zip(shown, tinted)
        ]
        out.append({"stage": k + 1, "size": int(attn.shape[-1]), "words": words})
    return out


def render_generate(
    caption: str,
    out: AttnGANOutput,  # the request's images
    queue_ms: float,  # time the request waited for the model
    compute_ms: float,  # time of the model's batch
    batch_images: int,  # images in that batch
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
                "attention": _attention_stages(stages, maps, tokens),
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
