"""Tests for augment.py: CutMix geometry, exact mixed ground truth and captions, crops, MixedDataset, demo CLI."""
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import augment
from augment import (CUTMIX_SETTINGS, MixedDataset, Placement, _resize, compose_caption, crop_scene, cutmix,
                     mixed_caption, mixed_scene, random_crop)
from data import ImageFolderCaptions, Obj, Scene, SyntheticImageNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAR = Scene((Obj("star", "red", 0.3, 0.5, 0.5),), "stripes", 0.5)
CIRCLE = Scene((Obj("circle", "blue", 0.3, 0.5, 0.5),), "plain", 0.2)


def pasted(base, mixed):
    """bool (H, W): pixels the paste changed (base is a constant far outside the other image's range)."""
    return (mixed != base).any(0)


@pytest.mark.parametrize("side,channels", [(32, 3), (64, 3), (32, 4)])
@pytest.mark.parametrize("setting", ["1/2", "1/4", "1/9", "1/16"])
def test_cutmix_area_box_and_pixels(setting, side, channels):
    k = {"1/2": 2, "1/4": 2, "1/9": 3, "1/16": 4}[setting]
    base = torch.full((channels, side, side), -5.0)
    other = torch.rand(channels, side, side)
    for seed in range(12):
        mixed, p = cutmix(base, other, setting, np.random.default_rng(seed))
        l, t, r, b = p.box
        changed = pasted(base, mixed)
        assert p.setting == setting and p.image_size == (side, side)
        assert changed[t:b, l:r].all() and changed.sum() == (r - l) * (b - t)  # exactly the box
        if setting == "1/2":
            assert changed.float().mean() == 0.5
            assert p.box in ((side // 2, 0, side, side), (0, side // 2, side, side))
            assert torch.equal(mixed[:, t:b, l:r], other[:, t:b, l:r])  # full size: B's own half
        else:
            assert (r - l, b - t) == (round(side / k), round(side / k))
            assert abs(changed.float().mean() - 1 / k**2) < 0.01
            resized = F.interpolate(other[None], (b - t, r - l), mode="bilinear", antialias=True)[0]
            assert torch.allclose(mixed[:, t:b, l:r], resized)


def test_cutmix_placement_rules():
    base, other, S = torch.zeros(3, 32, 32), torch.ones(3, 32, 32), 32
    places = {s: [cutmix(base, other, s, np.random.default_rng(i))[1] for i in range(200)] for s in CUTMIX_SETTINGS}
    assert {p.where for p in places["1/2"]} == {"right half", "bottom half"}
    for p in places["1/4"]:  # a corner: touches two perpendicular borders, and the word names that corner
        l, t, r, b = p.box
        assert (l == 0 or r == S) and (t == 0 or b == S)
        assert p.where == f"{'top' if t == 0 else 'bottom'}-{'left' if l == 0 else 'right'} corner"
    assert len({p.box for p in places["1/4"]}) == 4
    for p in places["1/9"]:  # touches the named border, free offset along it
        l, t, r, b = p.box
        assert {"left border": l == 0, "right border": r == S, "top border": t == 0, "bottom border": b == S}[p.where]
    assert len({p.where for p in places["1/9"]}) == 4 and len({p.box for p in places["1/9"]}) > 20
    for p in places["1/16"]:  # 5% margin, no overlap with the central +-10% square
        l, t, r, b = p.box
        assert l >= 0.05 * S and t >= 0.05 * S and r <= 0.95 * S and b <= 0.95 * S
        assert r <= 0.4 * S or l >= 0.6 * S or b <= 0.4 * S or t >= 0.6 * S
        # The area word comes from the box centre: outside the middle band [0.4, 0.6] of an axis, that axis is named.
        cx, cy = (l + r) / 2 / S, (t + b) / 2 / S
        vert = "top" if cy < 0.4 else "bottom" if cy > 0.6 else None
        horiz = "left" if cx < 0.4 else "right" if cx > 0.6 else None
        assert p.where == "-".join(w for w in (vert, horiz) if w) + " area", (p.box, p.where)
    assert len({p.box for p in places["1/16"]}) > 30
    assert {p.where for p in places["1/16"]} >= {"top-left area", "top area", "right area", "bottom-right area"}
    assert {p.where for p in places["1/4"]} == {"top-left corner", "top-right corner", "bottom-left corner",
                                               "bottom-right corner"}
    assert {p.setting for p in places["all"]} == {"1/2", "1/4", "1/9", "1/16"}
    with pytest.raises(ValueError):
        cutmix(base, other, "1/3", np.random.default_rng(0))


def test_cutmix_is_reproducible_and_keeps_dtype():
    x, y = torch.randn(4, 32, 32, dtype=torch.bfloat16), torch.randn(4, 32, 32, dtype=torch.bfloat16)
    m1, p1 = cutmix(x, y, "all", np.random.default_rng(7))
    m2, p2 = cutmix(x, y, "all", np.random.default_rng(7))
    assert p1 == p2 and torch.equal(m1, m2) and m1.dtype == torch.bfloat16


def test_mixed_scene_geometry():
    corner = Placement("1/4", (16, 0, 32, 16), "top-right corner", (32, 32))
    scene = mixed_scene(STAR, CIRCLE, corner)
    assert scene.objects[0] == STAR.objects[0] and scene.background == STAR.background
    moved = scene.objects[1]
    assert (moved.shape, moved.color) == ("circle", "blue")
    assert moved.x == pytest.approx(0.75) and moved.y == pytest.approx(0.25) and moved.size == pytest.approx(0.15)
    half = Placement("1/2", (16, 0, 32, 32), "right half", (32, 32))
    assert mixed_scene(STAR, CIRCLE, half).objects == STAR.objects + CIRCLE.objects  # original geometry
    with pytest.raises(TypeError):  # no default size: (32, 32) would silently give wrong fractions at 64
        Placement("1/4", (32, 0, 64, 32), "top-right corner")


def captions(base, other, placement, n=30, style="long"):
    return [mixed_caption(base, other, placement, np.random.default_rng(i), style=style) for i in range(n)]


RELATIONS = ("to the left of", "to the right of", "above", "below")


def check_relation(texts, a, b, relation):
    """Every caption names both objects; any relation stated is the right one ('a rel b' or its converse)."""
    converse = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
                "below": "above"}[relation]
    stated = 0
    for text in texts:
        low = text.lower()
        for word in a.split() + b.split():
            assert word in low, (word, text)
        for rel in RELATIONS:
            for x, y in ((a, b), (b, a)):
                xs, ys = x.split(), y.split()
                pattern = rf"{xs[0]}[\w\- ]*{xs[1]}[\w\-() ]* {rel} (the |an? )?{ys[0]}[\w\- ]*{ys[1]}"
                if re.search(pattern, low):
                    assert (x, rel) in ((a, relation), (b, converse)), text
                    stated += 1
    assert stated >= len(texts) // 3  # most phrasings state the relation


def test_mixed_caption_is_exact():
    half = Placement("1/2", (16, 0, 32, 32), "right half", (32, 32))
    check_relation(captions(STAR, CIRCLE, half), "red star", "blue circle", "to the left of")
    bottom = Placement("1/2", (0, 16, 32, 32), "bottom half", (32, 32))
    check_relation(captions(STAR, CIRCLE, bottom), "red star", "blue circle", "above")
    right_border = Placement("1/9", (21, 11, 32, 22), "right border", (32, 32))
    texts = captions(STAR, CIRCLE, right_border)
    check_relation(texts, "red star", "blue circle", "to the left of")
    short = [re.sub(r"^an? (photo|image|picture) of ", "", t) for t in texts]       # without the opening
    assert any("right border" in t for t in texts) and any(t.startswith("a red star to the left of") for t in short)
    assert any(t.startswith("a blue circle to the right of") for t in short)       # either object is named first
    top = Placement("1/16", (12, 2, 20, 10), "top area", (32, 32))
    small = Scene((Obj("heart", "green", 0.15, 0.5, 0.65),), "plain")
    check_relation(captions(small, CIRCLE, top), "green heart", "blue circle", "below")
    # The order never gives the layout away: the pasted circle (right half) is named first about half the time.
    texts = [t.lower() for t in captions(STAR, CIRCLE, half, n=200)]
    assert 0.35 < np.mean([t.index("blue") < t.index("red") for t in texts]) < 0.65
    for text in captions(STAR, CIRCLE, half, style="class"):
        assert re.fullmatch(r"an? (photo|image|picture) of a star and a circle", text)


def test_mixed_caption_omits_hidden_objects():
    # The star lies entirely in the right half, which the circle's image replaces: it is gone.
    hidden = Scene((Obj("star", "red", 0.12, 0.78, 0.5),), "plain")
    half = Placement("1/2", (16, 0, 32, 32), "right half", (32, 32))
    for text in captions(hidden, CIRCLE, half, n=10):
        assert "star" not in text and "red" not in text and re.search(r"blue [\w ]*circle", text)
    assert all(t.endswith("of a circle") for t in captions(hidden, CIRCLE, half, n=5, style="class"))


def test_mixed_caption_barely_visible_objects_have_no_class_word():
    # The star is fully covered by the right half; B's orange circle mostly lies in B's left half, so only a
    # sliver (~14%) shows in the pasted right half: under 25%, no shape may be named in the long captions.
    hidden = Scene((Obj("star", "red", 0.12, 0.78, 0.5),), "plain")
    sliver = Scene((Obj("circle", "orange", 0.2, 0.38, 0.5),), "plain", 0.2)
    half = Placement("1/2", (16, 0, 32, 32), "right half", (32, 32))
    for text in captions(hidden, sliver, half, n=10):
        assert "the edge of an orange shape" in text and "circle" not in text and "star" not in text, text
        assert "red" not in text, text
    # Class style must name some class: the most visible object (the circle sliver), never the hidden star.
    assert all(re.fullmatch(r"an? (photo|image|picture) of a circle", t)
               for t in captions(hidden, sliver, half, n=10, style="class"))
    # Nothing visible at all (B's circle lies wholly in its own left half): only then the base object's class.
    gone = Scene((Obj("circle", "orange", 0.15, 0.25, 0.5),), "plain", 0.2)
    assert all(t.endswith("of a star") for t in captions(hidden, gone, half, n=5, style="class"))
    # The same on A's side: a yellow square almost covered by a corner inset shows ~15% of itself.
    corner = Placement("1/4", (16, 0, 32, 16), "top-right corner", (32, 32))
    covered = Scene((Obj("square", "yellow", 0.12, 0.58, 0.42),), "plain")
    for text in captions(covered, CIRCLE, corner, n=10):
        assert text.startswith("The edge of a yellow shape") and "square" not in text and "circle" in text, text


def test_compose_caption_contains_both_texts():
    p = Placement("1/4", (16, 0, 32, 16), "top-right corner", (32, 32))
    for seed in range(6):
        text = compose_caption("A dog on grass", "A red fish in a tank.", p, np.random.default_rng(seed))
        assert "A dog on grass." in text and "A red fish in a tank." in text and "top-right corner" in text


def test_random_crop_and_crop_scene():
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(3, 32, 32)
    image[:, :, 5] += 1000  # not symmetric under a transpose either: swapping top and left changes the pixels
    swaps = 0
    for seed in range(10):
        out, (l, t, r, b) = random_crop(image, np.random.default_rng(seed))
        assert out.shape == image.shape and 0 <= l < r <= 32 and 0 <= t < b <= 32
        assert r - l == b - t and r - l >= round(0.7 * 32)
        assert torch.equal(out, _resize(image[:, t:b, l:r], 32, 32))  # the box is exactly what was cropped
        swaps += l != t and not torch.equal(out, _resize(image[:, l:l + b - t, t:t + r - l], 32, 32))
    assert swaps >= 5
    wide = torch.rand(3, 24, 40)
    out, (l, t, r, b) = random_crop(wide, np.random.default_rng(0))
    assert 0 <= l < r <= 40 and 0 <= t < b <= 24 and torch.equal(out, _resize(wide[:, t:b, l:r], 24, 40))
    scene = Scene((Obj("star", "red", 0.2, 0.5, 0.5), Obj("circle", "blue", 0.05, 0.05, 0.05)), "plain")
    cropped = crop_scene(scene, (8, 8, 24, 24), 32)
    assert len(cropped.objects) == 1  # the corner circle is outside the crop
    star = cropped.objects[0]
    assert (star.x, star.y, star.size) == pytest.approx((0.5, 0.5, 0.4))


@pytest.fixture(scope="module")
def synthetic():
    return SyntheticImageNet(num_images=96, image_size=32, seed=0)


def test_mixed_dataset_reproducible_per_seed_and_epoch(synthetic):
    a, b = (MixedDataset(synthetic, cutmix="all", crop=True, seed=1) for _ in range(2))
    for i in range(0, 96, 8):
        x, y = a[i], b[i]
        assert set(x) == {"image", "caption", "mixed_image", "mixed_caption", "label", "index"}
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mixed_image"], y["mixed_image"])
        assert x["caption"] == y["caption"] and x["mixed_caption"] == y["mixed_caption"]
    before = [a[i]["mixed_image"] for i in range(16)]
    a.set_epoch(1)
    after = [a[i]["mixed_image"] for i in range(16)]
    assert sum(not torch.equal(u, v) for u, v in zip(before, after)) >= 12
    b.set_epoch(1)
    assert torch.equal(b[3]["mixed_image"], a[3]["mixed_image"])  # resumable: (seed, epoch, index) decides
    # With crop, about half the plain images are crops that get a fresh exact caption.
    crops = sum(a[i]["caption"] != synthetic.long_captions[i] for i in range(96))
    assert 20 < crops < 76


def test_mixed_dataset_partner_from_another_class(synthetic):
    data = MixedDataset(synthetic, captions="class", cutmix="1/4")
    rng = np.random.default_rng(0)
    for i in range(300):
        label = int(synthetic.labels[i % 96])
        assert int(synthetic.labels[data._partner(label, rng)]) != label
    for i in range(12):
        item = data[i]
        assert item["caption"] == synthetic.class_captions[i] and item["label"] == synthetic.labels[i]
        shapes = re.findall(r"a (\w+)", item["mixed_caption"].split(" of ", 1)[1])
        assert len(shapes) == 2 and shapes[0] != shapes[1]
    plain = MixedDataset(synthetic, cutmix=None)[5]
    assert plain["mixed_image"] is plain["image"] and plain["mixed_caption"] == plain["caption"]


def test_mixed_dataset_on_image_folder(tmp_path):
    for name, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / name).mkdir()
        for k in range(2):
            Image.new("RGB", (20, 20), color).save(tmp_path / name / f"{name}{k}.png")
    (tmp_path / "captions.tsv").write_text("cat0.png\tA red cat.\ndog1.png\tA blue dog.\n")
    with pytest.warns(UserWarning, match="2 of 4 images got no caption"):
        data = MixedDataset(ImageFolderCaptions(str(tmp_path), str(tmp_path / "captions.tsv"), 16), cutmix="1/4")
    item = data[0]
    assert item["caption"] == "A red cat." and "A red cat." in item["mixed_caption"]
    assert "dog" in item["mixed_caption"] and item["mixed_image"][2].max() > 0.9  # blue pasted in


