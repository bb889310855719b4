"""``attngan convert``: the original release's ``.pth`` files to a native model folder, and back."""

from __future__ import annotations

from pathlib import Path

import click

from .options import PathType

_FILE = PathType(exists=True, dir_okay=False, path_type=Path)


def _read_vocabulary(path: Path):
    """Vocabulary of an original ``captions.pickle`` (read by the data layer's restricted unpickler)."""
    from ..data.pickles import load_captions_pickle

    return load_captions_pickle(path).vocab


@click.command("convert", context_settings={"show_default": True})
@click.option(
    "--generator",
    "generator",
    type=_FILE,
    help="Original G_NET / G_DCGAN file (bird_AttnGAN2.pth, netG_epoch_600.pth).",
)
@click.option(
    "--text-encoder", "text_encoder", type=_FILE, help="Original DAMSM text encoder (text_encoder200.pth)."
)
@click.option(
    "--image-encoder",
    "image_encoder",
    type=_FILE,
    help="Original DAMSM image encoder (image_encoder200.pth, Inception-v3 backbone included).",
)
@click.option(
    "--discriminator",
    "discriminators",
    type=_FILE,
    multiple=True,
    help="Original netD{i}.pth (repeatable); numbered by image size in the output.",
)
@click.option(
    "--captions-pickle",
    "captions_pickle",
    type=_FILE,
    help="The dataset's original captions.pickle: its word indices are written as DIR/vocab.json.",
)
@click.option(
    "--from-native",
    "from_native",
    type=PathType(exists=True, file_okay=False, path_type=Path),
    help="Convert the other way: a native model folder to original .pth files.",
)
@click.option("--to-original", is_flag=True, help="Direction flag for --from-native (implied by it).")
@click.option(
    "--out",
    "out",
    required=True,
    type=PathType(file_okay=False, path_type=Path),
    help="Output folder: a native model folder, or (with --from-native) the folder for the .pth files.",
)
@click.option("--overwrite", is_flag=True, help="Replace components or files that already exist in --out.")
def convert(
    generator: Path | None,
    text_encoder: Path | None,
    image_encoder: Path | None,
    discriminators: tuple[Path, ...],
    captions_pickle: Path | None,
    from_native: Path | None,
    to_original: bool,
    out: Path,
    overwrite: bool,
) -> None:
    """Convert the original AttnGAN release's .pth files to a native model folder, and back.

    The settings of each network (widths, stages, vocabulary size, ...) are inferred from the shapes
    in the file and printed. Files are read with torch.load(weights_only=True): files holding anything
    but tensors are refused.

    \b
    Examples:
      attngan convert --generator models/bird_AttnGAN2.pth \\
          --text-encoder DAMSMencoders/bird/text_encoder200.pth \\
          --image-encoder DAMSMencoders/bird/image_encoder200.pth \\
          --captions-pickle data/birds/captions.pickle --out models/birds
      attngan convert --from-native models/birds --to-original --out original/
    """
    from .. import legacy

    originals = [generator, text_encoder, image_encoder, captions_pickle, *discriminators]
    if from_native is not None:
        if any(originals):
            raise click.UsageError("--from-native cannot be combined with original files (--generator, ...)")
        done, skipped = legacy.native_to_original(from_native, out, overwrite=overwrite)
        for c in done:
            click.echo(f"{c.source} -> {c.target}\n  {legacy.describe(c.kind, c.config)}")
        for note in skipped:
            click.echo(f"skipped {note}")
        click.echo(f"wrote {len(done)} file(s) in the original layout to {out}")
        return
    if to_original:
        raise click.UsageError("--to-original needs --from-native DIR (the native model folder to export)")
    if not any(originals[:3]) and not discriminators:
        raise click.UsageError(
            "give at least one original file (--generator, --text-encoder, --image-encoder, --discriminator)"
        )
    vocab = _read_vocabulary(captions_pickle) if captions_pickle is not None else None
    done = legacy.original_to_native(
        out,
        generator=generator,
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        discriminators=discriminators,
        vocab=vocab,
        overwrite=overwrite,
    )
    for c in done:
        click.echo(f"{c.source} -> {c.target}\n  {legacy.describe(c.kind, c.config)}")
        if c.kind == "text_encoder":
            click.echo(
                f"  (dropout={c.config.dropout} is the original's training default: a .pth file holds weights only, "
                "not the dropout it was trained with; sampling and evaluation never use dropout)"
            )
    if vocab is not None:
        click.echo(f"{captions_pickle} -> {out / 'vocab.json'} ({len(vocab)} words)")
    names = {c.name for c in done}
    missing = [n for n in ("generator", "text_encoder") if n not in names]
    if vocab is None:
        missing.append("vocab.json (--captions-pickle)")
    if missing:
        click.echo(f"note: `attngan sample --checkpoint {out}` also needs: {', '.join(missing)}")
    click.echo(f"wrote a native model folder: {out}")
