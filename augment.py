"""
Image augmentation (IA): CutMix with a second image from another class, and random crops.

The paper's CutMix family pastes a second image B (another class) into a base image A of side S:

    CM 1/2   B at full size replaces the right half or the bottom half of A   (box S/2 x S or S x S/2)
    CM 1/4   B resized to S/2, pasted in one of the 4 corners
    CM 1/9   B resized to S/3, pasted against one of the 4 borders at a uniform offset along it
    CM 1/16  B resized to S/4, uniform position with a 5% margin to the borders and no overlap with the
             central square [0.4 S, 0.6 S]^2
    CM all   one of the four, uniformly (the paper's default)

so the pasted area is 1/2, 1/4, 1/9 or 1/16 of the pixels (sides rounded to whole pixels). The paste
works on any (C, H, W) tensor: pixels here, VAE latents (C = 4) later. Resizing uses
F.interpolate(bilinear, antialias=True) so shrunken images do not alias.

The paper recaptions every mixed image with the VLM. For synthetic scenes we know the truth instead:
mixed_scene moves B's objects into the box (x' = (left + x w) / W, size' = size w / W) and
mixed_caption describes what is actually visible (object masks restricted to their side of the paste
box, rendered at 64x64): parts of objects hidden by the paste are called partial or omitted, positions
and the GenEval relations (left of / right of / above / below) come from the visible centroids. Either
image is named first (the order must not tell the layout: CM 1/2 always pastes B right or below). For
real images compose_caption joins the two captions with the placement.

Random crops (crop=True) replace the plain image of half the items by a crop resized back to full size;
synthetic scenes get an exact caption of the crop, in a phrasing fixed per image (so crops do not double
as caption paraphrasing). Crops are NOT gated by t_mix, unlike CutMix: the plain image is trained at every
t (always below t_mix, and above it whenever the sample is not swapped for its mixed version). The mixed
image is pasted onto the uncropped base image.

Whether a training sample uses the mixed version (t > t_mix and u < p_mix) is decided per sample by
diffusion.mix_mask (called in train.py); MixedDataset always returns both versions, reproducibly from
(seed, epoch, index).
"""
import argparse
import textwrap
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from data import (PROMPT_OPENINGS, Scene, SyntheticImageNet, _a, _pick, describe_background, describe_object,
                  long_caption, position_name, relation_name, render_masks, save_png, to_uint8)

CUTMIX_SETTINGS = ("1/2", "1/4", "1/9", "1/16", "all")
CONVERSE = {"to the left of": "to the right of", "to the right of": "to the left of",      # "A rel B" = "B converse A"
            "above": "below", "below": "above"}

#################################################################################
#                                      CutMix                                   #
#################################################################################


