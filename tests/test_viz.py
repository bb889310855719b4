"""Figures: Eq. 15 word selection against a hand computation, map upsampling, pixel conversion, layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from attngan.errors import UserError
from attngan.viz import (
    LABEL_HEIGHT,
    attention_figure,
    captioned_grid,
    image_grid,
    suppress_attention,
    to_pil,
    top_words,
    upsample_map,
    word_swap_figure,
)


@pytest.fixture
def attn() -> torch.Tensor:
    """T=4 rows over 2x2 regions; the caption's true length is 3, so row 3 is padding (threshold 1/3).

    Values are binary fractions so that sums are exact. 0.3125 lies between 1/4 and 1/3: it is dropped
    with the right threshold 1/length and would be kept with the wrong 1/T_max.
    """
    return torch.tensor(
        [
            [[0.5, 0.25], [0.375, 0.125]],  # kept 0.5 + 0.375 = 0.875
            [[0.3125, 0.75], [0.5, 0.0]],  # kept 0.75 + 0.5 = 1.25
            [[0.875, 0.125], [0.3125, 0.0]],  # kept 0.875 = 0.875 (ties with word 0)
            [[5.0, 5.0], [5.0, 5.0]],  # padding: must never be chosen
        ]
    )


def test_suppress_attention_eq15(attn):
    out = suppress_attention(attn, length=3)
    expected = torch.tensor(
        [
            [[0.5, 0.0], [0.375, 0.0]],
            [[0.0, 0.75], [0.5, 0.0]],
            [[0.875, 0.0], [0.0, 0.0]],
            [[0.0, 0.0], [0.0, 0.0]],
        ]
    )
    assert torch.equal(out, expected)
    # (T, N) layout gives the same result
    assert torch.equal(suppress_attention(attn.reshape(4, 4), 3), expected.reshape(4, 4))


def test_top_words_hand_computed(attn):
    assert top_words(attn, length=3, k=5) == [(1, 1.25), (0, 0.875), (2, 0.875)]
    assert top_words(attn, length=3, k=2) == [(1, 1.25), (0, 0.875)]
    # with the full length, the (now real) word 3 wins
    assert top_words(attn, length=4, k=1)[0][0] == 3


def test_bad_length_raises(attn):
    with pytest.raises(UserError):
        suppress_attention(attn, length=0)
    with pytest.raises(UserError):
        top_words(attn, length=5)


def test_upsample_map_shape_range_and_zeros():
    m = torch.zeros(4, 4)
    m[1, 2] = 1.0
    up = upsample_map(m, 32)
    assert up.shape == (32, 32)
    assert np.isfinite(up).all()
    assert up.min() == pytest.approx(0.0) and up.max() == pytest.approx(1.0)
    # the peak stays where the source region is (row 1 of 4 -> rows 8..15, col 2 -> cols 16..23)
    r, c = np.unravel_index(up.argmax(), up.shape)
    assert 8 <= r < 16 and 16 <= c < 24
    for flat in (np.zeros((4, 4)), np.full((4, 4), 0.3)):
        z = upsample_map(flat, 16)
        assert z.shape == (16, 16) and not np.isnan(z).any() and (z == 0).all()


def test_to_pil_rounding_vs_truncation():
    img = torch.full((3, 2, 2), -1.0)
    img[0, 0, 0] = 0.999  # (1.999) * 127.5 = 254.87
    img[1, 0, 0] = 1.5  # out of range: clipped to 1 -> 255
    img[2, 0, 0] = -1.5  # clipped to -1 -> 0
    rounded = np.asarray(to_pil(img))
    truncated = np.asarray(to_pil(img, original_truncation=True))
    assert rounded.shape == (2, 2, 3) and rounded.dtype == np.uint8
    assert rounded[0, 0, 0] == 255 and truncated[0, 0, 0] == 254
    assert rounded[0, 0, 1] == 255 and truncated[0, 0, 1] == 255
    assert rounded[0, 0, 2] == 0 and truncated[0, 0, 2] == 0
    assert rounded[1, 1].tolist() == [0, 0, 0]
    assert np.asarray(to_pil(torch.zeros(3, 1, 1)))[0, 0, 0] == 128  # 127.5: round half to even -> 128
    assert np.asarray(to_pil(torch.zeros(3, 1, 1), original_truncation=True))[0, 0, 0] == 127


def test_image_grid_size():
    images = torch.zeros(5, 3, 8, 6)
    grid = image_grid(images, nrow=3, padding=2)
    assert grid.size == (3 * (6 + 2) + 2, 2 * (8 + 2) + 2)
    pils = [Image.new("RGB", (6, 8), "white")] * 2
    assert image_grid(pils, nrow=8, padding=0).size == (12, 8)


def test_attention_figure_layout():
    torch.manual_seed(0)
    stages = [torch.rand(3, s, s) * 2 - 1 for s in (8, 16, 32)]
    attention = [torch.softmax(torch.randn(6, 4, 4), dim=0), torch.softmax(torch.randn(6, 8, 8), dim=0)]
    tokens = ["this", "bird", "has", "a", "red", "<pad>"]
    size = 24
    fig = attention_figure(stages, attention, tokens, length=5, k=5, size=size)
    cols = max(len(stages), 5)
    assert fig.size == (cols * size, (1 + 2) * (LABEL_HEIGHT + size))
    arr = np.asarray(fig).astype(int)
    # first row, first cell holds the 8x8 stage image resized to `size`
    first = np.asarray(to_pil(stages[0]).resize((size, size), Image.BILINEAR)).astype(int)
    assert np.array_equal(arr[LABEL_HEIGHT : LABEL_HEIGHT + size, :size], first)
    # attention cells are red-tinted overlays of the last stage: more red than the plain image
    base = np.asarray(to_pil(stages[-1]).resize((size, size), Image.BILINEAR)).astype(int)
    y = 2 * (LABEL_HEIGHT + size) + LABEL_HEIGHT
    cell = arr[y : y + size, :size]
    assert (cell[..., 0] - base[..., 0]).sum() > 0 and (cell[..., 1] <= base[..., 1]).all()


def test_attention_figure_short_caption_leaves_cells_empty():
    img = torch.zeros(3, 16, 16)
    attention = [torch.full((4, 2, 2), 0.25)]
    fig = attention_figure(img, attention, ["a", "b", "c", "d"], length=2, k=5, size=16)
    assert fig.size == (5 * 16, 2 * (LABEL_HEIGHT + 16))
    arr = np.asarray(fig)
    # only 2 words exist: the cells of columns 2..4 of the attention row stay white
    assert (arr[LABEL_HEIGHT + 16 :, 2 * 16 :] == 255).all()


def test_captioned_grid_and_word_swap():
    images = torch.zeros(3, 3, 16, 16)
    long = "this small bird has a very long caption that must wrap over several lines"
    fig = captioned_grid(images, ["a red bird", "a blue bird", long], nrow=3, cell=32)
    short = captioned_grid(images, ["a", "b", "c"], nrow=3, cell=32)
    assert fig.size[0] == short.size[0] and fig.size[1] > short.size[1] > 32
    with pytest.raises(UserError):
        captioned_grid(images, ["only one"])
    swap = word_swap_figure([("a red bird", images[0]), ("a blue bird", images[1])], size=20)
    assert swap.size[0] > 2 * 20 and swap.size[1] > 20
