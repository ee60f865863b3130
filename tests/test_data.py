"""Tests for data.py: rendering, masks, words, the synthetic dataset and the real-image folder loader."""
import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from data import (BACKGROUNDS, COLORS, OBJECT_RANGES, SHAPES, SIZES, ImageFolderCaptions, Obj, Scene, SyntheticImageNet,
                  class_caption, long_caption, position_name, random_scene, relation_name, render, render_masks,
                  size_name, to_uint8)


def one(shape="star", color="red", size=0.3, x=0.5, y=0.5, rotation=0.0, background="plain", tone=0.5):
    return Scene((Obj(shape, color, size, x, y, rotation),), background, tone)


@pytest.mark.parametrize("size", [32, 64])
def test_render_shapes_dtype_and_antialiasing(size):
    rng = np.random.default_rng(0)
    for background in BACKGROUNDS:
        scene = random_scene(rng)
        scene = Scene(scene.objects, background, scene.tone)
        image, masks = render(scene, size), render_masks(scene, size)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert masks.shape == (1, size, size) and masks.dtype == bool
    # Antialiasing: a red disc on gray has edge pixels strictly between the two colors.
    image = render(one("circle", size=0.3), size).astype(int)
    bg, red = 105 + 25, COLORS["red"][0]
    between = (image[..., 0] > bg + 10) & (image[..., 0] < red - 10)
    assert between.sum() >= size // 2


def test_backgrounds_are_gray_in_range():
    for background in BACKGROUNDS:
        for tone in (0.0, 0.5, 1.0):
            image = render(Scene((), background, tone), 32).astype(int)
            assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
            assert 80 <= image.min() and image.max() <= 180, background
    assert render(Scene((), "stripes", 0.3), 32).std() > 5  # textures are textured


@pytest.mark.parametrize("shape", SHAPES)
def test_masks_cover_the_object_pixels(shape):
    scene = one(shape, "blue", size=0.3, rotation=20)
    image, mask = render(scene, 32).astype(int), render_masks(scene, 32)[0]
    blue = np.abs(image - np.array(COLORS["blue"])).max(-1)
    assert mask.sum() > 60
    assert (blue[mask] < 120).all()          # every mask pixel is at least half blue
    assert mask[blue < 20].all()             # every fully blue pixel is in the mask


def test_masks_differ_per_shape_and_occlusion():
    masks = {s: render_masks(one(s), 32)[0] for s in SHAPES}
    for i, a in enumerate(SHAPES):
        for b in SHAPES[i + 1:]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.85, (a, b, iou)
    # The crescent is a crescent: its bite (right of centre) is empty, its left rim is full.
    assert not masks["crescent"][16, 18] and masks["crescent"][16, 8]
    # The cross is a plus sign: arms along the axes, empty diagonals.
    assert masks["cross"][16, 8] and masks["cross"][8, 16] and not masks["cross"][9, 9]
    # A later object occludes an earlier one: visible masks are disjoint, the front one is whole.
    scene = Scene((Obj("square", "red", 0.3, 0.4, 0.5), Obj("circle", "green", 0.2, 0.6, 0.5)), "plain")
    back, front = render_masks(scene, 32)
    assert not (back & front).any() and (front == render_masks(Scene(scene.objects[1:], "plain"), 32)[0]).all()


def test_words():
    assert position_name(0.5, 0.5) == "in the center"
    assert position_name(0.1, 0.1) == "in the top-left corner"
    assert position_name(0.9, 0.5) == "on the right" and position_name(0.5, 0.9) == "at the bottom"
    assert position_name(0.4, 0.5) == "slightly left of center"
    assert relation_name(0.2, 0.5, 0.8, 0.4) == "to the left of"
    assert relation_name(0.5, 0.9, 0.4, 0.1) == "below" and relation_name(0.5, 0.1, 0.6, 0.9) == "above"
    assert [size_name(SIZES[k]) for k in SIZES] == list(SIZES)


