"""Inference: images and attention maps from sentences (Eq. 1-2), in the style of a diffusers pipeline.

Example (runnable: builds an untrained tiny model, so the images are noise)::

    import dataclasses
    from attngan.config import PRESETS
    from attngan.nn import Generator, TextEncoder
    from attngan.pipeline import AttnGANPipeline
    from attngan.text import Vocabulary

    vocab = Vocabulary.build([["a", "red", "circle"], ["a", "blue", "square"]])
    tiny = PRESETS["tiny"]
    pipe = AttnGANPipeline(
        TextEncoder(dataclasses.replace(tiny.text_encoder, vocab_size=len(vocab))), Generator(tiny.generator), vocab
    )
    out = pipe(["a red circle", "a blue purple square"], seed=0)
    out.images[0][-1].save("red-circle.png")   # last stage of the first image (PIL)
    print(out.tokens[1], out.unknown_words[1])  # ['a', 'blue', 'square'] ['purple']

    # a trained model: a model folder, a run folder (runs/00001-shapes-attngan) or the original release
    # pipe = AttnGANPipeline.from_pretrained("runs/00001-shapes-attngan")

Randomness comes only from ``seed`` / ``generator``: each image has its own ``torch.Generator`` (seed
``seed + image index``) from which z and then the conditioning-augmentation noise are drawn on the CPU
before moving to the model's device (as diffusers' ``randn_tensor``), so an image does not depend on the
batch size, the device or the other prompts. This module never imports the training code.

References: Xu et al., "AttnGAN", CVPR 2018; huggingface/diffusers ``pipeline_ddpm.py`` and
``utils/torch_utils.py`` (``randn_tensor``); NVlabs/stylegan3 ``gen_images.py`` (per-seed latents).
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import make_staging_dir
from .checkpoint import load_component, load_state_dict_strict, safe_torch_load, save_component
from .config import GeneratorConfig, ImageEncoderConfig, TextEncoderConfig
from .errors import CheckpointError, DataError, UserError
from .model_dir import find_model, resolve_model_dir
from .nn import Generator, ImageEncoder, TextEncoder, WordAttention
from .nn.modes import eval_mode
from .text import EncodedCaption, Vocabulary, encode_caption
from .viz import to_pil_batch

log = logging.getLogger(__name__)

__all__ = ["AttnGANPipeline", "AttnGANOutput", "find_model", "resolve_model_dir", "check_device", "COMPONENTS"]

COMPONENTS = ("text_encoder", "generator", "image_encoder")  # sub-folders of a model folder
# Everything of a model folder that belongs to one model (what save_pretrained(overwrite=True) replaces).
_MODEL_ENTRY = re.compile(r"(text_encoder|generator|image_encoder|discriminator\d+|vocab\.json)")


def _model_entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if _MODEL_ENTRY.fullmatch(p.name)) if d.is_dir() else []


def check_device(device: str | int | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, or a UserError if it is not a device name or not available here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but CUDA is not available here; use cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise UserError(f"device {device!r} was asked for but MPS is not available here; use cpu or auto")
    if dev.type not in ("cpu", "cuda"):  # (no CUDA probe: it would open a context on GPU 0 in every process)
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"device {device!r} is not available here ({first}); use cpu or auto") from None
    return dev


def _count(name: str, value: Any) -> int:
    """A positive integer argument (numpy integers too), or a UserError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"a seed must be an integer, got {value!r}")
    return int(value)


def _prompt_list(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if prompts is None or isinstance(prompts, (bytes, bytearray)) or not isinstance(prompts, Iterable):
        raise UserError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    return list(prompts)


@dataclass
class AttnGANOutput:
    """One entry per generated image (``len(prompts) * num_images_per_prompt``, prompt-major), except
    ``prompts`` / ``tokens`` / ``unknown_words`` which are also per image so that index k always matches."""

    images: list[list[Any]] = field(default_factory=list)  # PIL image per stage, smallest first
    stage_tensors: list[list[torch.Tensor]] = field(default_factory=list)  # (3, s, s) in [-1, 1] per stage
    attention_maps: list[list[torch.Tensor]] = field(default_factory=list)  # (T, h, w) per attention stage
    tokens: list[list[str]] = field(default_factory=list)  # words fed to the model (T = len(tokens))
    unknown_words: list[list[str]] = field(default_factory=list)  # words not in the vocabulary (ignored)
    prompts: list[str] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)  # None: drawn from a caller's generator


