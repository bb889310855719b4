"""``attngan sample``: images, attention figures and word swaps from sentences (a thin layer over the pipeline)."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from . import options as opt
from .options import PathType, setup_logging


def resolve_device(name: str) -> Any:
    """``auto`` -> cuda, else mps, else cpu; ``cuda:N`` too; an unavailable device is a user mistake."""
    from ..training.devices import resolve_device as resolve

    return resolve(name)


def read_sentences(sentences: tuple[str, ...], captions_file: Path | None) -> list[str]:
    """Sentences of the command line, then the non-blank lines of ``captions_file``."""
    out = list(sentences)
    if captions_file is not None:
        if not captions_file.is_file():
            raise UserError(f"--captions-file {captions_file} does not exist")
        try:
            text = captions_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"--captions-file {captions_file} is not UTF-8 text") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise UserError(f"--captions-file {captions_file} has no sentence (one per line)")
        out += lines
    if not out:
        raise UserError(
            'no sentence given: pass sentences as arguments ("a red bird") or --captions-file FILE'
        )
    for k, s in enumerate(out):
        if not s.strip():
            raise UserError(f"sentence {k + 1} is empty; give a caption with words the model knows")
    return out


def parse_word_swap(value: str | None) -> tuple[str, str] | None:
    """``"old=new"`` -> ``("old", "new")``: one lowercase word on each side."""
    if value is None:
        return None
    from ..text import tokenize

    parts = value.split("=")
    pair = [tokenize(p) for p in parts] if len(parts) == 2 else []
    if len(pair) != 2 or any(len(p) != 1 for p in pair) or pair[0] == pair[1]:
        raise UserError(
            f"--word-swap must be OLD=NEW with one different word on each side (e.g. red=blue), got {value!r}"
        )
    return pair[0][0], pair[1][0]


def no_model_message(image_encoder: bool = False) -> str:
    """The error for a command given no model (``image_encoder``: the command also takes the original's)."""
    return (
        "no model given: use --checkpoint RUN_OR_MODEL_DIR, or --original-generator G.pth "
        "--original-text-encoder T.pth " + ("--original-image-encoder I.pth " if image_encoder else "")
        + "--captions-pickle captions.pickle"
    )


def load_pipeline(
    checkpoint: Path | None,
    original_generator: Path | None,
    original_text_encoder: Path | None,
    captions_pickle: Path | None,
    device: Any,
    original_image_encoder: Path | None = None,  # the original DAMSM image encoder (``attngan evaluate``)
    no_model: str = no_model_message(),  # the error when no model is given
) -> Any:
    """The model: a model or run folder, or the original release's files (with its DAMSM image encoder)."""
    from ..pipeline import AttnGANPipeline

    originals = {
        "--original-generator": original_generator,
        "--original-text-encoder": original_text_encoder,
        "--captions-pickle": captions_pickle,
    }
    if checkpoint is not None:
        if any(originals.values()):
            raise UserError(
                "give either --checkpoint or the --original-* files with --captions-pickle, not both"
            )
        pipe = AttnGANPipeline.from_pretrained(checkpoint, device=device)
        if original_image_encoder is not None:
            from ..legacy import load_original

            if not original_image_encoder.is_file():
                raise UserError(f"--original-image-encoder {original_image_encoder} does not exist")
            pipe.image_encoder = load_original(original_image_encoder, kind="image_encoder").to(device).eval()
        return pipe
    if not any(originals.values()):
        raise UserError(no_model)
    missing = [name for name, v in originals.items() if v is None]
    if missing:
        raise UserError(f"the original release also needs {', '.join(missing)}")
    for name, path in {**originals, "--original-image-encoder": original_image_encoder}.items():
        if path is not None and not path.is_file():
            raise UserError(f"{name} {path} does not exist")
    return AttnGANPipeline.from_original(
        original_generator, original_text_encoder, captions_pickle, original_image_encoder, device=device
    )


def format_words(vocab: Any) -> str:
    """The vocabulary for people: its size, then the words alphabetically, wrapped."""
    import textwrap

    words = sorted(vocab.words)
    return f"{len(words)} words the model knows (others are ignored):\n" + textwrap.fill(
        " ".join(words), width=100, break_long_words=False, break_on_hyphens=False
    )


def training_data(checkpoint: Path | None) -> dict[str, Any] | None:
    """The data settings (``preset.data`` of ``config.json``) of the run behind ``checkpoint``, if known."""
    import json

    from ..pipeline import resolve_model_dir

    if checkpoint is None:
        return None
    with _quiet_logger("attngan.pipeline"):  # the model was found (and named) already
        model = resolve_model_dir(checkpoint)
    if model.name != "model":
        return None
    try:
        data = json.loads((model.parent / "config.json").read_text(encoding="utf-8"))["preset"]["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def unlike_training(prompts: list[str], data: dict[str, Any] | None) -> list[str]:
    """Warnings for sentences unlike every training caption: on the shapes data, more objects than its
    images held (``data.max_objects``); the model then draws what it learned, not the sentence."""
    if not data or data.get("dataset") != "shapes":
        return []
    from ..data.synthetic import attributes_from_caption

    most = int(data.get("max_objects") or 1)
    warnings = []
    for i, prompt in enumerate(prompts):
        n = len(attributes_from_caption(prompt))
        if n > most:
            warnings.append(
                f"sentence {i + 1} names {n} objects, but the model was trained on images of at most {most} "
                f"(data.max_objects={most}); it draws {'one object' if most == 1 else f'up to {most}'}, not this"
            )
    return warnings


def swap_word(sentence: str, old: str, new: str) -> str | None:
    """The sentence's tokens with every ``old`` replaced by ``new`` (None if ``old`` does not occur)."""
    from ..text import tokenize

    tokens = tokenize(sentence)
    if old not in tokens:
        return None
    return " ".join(new if t == old else t for t in tokens)


def _stack(images: list[Any]) -> Any:
    """PIL images one below the other, left-aligned on white."""
    from PIL import Image

    canvas = Image.new("RGB", (max(im.width for im in images), sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height
    return canvas


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@click.command(name="sample", context_settings={"show_default": True})
@click.argument("sentences", nargs=-1)
@opt.checkpoint_option()
@opt.file_option("--original-generator", "Instead of --checkpoint: the original release's G (bird_AttnGAN2.pth).")
@opt.file_option(
    "--original-text-encoder", "With --original-generator: the original DAMSM text encoder (text_encoder200.pth)."
)
@opt.file_option(
    "--captions-pickle",
    "With --original-generator: the dataset's captions.pickle (the vocabulary the release was trained with).",
)
@opt.file_option("--captions-file", "Also read sentences from this UTF-8 file, one per line.")
@click.option(
    "--out",
    "out_dir",
    type=PathType(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the images (created; must be empty unless --overwrite). Required unless --list-words.",
)
@click.option(
    "--list-words",
    is_flag=True,
    help="Print the words the model knows (its vocabulary) and exit; captions may use only these.",
)
@opt.seed_option("Seed of the first image; image k (sentence-major) uses seed + k, whatever the batch size.")
@click.option("--n", "num_images", type=click.IntRange(1, 64), default=1, help="Images per sentence.")
@opt.device_option(
    "Where to run; auto picks cuda (or cuda:N), then mps, then cpu. The images do not depend on it beyond rounding."
)
@click.option(
    "--attention/--no-attention",
    default=True,
    help="Write iii_j_attention.png: per attention stage, the maps of the top-5 words (Fig. 1 and 4).",
)
@click.option(
    "--word-swap",
    default=None,
    metavar="OLD=NEW",
    help="Also draw every sentence containing OLD with OLD replaced by NEW, same z and noise, into word_swap.png (Fig. 5).",
)
@opt.batch_size_option(1024, 16, "Images per forward pass; does not change the images (ignored with --legacy-mask-bug).")
@opt.ca_mean_option(
    "Condition on the mean of the conditioning augmentation (no CA noise): less varied, often cleaner images."
)
@click.option(
    "--legacy-mask-bug",
    is_flag=True,
    help="Reproduce the original code's attention-mask bug, to match its outputs (original weights). An image "
    "then depends on the other sentences of its batch, so the batches are the original's: image j of every "
    "sentence in one batch, in its order (longest first, equal lengths in reverse), and the noise is drawn as "
    "its gen_example did, from --seed (give the sentences of one original example file; see also --exact and "
    "--truncate-pixels).",
)
@click.option(
    "--exact",
    is_flag=True,
    help="Draw with the generator as trained instead of its faster inference copy (folded BatchNorm, fused "
    "upsampling): the same float32 operations as the original code, 1.3-1.6x slower on a CPU; the copy differs "
    "by float rounding only (about 1e-6 for the birds model, below 2e-4 in the tests).",
)
@click.option(
    "--truncate-pixels",
    is_flag=True,
    help="Make 8-bit pixels as the original code did, by truncation ((x + 1) * 127.5 cast to uint8); the "
    "default rounds, which is up to one grey level brighter.",
)
@opt.overwrite_option("Write into a non-empty --out folder (files of the same name are replaced).")
@opt.progress_option("Show progress bars for many images (on a terminal).")
def sample(
    sentences: tuple[str, ...],
    checkpoint: Path | None,
    original_generator: Path | None,
    original_text_encoder: Path | None,
    captions_pickle: Path | None,
    captions_file: Path | None,
    out_dir: Path,
    seed: int,
    num_images: int,
    device: str,
    attention: bool,
    word_swap: str | None,
    batch_size: int,
    ca_mean: bool,
    legacy_mask_bug: bool,
    exact: bool,
    truncate_pixels: bool,
    overwrite: bool,
    progress: bool,
    list_words: bool,
) -> None:
    """Draw images from SENTENCES with a trained model.

    For sentence i and image j it writes DIR/iii_j_stageK.png (one per stage, smallest first),
    DIR/iii_j_attention.png (the attention maps of the top-5 words, Eq. 2), a captioned DIR/grid.png of
    the last stage and DIR/prompts.json (sentences, tokens used, unknown words, seeds, files).
    Words the model does not know are ignored and printed with the closest known ones; --list-words
    prints them all. The same --seed gives the same images.

    \b
    Examples:
      attngan sample --checkpoint runs/00001-shapes-attngan --out samples "a small red circle at the top left"
      attngan sample --checkpoint demo-out --list-words
      attngan sample --checkpoint models/birds --out birds --n 4 --word-swap red=blue \\
          "this bird is red with white wings and a short beak"
      attngan sample --original-generator models/bird_AttnGAN2.pth \\
          --original-text-encoder DAMSMencoders/bird/text_encoder200.pth \\
          --captions-pickle data/birds/captions.pickle --captions-file captions.txt --out birds
    """
    from ..atomic import FolderLock

    setup_logging()
    if list_words:
        pipe = load_pipeline(checkpoint, original_generator, original_text_encoder, captions_pickle, "cpu")
        click.echo(format_words(pipe.vocab))
        return
    if out_dir is None:
        raise click.UsageError("Missing option '--out' (the folder for the images).")
    t0 = time.perf_counter()
    prompts = read_sentences(sentences, captions_file)
    swap = parse_word_swap(word_swap)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a folder; choose another --out folder")
    with FolderLock(out_dir, "--out folder") as lock:  # another sample into the same folder is refused
        lock.remove_temporaries()  # of a sample that was killed while writing
        if not lock.is_empty() and not overwrite:
            raise UserError(f"{out_dir} exists and is not empty; choose another --out folder or pass --overwrite")
        _draw_and_write(
            out_dir, prompts, swap, checkpoint, original_generator, original_text_encoder, captions_pickle, device,
            num_images, batch_size, seed, attention, ca_mean, legacy_mask_bug, exact, truncate_pixels, progress, t0,
        )  # fmt: skip


def _write_images(
    save: Callable[[Any, str], str],  # (PIL image, file name) -> the name, once written
    result: Any,  # the pipeline's output
    num_images: int,  # images per sentence
    attention: bool,  # also write each image's attention figure
    truncate_pixels: bool,  # 8-bit pixels by truncation, as the original code
    progress: bool,  # a progress bar
) -> list[dict[str, Any]]:
    """Write every image's stages (and attention figure); the record of each image for prompts.json."""
    from .. import viz

    records = []
    items: Any = range(len(result.stage_tensors))
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="writing", unit="image")
    for k in items:
        i, j = divmod(k, num_images)
        stage_images = (
            [viz.to_pil(x, original_truncation=True) for x in result.stage_tensors[k]]
            if truncate_pixels
            else result.images[k]
        )
        files = [save(im, f"{i:03d}_{j}_stage{s}.png") for s, im in enumerate(stage_images)]
        if attention and result.attention_maps[k]:
            fig = viz.attention_figure(
                result.stage_tensors[k], result.attention_maps[k], result.tokens[k], len(result.tokens[k]),
                caption=result.prompts[k],
            )
            files.append(save(fig, f"{i:03d}_{j}_attention.png"))
        records.append(
            {
                "sentence_index": i,
                "image_index": j,
                "sentence": result.prompts[k],
                "seed": result.seeds[k],
                "tokens": result.tokens[k],
                "unknown_words": result.unknown_words[k],
                "files": files,
            }
        )
    return records


def _draw_and_write(
    out_dir: Path, prompts: list[str], swap: Any, checkpoint: Path | None, original_generator: Path | None,
    original_text_encoder: Path | None, captions_pickle: Path | None, device: str, num_images: int, batch_size: int,
    seed: int, attention: bool, ca_mean: bool, legacy_mask_bug: bool, exact: bool, truncate_pixels: bool,
    progress: bool, t0: float,
) -> None:  # fmt: skip
    from ..checkpoint import atomic_write_bytes, atomic_write_json

    pipe = load_pipeline(
        checkpoint, original_generator, original_text_encoder, captions_pickle, resolve_device(device)
    )
    pipe.fast = not exact
    if swap is not None and swap[1] not in pipe.vocab.stoi:
        raise UserError(f"--word-swap: {swap[1]!r} is not in the model's vocabulary, so it would be ignored")
    for warning in unlike_training(prompts, training_data(checkpoint)):
        click.echo(f"Warning: {warning}", err=True)
    n_images = len(prompts) * num_images
    show_progress = progress and n_images > batch_size and sys.stderr.isatty()
    swaps: list[tuple[int, str, str]] = []  # (sentence index, sentence, swapped sentence)
    if swap is not None:
        swaps = [(i, p, q) for i, p in enumerate(prompts) if (q := swap_word(p, *swap)) is not None]
        if not swaps:
            raise UserError(f"--word-swap: no sentence contains the word {swap[0]!r}")

    # The CLI prints unknown words in its summary; silence the library's own warning meanwhile.
    options = dict(ca_mean=ca_mean)
    if legacy_mask_bug:  # the original's batches and noise order (its batches, not --batch-size)
        from ..legacy import sample_like_original

        draw: Any = functools.partial(sample_like_original, pipe)
    else:
        draw = functools.partial(pipe, batch_size=batch_size)
    swap_pairs: list[tuple[str, str, list[tuple[Any, Any]]]] = []  # (sentence, swapped, [(image, image)])
    with _quiet_logger("attngan.pipeline"):
        result = draw(
            prompts,
            num_images_per_prompt=num_images,
            seed=seed,
            return_attention=attention,
            progress=show_progress,
            **options,
        )
        for i, prompt, swapped in swaps:
            # Fig. 5: the same seeds give the same z and CA noise; only the sentence changes.
            ks = range(i * num_images, (i + 1) * num_images)
            seeds = [result.seeds[k] for k in ks]
            other = draw(
                swapped, num_images_per_prompt=num_images, seed=seeds, return_attention=False, **options
            )
            images = [(result.stage_tensors[k][-1], o[-1]) for k, o in zip(ks, other.stage_tensors)]
            swap_pairs.append((prompt, swapped, images))

    from .. import viz

    out_dir.mkdir(parents=True, exist_ok=True)
    # An earlier prompts.json would describe the files this run replaces: it goes first.
    (out_dir / "prompts.json").unlink(missing_ok=True)
    written: list[str] = []
    try:
        def save(image: Any, name: str) -> str:
            atomic_write_bytes(out_dir / name, viz.png_bytes(image))
            written.append(name)
            return name

        records = _write_images(save, result, num_images, attention, truncate_pixels, show_progress)
        last = [stages[-1] for stages in result.stage_tensors]  # (3, s, s) each
        cell = max(viz.FIGURE_CELL, last[0].shape[-1])  # small images are enlarged (nearest-neighbour)
        save(
            viz.captioned_grid(last, result.prompts, nrow=num_images if num_images > 1 else 4, cell=cell),
            "grid.png",
        )
        summary: dict[str, Any] = {
            "model": str(checkpoint if checkpoint is not None else original_generator),
            "sentences": prompts,
            "images_per_sentence": num_images,
            "seed": seed,
            "ca_mean": ca_mean,
            "legacy_mask_bug": legacy_mask_bug,  # then every image was drawn from one noise stream of seed
            "exact": exact,
            "truncate_pixels": truncate_pixels,
            "images": records,
            "grid": "grid.png",
        }
        if swap is not None:
            # Fig. 5: per sentence, the original row above the swapped row; column n is seed n in both
            # (same z and CA noise), so reading down a column shows what the changed word does.
            rows = [
                viz.word_swap_figure(
                    [(prompt, [a for a, _ in images]), (swapped, [b for _, b in images])], size=cell
                )
                for prompt, swapped, images in swap_pairs
            ]
            save(_stack(rows), "word_swap.png")
            summary["word_swap"] = {
                "old": swap[0],
                "new": swap[1],
                "sentences": [[a, b] for a, b, _ in swap_pairs],
                "file": "word_swap.png",
            }
        atomic_write_json(out_dir / "prompts.json", summary)
        written.append("prompts.json")
    except KeyboardInterrupt:
        click.echo(
            f"Interrupted: {len(written)} file(s) written to {out_dir}, no prompts.json; to draw them all, run "
            "the command again with --overwrite",
            err=True,
        )
        raise SystemExit(130) from None

    for i, prompt in enumerate(prompts):
        unknown = result.unknown_words[i * num_images]
        if unknown:
            close = pipe.vocab.suggestions(unknown)
            click.echo(
                f"sentence {i + 1}: unknown words ignored: {', '.join(unknown)}  ({prompt!r})"
                + (f"; closest known words: {close}" if close else "")
            )
    click.echo(
        f"wrote {n_images} image(s) of {len(prompts)} sentence(s), {len(written)} files, to {out_dir} "
        f"in {time.perf_counter() - t0:.1f} s (device {pipe.device}, "
        + (f"seed {seed}, the original's noise order)" if legacy_mask_bug else f"seeds {result.seeds[0]}..{result.seeds[-1]})")
    )
