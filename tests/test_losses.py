"""Eq. 2-14 against independent plain-loop computations.

Every reference below loops over batch items, words and regions with scalar / vector maths and follows
the paper's formulas (and, where they differ, the released code's choices described in
reference/original-attngan.md sections 2.6 and 4) literally. None of them calls the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attngan import losses
from attngan.nn.attention import SENTINEL_LOGIT_INIT, WordAttention, legacy_tiled_mask, word_attention
from tolerance import assert_close_to_scale

DT = torch.float64


def _mask(lengths: list[int], t: int) -> torch.Tensor:
    """(B, T) bool, True at padding."""
    return torch.tensor([[i >= n for i in range(t)] for n in lengths])


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


def _norm(a: torch.Tensor) -> float:
    return math.sqrt(_dot(a, a))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    # The original's cosine_similarity: w12 / clamp(|a| |b|, 1e-8).
    return _dot(a, b) / max(_norm(a) * _norm(b), 1e-8)


# ---------------------------------------------------------------------------------------------------
# Eq. 2: word-context attention of the generator


def ref_word_attention(h: torch.Tensor, e: torch.Tensor, lengths: list[int]):
    """c_j = sum_i beta_{j,i} e'_i, beta_{j,i} = exp(s'_{j,i}) / sum_k exp(s'_{j,k}), s'_{j,i} = h_j^T e'_i.

    Only the first ``lengths[b]`` words of sample b take part; padded words get weight 0.
    """
    b_size, c, hh, ww = h.shape
    t = e.shape[2]
    ctx = torch.zeros(b_size, c, hh, ww, dtype=h.dtype)
    beta = torch.zeros(b_size, t, hh, ww, dtype=h.dtype)
    for b in range(b_size):
        n = lengths[b]
        for y in range(hh):
            for x in range(ww):
                hj = h[b, :, y, x]
                s = [_dot(hj, e[b, :, i]) for i in range(n)]
                denom = sum(math.exp(v) for v in s)
                for i in range(n):
                    beta[b, i, y, x] = math.exp(s[i]) / denom
                    ctx[b, :, y, x] += beta[b, i, y, x] * e[b, :, i]
    return ctx, beta


def original_global_attention(h: torch.Tensor, source_t: torch.Tensor, mask: torch.Tensor):
    """A literal copy of the original GlobalAttentionGeneral.forward after the 1x1 projection (2.6)."""
    batch, idf, ih, iw = h.shape
    query_len = ih * iw
    source_len = source_t.size(2)
    target_t = h.view(batch, -1, query_len).transpose(1, 2).contiguous()  # (B, Q, idf)
    attn = torch.bmm(target_t, source_t)  # (B, Q, L)
    attn = attn.view(batch * query_len, source_len)
    attn = attn.masked_fill(mask.repeat(query_len, 1), -float("inf"))
    attn = torch.softmax(attn, dim=1)
    attn = attn.view(batch, query_len, source_len).transpose(1, 2).contiguous()  # (B, L, Q)
    weighted = torch.bmm(source_t, attn)  # (B, idf, Q)
    return weighted.view(batch, -1, ih, iw), attn.view(batch, -1, ih, iw)


@pytest.mark.parametrize("lengths", [[3, 5, 1], [4], [5, 5]])
def test_word_attention_eq2(seed, lengths):
    t, c = 5, 6
    h = torch.randn(len(lengths), c, 3, 2, dtype=DT) * 0.5
    e = torch.randn(len(lengths), c, t, dtype=DT) * 0.5
    ctx, beta = word_attention(h, e, _mask(lengths, t))
    ref_ctx, ref_beta = ref_word_attention(h, e, lengths)
    torch.testing.assert_close(beta, ref_beta, rtol=0, atol=1e-12)
    torch.testing.assert_close(ctx, ref_ctx, rtol=0, atol=1e-12)
    for b, n in enumerate(lengths):
        assert torch.all(beta[b, n:] == 0), "padded words must get exactly 0 weight"
        torch.testing.assert_close(beta[b, :n].sum(0), torch.ones(3, 2, dtype=DT))


def test_word_attention_without_mask_uses_all_words(seed):
    h = torch.randn(2, 4, 2, 2, dtype=DT)
    e = torch.randn(2, 4, 3, dtype=DT)
    ctx, beta = word_attention(h, e, None)
    ref_ctx, ref_beta = ref_word_attention(h, e, [3, 3])
    torch.testing.assert_close(ctx, ref_ctx, rtol=0, atol=1e-12)
    torch.testing.assert_close(beta, ref_beta, rtol=0, atol=1e-12)


def test_word_attention_module_projects_words_with_u(seed):
    """F^attn: e' = U e (1x1 conv without bias), then Eq. 2."""
    lengths, t, c, d = [2, 4], 4, 3, 5
    att = WordAttention(c, d).to(DT)
    h = torch.randn(2, c, 2, 3, dtype=DT)
    words = torch.randn(2, d, t, dtype=DT)
    u = att.conv_context.weight[:, :, 0, 0].detach()  # (C, D)
    e_proj = torch.zeros(2, c, t, dtype=DT)
    for b in range(2):
        for i in range(t):
            for r in range(c):
                e_proj[b, r, i] = _dot(u[r], words[b, :, i])
    ctx, beta = att(h, words, _mask(lengths, t))
    ref_ctx, ref_beta = ref_word_attention(h, e_proj, lengths)
    torch.testing.assert_close(ctx, ref_ctx, rtol=0, atol=1e-12)
    torch.testing.assert_close(beta, ref_beta, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lengths", [[3, 5, 1], [4]])
def test_word_attention_sentinel_is_one_more_key_and_value(seed, lengths):
    """generator.attention_sentinel: softmax over the caption's words and a learned vector s (key and value,
    its logit h_j^T s + b with a learned bias b); the maps returned are the words' rows. Reference: a loop over
    regions with s as word T+1."""
    t, c, d = 5, 4, 6
    att = WordAttention(c, d, sentinel=True).to(DT)
    with torch.no_grad():
        att.sentinel.copy_(torch.randn(c, dtype=DT))
        att.sentinel_logit.fill_(0.7)
    h = torch.randn(len(lengths), c, 3, 2, dtype=DT)
    words = torch.randn(len(lengths), d, t, dtype=DT)
    u = att.conv_context.weight[:, :, 0, 0].detach()
    s = att.sentinel.detach()
    bias = [0.0] * t + [0.7]
    ref_ctx = torch.zeros(len(lengths), c, 3, 2, dtype=DT)
    ref_beta = torch.zeros(len(lengths), t, 3, 2, dtype=DT)
    for b, n in enumerate(lengths):
        keys = [[_dot(u[r], words[b, :, i]) for r in range(c)] for i in range(n)] + [s.tolist()]
        for y in range(3):
            for x in range(2):
                logits = [sum(h[b, r, y, x].item() * k[r] for r in range(c)) + bias[i if i < n else t] for i, k in enumerate(keys)]
                denom = sum(math.exp(v) for v in logits)
                for i, k in enumerate(keys):
                    weight = math.exp(logits[i]) / denom
                    if i < n:
                        ref_beta[b, i, y, x] = weight
                    ref_ctx[b, :, y, x] += weight * torch.tensor(k, dtype=DT)
    ctx, beta = att(h, words, _mask(lengths, t))
    torch.testing.assert_close(beta, ref_beta, rtol=0, atol=1e-12)
    torch.testing.assert_close(ctx, ref_ctx, rtol=0, atol=1e-12)
    assert torch.all(beta.sum(1) < 1), "the sentinel takes part of every region's attention"
    fused, none = att(h, words, _mask(lengths, t), need_weights=False)
    assert none is None
    assert_close_to_scale(fused, ctx)
    # The bias learns: the loss reaches it through both paths.
    for need_weights in (True, False):
        att.zero_grad()
        att(h, words, _mask(lengths, t), need_weights=need_weights)[0].square().sum().backward()
        assert att.sentinel_logit.grad is not None and att.sentinel_logit.grad.abs() > 0


def test_word_attention_sentinel_starts_as_no_context_and_is_a_parameter_only_when_asked():
    plain, with_sentinel = WordAttention(4, 6), WordAttention(4, 6, sentinel=True)
    assert set(dict(plain.named_parameters())) == {"conv_context.weight"}
    assert set(dict(with_sentinel.named_parameters())) == {"conv_context.weight", "sentinel", "sentinel_logit"}
    assert torch.equal(with_sentinel.sentinel.detach(), torch.zeros(4))
    b0 = float(with_sentinel.sentinel_logit.detach())
    assert b0 == SENTINEL_LOGIT_INIT
    h, words = torch.randn(2, 4, 3, 3), torch.randn(2, 6, 3)
    with_sentinel.conv_context.load_state_dict(plain.conv_context.state_dict())
    ctx, beta = with_sentinel(h, words, None)
    ctx_plain, beta_plain = plain(h, words, None)
    # At first the sentinel's logit is b0 and its value 0: each region's words keep their odds and lose the
    # sentinel's share exp(b0) / (exp(b0) + sum exp).
    logits = torch.einsum("bchw,bct->bthw", h, with_sentinel.conv_context(words[..., None])[..., 0])
    scale = math.exp(b0) / (math.exp(b0) + torch.exp(logits).sum(1))
    assert_close_to_scale(beta, beta_plain * (1 - scale)[:, None])
    assert_close_to_scale(ctx, ctx_plain * (1 - scale)[:, None])


@pytest.mark.parametrize("lengths", [[3, 5, 1], [2], None])
def test_word_attention_fused_path_equals_explicit(seed, lengths):
    t = 5
    b = 3 if lengths is None else len(lengths)
    mask = None if lengths is None else _mask(lengths, t)
    h = torch.randn(b, 8, 4, 4)
    e = torch.randn(b, 8, t)
    ctx, beta = word_attention(h, e, mask)
    fused, none = word_attention(h, e, mask, need_weights=False)
    assert none is None and beta is not None
    assert_close_to_scale(fused, ctx)
    att = WordAttention(8, 6)
    words = torch.randn(b, 6, t)
    assert_close_to_scale(att(h, words, mask, need_weights=False)[0], att(h, words, mask)[0])


def test_legacy_tiled_mask_reproduces_original_repeat(seed):
    """Original: rows b*Q + q of the flattened logits get mask[(b*Q + q) % B] (issue #93)."""
    lengths, t = [2, 5, 3], 5
    mask = _mask(lengths, t)
    h = torch.randn(3, 4, 2, 2, dtype=DT)  # Q = 4, not a multiple of B = 3
    e = torch.randn(3, 4, t, dtype=DT)
    ctx, beta = word_attention(h, e, legacy_tiled_mask(mask, 4))
    ref_ctx, ref_beta = original_global_attention(h, e, mask)
    torch.testing.assert_close(ctx, ref_ctx, rtol=0, atol=1e-12)
    torch.testing.assert_close(beta, ref_beta, rtol=0, atol=1e-12)
    tiled = legacy_tiled_mask(mask, 4)
    for b in range(3):
        for q in range(4):
            assert torch.equal(tiled[b, q], mask[(b * 4 + q) % 3])
    # The bug matters here (so the comparison above can tell the two maskings apart) ...
    correct, _ = word_attention(h, e, mask)
    assert (correct - ctx).abs().max() > 1e-3
    # ... and has no effect at batch size 1 or with equal lengths.
    for sub_mask, sub_h, sub_e in [(mask[:1], h[:1], e[:1]), (_mask([3, 3, 3], t), h, e)]:
        a, _ = word_attention(sub_h, sub_e, legacy_tiled_mask(sub_mask, 4))
        b_, _ = word_attention(sub_h, sub_e, sub_mask)
        torch.testing.assert_close(a, b_, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Eq. 7-10: DAMSM attention and matching score


def ref_region_context(e: torch.Tensor, v: torch.Tensor, gamma1: float):
    """Eq. 7-9 for one caption (D, L) (valid words only) and one image (D, N): c (D, L), alpha (L, N)."""
    n_words, n_regions = e.shape[1], v.shape[1]
    s = [[_dot(e[:, i], v[:, j]) for j in range(n_regions)] for i in range(n_words)]  # Eq. 7
    s_bar = [
        [math.exp(s[i][j]) / sum(math.exp(s[k][j]) for k in range(n_words)) for j in range(n_regions)]
        for i in range(n_words)
    ]  # Eq. 8: normalised over the words
    alpha = torch.zeros(n_words, n_regions, dtype=e.dtype)
    c = torch.zeros(e.shape[0], n_words, dtype=e.dtype)
    for i in range(n_words):
        denom = sum(math.exp(gamma1 * s_bar[i][k]) for k in range(n_regions))
        for j in range(n_regions):
            alpha[i, j] = math.exp(gamma1 * s_bar[i][j]) / denom  # Eq. 9
            c[:, i] += alpha[i, j] * v[:, j]
    return c, alpha


def ref_word_scores(regions, words, lengths, gamma1, gamma2, inverse_gamma2):
    """Eq. 10 per caption, as the original words_loss: slice caption i to its length, attend to image j."""
    n_img, d = regions.shape[:2]
    scores = torch.zeros(n_img, words.shape[0], dtype=DT)
    for i in range(words.shape[0]):
        e = words[i, :, : lengths[i]]
        for j in range(n_img):
            c, _ = ref_region_context(e, regions[j].reshape(d, -1), gamma1)
            total = sum(math.exp(gamma2 * _cos(c[:, k], e[:, k])) for k in range(lengths[i]))
            scores[j, i] = math.log(total ** (1 / gamma2)) if inverse_gamma2 else math.log(total)
    return scores


def test_region_context_eq7_to_9(seed):
    lengths, t, d = [3, 6, 1], 6, 5
    words = torch.randn(3, d, t, dtype=DT)
    regions = torch.randn(3, d, 3, 2, dtype=DT)
    c, alpha = losses.region_context(words, regions, 4.0, mask=_mask(lengths, t))
    assert c.shape == (3, d, t) and alpha.shape == (3, t, 3, 2)
    for b, n in enumerate(lengths):
        ref_c, ref_alpha = ref_region_context(words[b, :, :n], regions[b].reshape(d, -1), 4.0)
        torch.testing.assert_close(c[b, :, :n], ref_c, rtol=0, atol=1e-12)
        torch.testing.assert_close(alpha[b, :n].reshape(n, -1), ref_alpha, rtol=0, atol=1e-12)
    assert torch.isfinite(c).all() and torch.isfinite(alpha).all()
    # Without a mask every word takes part.
    c_all, alpha_all = losses.region_context(words, regions, 5.0)
    ref_c, ref_alpha = ref_region_context(words[1], regions[1].reshape(d, -1), 5.0)
    torch.testing.assert_close(c_all[1], ref_c, rtol=0, atol=1e-12)
    torch.testing.assert_close(alpha_all[1].reshape(t, -1), ref_alpha, rtol=0, atol=1e-12)


def test_region_context_of_every_caption_against_every_image(seed):
    """Leading dimensions broadcast: words (1, B_cap, D, T) against regions (B_img, 1, D, h, w)."""
    lengths, t, d = [2, 5], 5, 4
    words = torch.randn(2, d, t, dtype=DT)
    regions = torch.randn(3, d, 2, 3, dtype=DT)
    c, alpha = losses.region_context(words[None], regions[:, None], 4.0, mask=_mask(lengths, t)[None])
    assert c.shape == (3, 2, d, t) and alpha.shape == (3, 2, t, 2, 3)
    for j in range(3):
        for i, n in enumerate(lengths):
            ref_c, ref_alpha = ref_region_context(words[i, :, :n], regions[j].reshape(d, -1), 4.0)
            torch.testing.assert_close(c[j, i, :, :n], ref_c, rtol=0, atol=1e-12)
            torch.testing.assert_close(alpha[j, i, :n].reshape(n, -1), ref_alpha, rtol=0, atol=1e-12)


@pytest.mark.parametrize("inverse_gamma2", [False, True])
@pytest.mark.parametrize(("n_img", "lengths"), [(3, [4, 1, 6, 3]), (1, [2])])
def test_word_scores_eq10(seed, inverse_gamma2, n_img, lengths):
    t, d = max(lengths) + 1, 6  # one padding column more than the longest caption
    regions = torch.randn(n_img, d, 2, 3, dtype=DT)
    words = torch.randn(len(lengths), d, t, dtype=DT)
    for i, n in enumerate(lengths):
        words[i, :, n:] = 100.0  # garbage at padding: must not leak into the scores
    got = losses.word_scores(regions, words, torch.tensor(lengths), 4.0, 5.0, inverse_gamma2=inverse_gamma2)
    ref = ref_word_scores(regions, words, lengths, 4.0, 5.0, inverse_gamma2)
    assert got.shape == (n_img, len(lengths))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------------
# Eq. 11-14: posteriors and the DAMSM loss


def ref_matching(scores, gamma3, class_ids=None, reduction="mean"):
    """Eq. 11-13 with the original's class masking (same-class off-diagonal pairs are not negatives)."""
    m = scores.shape[0]

    def negative(i, j):
        return j == i or class_ids is None or int(class_ids[j]) != int(class_ids[i])

    l1 = l2 = 0.0
    for i in range(m):
        num = math.exp(gamma3 * float(scores[i, i]))
        p_d_given_q = num / sum(math.exp(gamma3 * float(scores[i, j])) for j in range(m) if negative(i, j))
        p_q_given_d = num / sum(math.exp(gamma3 * float(scores[j, i])) for j in range(m) if negative(i, j))
        l1 -= math.log(p_d_given_q)
        l2 -= math.log(p_q_given_d)
    if reduction == "mean":
        l1, l2 = l1 / m, l2 / m
    return torch.tensor(l1, dtype=DT), torch.tensor(l2, dtype=DT)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matching_losses_eq11_to_13(seed, reduction):
    scores = torch.randn(5, 5, dtype=DT) * 0.5  # (images, captions), not symmetric
    got = losses.matching_losses(scores, 10.0, reduction=reduction)
    ref = ref_matching(scores, 10.0, reduction=reduction)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-10)
    assert not torch.allclose(got[0], got[1]), "L1 (over captions) and L2 (over images) must differ"


def test_matching_losses_class_masking(seed):
    scores = torch.randn(5, 5, dtype=DT) * 0.5
    class_ids = torch.tensor([0, 1, 0, 2, 1])
    got = losses.matching_losses(scores, 10.0, class_ids)
    ref = ref_matching(scores, 10.0, class_ids)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-10)
    unmasked = losses.matching_losses(scores, 10.0)
    assert not torch.allclose(got[0], unmasked[0])
    # All in one class: only the matching pair is left, so both posteriors are 1.
    same = losses.matching_losses(scores, 10.0, torch.zeros(5, dtype=torch.long))
    assert float(same[0]) == 0.0 and float(same[1]) == 0.0


def test_matching_losses_batch_size_one():
    l1, l2 = losses.matching_losses(torch.tensor([[0.3]], dtype=DT), 10.0, torch.tensor([4]))
    assert float(l1) == 0.0 and float(l2) == 0.0


def test_sentence_scores_cosine(seed):
    img = torch.randn(3, 6, dtype=DT)
    sent = torch.randn(4, 6, dtype=DT)
    sent[2] = 0.0  # zero vector: the 1e-8 clamp gives 0, not NaN
    sent[3] *= 1e-6  # tiny but non-zero: still an exact cosine (the clamp is only 1e-8)
    got = losses.sentence_scores(img, sent)
    ref = torch.tensor([[_cos(img[j], sent[i]) for i in range(4)] for j in range(3)], dtype=DT)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    assert torch.all(got[:, 2] == 0)


@pytest.mark.parametrize("class_ids", [None, [0, 1, 0, 2]])
def test_damsm_loss_eq14(seed, class_ids):
    lengths, t, d = [3, 5, 2, 4], 5, 6
    regions = torch.randn(4, d, 2, 2, dtype=DT)
    img_vec = torch.randn(4, d, dtype=DT)
    words = torch.randn(4, d, t, dtype=DT)
    sentence = torch.randn(4, d, dtype=DT)
    cid = None if class_ids is None else torch.tensor(class_ids)
    out = losses.damsm_loss(
        regions,
        img_vec,
        words,
        sentence,
        torch.tensor(lengths),
        gamma1=4.0,
        gamma2=5.0,
        gamma3=10.0,
        class_ids=cid,
    )
    w1, w2 = ref_matching(ref_word_scores(regions, words, lengths, 4.0, 5.0, False), 10.0, cid)
    sent_scores = torch.tensor(
        [[_cos(img_vec[j], sentence[i]) for i in range(4)] for j in range(4)], dtype=DT
    )
    s1, s2 = ref_matching(sent_scores, 10.0, cid)
    for name, ref in [("word_1", w1), ("word_2", w2), ("sent_1", s1), ("sent_2", s2)]:
        torch.testing.assert_close(getattr(out, name), ref, rtol=0, atol=1e-10, msg=name)
    torch.testing.assert_close(out.total, w1 + w2 + s1 + s2, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------------
# Eq. 3, KL and the adversarial losses (Eq. 4-5 as the original combines them)


@pytest.mark.parametrize("kl_weight", [1.0, 2.0])
def test_generator_objective_eq3(seed, kl_weight):
    stages = [float(x) for x in torch.rand(3, dtype=DT)]  # L_{G_i} of three stages
    damsm, kl = (float(x) for x in torch.rand(2, dtype=DT))
    expected = sum(stages) + 5.0 * damsm + kl_weight * kl  # L_G + lambda L_DAMSM, plus the weighted KL term
    got = losses.generator_objective(
        torch.tensor(sum(stages), dtype=DT), torch.tensor(damsm, dtype=DT), torch.tensor(kl, dtype=DT),
        damsm_lambda=5.0, kl_weight=kl_weight,
    )  # fmt: skip
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DT), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"the adversarial term must be a scalar"):
        losses.generator_objective(torch.rand(3), torch.rand(()), torch.rand(()), damsm_lambda=5.0)