@dataclass(frozen=True)
class Placement:
    setting: str                         # the concrete setting used ("all" resolves to one of the four)
    box: tuple[int, int, int, int]       # (left, top, right, bottom) pixels of the pasted region in the base image
    where: str                           # "right half", "top-right corner", "left border", "top-left area", ...
    image_size: tuple[int, int]          # (H, W) of the base image, so the box can be read as fractions (no default:
                                         # a wrong size would silently give wrong fractions)


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    # Antialiased bilinear in float32 (CPU bf16 has no antialiased kernel), back to the input dtype.
    y = F.interpolate(x[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return y[0].to(x.dtype)


@lru_cache(maxsize=16)
def _free_positions(H: int, W: int, h: int, w: int) -> np.ndarray:
    """(n, 2) all (top, left) of an h x w box inside the 5% margin that miss the central +-10% square."""
    tops = np.arange(int(np.ceil(0.05 * H)), int(np.floor(0.95 * H)) - h + 1)
    lefts = np.arange(int(np.ceil(0.05 * W)), int(np.floor(0.95 * W)) - w + 1)
    T, L = np.meshgrid(tops, lefts, indexing="ij")
    overlap = (T < 0.6 * H) & (T + h > 0.4 * H) & (L < 0.6 * W) & (L + w > 0.4 * W)
    return np.stack([T[~overlap], L[~overlap]], 1)


def cutmix(base: torch.Tensor, other: torch.Tensor, setting: str,
           rng: np.random.Generator) -> tuple[torch.Tensor, Placement]:
    """Paste `other` into a copy of `base`, both (C, H, W), with the paper's geometry for `setting`."""
    if setting not in CUTMIX_SETTINGS:
        raise ValueError(f"unknown CutMix setting {setting!r}; expected one of {CUTMIX_SETTINGS}")
    if base.shape != other.shape:
        raise ValueError(f"cutmix needs equal shapes, got {tuple(base.shape)} and {tuple(other.shape)}")
    if setting == "all":
        setting = CUTMIX_SETTINGS[rng.integers(4)]
    _, H, W = base.shape
    mixed = base.clone()
    if setting == "1/2":  # B keeps its full size: its own right (bottom) half lands on A's right (bottom) half
        left, top, where = (W // 2, 0, "right half") if rng.random() < 0.5 else (0, H // 2, "bottom half")
        mixed[:, top:, left:] = other[:, top:, left:]
        return mixed, Placement(setting, (left, top, W, H), where, (H, W))
    k = {"1/4": 2, "1/9": 3, "1/16": 4}[setting]
    h, w = round(H / k), round(W / k)
    if k == 2:
        corner = rng.integers(4)
        top, left = (0 if corner < 2 else H - h), (0 if corner % 2 == 0 else W - w)
        where = f"{('top', 'bottom')[corner // 2]}-{('left', 'right')[corner % 2]} corner"
    elif k == 3:
        side = ("left", "right", "top", "bottom")[rng.integers(4)]
        along = int(rng.integers(0, (H - h if side in ("left", "right") else W - w) + 1))
        top, left = {"left": (along, 0), "right": (along, W - w), "top": (0, along), "bottom": (H - h, along)}[side]
        where = f"{side} border"
    else:
        free = _free_positions(H, W, h, w)
        top, left = (int(v) for v in free[rng.integers(len(free))])
        cy, cx = (top + h / 2) / H, (left + w / 2) / W
        vert = "top" if cy < 0.4 else "bottom" if cy > 0.6 else ""
        horiz = "left" if cx < 0.4 else "right" if cx > 0.6 else ""
        where = "-".join(p for p in (vert, horiz) if p) + " area"
    mixed[:, top:top + h, left:left + w] = _resize(other, h, w)
    return mixed, Placement(setting, (left, top, left + w, top + h), where, (H, W))

#################################################################################
#                               Ground Truth and Captions                       #
#################################################################################


def _moved(other: Scene, placement: Placement) -> tuple:
    """B's objects in base-image coordinates: shrunk into the box (CM 1/2 keeps the original geometry)."""
    if placement.setting == "1/2":
        return other.objects
    (H, W), (l, t, r, b) = placement.image_size, placement.box
    sx, sy = (r - l) / W, (b - t) / H
    return tuple(replace(o, x=l / W + o.x * sx, y=t / H + o.y * sy, size=o.size * (sx + sy) / 2) for o in other.objects)


def mixed_scene(base: Scene, other: Scene, placement: Placement) -> Scene:
    """Exact ground truth of the mix: A's objects, then B's objects moved into the box, on A's background."""
    return Scene(base.objects + _moved(other, placement), base.background, base.tone)


_VIS_RES = 64  # visibility is measured at 64x64: a 1/16 tile is then 16 px and its object still has pixels


def _visible(base: Scene, other: Scene, placement: Placement) -> list[tuple]:
    """(obj, visible fraction, centroid x, centroid y, from_other) for every object of the mixed scene.

    A's objects are seen outside the box, B's inside; the fraction is relative to what each object
    showed in its own image, so objects already clipped by their frame do not count as hidden."""
    (H, W), (l, t, r, b) = placement.image_size, placement.box
    u = (np.arange(_VIS_RES) + 0.5) / _VIS_RES
    inside = ((u[:, None] >= t / H) & (u[:, None] < b / H)) & ((u[None, :] >= l / W) & (u[None, :] < r / W))
    moved = Scene(_moved(other, placement), other.background)
    masks_b = render_masks(moved, _VIS_RES)
    if placement.setting != "1/2":
        masks_b &= inside  # the box is B's whole frame: what fell outside B's own image was never visible
    parts = []
    for objs, masks, keep, from_other in ((base.objects, render_masks(base, _VIS_RES), ~inside, False),
                                          (moved.objects, masks_b, inside, True)):
        for obj, full in zip(objs, masks):
            seen = full & keep
            ys, xs = np.nonzero(seen)
            frac = seen.sum() / max(full.sum(), 1)
            cx, cy = ((xs.mean() + 0.5) / _VIS_RES, (ys.mean() + 0.5) / _VIS_RES) if len(xs) else (obj.x, obj.y)
            parts.append((obj, float(frac), float(cx), float(cy), from_other))
    return parts


def _where(placement: Placement) -> str:
    """'in the top-right corner', 'against the left border', ... (the box, said as a place)."""
    return ("against the " if placement.setting == "1/9" else "in the ") + placement.where


def _things(parts: list[tuple], rng: np.random.Generator) -> str:
    """'a large red star and part of a small blue circle' for the visible objects ('' when none is)."""
    phrases = []
    for obj, frac, *_ in parts:
        if frac >= 0.7:
            phrases.append(describe_object(obj, rng))
        elif frac >= 0.25:
            phrases.append(_pick(rng, ("part of {}", "{} (partly cut off)")).format(describe_object(obj, rng)))
        else:  # a few pixels: name it, since the colour is visible, but do not claim the shape is recognisable
            phrases.append(f"the edge of {_a(obj.color + ' shape')}")
    return " and ".join(phrases)


def mixed_caption(base: Scene, other: Scene, placement: Placement, rng: np.random.Generator,
                  style: str = "long") -> str:
    """Exact caption of the mixed image: 'class' style lists the visible classes, 'long' describes the scene."""
    parts = [p for p in _visible(base, other, placement) if p[1] >= 0.03]  # below 3%: a stray pixel or two
    seen_a, seen_b = [p for p in parts if not p[4]], [p for p in parts if p[4]]
    # Under a quarter of an object left is not recognisable: it gets no class word and no relation.
    main_a, main_b = [p for p in seen_a if p[1] >= 0.25], [p for p in seen_b if p[1] >= 0.25]
    if style == "class":
        shapes = list(dict.fromkeys(p[0].shape for p in main_a + main_b))
        if not shapes:  # nothing recognisable: a class caption still needs a class, so take the most visible one
            shapes = [max(parts, key=lambda p: p[1])[0].shape if parts else base.objects[0].shape]
        return _pick(rng, ("a photo of {}", "an image of {}", "a picture of {}")).format(
            " and ".join(_a(s) for s in shapes))
    if style != "long":
        raise ValueError(f"style must be 'long' or 'class', got {style!r}")
    bg_a, bg_b = describe_background(base, rng, short=rng.random() < 0.5), describe_background(other, rng)
    a, b, where = _things(seen_a, rng), _things(seen_b, rng), _where(placement)
    if not main_a or not main_b:  # one side shows no recognisable object: say exactly what is there
        text = (f"{a} on {bg_a}" if a else bg_a) + f"; {where}, " + \
            (f"{b} on {bg_b}." if b else f"an empty patch of {bg_b}.")
        return text[:1].upper() + text[1:]
    (oa, _, ax, ay, _), (ob, _, bx, by, _) = main_a[0], main_b[0]
    # CM 1/2: every visible pixel of A lies on A's side of the border, so the split decides the relation.
    rel = {"right half": "to the left of", "bottom half": "above"}.get(placement.where, relation_name(ax, ay, bx, by))
    # Either image is named first. A always first would give the layout away by order (CM 1/2 pastes B on the
    # right or at the bottom): a model then learns "first named = left or top" and never reads "left of".
    b_first = rng.random() < 0.5
    if b_first:
        (oa, ob), rel = (ob, oa), CONVERSE[rel]
    relation = f"The {oa.color} {oa.shape} is {rel} the {ob.color} {ob.shape}."
    # The short form reads like a GenEval prompt: "a photo of a red star to the left of a blue circle".
    short = _pick(rng, PROMPT_OPENINGS) + describe_object(oa, rng, False) + _pick(rng, (f" {rel} ", " and ")) + \
        describe_object(ob, rng, False)
    if placement.setting == "1/2":
        halves = [("left", a, bg_a), ("right", b, bg_b)] if placement.where == "right half" else \
            [("top", a, bg_a), ("bottom", b, bg_b)]
        (first, x, bg_x), (second, y, bg_y) = halves[::-1] if b_first else halves
        options = (f"The image is split into two halves: the {first} half shows {x} on {bg_x}, and the {second} "
                   f"half shows {y} on {bg_y}. {relation}",
                   short,
                   f"Two pictures in one: {x} on the {first}, {y} on the {second}. {relation}")
    else:
        options = (f"{a} on {bg_a}; {where}, {b}.",
                   short,
                   f"{a} {position_name(ax, ay)} on {bg_a}. A small inset {where} shows {b} on {bg_b}. {relation}",
                   f"{where}, a square patch of {bg_b} contains {b}; the rest of the picture shows {a}. {relation}")
    text = _pick(rng, options)
    return text[:1].upper() + text[1:] if text.endswith(".") else text


def compose_caption(base_caption: str, other_caption: str, placement: Placement, rng: np.random.Generator) -> str:
    """Real images: the base caption, then the pasted image's caption introduced by its place."""
    a, b = base_caption.strip(), other_caption.strip()
    a = a if a.endswith((".", "!", "?")) else a + "."
    where = _where(placement)
    if placement.setting == "1/2":
        first = "Left half" if placement.where == "right half" else "Top half"
        second = "Right half" if placement.where == "right half" else "Bottom half"
        return _pick(rng, (f"{a} {where[:1].upper() + where[1:]}: {b}", f"{first}: {a} {second}: {b}",
                           f"{second}: {b} {first}: {a}"))                    # halves in either order
    return _pick(rng, (f"{a} {where[:1].upper() + where[1:]}: {b}", f"{a} Pasted {where}, a second picture: {b}",
                       f"Main picture: {a} Inset {where}: {b}"))

#################################################################################
#                                    Random Crops                               #
#################################################################################


def random_crop(image: torch.Tensor, rng: np.random.Generator,
                min_scale: float = 0.7) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Crop a random box of side scale * (H, W), scale ~ U(min_scale, 1), and resize it back to (H, W)."""
    _, H, W = image.shape
    s = rng.uniform(min_scale, 1.0)
    h, w = max(1, round(s * H)), max(1, round(s * W))
    top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    return _resize(image[:, top:top + h, left:left + w], H, W), (left, top, left + w, top + h)


def crop_scene(scene: Scene, box: tuple[int, int, int, int], size: int) -> Scene:
    """Ground truth after cropping `box` from a size x size image and resizing back; objects left out are dropped."""
    l, t, r, b = box
    sx, sy = size / (r - l), size / (b - t)
    objs = tuple(replace(o, x=(o.x * size - l) / (r - l), y=(o.y * size - t) / (b - t), size=o.size * (sx + sy) / 2)
                 for o in scene.objects)
    return replace(scene, objects=tuple(o for o in objs if -o.size < o.x < 1 + o.size and -o.size < o.y < 1 + o.size))

#################################################################################
#                                   Mixed Dataset                               #
#################################################################################


# SeedSequence pads short keys with zeros, so a per-image key (seed, index) would equal the item key
# (seed, epoch=index, 0); the tag moves it to item number 0x63726F70 (1.7e9), which no dataset here reaches.
_CROP_TEXT = 0x63726F70  # "crop"
_PARTNER_TRIES = 4       # same-class partners only come from unreadable files: a few draws find another class


class MixedDataset(torch.utils.data.Dataset):
    """Wraps SyntheticImageNet or ImageFolderCaptions. Item = {"image", "caption", "mixed_image", "mixed_caption",
    "label", "index"}.

    captions: "long" (TA) or "class" (AIO). cutmix: None or a CUTMIX_SETTINGS value; the second image comes from a
    different class (if a partner turns out to share the class, e.g. an unreadable file replaced by its neighbour,
    another is drawn; after _PARTNER_TRIES the item stays unmixed). crop: bool, replace the plain image by
    random_crop with probability 0.5, at every t (crops are not gated by t_mix like CutMix; the mixed image uses
    the uncropped one); synthetic scenes get an exact caption of the crop, phrased with a per-image rng so each
    image keeps one phrasing across epochs and only the content follows the crop.
    Randomness per item comes from np.random.default_rng((seed, epoch, index)) so runs and resumes are
    reproducible. With cutmix=None, mixed_image/mixed_caption equal image/caption (cheap: no copy)."""

    def __init__(self, base, captions: str = "long", cutmix: str | None = "all", crop: bool = False, seed: int = 0):
        if captions not in ("long", "class"):
            raise ValueError(f"captions must be 'long' or 'class', got {captions!r}")
        if cutmix is not None and cutmix not in CUTMIX_SETTINGS:
            raise ValueError(f"unknown CutMix setting {cutmix!r}; expected None or one of {CUTMIX_SETTINGS}")
        self.base, self.captions, self.cutmix, self.crop, self.seed, self.epoch = base, captions, cutmix, crop, seed, 0
        self.scenes = getattr(base, "scenes", None)  # synthetic data: exact re-captioning from the ground truth
        # Per-class index lists as one argsort: class c owns order[start[c] : start[c] + count[c]].
        labels = base.labels.numpy()
        self._order = np.argsort(labels, kind="stable")
        self._count = np.bincount(labels)
        self._start = np.concatenate([[0], np.cumsum(self._count)[:-1]])
        self._classes = np.flatnonzero(self._count)
        self._rank = {int(c): k for k, c in enumerate(self._classes)}
        if cutmix is not None and len(self._classes) < 2:
            raise ValueError("CutMix pastes an image of another class, but the dataset has a single class")

    def set_epoch(self, epoch: int) -> None:
        """The epoch for int keys, in THIS process only: DataLoader workers (persistent ones above all) keep their
        own copy of the dataset and never see it. Across workers pass (epoch, index) keys instead, as train.py does."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def _partner(self, label: int, rng: np.random.Generator) -> int:
        # A uniform class among the others, then a uniform image of it: O(1) per item.
        k = int(rng.integers(len(self._classes) - 1))
        c = self._classes[k + (k >= self._rank[label])]
        return int(self._order[self._start[c] + rng.integers(self._count[c])])

    def crop_caption(self, index: int, box: tuple[int, int, int, int], size: int) -> str:
        """Exact long caption of a crop of synthetic image `index`, worded by a per-image rng: the same phrasing
        every epoch (a crop must not double as caption paraphrasing), only the content follows the box."""
        rng = np.random.default_rng((self.seed, index, _CROP_TEXT))
        return long_caption(crop_scene(self.scenes[index], box, size), rng)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        # An (epoch, index) key lets a sampler carry the epoch into DataLoader workers, where set_epoch can't reach.
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        rng = np.random.default_rng((self.seed, epoch, i))
        item = self.base[i]
        caption_field = f"{self.captions}_caption"
        image, caption, index = item["image"], item[caption_field], item["index"]
        out = {"image": image, "caption": caption, "label": item["label"], "index": index}
        if self.crop and rng.random() < 0.5:
            out["image"], box = random_crop(image, rng)
            if self.scenes is not None and self.captions == "long":
                out["caption"] = self.crop_caption(index, box, image.shape[-1])
        if self.cutmix is None:
            out["mixed_image"], out["mixed_caption"] = out["image"], out["caption"]
            return out
        # The base serves the next readable image for an unreadable one, so the partner (or even the item itself)
        # may come back with the item's class: draw again, and give up on mixing rather than mix a class with itself.
        for _ in range(_PARTNER_TRIES):
            other = self.base[self._partner(item["label"], rng)]
            if other["label"] != item["label"]:
                break
        else:  # no other class readable: the mixed slot gets the base image unpasted, as CutMix would have used it
            out["mixed_image"], out["mixed_caption"] = image, caption
            return out
        out["mixed_image"], placement = cutmix(image, other["image"], self.cutmix, rng)
        if self.scenes is not None:
            out["mixed_caption"] = mixed_caption(self.scenes[index], self.scenes[other["index"]], placement, rng,
                                                 style=self.captions)
        else:
            out["mixed_caption"] = compose_caption(caption, other[caption_field], placement, rng)
        return out

#################################################################################
#                                     Demo Grid                                 #
#################################################################################


def demo_grid(image_size: int = 32, seed: int = 0, per_row: int = 4, tile: int = 160) -> Image.Image:
    """One row per setting (1/2, 1/4, 1/9, 1/16, all, crop); each tile upscaled (nearest) with its caption below."""
    data = SyntheticImageNet(num_images=256, image_size=image_size, seed=seed)
    font = ImageFont.load_default()
    chars = max(8, int(tile / font.getlength("n")))
    rows = []
    for name in CUTMIX_SETTINGS + ("crop",):
        mixed = MixedDataset(data, cutmix=None if name == "crop" else name, crop=name == "crop", seed=seed)
        tiles = []
        for k in range(per_row):
            if name == "crop":  # a crop on every tile, not only on half of them as in training
                image, box = random_crop(data[k]["image"], np.random.default_rng((seed, k)))
                text = mixed.crop_caption(k, box, image_size)
            else:
                item = mixed[k]
                image, text = item["mixed_image"], item["mixed_caption"]
            tiles.append((Image.fromarray(to_uint8(image)).resize((tile, tile), Image.NEAREST),
                          textwrap.wrap(text, chars)))
        text_h = 12 * max(len(lines) for _, lines in tiles) + 6
        row = Image.new("RGB", (60 + per_row * (tile + 8), tile + text_h + 8), "white")
        draw = ImageDraw.Draw(row)
        draw.text((4, tile // 2), "crop" if name == "crop" else f"CM {name}", fill="black", font=font)
        for k, (im, lines) in enumerate(tiles):
            x = 60 + k * (tile + 8)
            row.paste(im, (x, 4))
            for n, line in enumerate(lines):
                draw.text((x, tile + 8 + 12 * n), line, fill="black", font=font)
        rows.append(row)
    grid = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    for n, row in enumerate(rows):
        grid.paste(row, (0, sum(r.height for r in rows[:n])))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description="Draw a grid of CutMix / crop examples with their exact captions.")
    parser.add_argument("--demo", required=True, metavar="OUT.png", help="where to write the PNG grid")
    parser.add_argument("--image-size", type=int, default=32, help="side of the synthetic images (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="dataset and augmentation seed (default 0)")
    args = parser.parse_args()
    grid = demo_grid(args.image_size, args.seed)
    save_png(grid, args.demo)
    print(f"wrote {args.demo} ({grid.width}x{grid.height})")


if __name__ == "__main__":
    main()