def _load_state_generator(generator: Generator, state_file: Path) -> None:
    """Put the EMA generator weights of a GAN training state file into ``generator``."""
    state = safe_torch_load(state_file)
    models = state.get("models") if isinstance(state, dict) else None
    if not isinstance(models, dict) or "generator_ema" not in models:
        kind = state.get("kind") if isinstance(state, dict) else None
        what = "a DAMSM training checkpoint (no generator)" if kind == "damsm" else "not an AttnGAN training checkpoint"
        raise CheckpointError(f"{state_file} is {what}; pass a state-*.pt file of an `attngan train` run")
    load_state_dict_strict(generator, models["generator_ema"], str(state_file))
    log.info("generator weights of %s (step %s)", state_file, state.get("step", "?"))


def _image_copies(batch: torch.Tensor, lengths: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Row j of a CPU batch (its first ``lengths[j]`` rows of dimension 1 if given) as a contiguous tensor of
    its own, one per row: the user may keep one image without the batch's memory, and saves only its own.

    Copied by numpy: a torch copy per row is a multi-threaded op each, which on a busy CPU cost 370 ms for
    the 48 stage images of a batch of 16 where numpy took 3 ms (benchmarks/README.md, sampling).
    """
    rows = batch.numpy()  # (B, ...) in any memory layout
    out = []
    for j in range(rows.shape[0]):
        row = rows[j] if lengths is None else rows[j, : lengths[j]]
        copy = torch.empty(row.shape, dtype=batch.dtype)
        np.copyto(copy.numpy(), row)
        out.append(copy)
    return out


class AttnGANPipeline:
    """Text encoder + attentional generator + vocabulary (+ optional DAMSM image encoder).

    ``pipe(prompts, seed=0)`` returns an :class:`AttnGANOutput`; see the module docstring for an example.
    """

    def __init__(
        self,
        text_encoder: TextEncoder,
        generator: Generator,
        vocab: Vocabulary,
        image_encoder: ImageEncoder | None = None,
        max_words: int | None = None,  # longer captions keep their first words (None: no limit)
        fast: bool = True,  # draw with an inference copy of G (folded BN, fused upsampling, channels-last)
    ) -> None:
        for name, value, cls in (
            ("text_encoder", text_encoder, TextEncoder),
            ("generator", generator, Generator),
            ("vocab", vocab, Vocabulary),
        ):
            if not isinstance(value, cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")
        if image_encoder is not None and not isinstance(image_encoder, ImageEncoder):
            raise TypeError(f"image_encoder must be an ImageEncoder or None, got {type(image_encoder).__name__}")
        if max_words is not None:
            max_words = _count("max_words", max_words)
        if len(vocab) != text_encoder.config.vocab_size:
            raise CheckpointError(
                f"the vocabulary has {len(vocab)} words but the text encoder expects "
                f"{text_encoder.config.vocab_size}; the two files come from different models"
            )
        if text_encoder.config.embed_dim != generator.config.embed_dim:
            raise CheckpointError(
                f"the text encoder's width {text_encoder.config.embed_dim} != the generator's embed_dim "
                f"{generator.config.embed_dim}; the two files come from different models"
            )
        if image_encoder is not None and image_encoder.config.embed_dim != text_encoder.config.embed_dim:
            raise CheckpointError(
                f"the image encoder's width {image_encoder.config.embed_dim} != the text encoder's "
                f"{text_encoder.config.embed_dim}; the two come from different DAMSMs"
            )
        self.text_encoder = text_encoder.eval()
        self.generator = generator.eval()
        self.image_encoder = image_encoder.eval() if image_encoder is not None else None
        self.vocab = vocab
        self.max_words = max_words
        self.fast = fast
        self._fast_copy: tuple[tuple, Generator] | None = None  # (key of the weights it was built from, copy)

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", fast: bool = True
    ) -> AttnGANPipeline:
        """Load a native model folder, a run folder's ``model/``, the newest GAN run of a ``runs/`` folder or of
        a demo's ``--out`` folder, or a ``checkpoints/state-*.pt`` file (its EMA generator; see :func:`find_model`)."""
        check_device(device)
        d, state_file = find_model(path)
        missing = [name for name in ("text_encoder/", "vocab.json") if not (d / name.rstrip("/")).exists()]
        if missing:
            raise CheckpointError(
                f"{d} has no {' or '.join(missing)}, so it cannot turn sentences into images; pass the folder "
                "written by `attngan train`, or give `attngan convert` the vocabulary (--captions-pickle)"
            )
        text_encoder = load_component(d / "text_encoder", TextEncoder, TextEncoderConfig)
        generator = load_component(d / "generator", Generator, GeneratorConfig)
        if state_file is not None:
            _load_state_generator(generator, state_file)
        image_encoder = None
        if (d / "image_encoder").is_dir():
            image_encoder = load_component(d / "image_encoder", ImageEncoder, ImageEncoderConfig)
        try:
            vocab = Vocabulary.load(d / "vocab.json")
        except DataError as exc:
            raise CheckpointError(str(exc)) from None
        log.info("loaded %s (%d words, %d stages)", d, len(vocab.words), generator.config.num_stages)
        return cls(text_encoder, generator, vocab, image_encoder, fast=fast).to(device)

    @classmethod
    def from_original(
        cls,
        generator_pth: str | os.PathLike,
        text_encoder_pth: str | os.PathLike,
        captions_pickle: str | os.PathLike,
        image_encoder_pth: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        fast: bool = True,
    ) -> AttnGANPipeline:
        """The original release: e.g. ``bird_AttnGAN2.pth``, ``text_encoder200.pth`` and ``captions.pickle``
        (its vocabulary, indices unchanged). Settings are inferred from the weight shapes."""
        from .data.pickles import load_captions_pickle
        from .legacy import load_original

        check_device(device)
        generator = load_original(generator_pth, kind="generator")
        text_encoder = load_original(text_encoder_pth, kind="text_encoder")
        image_encoder = load_original(image_encoder_pth, kind="image_encoder") if image_encoder_pth else None
        vocab = load_captions_pickle(captions_pickle).vocab
        return cls(text_encoder, generator, vocab, image_encoder, fast=fast).to(device)

    def save_pretrained(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model folder read by :meth:`from_pretrained`.

        A folder that already holds a model (``generator/``, ``text_encoder/``, ``image_encoder/``,
        ``discriminator*/``, ``vocab.json``) is refused unless ``overwrite=True``, which replaces all of those
        (a part of the old model that this one lacks, e.g. its discriminators, is removed: it would not match);
        other files are kept. Everything is first written to a temporary folder inside ``directory`` and
        then moved into place by renames; if a rename fails, the old model is put back.
        """
        if not os.fspath(directory).strip():
            raise UserError("save_pretrained needs a folder name, got an empty one")
        d = Path(directory)
        if d.exists() and not d.is_dir():
            raise UserError(f"{d} is a file, not a folder; give save_pretrained a folder")
        old_entries = _model_entries(d)
        if old_entries and not overwrite:
            raise UserError(
                f"{d} already holds a model ({', '.join(old_entries)}); pass overwrite=True to replace it "
                "or choose another folder"
            )
        d.mkdir(parents=True, exist_ok=True)
        staging = make_staging_dir(d, ".save-")
        moved_out: list[str] = []  # old entries parked in staging/old, put back if the swap fails
        moved_in: list[str] = []
        try:
            new = staging / "new"
            names = ["vocab.json"]
            for name in COMPONENTS:
                module = getattr(self, name)
                if module is not None:
                    save_component(new / name, module, module.config)
                    names.append(name)
            self.vocab.save(new / "vocab.json")
            (staging / "old").mkdir()
            try:
                for name in old_entries:
                    os.replace(d / name, staging / "old" / name)  # a folder cannot be renamed over a non-empty one
                    moved_out.append(name)
                for name in names:
                    os.replace(new / name, d / name)
                    moved_in.append(name)
            except BaseException:
                for name in moved_in:
                    with contextlib.suppress(OSError):
                        os.replace(d / name, new / name)
                for name in moved_out:
                    with contextlib.suppress(OSError):
                        os.replace(staging / "old" / name, d / name)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return d

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> AttnGANPipeline:
        if device is not None:
            device = check_device(device)
        for m in (self.text_encoder, self.generator, self.image_encoder):
            if m is not None:
                m.to(device=device, dtype=dtype)
        return self

    def _sampling_generator(self) -> Generator:
        """The generator that draws: ``self.generator`` itself, or (``fast``) its inference copy.

        The copy (``attngan.nn.fast``: BatchNorm folded into the convs, upsample + conv3x3 as one
        transposed conv, im2col convs for tiny maps on CPU, channels-last) computes the same images up to
        float rounding, 1.3-1.6x faster on CPU (benchmarks/README.md). It is rebuilt whenever the
        generator's weights, device or dtype change (tracked by the tensors' version counters), so
        ``pipe.generator.load_state_dict(...)`` or ``pipe.to(...)`` is picked up on the next call; the
        original's attention-mask switch (``attngan.nn.set_legacy_mask_bug``) is carried over on every call.
        """
        if not self.fast:
            return self.generator
        tensors = list(self.generator.parameters()) + list(self.generator.buffers())
        key = (self.device, self.dtype, tuple((t.data_ptr(), t._version) for t in tensors))
        if self._fast_copy is None or self._fast_copy[0] != key:
            from .nn.fast import fold_batchnorm, set_fast_upsample, set_matmul_conv

            with torch.inference_mode(False):  # normal tensors: the copy's caches use their version counters
                copy = fold_batchnorm(self.generator).requires_grad_(False)
                set_fast_upsample(copy)
                if self.device.type == "cpu":
                    set_matmul_conv(copy)
                if self.device.type != "mps":
                    copy.to(memory_format=torch.channels_last)
            self._fast_copy = (key, copy)
        copy = self._fast_copy[1]
        layers = [m for m in copy.modules() if isinstance(m, WordAttention)]
        for own, layer in zip([m for m in self.generator.modules() if isinstance(m, WordAttention)], layers):
            layer.legacy_mask_bug = own.legacy_mask_bug
        return copy

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.generator.parameters()).dtype

    # ------------------------------------------------------------------------------------------ text
    def encode_prompts(self, prompts: str | Sequence[str], max_words: int | None = None) -> list[EncodedCaption]:
        """Tokenise each prompt (lowercase, ASCII-folded as the original), drop and report unknown words.

        Raises UserError for an empty prompt or one without any word of the vocabulary.
        """
        max_words = _count("max_words", max_words) if max_words is not None else self.max_words
        encoded = []
        for p in _prompt_list(prompts):
            if not isinstance(p, str):
                raise UserError(f"a prompt must be a string, got {type(p).__name__}")
            if not p.strip():
                raise UserError("empty sentence: give a caption with at least one word the model knows")
            try:
                enc = encode_caption(p, self.vocab, 10**9 if max_words is None else max_words)
            except DataError as exc:
                raise UserError(str(exc)) from None
            if enc.unknown:
                close = self.vocab.suggestions(enc.unknown)
                log.warning("unknown words in %r (ignored): %s%s", p, ", ".join(enc.unknown), f" (closest known: {close})" if close else "")
            encoded.append(enc)
        return encoded

    @staticmethod
    def _batch(encoded: Sequence[EncodedCaption]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> captions (B, T) zero-padded, lengths (B,), mask (B, T) True at padding."""
        t = max(e.length for e in encoded)
        captions = torch.zeros(len(encoded), t, dtype=torch.long)
        for i, e in enumerate(encoded):
            captions[i, : e.length] = torch.tensor(e.ids, dtype=torch.long)
        lengths = torch.tensor([e.length for e in encoded], dtype=torch.long)
        mask = torch.arange(t)[None, :] >= lengths[:, None]  # (B, T)
        return captions, lengths, mask

    # ------------------------------------------------------------------------------------------ noise
    def _noise(
        self,
        n: int,
        seed: int | Sequence[int] | None,
        generator: torch.Generator | Sequence[torch.Generator] | None,
    ) -> tuple[list[int | None], torch.Tensor, torch.Tensor]:
        """Seeds and (z (n, z_dim), eps (n, c)): z then eps of image k from image k's own generator."""
        cfg = self.generator.config
        if seed is not None and generator is not None:
            raise UserError("give seed or generator, not both")
        if hasattr(seed, "tolist") and not isinstance(seed, numbers.Integral):  # a numpy array or a tensor
            seed = seed.tolist()
        if isinstance(seed, Sequence) and not isinstance(seed, str):
            if len(seed) != n:
                raise UserError(f"{len(seed)} seeds given for {n} images (one per image is needed)")
            seeds: list[int | None] = [_seed(s) for s in seed]
        elif seed is not None:
            seeds = [_seed(seed) + k for k in range(n)]
        elif generator is not None:
            seeds = [None] * n
        else:
            # No seed: take one from torch's global RNG (so torch.manual_seed still makes runs repeatable)
            # and report it, so that any image can be drawn again.
            base = int(torch.randint(0, 2**31 - 1, (1,)).item())
            seeds = [base + k for k in range(n)]
        if seed is not None and not all(0 <= s < 2**63 for s in seeds):  # torch.Generator's range
            raise UserError(f"seeds must be in [0, 2**63), got {min(seeds)}..{max(seeds)}")
        if isinstance(generator, Sequence):
            if len(generator) != n:
                raise UserError(f"{len(generator)} generators given for {n} images (one per image is needed)")
            gens = list(generator)
        elif generator is not None:
            gens = [generator] * n  # one shared stream, drawn image after image: batch-size independent too
        else:
            gens = [torch.Generator().manual_seed(s) for s in seeds]
        z, eps = [], []
        for g in gens:
            z.append(torch.randn(cfg.z_dim, generator=g, device=g.device).cpu())  # (z_dim,)
            eps.append(torch.randn(cfg.condition_dim, generator=g, device=g.device).cpu())  # (c,)
        return seeds, torch.stack(z), torch.stack(eps)

    # ------------------------------------------------------------------------------------------ sampling
    def _images(
        self, prompts: str | Sequence[str], num_images_per_prompt: Any, max_words: int | None
    ) -> list[tuple[str, EncodedCaption]]:
        """(prompt, encoded caption) of every image, prompt-major; UserError for bad prompts or counts."""
        prompts = _prompt_list(prompts)
        if not prompts:
            raise UserError("no sentence given: pass at least one prompt")
        num_images_per_prompt = _count("num_images_per_prompt", num_images_per_prompt)
        encoded = self.encode_prompts(prompts, max_words)
        return [(p, e) for p, e in zip(prompts, encoded) for _ in range(num_images_per_prompt)]

    @torch.inference_mode()
    def __call__(
        self,
        prompts: str | Sequence[str],
        *,
        num_images_per_prompt: int = 1,
        seed: int | Sequence[int] | None = None,  # image k uses seed + k; or one seed per image; None: random
        generator: torch.Generator | Sequence[torch.Generator] | None = None,  # instead of seed
        ca_mean: bool = False,  # "truncation": condition on mu of the CA (Sec. 3.1) instead of sampling c
        return_attention: bool = True,  # False skips the maps (allows the fused attention kernel)
        progress: bool = False,  # tqdm bar over batches
        batch_size: int = 16,  # images per forward pass; does not change the images
        max_words: int | None = None,  # keep the first max_words known words (None: the pipeline's setting)
    ) -> AttnGANOutput:
        """Draw ``num_images_per_prompt`` images per prompt; see :class:`AttnGANOutput`.

        Image ``k`` does not depend on ``batch_size`` or on the other prompts. (The original's batches and
        noise order, for its attention-mask bug: :func:`attngan.legacy.sample_like_original`.)
        """
        batch_size = _count("batch_size", batch_size)
        per_image = self._images(prompts, num_images_per_prompt, max_words)  # errors before any work
        n = len(per_image)
        seeds, z_all, eps_all = self._noise(n, seed, generator)
        batches = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
        return self._draw(per_image, batches, seeds, z_all, eps_all, ca_mean, return_attention, progress)

    def _draw(
        self,
        per_image: Sequence[tuple[str, EncodedCaption]],  # (prompt, encoded caption) of each image
        batches: Iterable[list[int]],  # the image indices of each forward pass
        seeds: list[int | None],  # reported per image
        z_all: torch.Tensor,  # (n, z_dim) on the CPU
        eps_all: torch.Tensor,  # (n, condition_dim) CA noise on the CPU
        ca_mean: bool,
        return_attention: bool,
        progress: bool,
    ) -> AttnGANOutput:
        """Text encoder and G over the given batches of the given noise (Eq. 1-2), in eval mode."""
        device, dtype = self.device, self.dtype
        out = AttnGANOutput(seeds=seeds)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="sampling", unit="batch")
        sampling_generator = self._sampling_generator()
        done: dict[int, tuple] = {}  # image index -> (stage tensors, PIL images, maps)
        with eval_mode(self.text_encoder, self.generator):
            for ks in batches:
                chunk = [per_image[k] for k in ks]
                captions, lengths, mask = self._batch([e for _, e in chunk])
                captions, mask = captions.to(device), mask.to(device)  # lengths stay on the CPU (the LSTM's packing)
                words, sentence = self.text_encoder(captions, lengths)  # (B, D, T), (B, D)
                result = sampling_generator(
                    z_all[ks].to(device=device, dtype=dtype),
                    sentence,
                    words,
                    mask,
                    ca_noise=eps_all[ks].to(device=device, dtype=dtype),
                    ca_mean=ca_mean,
                    need_attention=return_attention,
                )
                # The host's share, in a number of torch ops that does not grow with the batch (on a busy
                # CPU each multi-threaded op waits for all its threads): one copy to the host per output;
                # the per-image copies and the pixels are numpy's (see _image_copies and viz.uint8_pixels).
                images_cpu = [img.float().cpu() for img in result.images]  # (B, 3, s, s) per stage
                maps_cpu = [a.float().cpu() for a in result.attention]  # (B, T, h, w) per attention stage
                pixels = [to_pil_batch(img) for img in images_cpu]  # per stage: B RGB images
                stage_copies = [_image_copies(img) for img in images_cpu]
                lengths_list = [enc.length for _, enc in chunk]
                map_copies = [_image_copies(a, lengths_list) for a in maps_cpu]
                for j, k in enumerate(ks):
                    done[k] = (
                        [c[j] for c in stage_copies],
                        [p[j] for p in pixels],
                        [c[j] for c in map_copies],
                    )
        for k, (prompt, enc) in enumerate(per_image):
            stages, images, maps = done[k]
            out.stage_tensors.append(stages)
            out.images.append(images)
            out.attention_maps.append(maps)
            out.tokens.append(list(enc.tokens))
            out.unknown_words.append(list(enc.unknown))
            out.prompts.append(prompt)
        return out