def test_kl_loss_mean_over_elements(seed):
    mu = torch.randn(3, 4, dtype=DT)
    logvar = torch.randn(3, 4, dtype=DT)
    terms = [
        -0.5 * (1 + float(logvar[b, k]) - float(mu[b, k]) ** 2 - math.exp(float(logvar[b, k])))
        for b in range(3)
        for k in range(4)
    ]
    torch.testing.assert_close(
        losses.kl_loss(mu, logvar), torch.tensor(sum(terms) / 12, dtype=DT), rtol=0, atol=1e-12
    )
    assert float(losses.kl_loss(torch.zeros(2, 3), torch.zeros(2, 3))) == 0.0


class StubDisc(nn.Module):
    """A discriminator whose logits are simple known functions (features: one scalar per image).

    The conditional logit depends on which sentence is paired with which image, so the mismatched
    pairs of Eq. 5 are checked exactly.
    """

    def __init__(self, unconditional: bool = True) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.7, dtype=DT))
        self.unconditional = unconditional

    def forward(self, images: torch.Tensor, groups=None) -> torch.Tensor:
        return self.a * images.flatten(1).sum(1, keepdim=True)  # (B, 1); no BatchNorm: groups change nothing

    def logits(self, features, sentence, groups=None):
        f = features[:, 0]
        uncond = 0.5 * f - 0.2 if self.unconditional else None
        cond = f * sentence[:, 0] + sentence[:, 1] if sentence is not None else None
        return uncond, cond


