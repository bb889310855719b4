"""Validate a dataset on disk: every file listed, every caption, every image decoded.

:func:`check_dataset` scans the whole dataset and collects every problem (it does not stop at the first),
so that one run of ``attngan data check`` tells a user everything to fix. It reads the same layouts with
the same scanning code as the datasets, so what it accepts the datasets load.
"""

from __future__ import annotations

import logging
import os
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..text import Vocabulary, tokenize
from .files import SPLITS, Listing, build_vocabulary, missing_dataset, verify_image

__all__ = ["SplitSummary", "CheckReport", "check_dataset"]

log = logging.getLogger(__name__)

_ALIASES = {"birds": "birds", "cub": "birds", "coco": "coco", "folder": "folder", "shapes": "shapes"}
DEFAULT_CAPTIONS_PER_IMAGE = {"birds": 10, "coco": 5}


@dataclass
class SplitSummary:
    """Counts of one split."""

    images: int = 0
    captions: int = 0
    min_captions: int = 0  # fewest captions of an image
    max_captions: int = 0  # most captions of an image


@dataclass
class CheckReport:
    """What :func:`check_dataset` found. ``usable`` is True when there is no problem and training data."""

    dataset: str
    data_dir: str
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    vocab_size: int | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts worth knowing that are not errors
    words: list[str] = field(default_factory=list)  # the vocabulary, when it is small enough to read
    examples: list[str] = field(default_factory=list)  # a few training captions

    @property
    def usable(self) -> bool:
        train = self.splits.get("train")
        return not self.problems and (self.dataset == "shapes" or (train is not None and train.images > 0))

    @property
    def images(self) -> dict[str, int]:
        return {s: v.images for s, v in self.splits.items()}

    @property
    def captions(self) -> dict[str, int]:
        return {s: v.captions for s, v in self.splits.items()}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "usable": self.usable}

    def format(self, max_problems: int = 50) -> str:
        """A readable summary: counts per split, vocabulary, notes, and the problems (first ``max_problems``)."""
        lines = [f"dataset {self.dataset} in {self.data_dir or '(built-in)'}"]
        for split, s in self.splits.items():
            lines.append(
                f"  {split:5s}: {s.images} images, {s.captions} captions "
                f"({s.min_captions}-{s.max_captions} per image)"
            )
        if self.vocab_size is not None:
            lines.append(f"  vocabulary: {self.vocab_size} words (index 0 = '<end>')")
        if self.words:
            wrapped = textwrap.wrap(" ".join(self.words), 90)
            lines += [("  words: " if k == 0 else " " * 9) + ln for k, ln in enumerate(wrapped)]
        lines += [f"  example: {e}" for e in self.examples]
        lines += [f"  note: {n}" for n in self.notes]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        lines.append("usable: yes" if self.usable else "usable: NO (fix the problems above)")
        return "\n".join(lines)


def _scan(
    dataset: str, data_dir: Path, split: str, cpi: int, layout: str, test_fraction: float
) -> tuple[Listing, Any]:
    """(listing, boxes or None) of one split."""
    if dataset == "birds":
        from .cub import scan_cub

        return scan_cub(data_dir, split, cpi, bbox=True)
    if dataset == "coco":
        from .coco import scan_coco

        return scan_coco(data_dir, split, cpi, layout), None
    from .folder import scan_folder

    return scan_folder(data_dir, split, test_fraction), None


def _describe_shapes(report: CheckReport, examples: int = 4) -> CheckReport:
    """The built-in dataset as the ``shapes`` preset makes it: counts, vocabulary, example captions."""
    from ..config import PRESETS
    from .synthetic import ShapesDataset

    data = PRESETS["shapes"].data
    for split in SPLITS:
        ds = ShapesDataset.from_config(data, [32], split=split)  # captions only: no image is rendered here
        cpi = data.captions_per_image
        report.splits[split] = SplitSummary(len(ds.texts), sum(map(len, ds.texts)), cpi, cpi)
        if split == "train":
            report.vocab_size = len(ds.vocab)
            report.words = sorted(ds.vocab.words)
            report.examples = [ds.texts[i][0] for i in range(min(examples, len(ds.texts)))]
    report.notes.append(
        f"generated in memory from data.seed (nothing on disk); {data.max_objects} object(s) per image "
        f"(data.max_objects), captions cut to {data.words_num} words (data.words_num)"
    )
    return report


