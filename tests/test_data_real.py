"""On-disk datasets: original CUB/COCO layouts, official COCO, own folders and manifests, the restricted
unpickler, the image cache, and ``check_dataset``. Every dataset is built in tmp_path from tiny images."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attngan.config import DataConfig
from attngan.data.base import collate_batch, multiscale_transform
from attngan.data.cache import cache_size
from attngan.data.check import check_dataset
from attngan.data.coco import COCODataset
from attngan.data.cub import CUBDataset, cub_crop_box
from attngan.data.folder import FolderDataset, hash_split
from attngan.data.pickles import load_captions_pickle, load_class_info, load_filenames, safe_load_pickle
from attngan.data.registry import build_dataset
from attngan.errors import DataError

SIZES = [16, 32]
W, H = 40, 30


# --------------------------------------------------------------------------------------------------------
# Helpers


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 wrote its ``str`` (SHORT_BINSTRING / BINSTRING opcodes), so the files
    below are byte-for-byte what Python 2 ``pickle.dump(obj, f, 2)`` produced."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_dump(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def coord_pixels(w: int = W, h: int = H) -> np.ndarray:
    """uint8 (h, w, 3) whose colour encodes the coordinates: R = 6x, G = 8y, B = 100."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 6, y * 8, np.full_like(x, 100)], axis=-1).astype(np.uint8)