def _feat(img: torch.Tensor) -> float:
    return 0.7 * float(img.sum())


def _log_sig(x: float) -> float:
    return -math.log(1 + math.exp(-x))  # log D


def _log_one_minus_sig(x: float) -> float:
    return -math.log(1 + math.exp(x))  # log(1 - D)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


@pytest.mark.parametrize("unconditional", [True, False])
@pytest.mark.parametrize("uncond_weight", [1.0, 0.5])
def test_generator_stage_loss_eq4(seed, unconditional, uncond_weight):
    disc = StubDisc(unconditional)
    fake = torch.randn(3, 3, 2, 2, dtype=DT) * 0.2
    sent = torch.randn(3, 4, dtype=DT)
    got = losses.generator_stage_loss(disc, fake, sent, uncond_weight=uncond_weight)
    cond = -_mean([_log_sig(_feat(fake[k]) * float(sent[k, 0]) + float(sent[k, 1])) for k in range(3)])
    ref = cond
    if unconditional:
        ref += -uncond_weight * _mean([_log_sig(0.5 * _feat(fake[k]) - 0.2) for k in range(3)])
    torch.testing.assert_close(got, torch.tensor(ref, dtype=DT), rtol=0, atol=1e-12)


def ref_discriminator_loss(real, fake, sent, unconditional, w=1.0):
    b = real.shape[0]
    fr = [_feat(real[k]) for k in range(b)]
    ff = [_feat(fake[k]) for k in range(b)]
    real_c = -_mean([_log_sig(fr[k] * float(sent[k, 0]) + float(sent[k, 1])) for k in range(b)])
    fake_c = -_mean([_log_one_minus_sig(ff[k] * float(sent[k, 0]) + float(sent[k, 1])) for k in range(b)])
    # Mismatched pairs: real image k with sentence k+1 (original-attngan.md 4.5).
    wrong = [_log_one_minus_sig(fr[k] * float(sent[k + 1, 0]) + float(sent[k + 1, 1])) for k in range(b - 1)]
    fake_terms = [fake_c] + ([-_mean(wrong)] if wrong else [])
    if unconditional:
        real_u = -_mean([_log_sig(0.5 * fr[k] - 0.2) for k in range(b)])
        fake_u = -_mean([_log_one_minus_sig(0.5 * ff[k] - 0.2) for k in range(b)])
        return (w * real_u + real_c) / 2 + (w * fake_u + sum(fake_terms)) / (len(fake_terms) + 1)
    return real_c + sum(fake_terms) / len(fake_terms)


