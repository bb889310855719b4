"""Read and write the ``.pth`` files of the original AttnGAN release (taoxugit/AttnGAN).

The released files (reference/original-attngan.md section 7) are bare state dicts written by
``torch.save`` under PyTorch 0.3: ``text_encoder*.pth`` (RNN_ENCODER), ``image_encoder*.pth``
(CNN_ENCODER, Inception-v3 included), ``bird_AttnGAN2.pth`` / ``coco_AttnGAN2.pth`` (G_NET),
``bird_AttnDCGAN2.pth`` (G_DCGAN) and, from training runs, ``netD{0,1,2}.pth`` (D_NET64/128/256).

Layout: :mod:`.keys` reads a state dict and infers its kind and settings, :mod:`.networks` loads one
network and writes it back, :mod:`.convert` converts whole model folders (``attngan convert``) and
:mod:`.sampling` samples in the original's order (``attngan sample --legacy-mask-bug``).

Our networks keep the original attribute names, so the parameter map is the identity. The one known
difference is ``num_batches_tracked``: BatchNorm gained that buffer in PyTorch 0.4.1, so the old files
lack it; it is filled with 0 (what PyTorch itself does for old files). Any other missing, unexpected or
mis-shaped key is an error that names the keys. Settings are inferred from keys and shapes
(:func:`infer_config`), in the manner of diffusers' ``infer_diffusers_model_type``:

================  ======================================================================
kind              inferred from
================  ======================================================================
text_encoder      ``encoder.weight`` (vocab_size, word_dim); ``rnn.weight_hh_l0`` (embed_dim / 2)
image_encoder     ``emb_cnn_code.weight`` (embed_dim); Inception-v3 keys (backbone)
generator         ``img_net1.img.0.weight`` or ``img_net.img.0.weight`` (gf_dim, dcgan);
                  ``ca_net.fc.weight`` (embed_dim, condition_dim = rows / 4);
                  ``h_net1.fc.0.weight`` (z_dim = columns - condition_dim);
                  highest ``h_net{i}`` (num_stages); ``h_net2.residual.{k}`` (res_blocks);
                  number of ``h_net1.upsample{k}`` (base_size = 4 * 2**k)
discriminator     ``COND_DNET.outlogits.0.weight`` (df_dim = columns / 8);
                  ``COND_DNET.jointConv.0.weight`` (embed_dim); ``img_code_s*`` (image_size);
                  ``UNCOND_DNET.*`` present (unconditional)
================  ======================================================================

Reproducing the original's samples exactly
-------------------------------------------
With weights loaded by :func:`load_original`, ``Generator`` computes the same function as the
original ``G_NET`` / ``G_DCGAN`` (``tests/test_legacy.py`` checks it against an independent
re-implementation of the original forward pass). To get the original's numbers:

1. **Eval mode.** ``load_original`` returns modules in ``eval()``: BatchNorm uses the running
   statistics and the text encoder's dropout is off, as in the original ``gen_example`` (section 6.1).
   (During training the original drew its sample grids with G in *train* mode: batch statistics.)
2. **Same inputs to G.** Encode the captions as the original did: sort the batch by length, longest
   first, pad with 0 to the longest caption (T = max length, not WORDS_NUM), ``mask = captions == 0``.
   Word ids must come from the same ``captions.pickle`` (``Vocabulary.from_original``).
3. **Same noise.** The original draws ``z ~ N(0, 1)`` (``noise.normal_``) and then, inside ``CA_NET``,
   ``eps ~ N(0, 1)`` of shape (B, condition_dim), *even in eval mode* (issue #29). Pass both
   explicitly: ``G(z, sentence, words, mask, ca_noise=eps)``. ``sample_like_original(pipe, prompts,
   seed=S)`` (``attngan sample --legacy-mask-bug --seed S``) draws them in the original's order: per
   batch, z of all its captions, then their eps, from one stream seeded once with S on the pipeline's
   device. The original ran ``gen_example`` on a GPU (``torch.manual_seed`` and the
   CUDA generator), so its noise is met on a CUDA device; on a CPU it is that of the original run on a
   CPU. ``ca_mean=True`` (c = mu) is *not* what the original did.
4. **The attention-mask bug.** The original tiled the (B, T) mask with ``mask.repeat(Q, 1)`` over
   rows ordered ``b*Q + q``, so pixel q of sample b used the mask of sample ``(b*Q + q) % B``
   (section 2.6, issue #93). ``attngan.nn.set_legacy_mask_bug(G)`` reproduces it; it only matters when a
   batch holds captions of unequal lengths (batch 1 or equal lengths are unaffected). Its effect
   depends on the whole batch and its order, so use the original's batch: ``gen_example`` put every
   sentence of one example file into one batch in the order ``np.argsort(cap_lens)[::-1]`` (longest
   first; with the numpy of its time, which sorted up to 16 items stably, captions of equal length in
   reverse file order; larger files or today's SIMD sorts may order ties otherwise), and
   :func:`sample_like_original` forms exactly these batches, with the bug switched on.
5. **DAMSM image encoder.** The original resized 256 -> 299 with ``nn.Upsample(mode='bilinear')``,
   which under PyTorch 0.3 meant ``align_corners=True``; ``ImageEncoder`` does exactly that (R-precision
   and the DAMSM loss depend on it). Use the released ``image_encoder*.pth``: its Inception BatchNorm
   statistics were changed by DAMSM training and differ from torchvision's ImageNet weights.
6. **Discriminators** return raw logits; the original returned ``sigmoid(logits)``.
7. **Float and 8-bit output.** The pipeline draws with an inference copy of G (folded BatchNorm, fused
   upsampling) that differs by float rounding (about 1e-6); ``fast=False`` (``attngan sample --exact``)
   runs the same operations as the original. The original made 8-bit pixels by truncation,
   ``((x + 1) * 127.5).astype(uint8)``; the package rounds unless ``viz.to_pil(x,
   original_truncation=True)`` (``attngan sample --truncate-pixels``).
"""


from .convert import Converted, native_to_original, original_to_native
from .keys import KINDS, infer_config
from .networks import build_module, describe, export_original, load_original, save_original
from .sampling import original_batches, sample_like_original

__all__ = [
    "KINDS",
    "load_original",
    "infer_config",
    "export_original",
    "save_original",
    "build_module",
    "describe",
    "Converted",
    "original_to_native",
    "native_to_original",
    "sample_like_original",
    "original_batches",
]
