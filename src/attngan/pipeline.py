"""Inference: images and attention maps from sentences (Eq. 1-2), in the style of a diffusers pipeline.

Example::

    from attngan import AttnGANPipeline

    pipe = AttnGANPipeline.from_pretrained("runs/00001-shapes-gan/model")   # or a model folder
    out = pipe(["a small red circle at the top left", "a large blue square"], seed=0)
    out.images[0][-1].save("red-circle.png")       # last stage of the first image
    print(out.unknown_words)                       # words the model does not know, per image

Randomness comes only from ``seed`` / ``generator``: each image gets its own ``torch.Generator``
(``seed + image index``) on the CPU from which z and then the conditioning-augmentation noise are drawn,
so an image does not depend on the batch size or on the other prompts. This module never imports the
training code.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_component, save_component
from .config import GeneratorConfig, ImageEncoderConfig, TextEncoderConfig
from .errors import CheckpointError, DataError, UserError
from .nn import Generator, ImageEncoder, TextEncoder
from .text import Vocabulary, encode_caption

log = logging.getLogger(__name__)

__all__ = ["AttnGANPipeline", "AttnGANOutput", "resolve_model_dir"]


@dataclass
class AttnGANOutput:
    """One entry per generated image (prompts x num_images_per_prompt, prompt-major)."""

    images: list[list[Any]] = field(default_factory=list)  # PIL image per stage, smallest first
    stage_tensors: list[list[torch.Tensor]] = field(default_factory=list)  # (3, s, s) in [-1, 1] per stage
    attention_maps: list[list[torch.Tensor]] = field(default_factory=list)  # (T, h, w) per attention stage
    tokens: list[list[str]] = field(default_factory=list)  # words actually used (T = len(tokens))
    unknown_words: list[list[str]] = field(default_factory=list)  # words dropped as unknown
    prompts: list[str] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model folder, or a run folder holding ``model/``."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; pass a model folder or a run folder (runs/NNNNN-...)")
    if (p / "generator").is_dir():
        return p
    if (p / "model" / "generator").is_dir():
        return p / "model"
    raise CheckpointError(
        f"{p} is neither a model folder (generator/, text_encoder/, vocab.json) nor a run folder with model/; "
        "train one with `attngan train` or convert the original release with `attngan convert`"
    )


def _to_pil(image: torch.Tensor):
    from PIL import Image

    arr = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy())


class AttnGANPipeline:
    """Text encoder + attentional generator + vocabulary (+ optional DAMSM image encoder)."""

    def __init__(
        self,
        text_encoder: TextEncoder,
        generator: Generator,
        vocab: Vocabulary,
        image_encoder: ImageEncoder | None = None,
        max_words: int | None = None,  # longer captions keep their first words (None: no limit)
    ) -> None:
        if len(vocab) != text_encoder.config.vocab_size:
            raise CheckpointError(
                f"the vocabulary has {len(vocab)} words but the text encoder expects {text_encoder.config.vocab_size}"
            )
        if text_encoder.config.embed_dim != generator.config.embed_dim:
            raise CheckpointError(
                f"text encoder width {text_encoder.config.embed_dim} != generator embed_dim {generator.config.embed_dim}"
            )
        self.text_encoder = text_encoder.eval()
        self.generator = generator.eval()
        self.image_encoder = image_encoder.eval() if image_encoder is not None else None
        self.vocab = vocab
        self.max_words = max_words

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> AttnGANPipeline:
        d = resolve_model_dir(path)
        if not (d / "text_encoder").is_dir() or not (d / "vocab.json").is_file():
            raise CheckpointError(f"{d} has no text_encoder/ or vocab.json; it cannot turn sentences into images")
        text_encoder = load_component(d / "text_encoder", TextEncoder, TextEncoderConfig)
        generator = load_component(d / "generator", Generator, GeneratorConfig)
        image_encoder = None
        if (d / "image_encoder").is_dir():
            image_encoder = load_component(d / "image_encoder", ImageEncoder, ImageEncoderConfig)
        vocab = Vocabulary.load(d / "vocab.json")
        return cls(text_encoder, generator, vocab, image_encoder).to(device)

    @classmethod
    def from_original(
        cls,
        generator_pth: str | os.PathLike,
        text_encoder_pth: str | os.PathLike,
        captions_pickle: str | os.PathLike,
        image_encoder_pth: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
    ) -> AttnGANPipeline:
        """The original release: ``bird_AttnGAN2.pth``, ``text_encoder200.pth`` and ``captions.pickle``."""
        from .data.pickles import load_captions_pickle
        from .legacy import load_original

        generator = load_original(generator_pth, kind="generator")
        text_encoder = load_original(text_encoder_pth, kind="text_encoder")
        image_encoder = load_original(image_encoder_pth, kind="image_encoder") if image_encoder_pth else None
        vocab = load_captions_pickle(captions_pickle).vocab
        return cls(text_encoder, generator, vocab, image_encoder).to(device)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        d = Path(directory)
        save_component(d / "text_encoder", self.text_encoder, self.text_encoder.config)
        save_component(d / "generator", self.generator, self.generator.config)
        if self.image_encoder is not None:
            save_component(d / "image_encoder", self.image_encoder, self.image_encoder.config)
        self.vocab.save(d / "vocab.json")
        return d

    def to(self, device: str | torch.device) -> AttnGANPipeline:
        for m in (self.text_encoder, self.generator, self.image_encoder):
            if m is not None:
                m.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    # ------------------------------------------------------------------------------------------ text
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """Prompts -> (captions (B, T), lengths (B,), mask (B, T) True at padding, encoded captions)."""
        encoded = []
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise UserError("empty sentence: give a caption with at least one word the model knows")
            try:
                enc = encode_caption(p, self.vocab, self.max_words or 10**6)
            except DataError as exc:
                raise UserError(str(exc)) from None
            if enc.unknown:
                log.warning("unknown words in %r (ignored): %s", p, ", ".join(enc.unknown))
            encoded.append(enc)
        t = max(e.length for e in encoded)
        captions = torch.zeros(len(encoded), t, dtype=torch.long)
        for i, e in enumerate(encoded):
            captions[i, : e.length] = torch.tensor(e.ids, dtype=torch.long)
        lengths = torch.tensor([e.length for e in encoded], dtype=torch.long)
        mask = torch.arange(t)[None, :] >= lengths[:, None]
        return captions, lengths, mask, encoded

    # ------------------------------------------------------------------------------------------ sampling
    @torch.inference_mode()
    def __call__(
        self,
        prompts: str | list[str],
        *,
        num_images_per_prompt: int = 1,
        seed: int | list[int] | None = None,  # base seed (image k uses seed + k) or one seed per image
        generator: torch.Generator | None = None,  # used when seed is None
        ca_mean: bool = False,  # condition on the CA mean (no CA noise)
        return_attention: bool = True,
        batch_size: int = 16,
        legacy_mask_bug: bool = False,  # reproduce the original's attention-mask bug (parity only)
        progress: bool = False,
    ) -> AttnGANOutput:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise UserError("no sentence given")
        if num_images_per_prompt < 1:
            raise UserError("num_images_per_prompt must be >= 1")
        all_prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        n = len(all_prompts)
        if isinstance(seed, (list, tuple)):
            if len(seed) != n:
                raise UserError(f"{len(seed)} seeds given for {n} images")
            seeds: list[int | None] = [int(s) for s in seed]
        elif seed is not None:
            seeds = [int(seed) + k for k in range(n)]
        elif generator is not None:
            seeds = [None] * n
        else:
            base = int(torch.randint(0, 2**31 - 1, (1,)).item())
            seeds = [base + k for k in range(n)]
        gcfg = self.generator.config
        # z then CA noise per image, on the CPU, so results do not depend on batching or device.
        z_all, eps_all = [], []
        for s in seeds:
            g = torch.Generator().manual_seed(s) if s is not None else generator
            z_all.append(torch.randn(gcfg.z_dim, generator=g))
            eps_all.append(torch.randn(gcfg.condition_dim, generator=g))
        out = AttnGANOutput()
        device = self.device
        chunks = range(0, n, max(1, batch_size))
        if progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="sampling", unit="batch")
        for start in chunks:
            stop = min(start + batch_size, n)
            captions, lengths, mask, encoded = self.encode_prompts(all_prompts[start:stop])
            captions, lengths, mask = captions.to(device), lengths.to(device), mask.to(device)
            words, sentence = self.text_encoder(captions, lengths)
            z = torch.stack(z_all[start:stop]).to(device)
            eps = torch.stack(eps_all[start:stop]).to(device)
            result = self.generator(
                z,
                sentence,
                words,
                mask,
                ca_noise=eps,
                ca_mean=ca_mean,
                legacy_mask_bug=legacy_mask_bug,
                need_attention=return_attention,
            )
            for j, enc in enumerate(encoded):
                stages = [img[j].float().cpu() for img in result.images]
                out.stage_tensors.append(stages)
                out.images.append([_to_pil(x) for x in stages])
                out.attention_maps.append([a[j, : enc.length].float().cpu() for a in result.attention])
                out.tokens.append(list(enc.tokens))
                out.unknown_words.append(list(enc.unknown))
                out.prompts.append(all_prompts[start + j])
        out.seeds = seeds
        return out
