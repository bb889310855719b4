"""The built-in procedural ``shapes`` dataset (attngan.data.synthetic)."""

import numpy as np
import pytest
import torch
from PIL import Image

from attngan.config import PRESETS
from attngan.data import make_loader
from attngan.data.synthetic import (
    _HALF_SIZE,
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapesDataset,
    _bbox,
    attributes_from_caption,
    class_id_of,
    make_captions,
    render_scene,
    sample_scene,
    shapes_vocabulary,
    write_folder,
)
from attngan.errors import DataError
from attngan.text import tokenize


def _scenes(n, max_objects, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, max_objects) for _ in range(n)], rng


def _images(ds):
    return [ds[i]["images"] for i in range(len(ds))]


def test_same_seed_same_data_other_seed_other_data():
    a = ShapesDataset(num_images=4, image_sizes=[16, 32], seed=3, max_objects=2)
    b = ShapesDataset(num_images=4, image_sizes=[16, 32], seed=3, max_objects=2)
    c = ShapesDataset(num_images=4, image_sizes=[16, 32], seed=4, max_objects=2)
    assert a.texts == b.texts and a.scenes == b.scenes
    for x, y in zip(_images(a), _images(b)):
        assert all(torch.equal(u, v) for u, v in zip(x, y))
    assert a.texts != c.texts
    assert not torch.equal(a[0]["images"][1], c[0]["images"][1])
    test = ShapesDataset(split="test", num_images=4, image_sizes=[32], seed=3, max_objects=2)
    assert test.texts != a.texts and test.keys[0] == "test_000000"
    assert not torch.equal(test[0]["images"][0], a[0]["images"][1])


def test_captions_name_every_object():
    scenes, rng = _scenes(150, max_objects=3)
    with_size = with_position = total = 0
    for scene in scenes:
        truth = {(o["color"], o["shape"]): o for o in scene}
        for caption in make_captions(scene, rng, 4):
            parsed = attributes_from_caption(caption)
            assert {(p["color"], p["shape"]) for p in parsed} == set(truth), caption
            assert len(parsed) == len(scene), caption
            for p in parsed:
                o = truth[(p["color"], p["shape"])]
                assert p["size"] in (None, o["size"]), caption
                assert p["position"] in (None, o["position"]), caption
                with_size += p["size"] is not None
                with_position += p["position"] is not None
                total += 1
    assert with_size > 0.7 * total and with_position > 0.5 * total  # "most" captions say size and place


def test_captions_are_varied_and_single_object_positions():
    scenes, rng = _scenes(40, max_objects=1)
    caps = [c for s in scenes for c in make_captions(s, rng, 5)]
    starts = {" ".join(c.split()[:2]) for c in caps}
    assert len(starts) >= 6  # different templates and word orders
    assert all(len(set(make_captions(s, rng, 5))) >= 4 for s in scenes[:10])


def test_attributes_from_caption_examples():
    assert attributes_from_caption("There is a blue square below a yellow triangle.") == [
        {"shape": "square", "color": "blue", "size": None, "position": None},
        {"shape": "triangle", "color": "yellow", "size": None, "position": None},
    ]
    assert attributes_from_caption("a small red circle in the upper left corner") == [
        {"shape": "circle", "color": "red", "size": "small", "position": "top left"}
    ]
    assert attributes_from_caption("a large cross colored white on the right side") == [
        {"shape": "cross", "color": "white", "size": "large", "position": "right"}
    ]
    assert attributes_from_caption("a blue bird") == []


def test_every_attribute_value_appears_and_scenes_are_valid():
    scenes, _ = _scenes(300, max_objects=3)
    objects = [o for s in scenes for o in s]
    assert {o["color"] for o in objects} == set(COLORS)
    assert {o["shape"] for o in objects} == set(SHAPES)
    assert {o["size"] for o in objects} == set(SIZES)
    assert {o["position"] for o in objects} == set(POSITIONS)
    assert {len(s) for s in scenes} == {1, 2, 3}
    for s in scenes:
        assert len({o["position"] for o in s}) == len(s) and len({o["color"] for o in s}) == len(s)
        for o in s:
            x0, y0, x1, y1 = o["bbox"]
            row, col = o["row"], o["col"]
            assert POSITIONS[3 * row + col] == o["position"]
            # The object stays inside its grid cell.
            assert col / 3 <= x0 < x1 <= (col + 1) / 3 and row / 3 <= y0 < y1 <= (row + 1) / 3
    assert class_id_of(scenes[0]) == list(COLORS).index(scenes[0][0]["color"]) * len(SHAPES) + SHAPES.index(
        scenes[0][0]["shape"]
    )