def check_dataset(
    dataset_name: str,  # birds (or cub) | coco | folder | shapes
    data_dir: str | os.PathLike,
    *,
    captions_per_image: int | None = None,  # original layouts; None: 10 for birds, 5 for coco
    layout: str = "auto",  # coco only: "auto" | "original" | "official"
    decode: bool = True,  # also decode every image (catches truncated JPEGs, which verify() misses)
    test_fraction: float = 0.1,  # folder only: share hashed to test when no split is given
    progress: bool = False,  # tqdm bar over the images
) -> CheckReport:
    """Scan a dataset completely and report counts and every problem found."""
    dataset = _ALIASES.get(dataset_name.lower())
    report = CheckReport(dataset=dataset or dataset_name, data_dir=str(data_dir))
    if dataset is None:
        report.problems.append(f"unknown dataset {dataset_name!r}; choose one of birds, coco, folder, shapes")
        return report
    if dataset == "shapes":
        return _describe_shapes(report)
    root = Path(data_dir)
    if not root.exists():
        report.problems.append(missing_dataset(dataset, root))
        return report
    cpi = captions_per_image or DEFAULT_CAPTIONS_PER_IMAGE.get(dataset, 0)
    seen: set[str] = set()

    def problem(text: str) -> None:
        if text not in seen:  # folder scans report shared problems once per split
            seen.add(text)
            report.problems.append(text)

    listings: dict[str, Listing] = {}
    for split in SPLITS:
        listing, _ = _scan(dataset, root, split, cpi, layout, test_fraction)
        listings[split] = listing
        for p in listing.problems:
            problem(p)

    # Vocabulary: the released one (captions.pickle) or the one a dataset would build (train + test).
    vocab: Vocabulary | None = next((lst.vocab for lst in listings.values() if lst.vocab is not None), None)
    if vocab is not None:
        report.notes.append(f"captions.pickle found: its vocabulary ({len(vocab)} words) is used unchanged")
    elif any(lst.captions for lst in listings.values()):
        vocab = build_vocabulary(c for lst in listings.values() for c in lst.captions)
    report.vocab_size = None if vocab is None else len(vocab)

    for split, listing in listings.items():
        counts = [sum(1 for cap in caps if len(cap)) for caps in listing.captions]  # empty ones are skipped
        empty = sum(len(caps) for caps in listing.captions) - sum(counts)
        if empty:
            report.notes.append(
                f"{split}: {empty} empty caption(s) in captions.pickle (lines of non-ASCII words only) are skipped"
            )
        report.splits[split] = SplitSummary(
            images=len(listing.keys),
            captions=sum(counts),
            min_captions=min(counts, default=0),
            max_captions=max(counts, default=0),
        )
        for key, caps in zip(listing.keys, listing.captions):
            if caps and all(isinstance(c, str) and not tokenize(c) for c in caps):
                problem(
                    f"image {key!r} ({split}): none of its captions has a word; write a caption with words"
                )
        no_class_file = not (root / split / "class_info.pickle").is_file()  # else its problem is reported
        if listing.keys and listing.class_ids is None and dataset == "birds" and no_class_file:
            report.notes.append(f"{split}: no class_info.pickle and no class folders: class id = image index")
    if dataset == "folder" and report.splits["test"].images == 0 and report.splits["train"].images:
        report.notes.append("the test split is empty (add a 'split' column or train/ and test/ folders)")
    hashed = {split: lst.hashed for split, lst in listings.items() if lst.hashed}
    if dataset == "folder" and hashed:
        report.notes.append(
            f"no split given for {sum(hashed.values())} images: a hash of their names put {hashed.get('test', 0)} "
            f"of them in test (about {test_fraction:.0%}); add train/ and test/ folders or a 'split' column to choose"
        )

    # Images: every file opened and verified (and decoded), problems collected.
    paths = [p for lst in listings.values() for p in lst.images]
    for path in tqdm(paths, desc="checking images", unit="img", disable=not progress):
        if not path.is_file():
            continue  # already reported by the scan
        found = verify_image(path, decode=decode)
        if found is not None:
            problem(found)
    log.info("checked %d images of %s: %d problem(s)", len(paths), root, len(report.problems))
    return report
