"""``attngan data ...``: inspect and validate datasets."""

from __future__ import annotations

import json
import sys

import click

from .options import PathType


@click.group(name="data")
def data() -> None:
    """Inspect and validate datasets before training."""


@data.command(name="check")
@click.option(
    "--dataset",
    type=click.Choice(["birds", "coco", "folder", "shapes"]),
    required=True,
    help="Layout to check: birds (CUB-200-2011 with the original metadata), coco (original metadata or the "
    "official annotations/captions_*2014.json), folder (images + same-named .txt, or a CSV/JSONL manifest), "
    "shapes (the built-in procedural dataset; nothing on disk).",
)
@click.option("--data-dir", type=PathType(file_okay=True, dir_okay=True), default=None,
              help="Root of the dataset (a folder, or a CSV/JSONL manifest for folder); not needed for shapes.")
@click.option("--captions-per-image", type=click.IntRange(min=1), default=None,
              help="Original layouts only: captions per image in captions.pickle (default 10 for birds, 5 for coco).")
@click.option("--no-decode", is_flag=True, help="Only check image headers (faster; misses truncated JPEGs).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of text.")
def check(dataset: str, data_dir: str | None, captions_per_image: int | None, no_decode: bool, as_json: bool) -> None:
    """Validate a dataset: every listed image and caption file exists and can be read.

    Prints a summary (images, captions, vocabulary, problems) and exits with status 1 when the dataset
    is unusable. Nothing on disk is changed.

    Example: attngan data check --dataset birds --data-dir data/birds
    """
    from ..data.check import check_dataset

    if dataset != "shapes" and not data_dir:
        raise click.UsageError("--data-dir is required for this dataset")
    report = check_dataset(
        dataset, data_dir or "", captions_per_image=captions_per_image, decode=not no_decode, progress=sys.stderr.isatty()
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.format())
    if not report.usable:
        sys.exit(1)
