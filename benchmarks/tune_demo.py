"""Tune the ``attngan demo`` settings on the built-in shapes dataset (CPU, a few minutes per run).

A compact copy of the two training loops with the paper's maths (DAMSM pre-training, Eq. 14; then per
iteration one step per D_i on Eq. 5 and one G step on Eq. 3 = sum of Eq. 4 stage losses + lambda * L_DAMSM
of the last stage through the frozen image encoder + kl_weight * KL), an EMA of G, and an evaluation of the
EMA generator (eval mode) on held-out test captions with the cached attribute classifier of
``attngan.metrics.attributes`` (colour/shape/position/size accuracy) and R-precision with the run's DAMSM.

    python benchmarks/tune_demo.py --name base --damsm-seconds 60 --gan-seconds 300
    python benchmarks/tune_demo.py --name small --set generator.base_size=16 --set generator.gf_dim=32 \\
        --damsm-steps 300 --gan-steps 1500 --seed 1 --results /tmp/tune.jsonl

``--set section.key=value`` overrides the ``shapes`` preset (``attngan.config.apply_overrides``); training
stops at ``--*-steps`` or ``--*-seconds``, whichever comes first (the preset's ``max_steps`` are ignored).
``--ema-decay`` / ``--ema-warmup`` override the EMA (warm-up: decay = min(decay, (1 + step) / (10 + step))).
Every run appends one JSON line to ``--results`` and prints it: settings, steps, wall times (data, DAMSM,
GAN, evaluation) and the metrics of the EMA and of the raw generator. ``--threads`` (default 2): use 1 on a
busy shared machine, where 2 threads per process were 6-15x slower. ``--eval-every N`` adds a curve.
The recommended demo settings (see TUNING.md), seed 0, step budgets as measured there:

    python benchmarks/tune_demo.py --name rec --threads 1 --set generator.base_size=16 \\
        --set image_encoder.input_size=32 --set image_encoder.small_blocks=2 --ema-decay 0.99 \\
        --damsm-steps 400 --damsm-seconds 1e9 --gan-steps 1200 --gan-seconds 1e9 --eval-every 300
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time

import numpy as np
import torch

from attngan.config import PRESETS, DiscriminatorConfig, apply_overrides, to_dict
from attngan.data.synthetic import ShapesDataset
from attngan.losses import damsm_loss, discriminator_loss, generator_stage_loss, kl_loss
from attngan.nn import Discriminator, Generator, ImageEncoder, TextEncoder


def build_split(preset, sizes, split, n=None):
    """All images (uint8 per scale), all captions (N, C, T) and lengths (N, C), attributes, texts."""
    data = preset.data
    ds = ShapesDataset(
        split=split, num_images=n or data.num_images, image_sizes=sizes, words_num=data.words_num,
        captions_per_image=data.captions_per_image, max_objects=data.max_objects, seed=data.seed,
        truncate=data.truncate, train=False,
    )
    n = len(ds)
    images = [torch.empty(n, 3, s, s, dtype=torch.uint8) for s in sizes]
    for i in range(n):
        for k, im in enumerate(ds.get_images(i, None)):
            images[k][i] = ((im + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    c = data.captions_per_image
    caps = torch.zeros(n, c, data.words_num, dtype=torch.long)
    lens = torch.ones(n, c, dtype=torch.long)
    for i in range(n):
        for k in range(ds.num_captions(i)):
            ids = ds.caption_ids(i, k)[: data.words_num]  # truncate "first"
            caps[i, k, : len(ids)] = torch.tensor(ids)
            lens[i, k] = len(ids)
    return {"images": images, "caps": caps, "lens": lens, "scenes": ds.scenes, "texts": ds.texts,
            "class_ids": torch.as_tensor(ds.class_ids), "vocab": ds.vocab}


def to_float(x):
    return x.float().div_(127.5).sub_(1.0)


def batch_of(d, idx, gen):
    k = torch.randint(d["caps"].size(1), (len(idx),), generator=gen)
    caps, lens = d["caps"][idx, k], d["lens"][idx, k]
    t = int(lens.max())
    caps = caps[:, :t]
    mask = caps == 0
    return [to_float(im[idx]) for im in d["images"]], caps, lens, mask


def train_damsm(preset, d, steps, seconds, gen):
    te = TextEncoder(preset.text_encoder)
    ie = ImageEncoder(preset.image_encoder)
    cfg, tc, lc = preset.damsm_train, preset.damsm_loss, preset.damsm_loss
    params = [p for p in list(te.parameters()) + list(ie.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
    te.train()
    ie.train()
    n = d["caps"].size(0)
    t0, step, losses = time.perf_counter(), 0, []
    while step < steps and time.perf_counter() - t0 < seconds:
        idx = torch.randperm(n, generator=gen)[: cfg.batch_size]
        imgs, caps, lens, _ = batch_of(d, idx, gen)
        words, sent = te(caps, lens)
        regions, vec = ie(imgs[-1])
        out = damsm_loss(regions, vec, words, sent, lens, gamma1=lc.gamma1, gamma2=lc.gamma2, gamma3=lc.gamma3,
                         class_ids=d["class_ids"][idx] if tc.class_masking else None,
                         inverse_gamma2=lc.eq10_inverse_gamma2)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(te.rnn.parameters(), cfg.rnn_grad_clip)
        opt.step()
        losses.append(float(out.total.detach()))
        step += 1
        if step % 50 == 0:
            print(f"  damsm step {step} {time.perf_counter() - t0:.0f}s loss {np.mean(losses[-50:]):.3f}", flush=True)
    te.eval().requires_grad_(False)
    ie.eval().requires_grad_(False)
    return te, ie, step, time.perf_counter() - t0, float(np.mean(losses[-20:]))


def train_gan(preset, d, te, ie, steps, seconds, gen, ema_decay, ema_warmup, lr_ratio, log_every=100,
              eval_every=0, eval_fn=None, extra_ema=()):
    g_cfg, cfg, gl, lc = preset.generator, preset.gan_train, preset.gan_loss, preset.damsm_loss
    G = Generator(g_cfg)
    Ds = [Discriminator(DiscriminatorConfig(df_dim=preset.discriminator_df_dim, embed_dim=g_cfg.embed_dim,
                                            image_size=s)) for s in g_cfg.image_sizes]
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    extras = {decay: copy.deepcopy(G).eval().requires_grad_(False) for decay in extra_ema}  # plain EMAs
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.g_lr, betas=cfg.betas)
    opt_ds = [torch.optim.Adam(D.parameters(), lr=cfg.d_lr * lr_ratio, betas=cfg.betas) for D in Ds]
    G.train()
    for D in Ds:
        D.train()
    n = d["caps"].size(0)
    t0, step, hist, curve, t_eval = time.perf_counter(), 0, [], [], 0.0
    while step < steps and time.perf_counter() - t0 - t_eval < seconds:
        idx = torch.randperm(n, generator=gen)[: cfg.batch_size]
        imgs, caps, lens, mask = batch_of(d, idx, gen)
        with torch.no_grad():
            words, sent = te(caps, lens)
        fake = G(None, sent, words, mask, need_attention=False)
        d_losses = []
        for D, opt, real, fk in zip(Ds, opt_ds, imgs, fake.images):
            for _ in range(cfg.d_steps):
                out = discriminator_loss(D, real, fk.detach(), sent, gl.uncond_weight)
                opt.zero_grad(set_to_none=True)
                out.total.backward()
                opt.step()
            d_losses.append(float(out.total.detach()))
        for D in Ds:
            D.requires_grad_(False)
        adv = sum(generator_stage_loss(D, fk, sent, gl.uncond_weight) for D, fk in zip(Ds, fake.images))
        regions, vec = ie(fake.images[-1])
        dm = damsm_loss(regions, vec, words, sent, lens, gamma1=lc.gamma1, gamma2=lc.gamma2, gamma3=lc.gamma3,
                        inverse_gamma2=lc.eq10_inverse_gamma2).total
        kl = kl_loss(fake.mu, fake.logvar)
        total = adv + gl.damsm_lambda * dm + gl.kl_weight * kl
        opt_g.zero_grad(set_to_none=True)
        total.backward()
        opt_g.step()
        for D in Ds:
            D.requires_grad_(True)
        decay = min(ema_decay, (1 + step) / (10 + step)) if ema_warmup else ema_decay
        with torch.no_grad():
            for model, dec in [(G_ema, decay), *((m, k) for k, m in extras.items())]:
                for pe, p in zip(model.parameters(), G.parameters()):
                    pe.lerp_(p, 1 - dec)
                for be, b in zip(model.buffers(), G.buffers()):
                    be.copy_(b)
        hist.append((sum(d_losses), float(adv.detach()), float(dm.detach()), float(kl.detach())))
        step += 1
        if step % log_every == 0:
            m = np.mean(hist[-log_every:], axis=0)
            print(f"  gan step {step} {time.perf_counter() - t0:.0f}s D {m[0]:.3f} Gadv {m[1]:.3f} "
                  f"damsm {m[2]:.3f} kl {m[3]:.3f}", flush=True)
        if eval_every and step % eval_every == 0 and step < steps:
            te0 = time.perf_counter()
            res = eval_fn(G_ema)
            G.train()
            curve.append({"step": step, "sec": round(te0 - t0 - t_eval, 1), **res})
            print(f"  eval {curve[-1]}", flush=True)
            t_eval += time.perf_counter() - te0
    m = np.mean(hist[-50:], axis=0)
    stats = {"D": m[0], "G_adv": m[1], "G_damsm": m[2], "kl": m[3]}
    return G, G_ema, step, time.perf_counter() - t0 - t_eval, stats, curve, extras


@torch.no_grad()
def evaluate(G, te, ie, test, classifier, seed):
    from attngan.metrics import calc_metric
    from attngan.metrics.attributes import attribute_accuracy

    G.eval()
    n = test["caps"].size(0)
    rng = torch.Generator().manual_seed(seed)
    fakes, rp_batches = [], []
    for s in range(0, n, 64):
        idx = torch.arange(s, min(s + 64, n))
        caps, lens = test["caps"][idx, 0], test["lens"][idx, 0]
        caps = caps[:, : int(lens.max())]
        words, sent = te(caps, lens)
        z = torch.randn(len(idx), G.config.z_dim, generator=rng)
        eps = torch.randn(len(idx), G.config.condition_dim, generator=rng)
        img = G(z, sent, words, caps == 0, ca_noise=eps).images[-1]
        fakes.append(img)
        rp_batches.append((img, caps, lens))
    fakes = torch.cat(fakes)
    acc = attribute_accuracy(classifier, fakes, [s[0] for s in test["scenes"]])
    rp = calc_metric("r_precision", image_encoder=ie, text_encoder=te, batches=rp_batches,
                     n_mismatch=min(99, n - 1), splits=min(10, n), seed=seed)
    res = {k: round(acc[f"{k}_acc"], 3) for k in ("color", "shape", "position", "size")}
    res["r_precision"] = round(rp["r_precision"], 1)
    return res, fakes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="run")
    ap.add_argument("--set", action="append", default=[], help="section.key=value override of the shapes preset")
    ap.add_argument("--damsm-steps", type=int, default=10**9)
    ap.add_argument("--damsm-seconds", type=float, default=60)
    ap.add_argument("--gan-steps", type=int, default=10**9)
    ap.add_argument("--gan-seconds", type=float, default=300)
    ap.add_argument("--ema-decay", type=float, default=None, help="default: gan_train.ema_decay")
    ap.add_argument("--ema-warmup", action="store_true")
    ap.add_argument("--extra-ema", type=float, nargs="*", default=[], help="also track plain EMAs with these decays")
    ap.add_argument("--d-lr-ratio", type=float, default=1.0, help="extra factor on gan_train.d_lr")
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate the EMA G every N GAN steps")
    ap.add_argument("--threads", type=int, default=2, help="1 is far faster on an oversubscribed machine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default="/tmp/tune_results.jsonl")
    ap.add_argument("--save-samples", default="", help="write a PNG grid of the first 32 EMA samples here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    preset = apply_overrides(PRESETS["shapes"], args.set)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    sizes = preset.generator.image_sizes
    start = time.perf_counter()
    train = build_split(preset, sizes, "train")
    if preset.text_encoder.vocab_size == 0:  # 0: the size of the dataset's vocabulary (as the loops do)
        preset = apply_overrides(preset, {"text_encoder.vocab_size": len(train["vocab"])})
    test = build_split(preset, sizes, "test", args.n_eval)
    t_data = time.perf_counter() - start

    from attngan.metrics.attributes import load_or_train_attribute_classifier

    classifier = load_or_train_attribute_classifier(image_size=sizes[-1])
    te, ie, d_steps, t_damsm, d_loss = train_damsm(preset, train, args.damsm_steps, args.damsm_seconds, gen)
    print(f"  damsm {d_steps} steps {t_damsm:.0f}s loss {d_loss:.3f}", flush=True)
    ema = preset.gan_train.ema_decay if args.ema_decay is None else args.ema_decay
    def eval_fn(model):
        return evaluate(model, te, ie, test, classifier, args.seed)[0]

    G, G_ema, g_steps, t_gan, g_stats, curve, extras = train_gan(
        preset, train, te, ie, args.gan_steps, args.gan_seconds, gen, ema, args.ema_warmup, args.d_lr_ratio,
        eval_every=args.eval_every, eval_fn=eval_fn, extra_ema=args.extra_ema,
    )
    t1 = time.perf_counter()
    res_ema, fakes = evaluate(G_ema, te, ie, test, classifier, args.seed)
    res_raw, _ = evaluate(G, te, ie, test, classifier, args.seed)
    res_extra = {str(k): evaluate(m, te, ie, test, classifier, args.seed)[0] for k, m in extras.items()}
    t_eval = time.perf_counter() - t1
    if args.save_samples:
        from torchvision.utils import save_image

        save_image(fakes[:32] * 0.5 + 0.5, args.save_samples, nrow=8)
    row = {
        "name": args.name, "set": args.set, "seed": args.seed, "ema": ema, "ema_warmup": args.ema_warmup,
        "d_lr_ratio": args.d_lr_ratio, "damsm_steps": d_steps, "gan_steps": g_steps,
        "sec": {"data": round(t_data, 1), "damsm": round(t_damsm, 1), "gan": round(t_gan, 1),
                "eval": round(t_eval, 1), "total": round(time.perf_counter() - start, 1)},
        "gan_ms_per_step": round(1000 * t_gan / max(g_steps, 1)), "damsm_loss": round(d_loss, 3),
        "gan_stats": {k: round(float(v), 3) for k, v in g_stats.items()},
        "ema_metrics": res_ema, "curve": curve, "plain_ema_metrics": res_extra, "threads": args.threads,
        "cpu_sec": round(time.process_time(), 1), "raw_metrics": res_raw,
        "sizes": sizes, "preset_generator": to_dict(preset.generator),
    }
    line = json.dumps(row)
    print(line, flush=True)
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