def test_mixed_dataset_never_mixes_a_class_with_itself(tmp_path):
    # "cat" has one image, and it is junk: the folder serves the next readable image (a dog) in its place, so
    # every partner drawn for a dog is a dog. Such items must stay unmixed rather than paste a dog onto a dog.
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "cat0.png").write_bytes(b"junk, not a png")
    (tmp_path / "dog").mkdir()
    for k in range(3):
        Image.new("RGB", (20, 20), (0, 0, 60 * k)).save(tmp_path / "dog" / f"dog{k}.png")
    data = MixedDataset(ImageFolderCaptions(str(tmp_path), image_size=16), cutmix="1/4", seed=3)
    with pytest.warns(RuntimeWarning, match=r"unreadable image .*cat0\.png"):
        items = [data[(epoch, i)] for epoch in range(3) for i in range(len(data))]
    for item in items:
        assert item["label"] == 1  # a dog, even for index 0
        assert torch.equal(item["mixed_image"], item["image"]) and item["mixed_caption"] == item["caption"]
    # With a readable cat the same items do mix, with the other class.
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "cat" / "cat0.png")
    data = MixedDataset(ImageFolderCaptions(str(tmp_path), image_size=16), cutmix="1/4", seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(not torch.equal(data[i]["mixed_image"], data[i]["image"]) for i in range(len(data)))


def test_crop_captions_keep_one_phrasing_across_epochs(synthetic, monkeypatch):
    # With the crop box fixed, only the per-epoch rng could change the caption: it must not (a crop is not a
    # paraphrase). The caption still follows the content: it is the exact caption of the cropped scene.
    box = (4, 2, 30, 28)
    monkeypatch.setattr(augment, "random_crop", lambda image, rng: (image, box))
    data = MixedDataset(synthetic, cutmix=None, crop=True, seed=1)
    for i in range(12):
        texts = {data[(epoch, i)]["caption"] for epoch in range(16)} - {synthetic.long_captions[i]}
        assert texts == {data.crop_caption(i, box, 32)}, texts
        assert data.crop_caption(i, box, 32) == augment.long_caption(crop_scene(synthetic.scenes[i], box, 32),
                                                                     np.random.default_rng((1, i, augment._CROP_TEXT)))
    empty = data.crop_caption(0, (0, 0, 1, 1), 32)  # a corner pixel: the object is cropped away
    assert empty.endswith("with nothing on it.") and synthetic.scenes[0].objects[0].shape not in empty


def test_demo_cli_writes_png(tmp_path):
    out = tmp_path / "demo.png"
    run = subprocess.run([sys.executable, "augment.py", "--demo", str(out), "--seed", "1"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 6 * 160
    assert os.listdir(tmp_path) == ["demo.png"]  # no temp file left behind