def test_long_caption_relations_and_variety():
    scene = Scene((Obj("star", "red", 0.15, 0.2, 0.5), Obj("circle", "blue", 0.15, 0.8, 0.45)), "stripes", 0.5)
    rng = np.random.default_rng(0)
    captions = [long_caption(scene, rng) for _ in range(40)]
    long_ones = [c for c in captions if c.endswith(".")]                  # short, prompt-like ones have no period
    assert all("the red star is to the left of the blue circle" in c.lower() for c in long_ones) and long_ones
    assert all("star" in c and "circle" in c for c in captions)
    assert all("red" in c and "blue" in c for c in long_ones)
    vertical = Scene((Obj("heart", "pink", 0.1, 0.5, 0.8), Obj("square", "black", 0.1, 0.45, 0.2)), "plain")
    assert "The pink heart is below the black square." in long_caption(vertical, np.random.default_rng(1))
    # Varied phrasing and length; same rng seed -> same caption.
    rng = np.random.default_rng(1)
    singles = [long_caption(random_scene(rng), rng) for _ in range(300)]
    lengths = np.array([len(c.split()) for c in singles])
    assert 0.1 < (lengths <= 8).mean() < 0.35 and np.median(lengths) > 15
    assert len({" ".join(c.split()[:3]) for c in singles}) > 20
    assert not any(re.search(r"\ban [^aeiou]|\ba [aeio]", c) for c in singles)  # articles agree
    scene = random_scene(np.random.default_rng(5))
    assert long_caption(scene, np.random.default_rng(9)) == long_caption(scene, np.random.default_rng(9))