def test_backgrounds_never_look_like_an_object_colour():
    for bg in BACKGROUNDS:
        for rgb in COLORS.values():
            assert np.linalg.norm(np.subtract(bg, rgb)) > 80


@pytest.mark.parametrize("size", [32, 64, 256])
def test_object_centre_has_the_named_colour(size):
    scenes, rng = _scenes(30, max_objects=3, seed=size)
    for scene in scenes:
        img = render_scene(scene, size, rng)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        for o in scene:
            cx, cy = o["center"]
            pixel = img[int(cy * size), int(cx * size)].astype(int)
            assert np.abs(pixel - COLORS[o["color"]]).max() <= 2, (o, pixel)
        # Background pixels (outside every bounding box, with a margin) are far from every object colour.
        ys, xs = np.mgrid[0:size, 0:size] + 0.5
        outside = np.ones((size, size), bool)
        for o in scene:
            x0, y0, x1, y1 = (v * size for v in o["bbox"])
            outside &= ~((xs > x0 - 1.5) & (xs < x1 + 1.5) & (ys > y0 - 1.5) & (ys < y1 + 1.5))
        background = img[outside].astype(float)  # (N, 3)
        palette = np.array(list(COLORS.values()), float)  # (8, 3)
        assert np.linalg.norm(background[:, None] - palette[None], axis=2).min() > 50


def test_object_area_grows_with_size():
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        areas = {}
        for size_name in SIZES:
            r = _HALF_SIZE[size_name]
            obj = {
                "shape": shape,
                "color": "white",
                "center": (0.5, 0.5),
                "half_size": r,
                "bbox": _bbox(shape, 0.5, 0.5, r),
            }
            img = render_scene([obj], 128, rng)
            areas[size_name] = int((img.min(axis=2) > 240).sum())
        assert areas["large"] > 2 * areas["small"] > 30, (shape, areas)


def test_dataset_samples_multiscale_and_vocabulary():
    ds = ShapesDataset(num_images=6, image_sizes=[64, 16, 32], words_num=8, seed=1, max_objects=2)
    assert ds.image_sizes == [16, 32, 64]
    item = ds[2]
    assert [t.shape for t in item["images"]] == [(3, 16, 16), (3, 32, 32), (3, 64, 64)]
    for t in item["images"]:
        assert t.dtype == torch.float32 and t.min() >= -1 and t.max() <= 1 and t.std() > 0.05
    # The smaller scales are antialiased downsamples of the largest.
    pooled = torch.nn.functional.avg_pool2d(item["images"][2][None], 4)[0]
    assert (pooled - item["images"][0]).abs().mean() < 0.05
    assert item["attributes"] == [{k: v for k, v in o.items()} for o in ds.scenes[2]]
    assert item["class_id"] == class_id_of(ds.scenes[2])
    assert item["caption"].shape == (8,) and 1 <= item["length"] <= 8
    # Fixed vocabulary: the same for every seed, and it covers every caption (no unknown word).
    vocab = shapes_vocabulary()
    assert ds.vocab == vocab == ShapesDataset(num_images=2, seed=99).vocab
    scenes, rng = _scenes(200, max_objects=3, seed=5)
    words = {t for s in scenes for c in make_captions(s, rng, 5) for t in tokenize(c)}
    assert words <= set(vocab.itos) and len(words) > 0.8 * (len(vocab) - 1)


def test_caption_choice_train_vs_eval():
    train = ShapesDataset(num_images=3, image_sizes=[16], captions_per_image=5, seed=2)
    seen = set()
    for epoch in range(10):
        train.set_epoch(epoch)
        seen.add(train[0]["text"])
    assert len(seen) >= 3
    test = ShapesDataset(split="test", num_images=3, image_sizes=[16], captions_per_image=5, seed=2)
    assert not test.train
    first = " ".join(tokenize(test.texts[0][0])[: test.words_num])
    assert {test[0]["text"] for _ in range(3)} == {first}


def test_loader_and_config():
    data = PRESETS["tiny"].data
    ds = ShapesDataset.from_config(data, image_sizes=[16, 32])
    assert len(ds) == data.num_images and ds.words_num == data.words_num
    batch = next(iter(make_loader(ds, batch_size=4, shuffle=True, drop_last=True)))
    assert [im.shape for im in batch.images] == [(4, 3, 16, 16), (4, 3, 32, 32)]
    assert batch.captions.shape[1] == int(batch.lengths.max()) and len(batch.attributes) == 4


