"""The original AttnGAN code against this package, same process, same run: sampling and training.

    git clone https://github.com/taoxugit/AttnGAN AttnGAN       # not part of this repository
    pip install easydict                                               # the original config needs it
    python benchmarks/bench_original.py --original-code AttnGAN/code                # sampling
    python benchmarks/bench_original.py --original-code AttnGAN/code --task train   # training

**Sampling** (``--task sample``): one sentence.

The original ``code/model.py`` is imported from the given folder, unmodified, and set to the birds settings
of ``code/cfg/bird_attn2.yml`` (3 stages to 256 x 256, GF 32, R 2, 18 words, CPU). Its ``RNN_ENCODER`` and
``G_NET`` get random weights (speed does not depend on them), are saved as ``.pth`` files in a temporary
folder and loaded into this package with ``attngan.legacy.load_original``: both sides compute the same
function (``legacy.sample_like_original``; a run of the original code against the loaded modules gave identical
outputs, max abs difference 0.0). Timed per call, after warm-up, with alternating calls:

* ``original``: ``RNN_ENCODER`` then ``G_NET`` in eval mode under ``torch.no_grad``, as the original
  ``gen_example``, images and attention maps as tensors;
* ``pipeline-plain``: ``AttnGANPipeline(fast=False)(sentence)``: tokenising, seeded noise, text encoder,
  generator as trained, attention maps, PIL images of every stage;
* ``pipeline``: the same with the library default (the BN-folded, fused-upsampling, channels-last copy).

**Training** (``--task train``): iterations with the birds settings at ``--batch-size`` (4).

* ``original``: the body of the original ``trainer.train`` loop with its own modules and losses
  (``model.py``, ``miscc/losses.py``), unmodified: frozen ``RNN_ENCODER`` and ``CNN_ENCODER`` (Inception-v3
  with random weights: torchvision's download is replaced by a fresh state dict, although the original still
  prints its "Load pretrained model from <url>" line), ``G_NET``, ``D_NET64/128/256``,
  ``discriminator_loss`` per D with ``Adam``, ``generator_loss`` (its per-caption ``words_loss``) + ``KL_loss``,
  ``Adam``, the EMA loop. Random batches of the right shapes, no data loading. Two concessions to modern
  PyTorch, neither changing the work: ``class_ids=None`` (its same-class masks are ``uint8`` tensors, which
  ``masked_fill_`` no longer takes; the masking is a few element writes), and its log lines' ``x.data[0]``
  on 0-dim losses is answered with ``x`` while ``generator_loss`` runs.
* ``plain``, ``fast`` and ``fast-bf16``: ``attngan.training.train_gan`` itself (``benchmarks/bench_trainer.py``),
  with the built-in shapes data rendered at 64/128/256, data loading, statistics and EMA included; ``plain``
  with ``gan_train.fast_kernels=false gan_train.channels_last=false``, ``fast`` with the defaults (float32 on
  a CPU), ``fast-bf16`` the same loop with ``gan_train.mixed_precision=bf16`` (bf16 autocast on a CPU with
  AMX; float32, with a warning, without). ``--rows`` picks them (default: original, plain, fast).

The rows alternate in rounds; each round times ``--steps`` iterations after 2 warm-up ones. ``peak MB`` is
the process's RSS high-water mark, highest over the rounds, from the point where a row's networks exist to
the end of its round: for the original, from before its warm-up steps (its networks are built once); for
the library's rows, from the end of the loop's first step (the loop builds its networks, loads the DAMSM
and renders the data first; what that leaves resident counts, its transients do not). The original's
modules stay resident during every row, and the library's rows build and free their own, so a single row
in its own process (``--rows original``) gives that row's peak alone.

``--smoke`` (seconds; the test suite runs it): one call per row, one step per training row. Without
``--original-code`` it skips the original's rows (a line says so) and runs the rest with the tiny preset:
the library's networks are exported in the original's ``.pth`` layout (``attngan.legacy.save_original``) and
loaded back as the original's would be.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_trainer


def _original_birds(code_dir: str):
    """The original ``model`` module and ``cfg`` set to the birds settings (code/cfg/bird_attn2.yml)."""
    sys.path.insert(0, os.path.abspath(code_dir))
    from miscc.config import cfg  # the original's global config object

    cfg.CUDA = False
    cfg.TREE.BRANCH_NUM = 3
    cfg.GAN.GF_DIM, cfg.GAN.DF_DIM, cfg.GAN.Z_DIM, cfg.GAN.CONDITION_DIM, cfg.GAN.R_NUM = 32, 64, 100, 100, 2
    cfg.TEXT.EMBEDDING_DIM, cfg.TEXT.WORDS_NUM = 256, 18
    cfg.TRAIN.SMOOTH.GAMMA1, cfg.TRAIN.SMOOTH.GAMMA2, cfg.TRAIN.SMOOTH.GAMMA3, cfg.TRAIN.SMOOTH.LAMBDA = 4.0, 5.0, 10.0, 5.0
    import model as original  # code/model.py

    return original, cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original-code", help="the code/ folder of a taoxugit/AttnGAN checkout")
    p.add_argument("--task", choices=["sample", "train"], default="sample")
    p.add_argument("--reps", type=int, default=20, help="sample: timed calls per row")
    p.add_argument("--warmup", type=int, default=3, help="sample: untimed calls per row")
    p.add_argument("--batch-size", type=int, default=4, help="train: images per iteration")
    p.add_argument("--steps", type=int, default=6, help="train: timed iterations per row and round")
    p.add_argument("--rounds", type=int, default=2, help="train: alternating rounds")
    p.add_argument("--tune-malloc", action="store_true", help="train: keep freed memory for reuse, every row")
    p.add_argument(
        "--rows", nargs="+", default=["original", "plain", "fast"], choices=["original", "plain", "fast", "fast-bf16"],
        help="train: the rows, in this order within a round",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="seconds: one call per row; tiny networks without --original-code")
    a = p.parse_args(argv)
    if a.original_code is None and not a.smoke:
        p.error("--original-code is required (the code/ folder of a taoxugit/AttnGAN checkout), except with --smoke")
    if a.smoke:
        a.reps, a.warmup, a.steps, a.rounds = 1, 0, 1, 1
        if a.original_code is None:
            print("# smoke mode without --original-code: the original's rows are skipped, tiny networks")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.task == "train":
        bench_train(a)
    else:
        bench_sample(a)
    return 0


def _stand_in_networks(tmp: str):
    """Without the original code: the tiny preset's text encoder and generator, random weights, written in
    the original's ``.pth`` layout (what the original's ``state_dict()`` holds). -> (paths, vocabulary size, words)."""
    import dataclasses

    from attngan.config import PRESETS
    from attngan.legacy import save_original
    from attngan.nn import Generator, TextEncoder

    tiny, n_words = PRESETS["tiny"], 64
    torch.manual_seed(0)
    text_encoder = TextEncoder(dataclasses.replace(tiny.text_encoder, vocab_size=n_words))
    paths = (os.path.join(tmp, "text_encoder.pth"), os.path.join(tmp, "netG.pth"))
    save_original(text_encoder, paths[0])
    save_original(Generator(tiny.generator), paths[1])
    return paths, n_words, tiny.data.words_num


def bench_sample(a) -> None:
    from attngan.legacy import load_original, sample_like_original
    from attngan.pipeline import AttnGANPipeline
    from attngan.text import Vocabulary

    original = None
    with tempfile.TemporaryDirectory() as tmp:
        if a.original_code is None:
            (te_path, g_path), n_words, t = _stand_in_networks(tmp)
        else:
            original, _ = _original_birds(a.original_code)
            torch.manual_seed(0)
            n_words, t = 5450, 18
            rnn = original.RNN_ENCODER(n_words, nhidden=256).eval()
            netg = original.G_NET().eval()
            te_path, g_path = os.path.join(tmp, "text_encoder.pth"), os.path.join(tmp, "netG.pth")
            torch.save(rnn.state_dict(), te_path)
            torch.save(netg.state_dict(), g_path)
        text_encoder = load_original(te_path, kind="text_encoder")
        generator = load_original(g_path, kind="generator")
    words = [f"w{i}" for i in range(1, n_words)]
    vocab = Vocabulary(["<end>", *words])
    sentence = " ".join(words[:t])
    pipes = {
        "pipeline-plain": AttnGANPipeline(text_encoder, generator, vocab, fast=False),
        "pipeline": AttnGANPipeline(text_encoder, generator, vocab, fast=True),
    }
    captions = torch.arange(1, t + 1).unsqueeze(0)  # the same word ids as the sentence
    lengths = torch.tensor([t])

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
        return sample_like_original(pipes[name], sentence, seed=seed)

    calls = {
        "original": run_original,
        "pipeline-plain": lambda s: run_pipeline("pipeline-plain", s),
        "pipeline": lambda s: run_pipeline("pipeline", s),
    }
    if original is None:
        del calls["original"]
    for fn in calls.values():
        for k in range(a.warmup):
            fn(k)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for k in range(a.reps):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn(k)
            times[name].append(time.perf_counter() - start)
    _print_rows(
        f"# {time.strftime('%Y-%m-%d %H:%M')}  {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"load {os.getloadavg()[0]:.1f}; "
        + ("birds settings, one sentence of 18 words, 3 stages to 256 px, maps" if original else "tiny preset, maps"),
        times, 1000.0, "ms",
    )  # fmt: skip


def _print_rows(
    header: str, times: dict[str, list[float]], unit_scale: float, unit: str, per_image: int = 0,
    peaks: dict[str, float] | None = None,
) -> None:  # fmt: skip
    ref = statistics.median(times["original" if "original" in times else next(iter(times))])
    print(header)
    extra = f"{'img/s':>8}" if per_image else ""
    memory = f"{'peak MB':>9}" if peaks else ""
    print(f"{'config':<16}{'median ' + unit:>12}{'p10 ' + unit:>10}{'p90 ' + unit:>10}{extra}{'x original':>12}{memory}")
    for name, values in times.items():
        values = sorted(values)
        med = statistics.median(values)
        p10, p90 = values[len(values) // 10], values[(9 * len(values)) // 10]
        rate = f"{per_image / med:>8.2f}" if per_image else ""
        peak = f"{peaks[name]:>9.0f}" if peaks else ""
        print(f"{name:<16}{unit_scale * med:>12.3f}{unit_scale * p10:>10.3f}{unit_scale * p90:>10.3f}{rate}{ref / med:>12.2f}{peak}")


def _original_train_step(original, cfg, batch_size: int, n_words: int = 5450):
    """One iteration of the original ``trainer.train`` loop body (see the module docstring)."""
    import torch.utils.model_zoo as model_zoo
    import torchvision
    from miscc import losses as original_losses  # code/miscc/losses.py
    from miscc.utils import weights_init  # the original's initialisation, applied as its trainer does

    # CNN_ENCODER loads ImageNet weights by URL: give it a fresh (random) state dict instead.
    fresh = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    saved_load_url, model_zoo.load_url = model_zoo.load_url, lambda *args, **kwargs: fresh
    try:
        image_encoder = original.CNN_ENCODER(cfg.TEXT.EMBEDDING_DIM)
    finally:
        model_zoo.load_url = saved_load_url
    image_encoder.eval().requires_grad_(False)
    text_encoder = original.RNN_ENCODER(n_words, nhidden=cfg.TEXT.EMBEDDING_DIM).eval().requires_grad_(False)
    netG = original.G_NET()
    netG.apply(weights_init)
    netsD = [original.D_NET64(), original.D_NET128(), original.D_NET256()]
    for d in netsD:
        d.apply(weights_init)
    avg_param_G = [p.detach().clone() for p in netG.parameters()]
    optimizersD = [torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999)) for d in netsD]
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real_labels, fake_labels = torch.ones(batch_size), torch.zeros(batch_size)
    match_labels = torch.arange(batch_size)
    noise = torch.empty(batch_size, cfg.GAN.Z_DIM)
    gen = torch.Generator().manual_seed(0)
    imgs = [torch.rand(batch_size, 3, s, s, generator=gen) * 2 - 1 for s in (64, 128, 256)]
    cap_lens = torch.tensor(sorted(torch.randint(6, 19, (batch_size,), generator=gen).tolist(), reverse=True))
    captions = torch.randint(1, n_words, (batch_size, 18), generator=gen)
    for row, length in enumerate(cap_lens.tolist()):
        captions[row, length:] = 0

    def step() -> None:
        hidden = text_encoder.init_hidden(batch_size)
        words_embs, sent_emb = text_encoder(captions, cap_lens, hidden)
        words_embs, sent_emb = words_embs.detach(), sent_emb.detach()
        mask = captions == 0
        mask = mask[:, : words_embs.size(2)]
        noise.normal_(0, 1)
        fake_imgs, _, mu, logvar = netG(noise, sent_emb, words_embs, mask)
        for i in range(len(netsD)):
            netsD[i].zero_grad()
            errD = original_losses.discriminator_loss(netsD[i], imgs[i], fake_imgs[i], sent_emb, real_labels, fake_labels)
            errD.backward()
            optimizersD[i].step()
        netG.zero_grad()
        with _zero_dim_data_index():
            errG_total, _ = original_losses.generator_loss(
                netsD, image_encoder, fake_imgs, real_labels, words_embs, sent_emb, match_labels, cap_lens, None
            )
        errG_total = errG_total + original_losses.KL_loss(mu, logvar)
        errG_total.backward()
        optimizerG.step()
        for p, avg_p in zip(netG.parameters(), avg_param_G):
            avg_p.mul_(0.999).add_(p.data, alpha=0.001)

    return step


@contextlib.contextmanager
def _zero_dim_data_index():
    """While active, ``t[0]`` on a 0-dim tensor returns ``t`` (PyTorch 0.3's ``loss.data[0]`` in the
    original's log lines); every other indexing is unchanged."""
    saved = torch.Tensor.__getitem__

    def getitem(t, index):
        return t if t.dim() == 0 and isinstance(index, int) and index == 0 else saved(t, index)

    torch.Tensor.__getitem__ = getitem
    try:
        yield
    finally:
        torch.Tensor.__getitem__ = saved


def bench_train(a) -> None:
    from bench_trainer import library_preset, loop_step_times, make_encoders
    from machine import peak_memory_mb, reset_peak_memory

    from attngan.training import tune_cpu_allocator

    if a.tune_malloc:
        tune_cpu_allocator()
    cpu = torch.device("cpu")
    step = None
    rows = list(a.rows)
    if a.original_code is not None and "original" in rows:
        original, cfg = _original_birds(a.original_code)
        step = _original_train_step(original, cfg, a.batch_size)
    elif "original" in rows:
        rows.remove("original")
    birds = a.original_code is not None
    base = library_preset("birds" if birds else "tiny", a.batch_size, [])
    times: dict[str, list[float]] = {name: [] for name in rows}
    peaks: dict[str, float] = {name: 0.0 for name in rows}
    with tempfile.TemporaryDirectory() as tmp:
        damsm_dir = make_encoders(base, tmp)
        for rnd in range(a.rounds):
            for name in rows:
                reset_peak_memory(cpu)
                if name == "original":
                    for _ in range(2):
                        step()
                    for _ in range(a.steps):
                        start = time.perf_counter()
                        step()
                        times[name].append(time.perf_counter() - start)
                else:
                    # the first of the a.steps + 3 steps starts the loop, the next 2 warm up: a.steps are timed
                    # the window starts after the loop's first step, as the original's starts after its
                    # networks are built: resident memory counts, the transients of building do not
                    times[name] += loop_step_times(
                        base, name, damsm_dir, tmp, a.steps + 3, "cpu", after_first_step=lambda: reset_peak_memory(cpu)
                    )
                peaks[name] = max(peaks[name], peak_memory_mb(cpu))
                print(f"  {name} round {rnd + 1}: {statistics.median(times[name][-a.steps:]):.3f} s/step", flush=True)
    _print_rows(
        f"# {time.strftime('%Y-%m-%d %H:%M')}  {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"load {os.getloadavg()[0]:.1f}, malloc {'tuned' if a.tune_malloc else 'default'}; "
        f"{'birds settings' if birds else 'tiny preset'}, batch "
        f"{a.batch_size}, one training iteration (G, 3 D steps, G step, EMA)",
        times, 1.0, "s", per_image=a.batch_size, peaks=peaks,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
