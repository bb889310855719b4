"""AttnGAN training speed and peak memory: plain path against fast path (see reference.py), same run.

    python benchmarks/bench_train.py                                 # birds and coco, batch 4, CPU
    python benchmarks/bench_train.py --presets birds --batch-sizes 2 8 --configs plain fast channels_last
    python benchmarks/bench_train.py --configs plain fast fast+compile --rounds 2

One training iteration = G forward, one D step per stage (Eq. 5), one G step (Eq. 3), EMA of G (the
phases of the library's GANLoss: reference.GANTrainStep), with random weights and synthetic batches (the
speed does not depend on them). Each configuration runs in a fresh process (its own peak memory);
``--rounds`` > 1 interleaves the configurations against load drift.
A config is ``plain``, ``fast`` (every option that helps on this device), ``fast+compile``, or a comma
list of StepOptions fields, e.g. ``channels_last,vectorized_damsm`` or ``fast_upsample,autocast=bf16``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return bench_main(__file__, "gan", __doc__, configs=["plain", "fast"], batch_sizes=[4], unit="img/s", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