def test_write_folder_format_and_no_overwrite(tmp_path):
    ds = ShapesDataset(num_images=3, image_sizes=[16, 32], captions_per_image=2, seed=7)
    paths = write_folder(ds, tmp_path / "out")
    assert [p.name for p in paths] == ["train_000000.png", "train_000001.png", "train_000002.png"]
    for i, png in enumerate(paths):
        assert np.array_equal(np.asarray(Image.open(png)), ds.render(i))
        assert png.with_suffix(".txt").read_text().splitlines() == ds.texts[i]
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    with pytest.raises(DataError, match="already holds"):
        write_folder(ds, tmp_path / "out")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before


def test_bad_arguments_are_clear_errors():
    with pytest.raises(DataError, match="split"):
        ShapesDataset(split="val", num_images=2)
    with pytest.raises(DataError, match="max_objects"):
        ShapesDataset(num_images=2, max_objects=4)
    with pytest.raises(ValueError, match="max_objects"):
        sample_scene(np.random.default_rng(0), 0)


def _differences(a: dict, b: dict) -> set[str]:
    return {k for k in ("shape", "color", "size", "position") if a[k] != b[k]}


@pytest.mark.parametrize("max_objects", [1, 3])
def test_contrast_groups_change_one_attribute_at_a_time(max_objects):
    from attngan.data.synthetic import CONTRAST_WEIGHTS, object_mask

    k = 4
    plain = ShapesDataset(num_images=400, max_objects=max_objects, seed=3, image_sizes=(32,))
    grouped = ShapesDataset(num_images=400, max_objects=max_objects, seed=3, image_sizes=(32,), contrast_group=k)
    assert grouped.group_size == k and plain.group_size == 1
    changed = {name: 0 for name in CONTRAST_WEIGHTS}
    for i in range(len(grouped)):
        scene = grouped.scenes[i]
        if i % k == 0:  # a group starts with the scene the plain dataset has there
            assert scene == plain.scenes[i] and grouped.texts[i] == plain.texts[i]
            continue
        prev = grouped.scenes[i - 1]
        diff = _differences(prev[0], scene[0])
        assert len(diff) == 1, (prev[0], scene[0])  # exactly one attribute of the first object
        changed[diff.pop()] += 1
        assert scene[1:] == prev[1:]  # the other objects are untouched
        assert len({o["color"] for o in scene}) == len(scene)  # colours and cells stay distinct
        assert len({o["position"] for o in scene}) == len(scene)
        first = scene[0]
        assert object_mask(first, 32).any()
        x0, y0, x1, y1 = first["bbox"]
        assert first["row"] / 3 - 1e-9 <= y0 and y1 <= (first["row"] + 1) / 3 + 1e-9  # inside its cell
        assert first["col"] / 3 - 1e-9 <= x0 and x1 <= (first["col"] + 1) / 3 + 1e-9
        parsed = attributes_from_caption(grouped.texts[i][0])[0]
        assert parsed["shape"] == first["shape"] and parsed["color"] == first["color"]  # captions follow the scene
    total = sum(changed.values())
    for name, weight in CONTRAST_WEIGHTS.items():  # every attribute is varied, about as often as weighted
        assert abs(changed[name] / total - weight) < 0.1, changed
    # The test split is never grouped.
    test = ShapesDataset(split="test", num_images=8, seed=3, image_sizes=(32,), contrast_group=k)
    assert test.group_size == 1 and test.scenes == ShapesDataset(split="test", num_images=8, seed=3, image_sizes=(32,)).scenes


