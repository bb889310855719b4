"""Sampling latency of one sentence: the original AttnGAN code against ``attngan.AttnGANPipeline``, same run.

    git clone https://github.com/taoxugit/AttnGAN /tmp/AttnGAN       # not part of this repository
    pip install easydict                                               # the original config needs it
    python benchmarks/bench_original.py --original-code /tmp/AttnGAN/code

The original ``code/model.py`` is imported from the given folder, unmodified, and set to the birds settings
of ``code/cfg/bird_attn2.yml`` (3 stages to 256 x 256, GF 32, R 2, 18 words, CPU). Its ``RNN_ENCODER`` and
``G_NET`` get random weights (speed does not depend on them), are saved as ``.pth`` files in a temporary
folder and loaded into this package with ``attngan.legacy.load_original``: both sides compute the same
function (``legacy_mask_bug=True``; a run of the original code against the loaded modules gave identical
outputs, max abs difference 0.0). Timed per call, after warm-up, with alternating calls:

* ``original``: ``RNN_ENCODER`` then ``G_NET`` in eval mode under ``torch.no_grad``, as the original
  ``gen_example``, images and attention maps as tensors;
* ``pipeline-plain``: ``AttnGANPipeline(fast=False)(sentence)``: tokenising, seeded noise, text encoder,
  generator as trained, attention maps, PIL images of every stage;
* ``pipeline``: the same with the library default (the BN-folded, fused-upsampling, channels-last copy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original-code", required=True, help="the code/ folder of a taoxugit/AttnGAN checkout")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    sys.path.insert(0, os.path.abspath(a.original_code))
    from miscc.config import cfg  # the original's global config object

    cfg.CUDA = False
    cfg.TREE.BRANCH_NUM = 3
    cfg.GAN.GF_DIM, cfg.GAN.DF_DIM, cfg.GAN.Z_DIM, cfg.GAN.CONDITION_DIM, cfg.GAN.R_NUM = 32, 64, 100, 100, 2
    cfg.TEXT.EMBEDDING_DIM, cfg.TEXT.WORDS_NUM = 256, 18
    import model as original  # code/model.py

    from attngan.legacy import load_original
    from attngan.pipeline import AttnGANPipeline
    from attngan.text import Vocabulary

    torch.manual_seed(0)
    n_words = 5450
    rnn = original.RNN_ENCODER(n_words, nhidden=256).eval()
    netg = original.G_NET().eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(rnn.state_dict(), os.path.join(tmp, "text_encoder.pth"))
        torch.save(netg.state_dict(), os.path.join(tmp, "netG.pth"))
        text_encoder = load_original(os.path.join(tmp, "text_encoder.pth"), kind="text_encoder")
        generator = load_original(os.path.join(tmp, "netG.pth"), kind="generator")
    words = [f"w{i}" for i in range(1, n_words)]
    vocab = Vocabulary(["<end>", *words])
    sentence = " ".join(words[:18])
    pipes = {
        "pipeline-plain": AttnGANPipeline(text_encoder, generator, vocab, fast=False),
        "pipeline": AttnGANPipeline(text_encoder, generator, vocab, fast=True),
    }
    captions = torch.arange(1, 19).unsqueeze(0)  # the same 18 word ids as the sentence
    lengths = torch.tensor([18])

    def run_original(seed: int) -> torch.Tensor:
        z = torch.randn(1, 100, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            hidden = rnn.init_hidden(1)
            words_emb, sent_emb = rnn(captions, lengths, hidden)
            mask = captions == 0
            torch.manual_seed(seed)  # CA_NET draws its noise from the global generator
            fake_imgs, attention_maps, _, _ = netg(z, sent_emb, words_emb, mask)
        return fake_imgs[-1]

    def run_pipeline(name: str, seed: int):
        return pipes[name](sentence, seed=seed, legacy_mask_bug=True)

    calls = {
        "original": run_original,
        "pipeline-plain": lambda s: run_pipeline("pipeline-plain", s),
        "pipeline": lambda s: run_pipeline("pipeline", s),
    }
    for fn in calls.values():
        for k in range(a.warmup):
            fn(k)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for k in range(a.reps):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn(k)
            times[name].append(time.perf_counter() - start)
    ref = statistics.median(times["original"])
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')}  {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"load {os.getloadavg()[0]:.1f}; birds settings, one sentence of 18 words, 3 stages to 256 px, maps"
    )
    print(f"{'config':<16}{'median ms':>10}{'p10 ms':>8}{'p90 ms':>8}{'x original':>12}")
    for name, values in times.items():
        values = sorted(values)
        med = statistics.median(values)
        p10, p90 = values[len(values) // 10], values[(9 * len(values)) // 10]
        print(f"{name:<16}{1000 * med:>10.1f}{1000 * p10:>8.1f}{1000 * p90:>8.1f}{ref / med:>12.2f}")


if __name__ == "__main__":
    main()
