"""DAMSM pre-training speed and peak memory (plain vs fast path).

    python benchmarks/bench_damsm.py                          # birds and coco, batch 8
    python benchmarks/bench_damsm.py --presets birds --batch-sizes 8 48 --configs plain fast

One step: text encoder (train mode) + image encoder (frozen Inception, trained projections), L_DAMSM
(Eq. 14), backward, RNN gradient clipping, Adam. Plain: the per-caption word-loss loop of the original,
float32, channels-first. Fast: the vectorised loss (losses.word_scores), channels-last, BatchNorm of the
frozen Inception folded into its convs, fused Adam (the library's DAMSMLoss: see reference.DAMSMTrainStep).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return bench_main(__file__, "damsm", __doc__, configs=["plain", "fast"], batch_sizes=[8], unit="img/s", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