def test_synthetic_imagenet_determinism_and_consistency():
    a, b, c = SyntheticImageNet(64, 32, seed=3), SyntheticImageNet(64, 32, seed=3), SyntheticImageNet(64, 32, seed=4)
    assert torch.equal(a.images, b.images) and a.long_captions == b.long_captions and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (64, 32, 32, 3) and a.images.dtype == torch.uint8 and a.labels.dtype == torch.long
    for i, scene in enumerate(a.scenes):
        obj = scene.objects[0]
        assert a.labels[i] == SHAPES.index(obj.shape)
        assert obj.shape in a.class_captions[i] and obj.shape in a.long_captions[i]
        assert 0.15 <= obj.size <= 0.36 and abs(obj.x - 0.5) <= 0.15 and abs(obj.y - 0.5) <= 0.15
    # Colors are named except in some short captions (typed-prompt style: "a photo of a star").
    named = [s.objects[0].color in c for s, c in zip(a.scenes, a.long_captions)]
    assert 0.85 <= np.mean(named) < 1.0
    assert (a.images[5].numpy() == render(a.scenes[5], 32)).all()
    item = a[5]
    assert set(item) == {"image", "label", "index", "class_caption", "long_caption"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert (to_uint8(item["image"]) == a.images[5].numpy()).all()
    assert to_uint8(torch.stack([item["image"]] * 2)).shape == (2, 32, 32, 3)
    assert SyntheticImageNet(4, 64, seed=0).images.shape == (4, 64, 64, 3)
    assert class_caption(a.scenes[0], np.random.default_rng(0)).endswith(a.scenes[0].objects[0].shape)


def test_object_ranges():
    """Each world keeps its objects in its ranges; the same seed draws the same shapes, colors and backgrounds
    in every world (the ranges only rescale the draws), so they are the same data made easier, then closer."""
    worlds = {k: SyntheticImageNet(200, 32, seed=1, objects=k) for k in OBJECT_RANGES}
    assert tuple(worlds)[:3] == ("varied", "centered", "large")
    for name, world in worlds.items():
        r = OBJECT_RANGES[name]
        objs = [s.objects[0] for s in world.scenes]
        sizes = np.array([o.size for o in objs])
        offsets = np.abs(np.array([(o.x, o.y) for o in objs]) - 0.5)
        tilts = np.abs([o.rotation for o in objs])
        assert r["radius"][0] <= sizes.min() and sizes.max() <= r["radius"][1]
        assert offsets.max() <= r["jitter"] and offsets.max() > 0.8 * r["jitter"]  # the whole range is used
        assert tilts.max() <= r["tilt"] and tilts.max() > 0.8 * r["tilt"]
        assert [(s.objects[0].shape, s.objects[0].color, s.background) for s in world.scenes] == \
               [(s.objects[0].shape, s.objects[0].color, s.background) for s in worlds["varied"].scenes]
    varied, centered, large = (OBJECT_RANGES[k] for k in ("varied", "centered", "large"))
    assert varied["radius"][0] < centered["radius"][0] < large["radius"][0]             # larger ...
    assert varied["jitter"] > centered["jitter"] > large["jitter"]                      # ... and nearer the centre
    assert large["radius"][1] * 1.1 + large["jitter"] < 0.5                             # a close-up, not cut off
    with pytest.raises(ValueError, match="unknown objects 'huge'.*varied"):
        random_scene(np.random.default_rng(0), "huge")


#################################################################################
#                               ImageFolderCaptions                             #
#################################################################################


@pytest.fixture
def folder(tmp_path):
    """root/golden_retriever/{a,b}.png, root/n01440764/c.png; a is 40x20 with red | green | blue bands."""
    root = tmp_path / "images"
    (root / "golden_retriever").mkdir(parents=True)
    (root / "n01440764").mkdir()
    bands = np.zeros((20, 40, 3), np.uint8)
    bands[:, :10, 0], bands[:, 10:30, 1], bands[:, 30:, 2] = 255, 255, 255
    Image.fromarray(bands).save(root / "golden_retriever" / "a.png")
    Image.new("RGB", (30, 50), (10, 20, 30)).save(root / "golden_retriever" / "b.png")
    Image.new("RGB", (16, 16), (200, 0, 0)).save(root / "n01440764" / "c.png")
    (root / "notes.txt").write_text("not a class")
    return root


def test_image_folder_with_tsv_and_jsonl(folder, tmp_path):
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("a.png\tA dog made of three colored bands.\nc.png\tA red fish.\n")
    with pytest.warns(UserWarning, match=r"1 of 3 images got no caption from .*captions\.tsv"):
        data = ImageFolderCaptions(str(folder), str(tsv), image_size=16)
    assert len(data) == 3 and data.classes == ["golden_retriever", "n01440764"] and data.labels.tolist() == [0, 0, 1]
    item = data[0]
    assert set(item) == {"image", "label", "index", "class_caption", "long_caption"}
    assert item["image"].shape == (3, 16, 16) and item["long_caption"] == "A dog made of three colored bands."
    assert item["class_caption"] == "a photo of a golden retriever"
    # Shorter side 20 -> 16 makes the width 32 (bands 8 | 16 | 8); the centre crop keeps the green band only.
    pixels = to_uint8(item["image"]).astype(int)
    assert (pixels[..., 1] > 200).all() and (pixels[..., 0] < 40).all() and (pixels[..., 2] < 40).all()
    assert data[1]["long_caption"] == "a photo of a golden retriever"  # no caption: the class caption
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text(json.dumps({"image_path": "n01440764/c.png", "caption": "A red fish."}) + "\n")
    with pytest.warns(UserWarning, match=r"2 of 3 images got no caption from .*captions\.jsonl"):
        assert ImageFolderCaptions(str(folder), str(jsonl), image_size=16)[2]["long_caption"] == "A red fish."
    # Every image captioned: no warning. A TSV header row on line 1 is skipped, under either column name.
    for header in ("image_path\tcaption\n", "filename\tcaption\n", ""):
        tsv.write_text(header + "a.png\tA.\nb.png\tB.\nc.png\tC.\n")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert ImageFolderCaptions(str(folder), str(tsv)).long_captions == ["A.", "B.", "C."]
    # Without a caption file nothing is missing, so nothing is said either.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageFolderCaptions(str(folder))


def test_image_folder_class_captions_use_the_right_article(tmp_path):
    for name in ("apple", "n01440764", "umbrella", "golden_retriever", "European_robin", "unicycle"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "x.png")
    data = ImageFolderCaptions(str(tmp_path), image_size=8)
    assert dict(zip(data.classes, data.class_captions)) == {
        "apple": "a photo of an apple", "n01440764": "a photo of a n01440764", "umbrella": "a photo of an umbrella",
        "golden_retriever": "a photo of a golden retriever", "European_robin": "a photo of a European robin",
        "unicycle": "a photo of a unicycle"}


def test_image_folder_caption_matching_is_exact(tmp_path):
    """root/{cat,dog}/0.png share a bare name; cat/1.png is unique."""
    root = tmp_path / "train"
    for name, files in (("cat", ("0.png", "1.png")), ("dog", ("0.png",))):
        (root / name).mkdir(parents=True)
        for f in files:
            Image.new("RGB", (8, 8)).save(root / name / f)
    captions = tmp_path / "captions.tsv"

    def load(text):
        captions.write_text(text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing captions are tested above
            return ImageFolderCaptions(str(root), str(captions), image_size=8).long_captions

    # "class/file" matches exactly, also with backslashes, "./" or a prefix naming root itself; bare unique names too.
    assert load("dog/0.png\tD\ncat\\0.png\tC0\n") == ["C0", "a photo of a cat", "D"]
    assert load("./train/cat/1.png\tC1\n" + f"{root}/dog/0.png\tD\n") == ["a photo of a cat", "C1", "D"]
    assert load("train\\dog\\0.png\tD\n1.png\tC1\n") == ["a photo of a cat", "C1", "D"]
    # A directory that does not exist never falls back to the bare name (it used to land on dog/0.png).
    with pytest.raises(ValueError, match=r"captions\.tsv:2: caption for image 'bird/0\.png', which does not exist"):
        load("cat/1.png\tC1\nbird/0.png\tA bird.\n")
    with pytest.raises(ValueError, match=r"captions\.tsv:1: .*'val/dog/0\.png', which does not exist"):
        load("val/dog/0.png\tD\n")  # a prefix that is not root: another split, not these images
    with pytest.raises(ValueError, match=r"captions\.tsv:1: .*'dog/1\.png', which does not exist"):
        load("dog/1.png\tD\n")
    # Two classes share "0.png": a bare name is ambiguous, whichever row came last used to win silently.
    with pytest.raises(ValueError, match=r"captions\.tsv:2: image name '0\.png' is ambiguous.*cat/0\.png.*dog/0\.png"):
        load("1.png\tC1\n0.png\tzero\n")
    with pytest.raises(ValueError, match=r"captions\.tsv:2: a second caption for image 'cat/1\.png'"):
        load("1.png\tC1\ncat/1.png\tagain\n")


def test_caption_file_bad_rows(folder, tmp_path):
    rows = {"null caption": {"image_path": "a.png", "caption": None}, "int path": {"image_path": 123, "caption": "x"},
            "no caption": {"image_path": "a.png"}}
    for row in rows.values():
        jsonl = tmp_path / "captions.jsonl"
        jsonl.write_text(json.dumps({"image_path": "b.png", "caption": "fine"}) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(ValueError, match=r"captions\.jsonl:2: expected .*'image_path' and 'caption'"):
            ImageFolderCaptions(str(folder), str(jsonl))
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("a.png\tfine\nimage_path\tcaption\n")  # a header is only a header on line 1
    with pytest.raises(ValueError, match=r"captions\.tsv:2: caption for image 'image_path'"):
        ImageFolderCaptions(str(folder), str(tsv))
    tsv.write_text("a.png has no tab\n")
    with pytest.raises(ValueError, match=r"captions\.tsv:1: expected 'filename<TAB>caption'"):
        ImageFolderCaptions(str(folder), str(tsv))


def test_image_folder_errors(folder, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a.png\tfine\nmissing_cat.jpg\ta cat\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:2.*missing_cat\.jpg"):
        ImageFolderCaptions(str(folder), str(bad))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderCaptions(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "class").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        ImageFolderCaptions(str(tmp_path / "empty"))


def test_image_folder_skips_corrupt_images(folder):
    (folder / "golden_retriever" / "a.png").write_bytes(b"definitely not a png")
    data = ImageFolderCaptions(str(folder), image_size=8)
    with pytest.warns(RuntimeWarning, match=r"a\.png.*1 unreadable"):
        item = data[0]
    assert item["index"] == 1 and item["image"].shape == (3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the known-bad file is skipped silently from now on
        assert data[0]["index"] == 1 and data[2]["index"] == 2
