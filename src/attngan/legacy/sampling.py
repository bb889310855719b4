"""Sampling as the original's ``gen_example`` does: its batches, its noise order and its attention-mask bug.

The bug (:func:`attngan.nn.attention.legacy_tiled_mask`) lets a sample read the masks of the others in
its batch, so an image depends on its batch, and the original's outputs are met only with its batches:
image ``j`` of every sentence in one batch, sorted by caption length, longest first (main.py:
``np.argsort(cap_lens)[::-1]``). With one seed the noise is drawn as ``gen_example`` draws it: per batch,
z of all its images, then their CA noise (drawn inside G), from one stream on the pipeline's device
seeded once (main.py's ``torch.manual_seed``). :class:`attngan.pipeline.AttnGANPipeline` draws every
image on its own instead; this module receives the pipeline (it sits below it) and runs the pipeline's
own loop over these batches.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..nn.attention import WordAttention, set_legacy_mask_bug

__all__ = ["sample_like_original", "original_batches"]


def original_batches(lengths: Sequence[int], num_images_per_prompt: int) -> list[list[int]]:
    """The image indices (``prompt * num_images_per_prompt + j``) of each of ``gen_example``'s batches.

    Batch ``j`` holds image ``j`` of every prompt in main.py's order ``np.argsort(cap_lens)[::-1]``. Where a
    caption sits matters under the bug, equal lengths included: sample b reads the masks of the rows
    (b * Q + q) % B. The numpy of 2018 sorted up to 16 items by insertion, which is stable (equal lengths
    end up in reverse order); today's numpy uses SIMD sorts that are not, hence ``kind="stable"``.
    """
    order = [int(i) for i in np.argsort(np.array(lengths), kind="stable")[::-1]]
    m = num_images_per_prompt
    return [[i * m + j for i in order] for j in range(m)]


def _gen_example_noise(
    batches: list[list[int]], seed: int, device: torch.device, z_dim: int, condition_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z (n, z_dim), eps (n, c)) on the CPU: per batch, z of all its images, then their CA noise, from
    one stream on ``device`` seeded once with ``seed``."""
    try:
        g = torch.Generator(device=device).manual_seed(seed)
    except RuntimeError:  # a device without its own generators
        g = torch.Generator().manual_seed(seed)
    n = sum(len(ks) for ks in batches)
    z_all, eps_all = torch.empty(n, z_dim), torch.empty(n, condition_dim)
    for ks in batches:
        z_all[ks] = torch.randn(len(ks), z_dim, generator=g, device=g.device).cpu()
        eps_all[ks] = torch.randn(len(ks), condition_dim, generator=g, device=g.device).cpu()
    return z_all, eps_all


@contextlib.contextmanager
def _legacy_mask_bug(module: nn.Module) -> Iterator[None]:
    """The original's mis-tiled attention mask in ``module`` for the block; each layer's setting restored."""
    layers = [m for m in module.modules() if isinstance(m, WordAttention)]
    before = [m.legacy_mask_bug for m in layers]
    set_legacy_mask_bug(module)
    try:
        yield
    finally:
        for m, enabled in zip(layers, before):
            m.legacy_mask_bug = enabled


@torch.inference_mode()
def sample_like_original(
    pipe: Any,  # an attngan.pipeline.AttnGANPipeline
    prompts: str | Sequence[str],
    *,
    num_images_per_prompt: int = 1,
    seed: int | Sequence[int] | None = None,  # one: gen_example's noise stream; one per image: each its own
    generator: torch.Generator | Sequence[torch.Generator] | None = None,  # instead of seed (per-image noise)
    ca_mean: bool = False,  # condition on mu of the CA instead of sampling c (not what the original did)
    return_attention: bool = True,  # False skips the maps (allows the fused attention kernel)
    progress: bool = False,  # tqdm bar over batches
    max_words: int | None = None,  # keep the first max_words known words (None: the pipeline's setting)
) -> Any:
    """``pipe(prompts, ...)`` with the original's attention-mask bug, batches and noise order.

    Returns the pipeline's ``AttnGANOutput``. The batches are ``gen_example``'s
    (:func:`original_batches`), whatever the pipeline's batch size. With one ``seed`` (or none) the noise
    is ``gen_example``'s and every image reports that seed; with a seed per image, or ``generator``, each
    image's noise is the pipeline's own. The original ran ``gen_example`` on a GPU, so its noise is met on
    a CUDA device; on a CPU it is that of the original run on a CPU.
    """
    per_image = pipe._images(prompts, num_images_per_prompt, max_words)  # errors before any work
    seeds, z_all, eps_all = pipe._noise(len(per_image), seed, generator)  # checks seed, draws one if None
    m = int(num_images_per_prompt)  # checked by pipe._images
    batches = original_batches([e.length for _, e in per_image[::m]], m)
    one_seed = seed is None or isinstance(seed, numbers.Integral) or getattr(seed, "ndim", None) == 0
    if generator is None and one_seed:  # numpy and 0-d tensor integers count as one seed
        cfg = pipe.generator.config
        z_all, eps_all = _gen_example_noise(batches, seeds[0], pipe.device, cfg.z_dim, cfg.condition_dim)
        seeds = [seeds[0]] * len(per_image)
    with _legacy_mask_bug(pipe.generator):
        return pipe._draw(per_image, batches, seeds, z_all, eps_all, ca_mean, return_attention, progress)
