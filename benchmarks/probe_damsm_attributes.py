"""Which caption words does a DAMSM on the built-in shapes data tell apart? (a diagnostic for TUNING.md)

For each of ``--n`` test images (caption 0 of each), the true caption is scored against copies of it with
one attribute word swapped for each other value of that attribute (shape: 4 others, colour: 7, size: 1,
position: 8).
It prints, per attribute, how often the true caption scores highest, by the word-level score of Eq. 10
and by the sentence-level cosine, beside chance (1 / number of candidates). The generator learns an
attribute from the DAMSM term only as far as the DAMSM tells its values apart.

    python benchmarks/probe_damsm_attributes.py demo-out/runs/00000-shapes-damsm
    python benchmarks/probe_damsm_attributes.py --smoke     # seconds: a one-step tiny DAMSM, 4 images
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import torch

from attngan.config import PRESETS, DataConfig, from_dict
from attngan.data.registry import build_dataset
from attngan.data.synthetic import COLORS, POSITIONS, SHAPES
from attngan.losses import sentence_scores, word_scores
from attngan.text import tokenize
from attngan.training.gan import load_encoders

GROUPS = {"shape": list(SHAPES), "colour": list(COLORS), "size": ["small", "large"], "position": list(POSITIONS)}
# Position phrases name a grid cell in one or two words ("upper left", "middle"); a variant states another cell.
_POSITION = re.compile(r"\b(?:(?:top|upper|bottom|lower) (?:left|right)|top|bottom|left|right|center|middle)\b")


def _variants(tokens: list[str], name: str, values: list[str]) -> list[list[str]] | None:
    """The caption's tokens and one copy per other value of attribute ``name`` (None: the caption omits it)."""
    if name == "position":
        text = " ".join(tokens)
        found = _POSITION.search(text)
        if found is None:
            return None
        said = found.group().replace("upper", "top").replace("lower", "bottom").replace("middle", "center")
        swap = [text[: found.start()] + v + text[found.end() :] for v in values if v != said]
        return [tokens] + [s.split() for s in swap]
    at = next((j for j, t in enumerate(tokens) if t in values), None)
    if at is None:
        return None
    return [tokens] + [tokens[:at] + [v] + tokens[at + 1 :] for v in values if v != tokens[at]]


def _smoke_damsm(runs_dir: str) -> str:
    """A DAMSM run folder from one training step of tiny encoders on the shapes data (untrained: a smoke test)."""
    from attngan.config import apply_overrides
    from attngan.training.damsm import train_damsm

    tiny = PRESETS["tiny"]
    preset = apply_overrides(
        PRESETS["shapes"],
        {"text_encoder": tiny.text_encoder, "image_encoder": tiny.image_encoder, "data.num_images": 16,
         "damsm_train.batch_size": 8},
    )  # fmt: skip
    run = train_damsm(
        preset, runs_dir=runs_dir, device="cpu", max_steps=1, backbone_weights=None, val_set=False, progress=False,
        tensorboard=False,
    )  # fmt: skip
    return str(run.run_dir)


def _run_data_config(damsm: str) -> DataConfig:
    """The data settings the DAMSM was trained on (its run's config.json: object scale, texture, ...), else
    the shapes preset's; the test images are rendered with them."""
    for folder in (Path(damsm), Path(damsm).parent):
        path = folder / "config.json"
        if path.is_file():
            data = json.loads(path.read_text()).get("preset", {}).get("data")
            if isinstance(data, dict):
                return from_dict(DataConfig, data)
    return PRESETS["shapes"].data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("damsm", nargs="?", help="a DAMSM run folder (or its model/) trained on the shapes data")
    parser.add_argument("--n", type=int, default=300, help="test images probed (default 300)")
    parser.add_argument("--gamma1", type=float, default=4.0)
    parser.add_argument("--gamma2", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true", help="seconds: a one-step tiny DAMSM instead, 4 images")
    args = parser.parse_args(argv)
    if args.damsm is None and not args.smoke:
        parser.error("give a DAMSM run folder (or --smoke)")
    torch.set_num_threads(1)
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            args.damsm, args.n = args.damsm or _smoke_damsm(tmp), 4
            return probe(args)
    return probe(args)


def probe(args) -> int:
    text_encoder, image_encoder, vocab = load_encoders(args.damsm)
    data = _run_data_config(args.damsm)
    dataset = build_dataset(data, "test", [image_encoder.config.input_size], vocab=vocab, train=False)
    hits = {k: {"word": 0, "sentence": 0, "n": 0, "candidates": len(v)} for k, v in GROUPS.items()}
    for i in range(min(args.n, len(dataset))):
        item = dataset[i]
        tokens = tokenize(item["text"])
        with torch.no_grad():
            regions, image_vector = image_encoder(item["images"][-1][None])
        for name, values in GROUPS.items():
            variants = _variants(tokens, name, values)
            if variants is None:
                continue  # the caption does not state this attribute
            ids = [vocab.encode(v)[0] for v in variants]
            captions = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
            for r, x in enumerate(ids):
                captions[r, : len(x)] = torch.tensor(x)
            lengths = torch.tensor([len(x) for x in ids])
            with torch.no_grad():
                words, sentence = text_encoder(captions, lengths)
                by_words = word_scores(regions, words, lengths, args.gamma1, args.gamma2)[0]
                by_sentence = sentence_scores(image_vector, sentence)[0]
            hits[name]["word"] += int(by_words.argmax() == 0)
            hits[name]["sentence"] += int(by_sentence.argmax() == 0)
            hits[name]["n"] += 1
    print(f"# {args.damsm}")
    print(f"{'attribute':10s} {'captions':>8s} {'word top-1':>10s} {'sentence top-1':>14s} {'chance':>7s}")
    for name, h in hits.items():
        n = max(h["n"], 1)
        print(f"{name:10s} {h['n']:8d} {h['word'] / n:10.2f} {h['sentence'] / n:14.2f} {1 / h['candidates']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
