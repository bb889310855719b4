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

Modules: ``maps`` (attention maps), ``images`` (pixels, PNG, grids), ``figures`` (captioned figures).
"""

from .figures import (
    FIGURE_CELL,
    LABEL_HEIGHT,
    attention_figure,
    captioned_grid,
    captioned_rows,
    word_swap_figure,
)
from .images import enlarge, image_grid, png_bytes, png_from_array, to_pil, to_pil_batch, uint8_pixels
from .maps import overlay, overlays, suppress_attention, top_words, upsample_map, upsample_maps

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