def save_lossless(pixels: np.ndarray, path: Path) -> None:
    """PNG content (PIL reads by content, not by extension) so that crops can be checked pixel-exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")


def write_text(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))


def truncate_jpeg(path: Path) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((H, W, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


# CUB: keys, images.txt ids, raw bounding boxes (written as floats) and the crop the original takes.
CUB_TRAIN = ["001.Black_Bird/Black_Bird_0001", "001.Black_Bird/Black_Bird_0002", "002.Red_Bird/Red_Bird_0003"]
CUB_TEST = ["002.Red_Bird/Red_Bird_0004"]
CUB_BOXES = {
    # key: (bbox line, expected crop (x1, y1, x2, y2))
    CUB_TRAIN[0]: ("5.9 4.2 10.7 8.1", (3, 1, 17, 15)),  # (5, 4, 10, 8): r = 7, center (10, 8)
    CUB_TRAIN[1]: ("30.0 20.0 9.0 9.0", (28, 18, 40, 30)),  # r = 6, center (34, 24): clipped at the border
    CUB_TRAIN[2]: ("0 0 12 6", (0, 0, 15, 12)),  # r = 9, center (6, 3)
    CUB_TEST[0]: ("10 5 20 10", (5, 0, 35, 25)),  # r = 15, center (20, 10)
}
# A vocabulary in no sorted order: it must come out unchanged.
IXTOWORD = {0: "<end>", 1: "wing", 2: "a", 3: "bird", 4: "red", 5: "black", 6: "small"}
CUB_PICKLE_TRAIN = [[2, 5, 3], [5, 1], [2, 6, 3], [6, 5, 1], [4, 3], [2, 4, 1, 3]]  # 3 images x 2
CUB_PICKLE_TEST = [[2, 4, 3], [4, 1]]
CUB_CLASS_INFO = {"train": [7, 7, 9], "test": [9]}  # deliberately not the folder numbers


def make_cub(root: Path, with_pickle: bool = True) -> Path:
    keys = CUB_TRAIN + CUB_TEST
    py2_dump([k.encode() for k in CUB_TRAIN], root / "train" / "filenames.pickle")
    py2_dump([k.encode() for k in CUB_TEST], root / "test" / "filenames.pickle")
    py2_dump(CUB_CLASS_INFO["train"], root / "train" / "class_info.pickle")
    py2_dump(CUB_CLASS_INFO["test"], root / "test" / "class_info.pickle")
    cub = root / "CUB_200_2011"
    ids = {k: i + 1 for i, k in enumerate(keys)}
    write_text(cub / "images.txt", "".join(f"{ids[k]} {k}.jpg\n" for k in keys))
    # Rows in another order than images.txt: boxes are paired by image id.
    write_text(cub / "bounding_boxes.txt", "".join(f"{ids[k]} {CUB_BOXES[k][0]}\n" for k in reversed(keys)))
    for k in keys:
        save_lossless(coord_pixels(), cub / "images" / f"{k}.jpg")
    if with_pickle:
        py2_dump(
            [
                CUB_PICKLE_TRAIN,
                CUB_PICKLE_TEST,
                {i: w.encode() for i, w in IXTOWORD.items()},  # Python 2 str values
                {w.encode() if i % 2 else w: i for i, w in IXTOWORD.items()},  # str and unicode keys mixed
            ],
            root / "captions.pickle",
        )
    else:
        write_text(root / "text" / f"{CUB_TRAIN[0]}.txt", "A black bird.\n\nA small, black bird!\nwings\n")
        write_text(root / "text" / f"{CUB_TRAIN[1]}.txt", "a red bird\n")
        write_text(root / "text" / f"{CUB_TRAIN[2]}.txt", "red red bird\nthe bird\n")
        write_text(root / "text" / f"{CUB_TEST[0]}.txt", "a zebra bird\n")
    return root


def expected_images(pixels: np.ndarray, box, sizes=SIZES, train=False, rng=None) -> list[torch.Tensor]:
    x1, y1, x2, y2 = box
    return multiscale_transform(Image.fromarray(pixels[y1:y2, x1:x2]), sizes, train, rng)


# --------------------------------------------------------------------------------------------------------
# Restricted unpickler


def test_py2_captions_pickle_gives_str_words_and_unchanged_vocab(tmp_path):
    root = make_cub(tmp_path / "birds")
    loaded = load_captions_pickle(root / "captions.pickle")
    train, test, ixtoword, wordtoix = loaded
    assert train == CUB_PICKLE_TRAIN and test == CUB_PICKLE_TEST
    assert ixtoword == IXTOWORD
    assert all(type(w) is str for w in ixtoword.values()) and all(type(w) is str for w in wordtoix)
    assert wordtoix == {w: i for i, w in IXTOWORD.items()}
    assert loaded.vocab.itos == [IXTOWORD[i] for i in range(len(IXTOWORD))]
    assert load_filenames(root / "train" / "filenames.pickle") == CUB_TRAIN
    assert load_class_info(root / "train" / "class_info.pickle") == [7, 7, 9]


def test_python3_protocol2_bytes_and_numpy_class_info(tmp_path):
    # Python 3 writes bytes at protocol 2 through _codecs.encode: allowed for latin1 only.
    path = tmp_path / "names.pickle"
    path.write_bytes(pickle.dumps([b"001.A/b_1", "001.A/c_2"], protocol=2))
    assert load_filenames(path) == ["001.A/b_1", "001.A/c_2"]
    path = tmp_path / "class_info.pickle"
    path.write_bytes(pickle.dumps(np.array([3, 1, 200], dtype=np.int64), protocol=2))
    assert load_class_info(path) == [3, 1, 200]


def release_class_info_bytes(ids: list[int]) -> bytes:
    """``class_info.pickle`` as the birds release encodes it: Python 2 protocol 0, a list of ``numpy.int64``
    scalars (``numpy.core.multiarray.scalar(dtype('i8'), raw little-endian bytes)``)."""
    parts = ["(lp0\n"]
    for n, v in enumerate(ids):
        raw = "".join(f"\\x{b:02x}" for b in struct.pack("<q", v))
        if n == 0:
            parts.append(
                "cnumpy.core.multiarray\nscalar\np1\n(cnumpy\ndtype\np2\n(S'i8'\np3\nI0\nI1\ntp4\nRp5\n"
                f"(I3\nS'<'\np6\nNNNI-1\nI-1\nI0\ntp7\nbS'{raw}'\np8\ntp9\nRp10\na"
            )
        else:
            m = 8 + 3 * n
            parts.append(f"g1\n(g5\nS'{raw}'\np{m}\ntp{m + 1}\nRp{m + 2}\na")
    return ("".join(parts) + ".").encode("latin1")


def test_release_class_info_of_numpy_scalars_protocol_0(tmp_path):
    path = tmp_path / "class_info.pickle"
    path.write_bytes(release_class_info_bytes([1, 1, 200, 37]))
    assert load_class_info(path) == [1, 1, 200, 37]
    # An object-dtype scalar could hold anything: refused.
    evil = b"cnumpy.core.multiarray\nscalar\n(cnumpy\ndtype\n(S'O8'\nI0\nI1\ntRp0\nS''\ntR."
    path.write_bytes(evil)
    with pytest.raises(DataError, match="dtype\\('O'\\) are not allowed"):
        safe_load_pickle(path)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "captions.pickle"
    path.write_bytes(pickle.dumps([[], [], {0: "<end>"}, _Evil(marker)], protocol=2))
    with pytest.raises(DataError, match=r"'(posix|nt)\.system'") as info:
        load_captions_pickle(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(eval, protocol=2))
    with pytest.raises(DataError, match="builtins.eval"):
        safe_load_pickle(path)
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2)[:-4])
    with pytest.raises(DataError, match="truncated or corrupt"):
        safe_load_pickle(path)


# --------------------------------------------------------------------------------------------------------
# CUB


def test_cub_crop_box_matches_the_original_formula():
    assert cub_crop_box((5, 4, 10, 8), W, H) == (3, 1, 17, 15)
    assert cub_crop_box((30, 20, 9, 9), W, H) == (28, 18, 40, 30)
    assert cub_crop_box((3, 3, 5, 2), W, H) == (2, 1, 8, 7)  # r = int(3.75) = 3, center (5, 4)


def test_cub_with_captions_pickle(tmp_path):
    root = make_cub(tmp_path / "birds")
    ds = CUBDataset(root, "train", image_sizes=SIZES, words_num=18, captions_per_image=2, train=False)
    assert ds.keys == CUB_TRAIN
    assert ds.vocab.itos == ["<end>", "wing", "a", "bird", "red", "black", "small"]
    assert ds.class_ids.tolist() == [7, 7, 9]
    assert [ds.num_captions(i) for i in range(3)] == [2, 2, 2]
    assert ds.caption_ids(2, 1) == [2, 4, 1, 3]

    # The enlarged-bbox crop, checked through the coordinate colours.
    pixels = coord_pixels()
    for i, key in enumerate(CUB_TRAIN):
        x1, y1, x2, y2 = CUB_BOXES[key][1]
        img = np.asarray(ds.load_image(i))
        assert img.shape == (y2 - y1, x2 - x1, 3)
        assert np.array_equal(img, pixels[y1:y2, x1:x2])

    batch = collate_batch([ds[0], ds[1], ds[2]])
    assert batch.captions.tolist() == [[2, 5, 3], [2, 6, 3], [4, 3, 0]]
    assert batch.lengths.tolist() == [3, 3, 2]
    assert batch.mask.tolist() == [[False, False, False], [False, False, False], [False, False, True]]
    assert batch.class_ids.tolist() == [7, 7, 9]
    assert batch.keys == CUB_TRAIN
    assert batch.texts == ["a black bird", "a small bird", "red bird"]
    assert [tuple(im.shape) for im in batch.images] == [(3, 3, 16, 16), (3, 3, 32, 32)]
    for i, key in enumerate(CUB_TRAIN):
        for got, want in zip([im[i] for im in batch.images], expected_images(pixels, CUB_BOXES[key][1])):
            assert torch.equal(got, want)

    ds.caption_index = 1
    assert ds[2]["caption"][:4].tolist() == [2, 4, 1, 3] and ds[2]["length"] == 4
    short = CUBDataset(root, "train", image_sizes=SIZES, words_num=2, captions_per_image=2, train=False)
    assert short[0]["caption"].tolist() == [2, 5] and short[0]["length"] == 2

    test = CUBDataset(root, "test", image_sizes=SIZES, captions_per_image=2)
    assert test.keys == CUB_TEST and test.class_ids.tolist() == [9] and test.train is False
    assert test.vocab == ds.vocab


def test_cub_train_mode_is_random_but_reproducible(tmp_path):
    root = make_cub(tmp_path / "birds")
    ds = CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2, seed=3)
    a, b = ds[1], ds[1]
    assert torch.equal(a["images"][1], b["images"][1]) and torch.equal(a["caption"], b["caption"])
    rng = ds.item_rng(1)
    rng.integers(2)  # the caption draw comes first
    want = expected_images(coord_pixels(), CUB_BOXES[CUB_TRAIN[1]][1], train=True, rng=rng)
    assert torch.equal(a["images"][1], want[1])


def test_cub_given_vocab_reencodes_pickle_captions(tmp_path):
    from attngan.text import Vocabulary

    root = make_cub(tmp_path / "birds")
    vocab = Vocabulary(["<end>", "bird", "black", "a"])
    ds = CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2, vocab=vocab, train=False)
    assert ds.vocab is vocab
    assert ds.caption_ids(0, 0) == [3, 2, 1]  # "a black bird"


def test_cub_from_text_builds_deterministic_vocab(tmp_path):
    root = make_cub(tmp_path / "birds", with_pickle=False)
    ds = CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=10, train=False)
    # Counts over train + test: bird 6, a 3, red 3, black 2, the/small/wings/zebra 1 (ties alphabetical).
    assert ds.vocab.itos == ["<end>", "bird", "a", "red", "black", "small", "the", "wings", "zebra"]
    assert [ds.num_captions(i) for i in range(3)] == [3, 1, 2]  # any count per image, empty lines skipped
    assert ds.caption_ids(0, 1) == [2, 5, 4, 1]  # "a small black bird"
    two = CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2, train=False)
    assert [two.num_captions(i) for i in range(3)] == [2, 1, 2]
    assert "wings" not in two.vocab  # as the original: the vocabulary holds the captions that are kept


def test_cub_class_ids_from_folders_when_class_info_is_absent(tmp_path):
    root = make_cub(tmp_path / "birds")
    (root / "train" / "class_info.pickle").unlink()
    ds = CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2)
    assert ds.class_ids.tolist() == [1, 1, 2]


def test_cub_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        CUBDataset(tmp_path / "nowhere", "train", image_sizes=SIZES)

    root = make_cub(tmp_path / "a")
    with pytest.raises(DataError, match=r"captions\.pickle holds 6 train captions .* 3 images x 3"):
        CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=3)

    root = make_cub(tmp_path / "b")
    missing = root / "CUB_200_2011" / "images" / f"{CUB_TRAIN[1]}.jpg"
    missing.unlink()
    with pytest.raises(DataError) as info:
        CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2)
    assert str(missing) in str(info.value) and "filenames.pickle" in str(info.value)

    root = make_cub(tmp_path / "c", with_pickle=False)
    empty = root / "text" / f"{CUB_TRAIN[0]}.txt"
    write_text(empty, "\n  \n")
    not_utf8 = root / "text" / f"{CUB_TRAIN[2]}.txt"
    write_text(not_utf8, b"a caf\xe9 bird\n")
    with pytest.raises(DataError) as info:
        CUBDataset(root, "train", image_sizes=SIZES)
    message = str(info.value)
    assert f"{empty} is empty" in message and f"{not_utf8} is not UTF-8" in message

    root = make_cub(tmp_path / "d")
    (root / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    with pytest.raises(DataError, match=r"bounding_boxes\.txt does not exist"):
        CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2)
    assert CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2, bbox=False).boxes is None

    root = make_cub(tmp_path / "g")
    boxes_txt = root / "CUB_200_2011" / "bounding_boxes.txt"
    others = [line for line in boxes_txt.read_text().splitlines() if not line.startswith("1 ")]  # id 1: CUB_TRAIN[0]
    boxes_txt.write_text("\n".join(["1 24.2 87.5 0.6 1.9", *others]) + "\n")
    with pytest.raises(DataError, match=r"box of image id 1 .* is 0 x 1 pixels .* too small"):
        CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2)
    boxes_txt.write_text("\n".join(["1 400 500 10 10", *others]) + "\n")  # off the 40 x 30 image
    ds = CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2)
    with pytest.raises(DataError, match=rf"{CUB_TRAIN[0]} lies outside its 40 x 30 image"):
        ds[ds.keys.index(CUB_TRAIN[0])]

    root = make_cub(tmp_path / "e")
    broken = root / "CUB_200_2011" / "images" / f"{CUB_TRAIN[0]}.jpg"
    truncate_jpeg(broken)
    ds = CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2)  # existence is checked up front
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        ds[0]
    assert str(broken) in str(info.value)

    root = make_cub(tmp_path / "f")
    (root / "train" / "filenames.pickle").write_bytes(pickle.dumps(_Evil(tmp_path / "x"), protocol=2))
    with pytest.raises(DataError, match="system"):
        CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------------
# COCO


def test_coco_original_layout(tmp_path):
    root = tmp_path / "coco"
    train, test = (
        ["COCO_train2014_000000000009", "COCO_train2014_000000000025"],
        ["COCO_val2014_000000000042"],
    )
    py2_dump([k.encode() for k in train], root / "train" / "filenames.pickle")
    py2_dump([k.encode() for k in test], root / "test" / "filenames.pickle")
    for k, text in zip(train + test, ["a dog\na big dog\n", "two cats\n", "a red bus\n"]):
        save_lossless(coord_pixels(), root / "images" / f"{k}.jpg")
        write_text(root / "text" / f"{k}.txt", text)
    ds = COCODataset(root, "train", image_sizes=SIZES, captions_per_image=5, train=False)
    assert ds.layout == "original" and ds.keys == train
    assert ds.class_ids.tolist() == [0, 1]
    assert ds.vocab.itos == ["<end>", "a", "dog", "big", "bus", "cats", "red", "two"]
    batch = collate_batch([ds[0], ds[1]])
    assert batch.captions.tolist() == [[1, 2], [7, 5]] and batch.lengths.tolist() == [2, 2]
    assert tuple(batch.images[1].shape) == (2, 3, 32, 32)
    # No crop on COCO: the whole image goes through the transform.
    assert torch.equal(batch.images[0][0], expected_images(coord_pixels(), (0, 0, W, H))[0])


def make_coco_official(root: Path) -> Path:
    train_images = [{"id": 25, "file_name": "COCO_train2014_000000000025.jpg"},
                    {"id": 9, "file_name": "COCO_train2014_000000000009.jpg"}]  # fmt: skip
    train_caps = [(9, f"a dog number {i}") for i in range(5)] + [(25, f"cats {i}") for i in range(7)]
    train_caps.append((999, "an orphan caption"))
    annotations = [{"image_id": i, "id": 100 - n, "caption": c} for n, (i, c) in enumerate(train_caps)]
    val = {
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}],
        "annotations": [{"image_id": 42, "id": n, "caption": f"a zebra {n}"} for n in range(5)],
    }
    write_text(root / "annotations" / "captions_train2014.json",
               json.dumps({"images": train_images, "annotations": annotations}))  # fmt: skip
    write_text(root / "annotations" / "captions_val2014.json", json.dumps(val))
    for im in train_images:
        save_lossless(coord_pixels(), root / "train2014" / im["file_name"])
    save_lossless(coord_pixels(), root / "val2014" / "COCO_val2014_000000000042.jpg")
    return root


def test_coco_official_annotations(tmp_path):
    root = make_coco_official(tmp_path / "coco")
    ds = COCODataset(root, "train", image_sizes=SIZES, train=False)
    assert ds.layout == "official"
    assert ds.keys == ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]
    assert [ds.num_captions(i) for i in range(2)] == [5, 7]  # all kept
    assert ds.class_ids.tolist() == [0, 1]
    assert "zebra" in ds.vocab and "orphan" not in ds.vocab  # vocabulary from train + val
    # Captions in annotation-id order: the highest n got the lowest id.
    assert [ds.vocab.itos[i] for i in ds.caption_ids(0, 0)] == ["a", "dog", "number", "4"]
    val = COCODataset(root, "test", image_sizes=SIZES)
    assert val.keys == ["COCO_val2014_000000000042"] and val.vocab == ds.vocab and val.train is False

    (root / "val2014" / "COCO_val2014_000000000042.jpg").unlink()
    with pytest.raises(DataError, match=r"val2014/COCO_val2014_000000000042\.jpg .*captions_val2014\.json"):
        COCODataset(root, "test", image_sizes=SIZES)
    with pytest.raises(DataError, match="neither the original"):
        COCODataset(tmp_path, "train", image_sizes=SIZES)


# --------------------------------------------------------------------------------------------------------
# Own folders and manifests


def test_hash_split_is_stable():
    assert [hash_split(f"img_{i:02d}") for i in (0, 1, 13, 14, 17)] == [
        "test",
        "train",
        "test",
        "train",
        "test",
    ]
    assert hash_split("sub/deep/img_21") == "test" and hash_split("sub/deep/img_12") == "train"
    assert hash_split("img_01", test_fraction=0.0) == "train"


def test_folder_of_images_with_hash_split(tmp_path):
    root = tmp_path / "mine"
    keys = [f"img_{i:02d}" for i in range(12)] + ["sub/deep/img_12", "sub/deep/img_21"]
    for n, key in enumerate(keys):
        ext = [".png", ".jpg", ".bmp", ".jpeg"][n % 4]
        path = root / f"{key}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(coord_pixels()).save(
            path, format="PNG" if ext in (".png", ".jpg", ".jpeg") else "BMP"
        )
        write_text(path.with_suffix(".txt"), f"photo {n}\n\nthing {key}\n")
    write_text(root / "notes.md", "not an image")
    train = FolderDataset(root, "train", image_sizes=SIZES)
    test = FolderDataset(root, "test", image_sizes=SIZES)
    assert test.keys == ["img_00", "sub/deep/img_21"]  # the keys that hash_split sends to test
    assert sorted(train.keys) == sorted(set(keys) - set(test.keys))
    assert train.vocab == test.vocab and "img_21" in train.vocab
    assert all(train.num_captions(i) == 2 for i in range(len(train)))
    assert train.class_ids.tolist() == list(range(len(train)))
    sample = test[1]
    assert [tuple(t.shape) for t in sample["images"]] == [(3, 16, 16), (3, 32, 32)]
    notes = check_dataset("folder", root).notes  # the user is told how the split was made
    assert any("no split given for 14 images: a hash of their names put 2 of them in test" in n for n in notes)


def test_folder_with_train_test_subfolders_and_errors(tmp_path):
    root = tmp_path / "mine"
    for split, name in [("train", "a"), ("train", "b"), ("test", "c")]:
        save_lossless(coord_pixels(), root / split / f"{name}.png")
        write_text(root / split / f"{name}.txt", f"a {name} picture\n")
    assert FolderDataset(root, "train", image_sizes=SIZES).keys == ["train/a", "train/b"]
    assert FolderDataset(root, "test", image_sizes=SIZES).keys == ["test/c"]

    save_lossless(coord_pixels(), root / "train" / "d.png")
    with pytest.raises(DataError, match=r"caption file .*train/d\.txt does not exist"):
        FolderDataset(root, "train", image_sizes=SIZES)
    write_text(root / "train" / "d.txt", b"\xff\xfe bad")
    with pytest.raises(DataError, match=r"train/d\.txt is not UTF-8"):
        FolderDataset(root, "train", image_sizes=SIZES)
    with pytest.raises(DataError, match="does not exist"):
        FolderDataset(tmp_path / "missing", "train", image_sizes=SIZES)

    (root / "train" / "d.png").write_bytes(b"this is not an image")
    write_text(root / "train" / "d.txt", "a d picture\n")
    ds = FolderDataset(root, "train", image_sizes=SIZES)
    with pytest.raises(DataError, match=r"cannot decode image .*train/d\.png"):
        ds[2]
    report = check_dataset("folder", root)
    assert (
        len(report.problems) == 1
        and f"image {root / 'train' / 'd.png'} cannot be decoded" in report.problems[0]
    )


def test_csv_and_jsonl_manifests(tmp_path):
    root = tmp_path / "m"
    for name in ["x/one.png", "two.png", "three.png"]:
        save_lossless(coord_pixels(), root / name)
    write_text(
        root / "captions.csv",
        'image,caption,split\nx/one.png,"a cat, sitting",train\nx/one.png,a grey cat,train\n'
        "two.png,a dog,test\nthree.png,a cow,\n",
    )
    train = FolderDataset(root, "train", image_sizes=SIZES, train=False)
    test = FolderDataset(root, "test", image_sizes=SIZES)
    assert train.keys == ["x/one", "three"] and test.keys == ["two"]  # "three" hashes to train
    assert train.vocab.itos == ["<end>", "a", "cat", "cow", "dog", "grey", "sitting"]
    assert train.num_captions(0) == 2 and train.caption_ids(0, 1) == [1, 5, 2]

    manifest = tmp_path / "data.jsonl"
    write_text(
        manifest,
        '{"image": "m/x/one.png", "captions": ["a cat", "one cat"]}\n\n'
        '{"image": "m/two.png", "caption": "a dog", "split": "val"}\n',
    )
    train = FolderDataset(manifest, "train", image_sizes=SIZES, train=False)
    assert train.keys == ["m/x/one"] and train.num_captions(0) == 2
    assert FolderDataset(manifest, "test", image_sizes=SIZES).keys == ["m/two"]

    write_text(manifest, '{"image": "m/nothere.png", "caption": "a"}\n{"image": 3}\n')
    with pytest.raises(DataError) as info:
        FolderDataset(manifest, "train", image_sizes=SIZES)
    assert "nothere.png named on" in str(info.value) and f"{manifest} line 2" in str(info.value)
    write_text(root / "captions.csv", "image,caption\ntwo.png,\n")
    with pytest.raises(DataError, match=r"captions\.csv line 2 has an empty caption"):
        FolderDataset(root, "train", image_sizes=SIZES)


# --------------------------------------------------------------------------------------------------------
# Cache


def test_cache_matches_decoding_and_is_rebuilt_when_sources_change(tmp_path):
    root = tmp_path / "sq"
    square = coord_pixels(36, 36)
    for i in range(3):
        save_lossless(np.roll(square, i, axis=1), root / "train" / f"p{i}.png")
        write_text(root / "train" / f"p{i}.txt", f"picture {i}\n")
    save_lossless(square, root / "test" / "q.png")
    write_text(root / "test" / "q.txt", "picture\n")
    cache = tmp_path / "cache"
    plain = FolderDataset(root, "train", image_sizes=SIZES, train=False)
    before = [plain[i]["images"] for i in range(3)]
    cached = FolderDataset(root, "train", image_sizes=SIZES, train=False, cache_dir=cache, progress=False)
    data_files = list(cache.glob("folder-*-train-38.u8"))
    assert cache_size(32) == 38 and len(data_files) == 1
    assert data_files[0].stat().st_size == 3 * 38 * 38 * 3
    index = json.loads(data_files[0].with_suffix(".json").read_text())
    assert index["keys"] == ["train/p0", "train/p1", "train/p2"] and index["shapes"] == [[38, 38]] * 3
    for i in range(3):  # square sources: the cached path gives exactly the same tensors
        for a, b in zip(before[i], cached[i]["images"]):
            assert torch.equal(a, b)

    stamp = data_files[0].stat().st_mtime_ns
    again = FolderDataset(root, "train", image_sizes=SIZES, train=False, cache_dir=cache, progress=False)
    assert data_files[0].stat().st_mtime_ns == stamp  # reused
    pickle.loads(pickle.dumps(again))  # workers get the dataset without the memory map

    save_lossless(255 - square, root / "train" / "p1.png")
    os.utime(root / "train" / "p1.png", ns=(stamp + 10**9, stamp + 10**9))
    rebuilt = FolderDataset(root, "train", image_sizes=SIZES, train=False, cache_dir=cache, progress=False)
    assert data_files[0].stat().st_mtime_ns != stamp
    fresh = FolderDataset(root, "train", image_sizes=SIZES, train=False)
    assert torch.equal(rebuilt[1]["images"][1], fresh[1]["images"][1])
    assert not torch.equal(rebuilt[1]["images"][1], before[1][1])
    assert torch.equal(rebuilt[0]["images"][1], before[0][1])
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [data_files[0].name, data_files[0].stem + ".json"]
    )


def test_cache_keeps_non_square_images_whole_so_random_crops_are_unchanged(tmp_path):
    """The cache stores each image with its shorter side resized (not a centre square): training crops
    move along the long side as without the cache, and the tensors are the same."""
    root = tmp_path / "wide"
    for i, (h, w) in enumerate([(36, 90), (90, 36), (40, 40)]):
        save_lossless(coord_pixels(h, w), root / "train" / f"p{i}.png")
        write_text(root / "train" / f"p{i}.txt", f"picture {i}\n")
    plain = FolderDataset(root, "train", image_sizes=SIZES, train=True)
    cached = FolderDataset(root, "train", image_sizes=SIZES, train=True, cache_dir=tmp_path / "c", progress=False)
    (data_file,) = (tmp_path / "c").glob("*.u8")
    assert data_file.stat().st_size == (38 * 95 + 95 * 38 + 38 * 38) * 3  # shorter side 38, aspect kept
    for epoch in range(4):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(3):
            assert all(torch.equal(a, b) for a, b in zip(plain[i]["images"], cached[i]["images"]))
    # Over the epochs the crops of the wide image start at different places (a centre square would not).
    firsts = set()
    for epoch in range(12):
        cached.set_epoch(epoch)
        firsts.add(tuple(cached[0]["images"][-1][0, 0, :].tolist()))
    assert len(firsts) > 2


def test_cub_cache_holds_the_bbox_crop(tmp_path):
    root = make_cub(tmp_path / "birds")
    ds = CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2, train=False,
                    cache_dir=tmp_path / "c", progress=False)  # fmt: skip
    # The cached path equals decoding, for square and non-square crops alike.
    for i in range(len(ds)):
        want = expected_images(coord_pixels(), CUB_BOXES[CUB_TRAIN[i]][1])
        assert all(torch.equal(a, b) for a, b in zip(ds[i]["images"], want))


# --------------------------------------------------------------------------------------------------------
# check_dataset and the registry


def test_check_dataset_collects_every_problem(tmp_path):
    good = check_dataset("birds", make_cub(tmp_path / "good"), captions_per_image=2)
    assert good.usable and good.problems == []
    assert good.images == {"train": 3, "test": 1} and good.captions == {"train": 6, "test": 2}
    assert good.vocab_size == 7
    assert (good.splits["train"].min_captions, good.splits["train"].max_captions) == (2, 2)
    assert "usable: yes" in good.format()

    root = make_cub(tmp_path / "bad", with_pickle=False)
    missing = root / "CUB_200_2011" / "images" / f"{CUB_TRAIN[1]}.jpg"
    missing.unlink()
    broken = root / "CUB_200_2011" / "images" / f"{CUB_TEST[0]}.jpg"
    truncate_jpeg(broken)
    empty = root / "text" / f"{CUB_TRAIN[2]}.txt"
    write_text(empty, "")
    latin1 = root / "text" / f"{CUB_TEST[0]}.txt"
    write_text(latin1, b"caf\xe9\n")
    report = check_dataset("cub", root)
    assert not report.usable
    assert len(report.problems) == 4, report.problems
    for path in (missing, broken, empty, latin1):
        assert sum(str(path) in p for p in report.problems) == 1
    assert report.splits["train"].images == 3 and report.splits["train"].min_captions == 0
    assert report.splits["train"].max_captions == 3
    text = report.format()
    assert "4 problem(s)" in text and "usable: NO" in text

    coco = check_dataset("coco", make_coco_official(tmp_path / "coco"))
    assert (
        coco.usable and coco.images == {"train": 2, "test": 1} and coco.captions == {"train": 12, "test": 5}
    )
    assert (coco.splits["train"].min_captions, coco.splits["train"].max_captions) == (5, 7)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_build_dataset_dispatches(tmp_path):
    root = make_cub(tmp_path / "birds")
    before = _snapshot(root)
    cfg = DataConfig(dataset="birds", data_dir=str(root), words_num=2, captions_per_image=2)
    ds = build_dataset(cfg, "train", SIZES, train=False)
    assert isinstance(ds, CUBDataset) and ds.words_num == 2 and ds.train is False
    coco = build_dataset(
        DataConfig(dataset="coco", data_dir=str(make_coco_official(tmp_path / "c"))), "test", SIZES
    )
    assert isinstance(coco, COCODataset) and len(coco) == 1
    with pytest.raises(DataError, match="unknown dataset"):
        build_dataset(DataConfig(dataset="flowers", data_dir=str(root)), "train", SIZES)
    with pytest.raises(DataError, match="data_dir"):
        build_dataset(DataConfig(dataset="folder"), "train", SIZES)
    cached = build_dataset(
        DataConfig(dataset="birds", data_dir=str(root), captions_per_image=2, cache=True),
        "train",
        SIZES,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert cached.cache is not None and len(list((tmp_path / "cache").glob("birds-*-train-38.u8"))) == 1
    check_dataset("birds", root, captions_per_image=2)
    assert _snapshot(root) == before  # nothing in the user's folder was written, changed or deleted


class _Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise DataError("image a.jpg is truncated\nre-download it")


def test_a_data_error_in_a_loader_worker_keeps_its_one_message():
    from attngan.errors import user_message

    with pytest.raises(DataError) as info:
        list(torch.utils.data.DataLoader(_Broken(), num_workers=1))
    assert "Traceback" in str(info.value)  # torch's wrapping
    assert user_message(info.value) == "image a.jpg is truncated\nre-download it"
    assert user_message(DataError("plain")) == "plain"


def test_caption_lines_without_a_word_are_not_counted_as_the_original(tmp_path):
    from attngan.data.files import read_caption_file

    path = tmp_path / "c.txt"
    # The original (load_captions): a line without any \w+ token is skipped and not counted; a line whose
    # tokens are all non-ASCII is counted, as an empty caption.
    write_text(path, "a red bird\r\n...\r\n \r\n\u00e9\u00e9 \u00e8\r\nsmall bird!\r\nthird one\r\n")
    assert read_caption_file(path, limit=3) == ["a red bird", "\u00e9\u00e9 \u00e8", "small bird!"]
    write_text(path, "...\n\n!?\n")
    with pytest.raises(DataError, match="no line with a word"):
        read_caption_file(path)


def test_an_empty_caption_in_captions_pickle_is_skipped_with_a_warning(tmp_path, caplog):
    root = make_cub(tmp_path / "a")
    train = [list(c) for c in CUB_PICKLE_TRAIN]
    train[3] = []  # the original builder's caption for a line of non-ASCII words
    py2_dump(
        [train, CUB_PICKLE_TEST, {i: w.encode() for i, w in IXTOWORD.items()}, {w: i for i, w in IXTOWORD.items()}],
        root / "captions.pickle",
    )
    with caplog.at_level("WARNING"):
        ds = CUBDataset(root, "train", image_sizes=SIZES, captions_per_image=2)
    assert "skipped 1 captions" in caplog.text and CUB_TRAIN[1] in caplog.text
    texts = set()
    for epoch in range(8):  # a random caption per epoch: only the non-empty one is left
        ds.set_epoch(epoch)
        texts.add(ds[1]["text"])
    assert texts == {"a small bird"}
    report = check_dataset("birds", root, captions_per_image=2)
    assert report.splits["train"].captions == 5 and any("1 empty caption" in n for n in report.notes)


def test_folder_reads_gif_and_tiff_and_names_caption_files_without_image(tmp_path, caplog):
    root = tmp_path / "own"
    pixels = coord_pixels()
    for name, fmt in (("a.gif", "GIF"), ("b.tif", "TIFF"), ("c.png", "PNG")):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, format=fmt)
        write_text(path.with_suffix(".txt"), f"a picture called {name[0]}\n")
    write_text(root / "lonely.txt", "a caption without its image\n")
    from attngan.data.folder import scan_folder

    with caplog.at_level("WARNING"):
        train = FolderDataset(root, "train", image_sizes=SIZES, test_fraction=0.0)
        scan_folder(root, "test", 0.0)  # the other split is scanned too: no second warning
    assert sorted(train.keys) == ["a", "b", "c"]
    assert caplog.text.count("1 caption files") == 1 and "lonely.txt" in caplog.text  # once per dataset


# --------------------------------------------------------------------------------------------------------
# Messy real-world folders: nothing silently dropped, mis-paired or turned


def _folder_captions(root, split="train") -> dict[str, list[str]]:
    ds = FolderDataset(root, split, image_sizes=SIZES)
    return {k: [" ".join(ds.vocab.itos[i] for i in ds.caption_ids(n, c)) for c in range(ds.num_captions(n))]
            for n, k in enumerate(ds.keys)}  # fmt: skip


def test_csv_manifest_refuses_stray_quotes_and_unquoted_commas(tmp_path):
    for name in "acef":
        save_lossless(coord_pixels(), tmp_path / "m" / f"{name}.png")
    manifest = tmp_path / "m" / "captions.csv"
    # A quote left open swallowed the following rows into one caption.
    write_text(manifest, 'image,caption\na.png,a bird with a "quoted" word\nc.png,"a stray quote, then text\n'
                         "e.png,caption of e\nf.png,caption of f\n")  # fmt: skip
    report = check_dataset("folder", tmp_path / "m")
    assert not report.usable and any("line 3: an unbalanced double quote" in p for p in report.problems), report.problems
    write_text(manifest, 'image,caption\na.png,one\nc.png,"open\ne.png,a "big" e\nf.png,f\n')  # closed late
    report = check_dataset("folder", tmp_path / "m")
    assert any("line 3: an unbalanced double quote" in p for p in report.problems), report.problems
    # An unquoted comma cut the caption short.
    write_text(manifest, "image,caption,split\na.png,a small bird, with red wings,train\nc.png,a cat,train\n")
    report = check_dataset("folder", tmp_path / "m")
    assert not report.usable
    assert any("line 2 has 4 fields for the 3 columns" in p and "double quotes" in p for p in report.problems)
    # Quoted commas, doubled quotes, extra columns, a caption over csv's default 128 KiB field limit: all read.
    long = "word " * 30000
    write_text(manifest, 'id,image,caption,split\n1,a.png,"a small bird, with ""red"" wings",train\n'
                         f'2,c.png,{long},train\n3,e.png,an e,test\n')  # fmt: skip
    caps = _folder_captions(tmp_path / "m")
    assert caps["a"] == ["a small bird with red wings"] and len(caps["c"][0].split()) == 30000


def test_folder_split_names_links_case_and_line_endings(tmp_path):
    root = tmp_path / "f"
    for split, names in (("Train", "ab"), ("val", "c")):
        for n in names:
            save_lossless(coord_pixels(), root / split / f"{n}.png")
            write_text(root / split / f"{n}.txt", f"caption of {n}\n")
    # train/ and val/ (any case): val is the test split, not hash-mixed into training.
    assert list(_folder_captions(root, "train")) == ["Train/a", "Train/b"]
    assert list(_folder_captions(root, "test")) == ["val/c"]
    # A caption file with an upper-case extension, old-Mac line ends; a linked folder is followed.
    (root / "Train" / "b.txt").unlink()
    write_text(root / "Train" / "b.TXT", b"first line\rsecond line\r")
    outside = tmp_path / "outside"
    save_lossless(coord_pixels(), outside / "o.png")
    write_text(outside / "o.txt", "the linked one\n")
    os.symlink(outside, root / "Train" / "linked")
    os.symlink(root / "Train", root / "Train" / "loop")  # a cycle is walked once
    caps = _folder_captions(root, "train")
    assert caps["Train/b"] == ["first line", "second line"]
    assert caps["Train/linked/o"] == ["the linked one"] and "Train/loop/a" not in caps
    # A link to nothing is named as such by `data check`.
    os.symlink(tmp_path / "nonexistent.png", root / "Train" / "zz.png")
    write_text(root / "Train" / "zz.txt", "broken link\n")
    report = check_dataset("folder", root)
    assert not report.usable and any("is a link to" in p and "zz.png" in p for p in report.problems)


def test_jsonl_rows_keep_every_caption_and_unicode_line_separators(tmp_path):
    for name in "ab":
        save_lossless(coord_pixels(), tmp_path / "j" / f"{name}.png")
    rows = [{"image": "a.png", "caption": "the main caption", "captions": ["alt one", "alt two"], "split": "train"},
            {"image": "./sub/../b.png", "captions": [], "caption": "b with a line\u2028separator", "split": "train"},
            {"image": "b.png", "caption": "b again"}]  # fmt: skip
    write_text(tmp_path / "j" / "captions.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    caps = _folder_captions(tmp_path / "j", "train")
    assert caps["a"] == ["the main caption", "alt one", "alt two"]
    assert caps["b"] == ["b with a line separator", "b again"]  # one image, however its path was written


def test_photos_are_turned_by_exif_and_16_bit_grey_keeps_its_level(tmp_path):
    from attngan.data.files import open_image

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "p" / "photo.jpg"
    path.parent.mkdir()
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    write_text(tmp_path / "p" / "photo.txt", "a photo\n")
    assert open_image(path).size == (40, 20)  # as stored (CUB, COCO: as the original read them)
    assert open_image(path, exif_orientation=True).size == (20, 40)  # as viewers show it
    ds = FolderDataset(tmp_path / "p", "train", image_sizes=[16], test_fraction=0.0)
    top, bottom = ds[0]["images"][0][:, :4].mean(dim=(1, 2)), ds[0]["images"][0][:, -4:].mean(dim=(1, 2))
    assert top[0] > 0.5 and bottom[0] < -0.5  # the red half is on top once turned
    for value, expected in ((32768, 128), (200, 1), (65535, 255)):
        grey = tmp_path / f"g{value}.png"
        Image.fromarray(np.full((4, 4), value, np.uint16)).save(grey)
        assert open_image(grey).getpixel((0, 0)) == (expected,) * 3


def test_official_coco_takes_both_splits_from_one_year(tmp_path):
    root = make_coco_official(tmp_path / "coco")
    for year in ("2014",):  # 2017 train + val, beside 2014's val only: both splits from 2017
        (root / "annotations" / f"captions_train{year}.json").rename(root / "annotations" / "captions_train2017.json")
    val17 = {"images": [{"id": 7, "file_name": "000000000007.jpg"}],
             "annotations": [{"image_id": 7, "id": 1, "caption": "a kite"}]}  # fmt: skip
    write_text(root / "annotations" / "captions_val2017.json", json.dumps(val17))
    save_lossless(coord_pixels(), root / "val2017" / "000000000007.jpg")
    (root / "train2014").rename(root / "train2017")
    assert COCODataset(root, "test", image_sizes=SIZES).keys == ["000000000007"]  # not val2014's image 42


def test_py2_pickle_utf8_names_and_wrong_size_images(tmp_path):
    py2_dump([b"001.Bird/caf\xc3\xa9_bird_0001", b"plain"], tmp_path / "filenames.pickle")
    assert load_filenames(tmp_path / "filenames.pickle") == ["001.Bird/café_bird_0001", "plain"]
    from attngan.data.files import open_image, verify_image

    big = tmp_path / "big.png"
    Image.new("L", (64, 64)).save(big)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000  # 64 x 64 > 2 x the limit: PIL's DecompressionBombError
    try:
        with pytest.raises(DataError, match="larger than PIL's limit"):
            open_image(big)
        assert "larger than PIL's limit" in verify_image(big)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
