"""Losses of AttnGAN as pure functions of tensors and explicit hyper-parameters.

DAMSM (Sec. 3.2): similarity (Eq. 7), word-normalised softmax (Eq. 8), region-context attention (Eq. 9),
matching score (Eq. 10), posteriors (Eq. 11), L1w/L2w (Eq. 12-13), L1s/L2s and L_DAMSM (Eq. 14).
GAN (Sec. 3.1): the generator's objective (Eq. 3) of its stage losses (Eq. 4), the DAMSM term and the CA KL
term; discriminator loss (Eq. 5).

Where the released code and the paper differ, the default follows the code (it produced the released
models and the paper's numbers) and the paper's form is an option:
- Eq. 10: the code has no outer 1/gamma2 (``inverse_gamma2=False``).
- Eq. 12-13 are sums over the batch in the paper, means in the code (``reduction="mean"``); only the
  scale against lambda differs.
- Eq. 4-5 carry factors 1/2 in the paper; the code sums the G terms and averages the D terms as
  (real_u + real_c)/2 + (fake_u + fake_c + wrong_c)/3. We follow the code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

EPS = 1e-8


def _shape_error(what: str, expected: str, tensor: torch.Tensor) -> ValueError:
    return ValueError(f"{what} must be {expected}, got {tuple(tensor.shape)}")


def _check_words_regions(words: torch.Tensor, regions: torch.Tensor) -> None:
    if words.dim() != 3:
        raise _shape_error("words", "(B, D, T)", words)
    if regions.dim() != 4 or regions.shape[1] != words.shape[1]:
        raise _shape_error("regions", f"(B, D, h, w) with D = {words.shape[1]} as the words", regions)


def _check_lengths(lengths: torch.Tensor, b: int, t: int) -> None:
    """(B,) caption lengths in 1..T (their values are checked where they live on the CPU: no device sync)."""
    if tuple(lengths.shape) != (b,):
        raise _shape_error("lengths", f"({b},), one per caption", lengths)
    if lengths.device.type == "cpu" and b and not bool(((lengths >= 1) & (lengths <= t)).all()):
        raise ValueError(f"caption lengths must be in 1..{t} (T of the word features), got {lengths.tolist()}")


def _lengths_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B, T) bool, True at padding positions."""
    return torch.arange(t, device=lengths.device)[None, :] >= lengths[:, None]


