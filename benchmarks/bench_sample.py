"""Sampling speed: text encoder + all generator stages, with the attention maps (plain vs fast path).

    python benchmarks/bench_sample.py                        # birds and coco: 1 sentence and a batch of 16
    python benchmarks/bench_sample.py --presets birds --batch-sizes 1 --configs plain fast fast+compile

``B = 1`` is the latency of one sentence (``s/call``); larger ``B`` the throughput (``img/s``). Plain: the
generator as trained (float32, eager, channels-first, upsample then conv, BatchNorm as a separate op).
Fast: an inference copy with BatchNorm folded into the convs, the upsample+conv as one transposed conv,
channels-last, im2col matmuls for the 8x8 and 4x4 layers (see reference.Sampler). Both return the images of
every stage and the attention maps (explicit attention). Random weights and captions.

``--configs pipeline pipeline-plain`` measure what a user calls, ``attngan.AttnGANPipeline`` (tokenising,
the per-image noise generators and the PIL images included), with its default inference copy of G
(``pipeline``, the library's fast path) or with the generator as trained (``pipeline-plain``).

``--overhead`` times that pipeline against the networks it runs alone (its text encoder and inference copy
of G on the same words and noise, prepared beforehand), alternating call by call in one process, and prints
the median of the ratios of neighbouring calls (the target: at most 1.15):

    python benchmarks/bench_sample.py --overhead --presets birds --batch-sizes 1 16 --reps 20

``--smoke`` (seconds; the test suite runs it): the tiny preset, batch 2, one call, workers in this process.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        __file__, "sample", __doc__, configs=["plain", "fast"], batch_sizes=[1, 16], unit="img/s", reps=10,
        argv=argv, overhead=True,
    )


if __name__ == "__main__":
    sys.exit(main())
