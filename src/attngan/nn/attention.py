"""Word-context attention of the generator (Eq. 2 of the paper).

For every sub-region j of the hidden image features h (query) and every word i of the caption,
``s'_{j,i} = h_j^T e'_i`` with ``e' = U e`` (a 1x1 conv, no bias); ``beta_{j,i}`` is the softmax of
``s'`` **over words** (padding words excluded); the word-context vector is ``c_j = sum_i beta_{j,i} e'_i``.
There is no 1/sqrt(d) scaling (as in the paper and the original code).

With ``sentinel=True`` (not in the paper; the "visual sentinel" of Lu et al., CVPR 2017, "Knowing when to
look") a learned vector s in R^C is one more key and value beside the words, with a learned bias b of its
logit (s'_{j,s} = h_j^T s + b): ``beta`` is then the softmax over the words and s, and a region that needs no
word can attend to s instead. The returned maps are the words' rows only, so at each region they sum to 1
minus the sentinel's share.

:func:`set_legacy_mask_bug` switches the :class:`WordAttention` layers of a module to the original's
mis-tiled mask (:func:`legacy_tiled_mask`), only to reproduce its outputs (``attngan.legacy``); like the
switches of ``attngan.nn.fast`` it is a setting of the modules, not an argument of ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import conv1x1

SENTINEL_LOGIT_INIT = 4.0  # the sentinel's logit bias b at initialisation (WordAttention(sentinel=True))


def legacy_tiled_mask(mask: torch.Tensor, num_regions: int) -> torch.Tensor:
    """The original's mis-tiled mask (original-attngan.md 2.6, taoxugit/AttnGAN issue #93).

    The original flattened the logits to rows ``b*Q + q`` and used ``mask.repeat(Q, 1)``, so row r got
    ``mask[r % B]``. Returns the (B, Q, T) mask that the original effectively applied.
    """
    b = mask.size(0)
    rows = torch.arange(b, device=mask.device)[:, None] * num_regions + torch.arange(num_regions, device=mask.device)
    return mask[rows % b]  # (B, Q, T)


def word_attention(
    h: torch.Tensor,
    words: torch.Tensor,
    mask: torch.Tensor | None,
    need_weights: bool = True,
    logit_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eq. 2 on already projected words.

    Args:
        h: (B, C, H, W) image features (queries).
        words: (B, C, T) projected word features e' (keys and values).
        mask: (B, T) bool, True at padding words, or (B, H*W, T): one per sub-region j (None: no padding).
        need_weights: return beta; when False, PyTorch's fused attention may be used.
        logit_bias: (T,) added to every region's logits s'_{j,i} (None: nothing; not in the paper, for the
            sentinel of :class:`WordAttention`).
    Returns:
        context (B, C, H, W) and beta (B, T, H, W) (or None).
    """
    b, c, hh, ww = h.shape
    q = hh * ww
    query = h.reshape(b, c, q).transpose(1, 2)  # (B, Q, C)
    full_mask = mask[:, None, :].expand(b, q, mask.size(1)) if mask is not None and mask.dim() == 2 else mask
    if not need_weights:
        # One head (B, 1, ., .): CUDA's fused kernels take 4-D inputs only (3-D falls back to the math kernel).
        attn_mask = None if full_mask is None else ~full_mask[:, None]  # SDPA: True = take part
        if logit_bias is not None:  # an additive float mask: the bias, -inf at padding
            bias = logit_bias.to(query.dtype).expand(b, 1, q, words.size(2))
            attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, float("-inf"))
        keys = words.transpose(1, 2)[:, None]  # (B, 1, T, C)
        ctx = F.scaled_dot_product_attention(query[:, None], keys, keys, attn_mask=attn_mask, scale=1.0)
        ctx = ctx[:, 0]  # (B, Q, C)
        return ctx.transpose(1, 2).reshape(b, c, hh, ww), None
    logits = torch.bmm(query, words)  # (B, Q, T): s'_{j,i}
    if logit_bias is not None:
        logits = logits + logit_bias.to(logits.dtype)
    if full_mask is not None:
        logits = logits.masked_fill(full_mask, float("-inf"))
    beta = torch.softmax(logits, dim=2)  # over words
    ctx = torch.bmm(words, beta.transpose(1, 2))  # (B, C, Q): c_j = sum_i beta_{j,i} e'_i
    t = words.size(2)
    return ctx.reshape(b, c, hh, ww), beta.transpose(1, 2).reshape(b, t, hh, ww)


class WordAttention(nn.Module):
    """F^attn of Eq. 1-2: projects words with U (``conv_context``) and attends over them.

    ``forward(h (B, C, H, W), words (B, D, T), mask (B, T) or None, need_weights)`` returns the word-context
    features (B, C, H, W) and beta (B, T, H, W) (None unless ``need_weights``). ``sentinel``: a learned
    "no word" slot beside the words (not in the paper; see the module's docstring).
    """

    def __init__(self, image_dim: int, word_dim: int, sentinel: bool = False) -> None:
        super().__init__()
        self.conv_context = conv1x1(word_dim, image_dim)  # U in R^{C x D}
        self.legacy_mask_bug = False  # set_legacy_mask_bug: the original's mis-tiled mask
        # The learned "no word" key and value s and a learned bias of its logit (not in the paper). At first s = 0
        # (context 0) and the bias SENTINEL_LOGIT_INIT: every region gives the sentinel the weight of e**4 ~ 55
        # words of logit 0, so regions that need a word must learn to look at it (benchmarks/TUNING.md: with 4
        # the words' attention gathers on the object, grounding 4.5 x chance at 1500 steps against 3.0 x with 2).
        self.sentinel = nn.Parameter(torch.zeros(image_dim)) if sentinel else None
        self.sentinel_logit = nn.Parameter(torch.tensor(SENTINEL_LOGIT_INIT)) if sentinel else None

    def forward(
        self, h: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None, need_weights: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        projected = self.conv_context(words.unsqueeze(3)).squeeze(3)  # (B, C, T)
        if mask is not None and self.legacy_mask_bug:
            mask = legacy_tiled_mask(mask, h.size(2) * h.size(3))
        if self.sentinel is None:
            return word_attention(h, projected, mask, need_weights)
        t = projected.size(2)
        keys = torch.cat((projected, self.sentinel.to(projected.dtype).view(1, -1, 1).expand(h.size(0), -1, 1)), dim=2)
        if mask is not None:  # the sentinel is never padding
            mask = torch.cat((mask, mask.new_zeros(*mask.shape[:-1], 1)), dim=-1)
        bias = torch.cat((self.sentinel_logit.new_zeros(t), self.sentinel_logit.view(1)))  # (T + 1,)
        context, beta = word_attention(h, keys, mask, need_weights, logit_bias=bias)
        return context, None if beta is None else beta[:, :t]


def set_legacy_mask_bug(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every :class:`WordAttention` inside ``module`` to (or back from) the original's mis-tiled mask.

    Only to reproduce the original's outputs: a sample then reads the masks of other samples of its batch
    (it matters only for captions of unequal lengths in one batch).
    """
    for m in module.modules():
        if isinstance(m, WordAttention):
            m.legacy_mask_bug = enabled
    return module