def region_context(
    words: torch.Tensor, regions: torch.Tensor, gamma1: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Region-context vectors c_i of each word of a caption against the regions of an image (Eq. 7-9).

    The leading dimensions broadcast: words (B, D, T) against regions (B, D, h, w) pair caption b with image
    b; words (1, B_cap, D, T) against regions (B_img, 1, D, h, w) pair every caption with every image
    (:func:`word_scores`), without copying either.

    Args:
        words: (..., D, T) word features e; regions: (..., D, h, w) region features v; mask: (..., T) bool
        with the words' leading dimensions, True at padding words (excluded from the word softmax of Eq. 8).
    Returns:
        c (..., D, T) and alpha (..., T, h, w) (Eq. 9 weights over regions).
    """
    if words.dim() < 2:
        raise _shape_error("words", "(..., D, T)", words)
    lead, (d, t) = tuple(words.shape[:-2]), words.shape[-2:]
    if regions.dim() != words.dim() + 1 or regions.shape[-3] != d:
        raise _shape_error("regions", f"(..., D, h, w) with D = {d}, one dimension more than the words", regions)
    try:
        torch.broadcast_shapes(lead, regions.shape[:-3])
    except RuntimeError:
        expected = f"({', '.join(map(str, lead))}, D, h, w) or broadcastable to it"
        raise _shape_error("regions", expected, regions) from None
    if mask is not None and tuple(mask.shape) != (*lead, t):
        raise _shape_error("mask", f"({', '.join(map(str, (*lead, t)))}), one row per caption", mask)
    v = regions.flatten(-2)  # (..., D, N)
    s = torch.einsum("...dt,...dn->...tn", words, v)  # (..., T, N)  Eq. 7: s_{i,j} = e_i^T v_j
    if mask is not None:
        s = s.masked_fill(mask[..., None], float("-inf"))
    s_bar = torch.softmax(s, dim=-2)  # Eq. 8: normalised over words i for each region j
    alpha = torch.softmax(gamma1 * s_bar, dim=-1)  # Eq. 9: over regions j for each word i
    c = torch.einsum("...tn,...dn->...dt", alpha, v)  # (..., D, T): c_i = sum_j alpha_{i,j} v_j
    return c, alpha.unflatten(-1, regions.shape[-2:])


def _cosine(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Cosine similarity with the original's clamp of the norm product at 1e-8."""
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp(min=EPS)


def word_scores(
    regions: torch.Tensor,
    words: torch.Tensor,
    lengths: torch.Tensor,
    gamma1: float,
    gamma2: float,
    inverse_gamma2: bool = False,
) -> torch.Tensor:
    """Attention-driven image-text matching scores R(Q_j, D_i) for every image j and caption i (Eq. 10).

    Args:
        regions: (B_img, D, h, w); words: (B_cap, D, T); lengths: (B_cap,) true caption lengths.
        inverse_gamma2: apply the paper's outer exponent 1/gamma2 (the released code does not).
    Returns:
        (B_img, B_cap) scores.
    """
    _check_words_regions(words, regions)
    bc, _, t = words.shape
    _check_lengths(lengths, bc, t)
    pad = _lengths_mask(lengths, t)  # (Bc, T)
    c, _ = region_context(words[None], regions[:, None], gamma1, pad[None])  # (Bi, Bc, D, T)  Eq. 7-9
    rel = _cosine(c, words[None], dim=2)  # (Bi, Bc, T): R(c_i, e_i)
    rel = rel.masked_fill(pad[None], float("-inf"))
    score = torch.logsumexp(gamma2 * rel, dim=2)  # log sum_i exp(gamma2 R(c_i, e_i))
    if inverse_gamma2:
        score = score / gamma2
    return score


def sentence_scores(image_vectors: torch.Tensor, sentence_vectors: torch.Tensor) -> torch.Tensor:
    """R(Q_j, D_i) = cos(v-bar_j, e-bar_i) (the sentence-level form below Eq. 13): (B_img, B_cap)."""
    if image_vectors.dim() != 2:
        raise _shape_error("image vectors", "(B_img, D)", image_vectors)
    if sentence_vectors.dim() != 2 or sentence_vectors.shape[1] != image_vectors.shape[1]:
        raise _shape_error("sentence vectors", f"(B_cap, {image_vectors.shape[1]}) as the image vectors", sentence_vectors)
    num = image_vectors @ sentence_vectors.t()
    den = image_vectors.norm(dim=1)[:, None] * sentence_vectors.norm(dim=1)[None, :]
    return num / den.clamp(min=EPS)


def matching_losses(
    scores: torch.Tensor,
    gamma3: float,
    class_ids: torch.Tensor | None = None,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative log posteriors of the matching pairs (Eq. 11-13).

    Args:
        scores: (M, M) R(Q_j, D_i), images in rows, captions in columns; pair (i, i) matches.
        class_ids: (M,) optional; other captions of the same class are removed from the negatives
            (as the original did for CUB).
    Returns:
        (L_1 = -sum log P(D_i|Q_i), L_2 = -sum log P(Q_i|D_i)) (mean over the batch by default).
    """
    m = scores.size(0)
    if scores.shape != (m, m):
        raise ValueError(
            f"scores must be (M, M), as many images as captions (matching pairs on the diagonal), got "
            f"{tuple(scores.shape)}"
        )
    logits = gamma3 * scores  # Eq. 11
    if class_ids is not None:
        if tuple(class_ids.shape) != (m,):
            raise _shape_error("class_ids", f"({m},), one per pair", class_ids)
        same = class_ids[:, None] == class_ids[None, :]
        same = same & ~torch.eye(m, dtype=torch.bool, device=scores.device)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(m, device=scores.device)
    loss_1 = F.cross_entropy(logits, target, reduction=reduction)  # Eq. 12: softmax over captions
    loss_2 = F.cross_entropy(logits.t(), target, reduction=reduction)  # Eq. 13: softmax over images
    return loss_1, loss_2


@dataclass
class DAMSMLossOutput:
    total: torch.Tensor  # Eq. 14
    word_1: torch.Tensor  # L_1^w
    word_2: torch.Tensor  # L_2^w
    sent_1: torch.Tensor  # L_1^s
    sent_2: torch.Tensor  # L_2^s


def damsm_loss(
    regions: torch.Tensor,
    image_vectors: torch.Tensor,
    words: torch.Tensor,
    sentence: torch.Tensor,
    lengths: torch.Tensor,
    *,
    gamma1: float,
    gamma2: float,
    gamma3: float,
    class_ids: torch.Tensor | None = None,
    inverse_gamma2: bool = False,
    reduction: str = "mean",
) -> DAMSMLossOutput:
    """L_DAMSM = L_1^w + L_2^w + L_1^s + L_2^s (Eq. 14) for a batch of matching image-caption pairs."""
    sizes = (regions.shape[0], image_vectors.shape[0], words.shape[0], sentence.shape[0])
    if len(set(sizes)) != 1:
        raise ValueError(
            "damsm_loss needs matching image-caption pairs: got regions, image_vectors, words, sentence for "
            f"{', '.join(map(str, sizes))} items"
        )
    w1, w2 = matching_losses(
        word_scores(regions, words, lengths, gamma1, gamma2, inverse_gamma2), gamma3, class_ids, reduction
    )
    s1, s2 = matching_losses(sentence_scores(image_vectors, sentence), gamma3, class_ids, reduction)
    return DAMSMLossOutput(total=w1 + w2 + s1 + s2, word_1=w1, word_2=w2, sent_1=s1, sent_2=s2)


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) of conditioning augmentation, mean over all elements (original)."""
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape (B, c), got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    return torch.mean(-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()))


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def generator_stage_loss(disc, fake: torch.Tensor, sentence: torch.Tensor, uncond_weight: float = 1.0) -> torch.Tensor:
    """L_{G_i} (Eq. 4): -log D_i(x-hat) - log D_i(x-hat, e-bar), as the original (no 1/2 factors)."""
    features = disc(fake)
    uncond, cond = disc.logits(features, sentence)
    loss = _bce(cond, 1.0)
    if uncond is not None:
        loss = loss + uncond_weight * _bce(uncond, 1.0)
    return loss


def generator_objective(
    adversarial: torch.Tensor, damsm: torch.Tensor, kl: torch.Tensor, *, damsm_lambda: float, kl_weight: float = 1.0
) -> torch.Tensor:
    """L = L_G + lambda L_DAMSM (Eq. 3), plus ``kl_weight`` times the KL term of conditioning augmentation
    (the original's ``errG_total + KL_loss(mu, logvar)``).

    Args:
        adversarial: L_G = sum_i L_{G_i}, the stage losses of Eq. 4 (:func:`generator_stage_loss`) summed;
        damsm: L_DAMSM (Eq. 14) of the last stage's images; kl: :func:`kl_loss`. All three are scalars.
    """
    for name, term in (("adversarial", adversarial), ("damsm", damsm), ("kl", kl)):
        if term.dim() != 0:
            raise _shape_error(f"the {name} term", "a scalar ()", term)
    return adversarial + damsm_lambda * damsm + kl_weight * kl


@dataclass
class DiscriminatorLossOutput:
    total: torch.Tensor
    real_cond: torch.Tensor
    fake_cond: torch.Tensor
    wrong_cond: torch.Tensor | None
    real_uncond: torch.Tensor | None
    fake_uncond: torch.Tensor | None


def _judge_separately(disc, real: torch.Tensor, fake: torch.Tensor, sentence: torch.Tensor):
    b = real.size(0)
    feat_real, feat_fake = disc(real), disc(fake)
    u_real, c_real = disc.logits(feat_real, sentence)
    u_fake, c_fake = disc.logits(feat_fake, sentence)
    c_wrong = disc.logits(feat_real[: b - 1], sentence[1:b])[1] if b > 1 else None
    return u_real, c_real, u_fake, c_fake, c_wrong


def _judge_jointly(disc, real: torch.Tensor, fake: torch.Tensor, sentence: torch.Tensor):
    # One pass over [real; fake] and one over [real; fake; real[:-1]] for the conditional head, each part
    # with its own BatchNorm statistics: the same values as _judge_separately with one conv per layer.
    b = real.size(0)
    wrong = b - 1  # mismatched pairs: image k with sentence k + 1
    features = disc(torch.cat((real, fake)), groups=(b, b))
    uncond, _ = disc.logits(features, None)  # the unconditional head has no BatchNorm
    pairs = torch.cat((features, features[:wrong]))
    text = torch.cat((sentence, sentence, sentence[1:]))
    _, cond = disc.logits(pairs, text, groups=(b, b, wrong) if wrong else (b, b))
    u_real, u_fake = uncond.split(b) if uncond is not None else (None, None)
    return u_real, cond[:b], u_fake, cond[b : 2 * b], (cond[2 * b :] if wrong else None)


def discriminator_loss(
    disc,
    real: torch.Tensor,
    fake: torch.Tensor,
    sentence: torch.Tensor,
    uncond_weight: float = 1.0,
    joint_batches: bool = False,
) -> DiscriminatorLossOutput:
    """L_{D_i} (Eq. 5) with the mismatched pairs of the original: image k with sentence k+1.

    With an unconditional head: (U_real + C_real) / 2 + (U_fake + C_fake + C_wrong) / 3;
    without (AttnDCGAN): C_real + (C_fake + C_wrong) / 2. ``fake`` is detached here. Real, fake and
    mismatched batches are normalised separately (the original's separate calls); ``joint_batches`` runs
    them through ``disc`` as one concatenated batch with per-part BatchNorm (same values, fewer and larger
    convs, one weight gradient per layer instead of a sum of two). The original's batches were sorted by
    caption length, so its sentence k + 1 was one of similar length; the batches here keep the loader's
    random order, so the mismatched sentence is a random one (the same loss, without that bias).
    """
    judge = _judge_jointly if joint_batches else _judge_separately
    u_real, c_real, u_fake, c_fake, c_wrong = judge(disc, real, fake.detach(), sentence)
    real_cond = _bce(c_real, 1.0)
    fake_cond = _bce(c_fake, 0.0)
    wrong_cond = _bce(c_wrong, 0.0) if c_wrong is not None else None
    fake_terms = [fake_cond] + ([wrong_cond] if wrong_cond is not None else [])
    if u_real is not None:
        real_uncond = _bce(u_real, 1.0)
        fake_uncond = _bce(u_fake, 0.0)
        fake_terms.append(uncond_weight * fake_uncond)
        total = (uncond_weight * real_uncond + real_cond) / 2 + sum(fake_terms) / len(fake_terms)
    else:
        real_uncond = fake_uncond = None
        total = real_cond + sum(fake_terms) / len(fake_terms)
    return DiscriminatorLossOutput(total, real_cond, fake_cond, wrong_cond, real_uncond, fake_uncond)
