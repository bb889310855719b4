"""Tokenisation, vocabulary, caption encoding (attngan.text) and batch collation (attngan.data.base)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attngan.data.base import (
    Batch,
    TextImageDataset,
    collate_batch,
    make_loader,
    multiscale_transform,
    set_epoch,
    to_rgb,
)
from attngan.errors import DataError, UserError
from attngan.text import EncodedCaption, Vocabulary, encode_caption, tokenize

# ---------------------------------------------------------------------------------------------- tokenize


def test_tokenize_punctuation_and_case():
    assert tokenize("A small, RED bird... with a short-beak!") == [
        "a",
        "small",
        "red",
        "bird",
        "with",
        "a",
        "short",
        "beak",
    ]


def test_tokenize_ascii_folding_and_empty():
    assert tokenize("Café naïve") == ["caf", "nave"]
    assert tokenize("日本 bird") == ["bird"]  # an all non-ASCII token disappears
    assert tokenize("") == []
    assert tokenize("?!, ...") == []
    assert tokenize("red\ufffd\ufffdbird") == ["red", "bird"]
    assert tokenize("snake_case 42") == ["snake_case", "42"]


# -------------------------------------------------------------------------------------------- vocabulary


def test_build_is_deterministic_count_then_alphabetical():
    lists = [["b", "a", "c"], ["c", "a"], ["c", "d"]]
    v = Vocabulary.build(lists)
    assert v.itos == ["<end>", "c", "a", "b", "d"]
    assert v.stoi["a"] == 2 and len(v) == 5
    assert Vocabulary.build(list(reversed(lists))).itos == v.itos
    assert Vocabulary.build(lists, min_count=2).itos == ["<end>", "c", "a"]


def test_save_load_round_trip(tmp_path):
    v = Vocabulary.build([["red", "circle", "café"], ["red"]])
    path = v.save(tmp_path / "sub" / "vocab.json")
    data = json.loads(path.read_text())
    assert data["itos"] == v.itos and set(data) == {"itos", "sha256"}  # its own checksum (atomic.with_digest)
    assert Vocabulary.load(path) == v
    assert not list(path.parent.glob("*.tmp"))


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Vocabulary.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        Vocabulary.load(bad)
    bad.write_text(json.dumps({"words": 3}))
    with pytest.raises(DataError, match="corrupt"):
        Vocabulary.load(bad)
    bad.write_text(json.dumps({"itos": ["red", "<end>"]}))
    with pytest.raises(DataError, match="index 0"):
        Vocabulary.load(bad)


def test_from_original_keeps_indices():
    ixtoword = {0: "<end>", 3: "bird", 1: "zebra", 2: "a"}
    wordtoix = {w: i for i, w in ixtoword.items()}
    v = Vocabulary.from_original(ixtoword, wordtoix)
    assert v.itos == ["<end>", "zebra", "a", "bird"]
    assert all(v.stoi[w] == i for w, i in wordtoix.items())
    assert Vocabulary.from_original([b"<end>", b"x"]).itos == ["<end>", "x"]
    with pytest.raises(DataError, match="without gaps"):
        Vocabulary.from_original({0: "<end>", 2: "a"})
    with pytest.raises(DataError, match="disagree"):
        Vocabulary.from_original(ixtoword, {**wordtoix, "bird": 1})


def test_encode_reports_unknown_words():
    v = Vocabulary.build([["a", "red", "circle"]])
    ids, unknown = v.encode(["a", "purple", "circle", "purple", "cube"])
    assert ids == [v.stoi["a"], v.stoi["circle"]]
    assert unknown == ["purple", "cube"]


# -------------------------------------------------------------------------------------- encode_caption


def test_encode_caption_drops_and_reports_unknown():
    v = Vocabulary.build([["a", "red", "circle", "top"]])
    enc = encode_caption("A purple circle at the top!", v, max_words=10)
    assert isinstance(enc, EncodedCaption)
    assert enc.tokens == ["a", "circle", "top"]
    assert enc.ids == [v.stoi[w] for w in enc.tokens] and enc.length == 3
    assert enc.unknown == ["purple", "at", "the"]
    ids, length, unknown = enc  # unpacks as the architecture contract's triple
    assert ids == enc.ids and length == 3 and unknown == enc.unknown


def test_encode_caption_empty_is_a_clear_error():
    v = Vocabulary.build([["red"]])
    with pytest.raises(UserError, match="no word in the vocabulary.*blue"):
        encode_caption("Blue!", v, max_words=5)
    with pytest.raises(DataError, match="no word in the vocabulary"):
        encode_caption("  ", v, max_words=5)


def test_truncation_first_and_random():
    words = [f"w{i}" for i in range(10)]
    v = Vocabulary.build([words])
    text = " ".join(words)
    first = encode_caption(text, v, max_words=4)
    assert first.tokens == words[:4] and first.length == 4
    a = encode_caption(text, v, 4, truncate="random", rng=np.random.default_rng(7))
    b = encode_caption(text, v, 4, truncate="random", rng=np.random.default_rng(7))
    assert a == b and a.length == 4
    positions = [words.index(t) for t in a.tokens]
    assert positions == sorted(positions) and len(set(positions)) == 4  # order kept, no repeats
    draws = {tuple(encode_caption(text, v, 4, "random", np.random.default_rng(s)).tokens) for s in range(20)}
    assert len(draws) > 5  # it really drops random words
    with pytest.raises(ValueError, match="truncate"):
        encode_caption(text, v, 4, truncate="last")


# ------------------------------------------------------------------------------------------- collation


def _sample(length, words_num=6, key="k", class_id=0, sizes=(4, 8), fill=1):
    caption = torch.zeros(words_num, dtype=torch.long)
    caption[:length] = torch.arange(1, length + 1) * fill
    return {
        "images": [torch.full((3, s, s), float(length) / 10) for s in sizes],
        "caption": caption,
        "length": length,
        "class_id": class_id,
        "key": key,
    }


def test_collate_batch_masks_lengths_trim():
    samples = [_sample(2, key="a", class_id=5), _sample(4, key="b", class_id=1), _sample(1, key="c")]
    batch = collate_batch(samples)
    assert isinstance(batch, Batch) and len(batch) == 3
    assert [im.shape for im in batch.images] == [(3, 3, 4, 4), (3, 3, 8, 8)]
    assert batch.images[1][2, 0, 0, 0].item() == pytest.approx(0.1)  # order kept: not sorted by length
    assert batch.captions.tolist() == [[1, 2, 0, 0], [1, 2, 3, 4], [1, 0, 0, 0]]  # T trimmed to max length 4
    assert batch.lengths.tolist() == [2, 4, 1]
    assert batch.mask.tolist() == [
        [False, False, True, True],
        [False, False, False, False],
        [False, True, True, True],
    ]
    assert batch.mask.dtype == torch.bool and batch.captions.dtype == torch.long
    assert batch.class_ids.tolist() == [5, 1, 0] and batch.keys == ["a", "b", "c"]
    assert batch.attributes is None
    moved = batch.to("cpu")
    assert torch.equal(moved.captions, batch.captions) and moved.keys == batch.keys


def test_collate_batch_attributes_and_bad_length():
    s1, s2 = _sample(2), _sample(3)
    s1["attributes"], s2["attributes"] = [{"shape": "circle"}], [{"shape": "square"}]
    assert collate_batch([s1, s2]).attributes == [[{"shape": "circle"}], [{"shape": "square"}]]
    with pytest.raises(ValueError, match="lengths"):
        collate_batch([_sample(0)])


# ------------------------------------------------------------------------------------------ base dataset


class _Dots(TextImageDataset):
    """Tiny dataset: image i is a flat image of grey level 10 * i."""

    def load_image(self, index):
        return Image.new("L", (20, 30), color=10 * index)


def _dots(train=True, **kw):
    caps = [["red dot", "a red dot left of center"], ["blue dot"], ["green dot", "dot", "a green dot"]]
    vocab = Vocabulary.build([tokenize(c) for cs in caps for c in cs])
    return _Dots(caps, ["d0", "d1", "d2"], vocab, words_num=4, image_sizes=[16, 8], train=train, **kw)


def test_dataset_items_and_determinism():
    ds = _dots(truncate="random")
    item = ds[0]
    assert [im.shape for im in item["images"]] == [(3, 8, 8), (3, 16, 16)]
    assert item["caption"].shape == (4,) and 1 <= item["length"] <= 4
    assert item["caption"][item["length"] :].eq(0).all()
    assert item["class_id"] == 0 and item["key"] == "d0"
    assert torch.equal(ds[2]["caption"], ds[2]["caption"])  # a function of (seed, epoch, index)
    texts = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        texts.add(ds[0]["text"])
    assert "red dot" in texts and len(texts) >= 3  # both captions drawn; long one loses random words
    ev = _dots(train=False, caption_index=1)
    assert ev[0]["text"] == "a red dot left" and ev[1]["text"] == "blue dot"  # fixed caption, keep-first
    grey = ev[2]["images"][1]
    assert torch.allclose(grey, torch.full_like(grey, 20 / 127.5 - 1), atol=1e-6)  # L mode -> RGB


def test_dataset_rejects_image_without_usable_caption():
    vocab = Vocabulary.build([["red"]])
    with pytest.raises(DataError, match="'x'.*no caption"):
        _Dots([["blue ?"]], ["x"], vocab, words_num=4, image_sizes=[8])


def test_multiscale_transform_eval_center_and_modes():
    img = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    assert to_rgb(img).getpixel((1, 1)) == (255, 255, 255)  # transparent -> white
    assert to_rgb(Image.new("CMYK", (2, 2))).mode == "RGB"
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 40:] = 255  # right half white
    out = multiscale_transform(Image.fromarray(arr), [32, 16], train=False)
    assert [t.shape for t in out] == [(3, 16, 16), (3, 32, 32)]
    assert out[1].min() >= -1 and out[1].max() <= 1
    assert out[1][:, :, 0].max() == -1 and out[1][:, :, -1].min() == 1  # centered, not flipped
    evals = [multiscale_transform(Image.fromarray(arr), [32], False, np.random.default_rng(s))[0] for s in range(8)]
    assert all(torch.equal(o, out[1]) for o in evals)  # eval never flips, whatever the rng
    portrait = np.zeros((80, 40, 3), np.uint8)
    portrait[40:] = 255  # bottom half white: the eval crop is centred vertically too
    tall = multiscale_transform(Image.fromarray(portrait), [32], train=False)[0]
    assert tall[:, 0, :].max() == -1 and tall[:, -1, :].min() == 1
    square = np.zeros((38, 38, 3), np.uint8)  # already int(32 * 76 / 64) wide: only crop and flip act
    square[:, 19:] = 255
    flips = {
        bool(
            multiscale_transform(Image.fromarray(square), [32], True, np.random.default_rng(s))[0][0, 0, 0]
            > 0
        )
        for s in range(8)
    }
    assert flips == {True, False}  # train: random flip


def test_make_loader_batches_and_epoch_order():
    ds = _dots()
    loader = make_loader(ds, batch_size=2, shuffle=True, drop_last=True, seed=3)
    batches = list(loader)
    assert len(batches) == 1 and isinstance(batches[0], Batch) and len(batches[0]) == 2

    def order(seed, epoch):
        loader = make_loader(ds, 3, shuffle=True, drop_last=False, seed=seed)
        set_epoch(loader, epoch)
        return [k for b in loader for k in b.keys]

    assert order(3, 0) == order(3, 0) and sorted(order(3, 0)) == ["d0", "d1", "d2"]
    assert len({tuple(order(3, e)) for e in range(6)}) > 1  # a new order per epoch
    assert ds.epoch == 5  # set_epoch reached the dataset too
    with pytest.raises(DataError, match="fewer than one batch"):
        make_loader(ds, batch_size=8, shuffle=True, drop_last=True)