@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("batch", [4, 1])
@pytest.mark.parametrize("unconditional", [True, False])
def test_discriminator_loss_eq5(seed, batch, unconditional, joint):
    disc = StubDisc(unconditional)
    real = torch.randn(batch, 3, 2, 2, dtype=DT) * 0.2
    fake = (torch.randn(batch, 3, 2, 2, dtype=DT) * 0.2).requires_grad_(True)
    sent = torch.randn(batch, 4, dtype=DT)
    out = losses.discriminator_loss(disc, real, fake, sent, joint_batches=joint)
    ref = ref_discriminator_loss(real, fake.detach(), sent, unconditional)
    torch.testing.assert_close(out.total, torch.tensor(ref, dtype=DT), rtol=0, atol=1e-12)
    assert (out.wrong_cond is None) == (batch == 1)
    assert (out.real_uncond is None) == (not unconditional)
    out.total.backward()
    assert fake.grad is None, "the discriminator loss must not reach the generator's output"
    assert disc.a.grad is not None and float(disc.a.grad) != 0.0


def test_discriminator_loss_uncond_weight(seed):
    disc = StubDisc(True)
    real = torch.randn(3, 3, 2, 2, dtype=DT) * 0.2
    fake = torch.randn(3, 3, 2, 2, dtype=DT) * 0.2
    sent = torch.randn(3, 4, dtype=DT)
    got = losses.discriminator_loss(disc, real, fake, sent, uncond_weight=0.5).total
    ref = ref_discriminator_loss(real, fake, sent, True, w=0.5)
    torch.testing.assert_close(got, torch.tensor(ref, dtype=DT), rtol=0, atol=1e-12)