def test_training_order_keeps_contrast_groups_together():
    from attngan.training.data import batches_per_epoch, epoch_loader

    k, n = 4, 40
    ds = ShapesDataset(num_images=n, image_sizes=(16,), contrast_group=k)
    orders = []
    for epoch in (0, 1):
        order = list(epoch_loader(ds, 8, epoch=epoch, seed=0).sampler)
        assert sorted(order) == list(range(n))  # every image once per epoch
        for start in range(0, n, k):
            group = order[start : start + k]
            assert group == list(range(group[0], group[0] + k)) and group[0] % k == 0
        orders.append(order)
    assert orders[0] != orders[1]  # the groups are shuffled per epoch
    # Two processes deal out whole groups, disjoint, and count their batches from what they get.
    shards = [list(epoch_loader(ds, 4, epoch=0, seed=0, rank=r, world_size=2).sampler) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and all(len(s) == n // 2 for s in shards)
    assert batches_per_epoch(ds, 4, world_size=2) == 5
    with pytest.raises(DataError, match="contrast_group"):
        ShapesDataset(num_images=8, contrast_group=0)


def test_flat_backgrounds_keep_scenes_and_objects():
    from attngan.data.synthetic import object_mask

    textured = ShapesDataset(num_images=6, image_sizes=(64,), seed=2)
    flat = ShapesDataset(num_images=6, image_sizes=(64,), seed=2, texture=False)
    assert flat.scenes == textured.scenes and flat.texts == textured.texts
    for i in range(6):
        a, b = textured.render(i).astype(int), flat.render(i).astype(int)
        outside = ~np.logical_or.reduce([_grown(object_mask(o, 64)) for o in flat.scenes[i]])
        tones = np.unique(b[outside].reshape(-1, 3), axis=0)
        assert len(tones) == 1 and tuple(tones[0]) in BACKGROUNDS  # one flat tone ...
        assert len(np.unique(a[outside].reshape(-1, 3), axis=0)) > 10  # ... where the textured one varies
        inside = np.logical_or.reduce([~_grown(~object_mask(o, 64)) for o in flat.scenes[i]])  # off the edges
        assert inside.any() and np.abs(a[inside] - b[inside]).max() == 0  # the objects are drawn the same


def _grown(mask: np.ndarray) -> np.ndarray:
    """The mask and its 8 neighbours (the antialiased edge)."""
    out = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def test_object_scale_enlarges_shapes_inside_the_image_and_their_cell_keeps_the_centre():
    from attngan.data.synthetic import object_mask

    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    plain = [sample_scene(rng_a, 1) for _ in range(200)]
    scaled = [sample_scene(rng_b, 1, object_scale=1.5) for _ in range(200)]
    for [p], [s] in zip(plain, scaled):
        # the same draws: same attributes, 1.5 times the half-width
        assert (p["shape"], p["color"], p["size"], p["position"]) == (s["shape"], s["color"], s["size"], s["position"])
        assert s["half_size"] == pytest.approx(1.5 * _HALF_SIZE[s["size"]])
        x0, y0, x1, y1 = s["bbox"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, s  # inside the image
        cx, cy = s["center"]
        assert s["col"] / 3 <= cx <= (s["col"] + 1) / 3 and s["row"] / 3 <= cy <= (s["row"] + 1) / 3  # its cell
        area = object_mask(s, 128).sum() / object_mask(p, 128).sum()
        assert 1.9 < area < 2.6, (s, area)  # 1.5 ** 2 = 2.25, up to pixel rounding
    # Scale 1 is the default data, draw for draw.
    rng_c = np.random.default_rng(5)
    assert [sample_scene(rng_c, 1, object_scale=1.0) for _ in range(200)] == plain
    # The setting reaches the dataset (training scenes and their contrast groups) and is checked.
    ds = ShapesDataset(num_images=8, image_sizes=(32,), contrast_group=4, object_scale=1.5)
    assert all(o["half_size"] == pytest.approx(1.5 * _HALF_SIZE[o["size"]]) for sc in ds.scenes for o in sc)
    with pytest.raises(DataError, match="object_scale"):
        ShapesDataset(num_images=2, object_scale=2.5)


def test_the_attribute_classifier_cache_key_is_unchanged_at_scale_one():
    import dataclasses
    import hashlib
    import json

    from attngan.metrics.attributes import CLASSIFIER_VERSION, AttributeTrainConfig, _cache_stem

    before = {k: v for k, v in dataclasses.asdict(AttributeTrainConfig()).items() if k != "object_scale"}
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    assert _cache_stem(64, AttributeTrainConfig()) == f"attribute-classifier-64px-v{CLASSIFIER_VERSION}-{digest}"
    assert _cache_stem(64, AttributeTrainConfig(object_scale=1.5)) != _cache_stem(64, AttributeTrainConfig())


def test_rendered_scales_are_kept_and_equal_a_fresh_render(monkeypatch):
    ds = ShapesDataset(num_images=4, image_sizes=[16, 64], seed=3, max_objects=2)
    first = [t.clone() for t in ds[1]["images"]]
    kept = ds.scales(1)
    assert ds.scales(1) is kept and not kept[0].flags.writeable  # rendered once, read-only
    again = ds[1]["images"]
    again[0].add_(1.0)  # the tensors handed out are copies: changing one leaves the cache alone
    assert torch.equal(ds[1]["images"][1], first[1]) and torch.equal(ds[1]["images"][0], first[0])
    full = np.asarray(Image.fromarray(ds.render(1, 64)))
    assert np.array_equal(kept[1], full)
    # A dataset larger than the cache renders on every access, the same pixels.
    monkeypatch.setattr("attngan.data.synthetic.RENDER_CACHE_BYTES", 0)
    uncached = ShapesDataset(num_images=4, image_sizes=[16, 64], seed=3, max_objects=2)
    assert uncached.scales(1) is not uncached.scales(1)
    assert all(torch.equal(a, b) for a, b in zip(uncached[1]["images"], first))
