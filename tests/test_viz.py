"""Figures: Eq. 15 word selection against a hand computation, map upsampling, pixel conversion, layouts."""

from __future__ import annotations

import io

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
    overlay,
    overlays,
    png_from_array,
    suppress_attention,
    to_pil,
    top_words,
    upsample_map,
    upsample_maps,
    word_swap_figure,
)


@pytest.fixture
def attn() -> torch.Tensor:
    """T_max=4 rows over 2x2 regions; the caption's true length is 3, so row 3 is padding (threshold 1/3).

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
    # (T, N) layout and numpy input give the same result
    assert torch.equal(suppress_attention(attn.reshape(4, 4).numpy(), 3), expected.reshape(4, 4))
    # the comparison is strict: beta == 1/T is suppressed
    assert torch.equal(suppress_attention(torch.tensor([[0.25, 0.5]]).T, 2), torch.tensor([[0.0], [0.0]]))
    assert torch.equal(suppress_attention(torch.full((4, 1), 0.25), 4), torch.zeros(4, 1))


def test_top_words_hand_computed(attn):
    assert top_words(attn, length=3, k=5) == [(1, 1.25), (0, 0.875), (2, 0.875)]  # ties by index
    assert top_words(attn, length=3, k=2) == [(1, 1.25), (0, 0.875)]
    # T=2: threshold 1/2 (strict, so the 0.5s go too); only words 0 and 1 can be listed
    assert top_words(attn, length=2, k=5) == [(1, 0.75), (0, 0.0)]
    # with the full length, the (now real) word 3 wins with all four regions kept
    assert top_words(attn, length=4, k=1) == [(3, 20.0)]


def test_top_words_ignores_padding_even_when_it_dominates():
    torch.manual_seed(0)
    attn = torch.rand(7, 3, 3) * 0.1
    attn[5:] = 10.0  # padding rows with huge attention
    words = top_words(attn, length=5, k=5)
    assert len(words) == 5 and {i for i, _ in words} == {0, 1, 2, 3, 4}
    assert len(top_words(attn, length=3, k=5)) == 3
    scores = [s for _, s in words]
    assert scores == sorted(scores, reverse=True)


def test_bad_length_raises(attn):
    with pytest.raises(UserError):
        suppress_attention(attn, length=0)
    with pytest.raises(UserError):
        top_words(attn, length=5)
    with pytest.raises(UserError):
        suppress_attention(torch.zeros(4), 1)


def test_upsample_map_shape_range_and_zeros():
    m = torch.zeros(4, 4)
    m[1, 2] = 1.0
    up = upsample_map(m, 32)
    assert up.shape == (32, 32) and up.dtype == np.float32
    assert np.isfinite(up).all()
    assert up.min() == pytest.approx(0.0) and up.max() == pytest.approx(1.0)
    # the peak stays where the source region is (row 1 of 4 -> rows 8..15, col 2 -> cols 16..23)
    r, c = np.unravel_index(up.argmax(), up.shape)
    assert 8 <= r < 16 and 16 <= c < 24
    for flat in (np.zeros((4, 4)), np.full((4, 4), 0.3)):
        z = upsample_map(flat, 16)
        assert z.shape == (16, 16) and not np.isnan(z).any() and (z == 0).all()


def test_upsample_map_bilinear_with_mirrored_borders_then_gaussian():
    # sigma=0: bilinear with half-pixel centres and mirrored borders (skimage's resize), by hand:
    # output x-centres map to -0.25, 0.25, 0.75, 1.25 -> mirrored 0.25, 0.25, 0.75, 0.75 -> 0.25, 0.25, 0.75, 0.75
    m = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert np.allclose(
        upsample_map(m, 4, sigma=0), [[0.0, 0.0, 1.0, 1.0]] * 4
    )  # clamped borders: 0, 1/3, ...
    # default sigma = 2 * upscale / 6 as pyramid_expand: it blurs, and more blur spreads the peak
    peak = torch.zeros(4, 4)
    peak[1, 1] = 1.0
    sharp, default, wide = (upsample_map(peak, 32, sigma=s) for s in (0, None, 6.0))
    assert np.allclose(default, upsample_map(peak, 32, sigma=2 * 8 / 6))
    assert (sharp > 0.5).sum() < (default > 0.5).sum() < (wide > 0.5).sum()


def test_upsample_map_matches_skimage_pyramid_expand():
    transform = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(0)
    for h, size, sigma in [(4, 32, None), (17, 256, None), (16, 64, 20.0)]:
        m = rng.random((h, h))
        ref = transform.pyramid_expand(m, upscale=size / h, sigma=sigma)
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        assert np.allclose(upsample_map(m, size, sigma), ref, rtol=0, atol=1e-4)  # maps in [0, 1]


def test_top_words_numpy_and_torch_inputs_agree():
    rng = np.random.default_rng(1)
    attn = rng.dirichlet(np.ones(7), size=64).T.reshape(7, 8, 8).astype(np.float32)  # (T, h, w)
    for length in (1, 3, 7):
        assert top_words(attn, length, k=7) == top_words(torch.from_numpy(attn), length, k=7)
        kept = torch.where(torch.from_numpy(attn) > 1 / length, torch.from_numpy(attn), torch.zeros(()))
        expected = kept[:length].reshape(length, -1).double().sum(dim=1)
        assert [s for _, s in top_words(attn, length, k=7)] == pytest.approx(
            sorted(expected.tolist(), reverse=True), rel=1e-12
        )


def test_upsample_maps_is_upsample_map_per_map():
    rng = np.random.default_rng(0)
    for (h, w), size, sigma in [((8, 8), 32, None), ((64, 64), 128, None), ((16, 16), 16, None),
                                ((6, 10), 24, 0), ((17, 17), 64, 20.0), ((5, 5), 3, None)]:  # fmt: skip
        maps = rng.random((4, h, w))
        maps[1] = 0.25  # constant: zeros
        maps[2, :, : w // 2] = 0.0
        before = maps.copy()
        batch = upsample_maps(maps, size, sigma)
        assert batch.shape == (4, size, size) and batch.dtype == np.float32
        assert np.array_equal(maps, before)  # the input is not modified
        assert (batch[1] == 0).all()
        for m, up in zip(maps, batch):
            assert np.array_equal(up, upsample_map(m, size, sigma))
    assert np.array_equal(upsample_maps(torch.ones(2, 4, 4), 8), np.zeros((2, 8, 8), np.float32))
    with pytest.raises(UserError):
        upsample_maps(np.zeros((4, 4)), 8)


def test_overlays_are_overlay_per_map():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    heats = rng.random((3, 12, 12)).astype(np.float32)
    heats[0] = 0.0
    for style, alpha in [("heat", None), ("heat", 0.6), ("spotlight", None), ("original", None), ("original", 0.3)]:
        batch = overlays(base, heats, style, alpha)
        assert batch.shape == (3, 12, 12, 3) and batch.dtype == np.uint8
        for heat, pixels in zip(heats, batch):
            assert np.array_equal(pixels, np.asarray(overlay(base, heat, style, alpha)))
    assert np.array_equal(overlays(base, heats, "heat")[0], base)  # no attention: the plain image


def test_png_from_array_is_lossless():
    rng = np.random.default_rng(0)
    smooth = np.broadcast_to(np.arange(40, dtype=np.uint8)[:, None, None] * 6, (40, 24, 3))
    for pixels in (rng.integers(0, 256, size=(33, 17, 3), dtype=np.uint8), smooth, np.zeros((1, 1, 3), np.uint8)):
        for level in (0, 1, 9):
            image = Image.open(io.BytesIO(png_from_array(pixels, level)))
            assert image.format == "PNG" and image.mode == "RGB" and image.size == pixels.shape[1::-1]
            assert np.array_equal(np.asarray(image), pixels)
    grey = rng.integers(0, 256, size=(9, 13), dtype=np.uint8)  # (H, W): a greyscale PNG
    image = Image.open(io.BytesIO(png_from_array(grey)))
    assert image.mode == "L" and np.array_equal(np.asarray(image), grey)
    for bad in (np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3)), np.zeros((0, 4, 3), np.uint8), np.zeros((0, 4), np.uint8), np.zeros(4, np.uint8)):
        with pytest.raises(UserError):
            png_from_array(bad)


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
    # truncation equals the original's numpy float32 expression on in-range values
    x = torch.linspace(-1, 1, 303).reshape(3, 1, 101)
    expected = ((x.numpy() + 1.0) * 127.5).astype(np.uint8).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(to_pil(x, original_truncation=True)), expected)


def test_image_grid_size():
    images = torch.zeros(5, 3, 8, 6)
    grid = image_grid(images, nrow=3, padding=2)
    assert grid.size == (3 * (6 + 2) + 2, 2 * (8 + 2) + 2)
    arr = np.asarray(grid)
    assert (arr[2:10, 2:8] == 128).all() and (arr[:2] == 0).all()  # images at their offsets, black padding
    pils = [Image.new("RGB", (6, 8), "white")] * 2
    assert image_grid(pils, nrow=8, padding=0).size == (12, 8)


def _solid(rgb: tuple[float, float, float], s: int) -> torch.Tensor:
    return torch.tensor(rgb).view(3, 1, 1).expand(3, s, s).clone()


def _quadrant_attention(h: int, owners: list[int], length: int, t_max: int) -> torch.Tensor:
    """(t_max, h, h): word owners[q] takes 0.9 of quadrant q (row-major), the other real words share 0.1."""
    attn = torch.full((t_max, h, h), 0.1 / (length - 1))  # below 1/length: suppressed by Eq. 15
    half = h // 2
    for q, word in enumerate(owners):
        r, c = divmod(q, 2)
        attn[word, r * half : (r + 1) * half, c * half : (c + 1) * half] = 0.9
    attn[length:] = 1.0  # padding words, which must never be drawn
    return attn


def test_attention_figure_layout_words_and_stage_images():
    size = 32
    stages = [_solid((1, -1, -1), 8), _solid((-1, 1, -1), 16), _solid((-1, -1, 1), 32)]  # red, green, blue
    owners = ([2, 2, 0, 2], [1, 3, 1, 1])  # per attention stage: the word owning each quadrant
    attention = [_quadrant_attention(4, owners[0], 4, 6), _quadrant_attention(8, owners[1], 4, 6)]
    # Eq. 15 by hand: 3 owned quadrants (12 regions * 0.9) > 1 quadrant (3.6) > unowned words (0, by index)
    expected = ([2, 0, 1, 3], [1, 3, 0, 2])
    tokens = ["a", "small", "red", "bird", "<pad>", "<pad>"]
    fig = attention_figure(stages, attention, tokens, length=4, k=5, size=size)
    cols = max(len(stages), 5)
    assert fig.size == (cols * size, (1 + 2) * (LABEL_HEIGHT + size))
    arr = np.asarray(fig).astype(int)

    def cell(row: int, col: int) -> np.ndarray:
        y = row * (LABEL_HEIGHT + size) + LABEL_HEIGHT
        return arr[y : y + size, col * size : (col + 1) * size]

    # first row: the stage images, each resized to `size`
    for c, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        assert (cell(0, c) == rgb).all()
    # attention stage r is drawn over image r + 1 (green, then blue), bright where the word attends
    half = size // 2
    for r, channel in ((0, 1), (1, 2)):
        assert [i for i, _ in top_words(attention[r], 4)] == expected[r]
        for col, word in enumerate(expected[r]):
            img = cell(r + 1, col)
            assert (np.delete(img, channel, axis=-1) == 0).all()
            quads = [
                img[q // 2 * half : (q // 2 + 1) * half, q % 2 * half : (q % 2 + 1) * half, channel].mean()
                for q in range(4)
            ]
            own = [q for q in range(4) if owners[r][q] == word]
            if own:
                assert min(quads[q] for q in own) > max(quads[q] for q in range(4) if q not in own) + 50
            else:  # all weights suppressed: the whole image is dimmed
                assert max(quads) < 60
        # only 4 real words: the fifth cell of each attention row stays white (padding never drawn)
        assert (cell(r + 1, 4) == 255).all()


def test_attention_figure_single_image_and_short_caption():
    img = torch.zeros(3, 16, 16)
    attention = [torch.full((4, 2, 2), 0.25)]
    fig = attention_figure(img, attention, ["a", "b", "c", "d"], length=2, k=5, size=16)
    assert fig.size == (5 * 16, 2 * (LABEL_HEIGHT + 16))
    arr = np.asarray(fig)
    # only 2 words exist: the cells of columns 2..4 of the attention row stay white
    assert (arr[LABEL_HEIGHT + 16 :, 2 * 16 :] == 255).all()
    # every weight is 0.25 <= 1/2: all suppressed, the maps are zero and the image is dimmed, not NaN
    assert (arr[2 * LABEL_HEIGHT + 16 :, :16] < 128).all()
    with pytest.raises(UserError):
        attention_figure(img, attention, ["a"], length=2, style="jet")


def test_attention_figure_default_size_and_styles():
    torch.manual_seed(0)
    img = torch.rand(3, 64, 64) * 2 - 1
    attention = [torch.softmax(torch.randn(3, 16, 16) * 3, dim=0)]
    figs = {
        s: attention_figure(img, attention, ["x", "y", "z"], 3, style=s)
        for s in ("spotlight", "heat", "original")
    }
    assert {f.size for f in figs.values()} == {(5 * 256, 2 * (LABEL_HEIGHT + 256))}
    cells = {s: np.asarray(f)[2 * LABEL_HEIGHT + 256 :, :256] for s, f in figs.items()}
    assert not np.array_equal(cells["spotlight"], cells["heat"])
    assert not np.array_equal(cells["heat"], cells["original"])


def test_captioned_grid():
    images = torch.zeros(3, 3, 16, 16)
    long = "this small bird has a very long caption that must wrap over several lines"
    fig = captioned_grid(images, ["a red bird", "a blue bird", long], nrow=3, cell=32)
    short = captioned_grid(images, ["a", "b", "c"], nrow=3, cell=32)
    assert fig.size[0] == short.size[0] and fig.size[1] > short.size[1] > 32
    assert (np.asarray(short)[4 : 4 + 32, 4 : 4 + 32] == 128).all()  # the first image, resized, at its place
    with pytest.raises(UserError):
        captioned_grid(images, ["only one"])


def _red_pixels(img: Image.Image, width: int) -> int:
    a = np.asarray(img)[:, :width].astype(int)
    return int(((a[..., 0] > 120) & (a[..., 1] < 80) & (a[..., 2] < 80)).sum())


def test_word_swap_figure_rows_and_highlight():
    torch.manual_seed(0)
    a, b = torch.rand(3, 3, 16, 16) * 2 - 1, torch.rand(3, 3, 16, 16) * 2 - 1
    s, tw, pad = 32, 100, 4  # one-line captions: each row is as high as an image
    fig = word_swap_figure([("a red bird", a), ("a light blue bird", list(b))], size=s, text_width=tw)
    assert fig.size == (tw + 3 * (s + pad) + pad, 2 * s + 3 * pad)
    arr = np.asarray(fig).astype(int)
    # same seed in the same column: row 1, column 2 holds b[2]
    expected = np.asarray(to_pil(b[2]).resize((s, s), Image.NEAREST)).astype(int)  # enlarged: sharp pixels
    y, x = pad + s + pad, tw + 2 * (s + pad)
    assert np.array_equal(arr[y : y + s, x : x + s], expected)
    # changed words are written in red; identical captions have none
    assert _red_pixels(fig, tw) > 0
    same = word_swap_figure([("a red bird", a), ("a red bird", b)], size=s, text_width=tw)
    assert _red_pixels(same, tw) == 0
    # a long caption wraps and makes its row taller
    long = word_swap_figure([("a red bird " * 6, a), ("a blue bird", b)], size=s, text_width=tw)
    assert long.size[1] > fig.size[1]
    # (caption, one image) pairs draw one image per row
    assert word_swap_figure([("a", a[0]), ("b", b[0])], size=s, text_width=60).size == (
        60 + s + 2 * pad,
        2 * s + 3 * pad,
    )
    with pytest.raises(UserError):
        word_swap_figure([])