def test_wrong_shapes_are_refused_instead_of_broadcast():
    """Shapes that broadcast into numbers (one length for all captions, one class id, a flat sentence) are
    errors that name the expected shape, not silently wrong losses."""
    from attngan import losses as L
    from attngan.config import DiscriminatorConfig
    from attngan.nn import Discriminator

    torch.manual_seed(0)
    b, d, t = 4, 8, 5
    regions, iv = torch.randn(b, d, 3, 3), torch.randn(b, d)
    words, sent = torch.randn(b, d, t), torch.randn(b, d)
    lengths = torch.tensor([5, 3, 2, 4])
    kw = dict(gamma1=4.0, gamma2=5.0, gamma3=10.0)
    assert torch.isfinite(L.damsm_loss(regions, iv, words, sent, lengths, **kw).total)
    cases = [
        (lambda: L.word_scores(regions, words, lengths[:1], 4.0, 5.0), r"lengths must be \(4,\)"),
        (lambda: L.word_scores(regions, words, torch.tensor([5, 0, 2, 4]), 4.0, 5.0), r"lengths must be in 1..5"),
        (lambda: L.word_scores(regions, words, torch.tensor([5, 6, 2, 4]), 4.0, 5.0), r"lengths must be in 1..5"),
        (lambda: L.region_context(words, regions, 4.0, torch.zeros(1, t, dtype=torch.bool)), r"mask must be \(4, 5\)"),
        (lambda: L.region_context(words, regions[:3], 4.0), r"regions must be \(4, D, h, w\)"),
        (lambda: L.word_scores(regions[:, :4], words, lengths, 4.0, 5.0), r"D = 8 as the words"),
        (lambda: L.damsm_loss(regions, iv, words, sent, lengths, class_ids=torch.tensor([0]), **kw), r"class_ids must be \(4,\)"),
        (lambda: L.damsm_loss(regions[:3], iv[:3], words, sent, lengths, **kw), r"matching image-caption pairs.*3, 3, 4, 4"),
        (lambda: L.sentence_scores(iv, sent[:, :4]), r"sentence vectors must be"),
        (lambda: L.matching_losses(torch.randn(3, 4), 10.0), r"as many images as captions"),
        (lambda: L.kl_loss(torch.randn(b, 6), torch.randn(6)), r"same shape"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()
    disc = Discriminator(DiscriminatorConfig(df_dim=4, embed_dim=d, image_size=16))
    fake = torch.randn(b, 3, 16, 16)
    assert torch.isfinite(L.generator_stage_loss(disc, fake, sent))
    for bad in (torch.randn(8, 4), torch.randn(2, 16), torch.randn(b * d)):  # b * d elements, other shapes
        with pytest.raises(ValueError, match=r"sentence must be \(B, D\) = \(4, 8\)"):
            L.generator_stage_loss(disc, fake, bad)
