"""
Evaluation: a GenEval-style compositional benchmark for the synthetic domain (the `shapes` subcommand), and
library functions for the real benchmarks: their output layouts (GenEval, DPG-Bench) and the Fréchet distance.

    python eval.py shapes --ckpt runs/default     # -> runs/default/eval/shapes/{results.json, results.md,
                                                  #    grid_<category>.png, geneval/}
    python eval.py shapes --validate              # the judge on ground-truth renders, noise and blank images

The paper's claim is about compositionality, measured by GenEval: 553 templated prompts in six
categories, 4 images each, judged by an object detector. Our world has 8 shape classes and the 10
GenEval colors, so the same benchmark is exact here:

    single_object  "a photo of a star"                          include [{star, 1}]
    two_object     "a photo of a star and a circle"             include [{star, 1}, {circle, 1}]
    counting       "a photo of three stars"                     include [{star, 3}], exclude [{star, 4}]
    colors         "a photo of a red star"                      include [{star, 1, red}]
    position       "a photo of a star to the left of a circle"  include [{circle, 1}, {star, 1, ["left of", 0]}]
    color_attr     "a photo of a red star and a blue circle"    include [{star, 1, red}, {circle, 1, blue}]

plus one category of our own, color_position ("a photo of a red star to the left of a blue circle",
include [{circle, 1, blue}, {star, 1, red, ["left of", 0]}]): the colors tell the two objects apart,
so the layout can be judged before a model draws recognisable shapes (see the shape-agnostic score).

Prompts are GenEval metadata dicts (the schema of evaluation_metadata.jsonl) drawn from a seeded
generator, each with a ground-truth Scene that satisfies it (objects never overlap) for validating
the judge. The wording follows the training captions ("to the left of", "a red star").

The judge replaces GenEval's Mask2Former + CLIP with two steps that fit the synthetic domain:
  1. Color segmentation. Backgrounds are gray (g, g, g); an antialiased edge pixel is a blend
     p = a c + (1 - a) g of an object color c. With g the image's background level, each palette
     color gets a = <p - g, c - g> / |c - g|^2 (clipped to [0, 1]) and a residual |p - g - a (c - g)|;
     a pixel belongs to the color of least residual when a >= 1/2 (render_masks' rule) and the
     residual is small. Connected components (8-neighbours) per color, tiny ones dropped.
  2. Shape. A tiny CNN classifies each component's soft mask (alpha of its color), cropped to a
     square around its box and resized to 16x16, into the 8 shapes or "junk". It is trained on
     components of rendered scenes (labels from render_masks; noise blobs and occlusion fragments
     are junk) on first use, then cached as safetensors under $IMAGENET_T2I_CACHE or
     ~/.cache/imagenet-t2i, named by a hash of its settings and the code it depends on.
The rules are GenEval's: an include entry needs at least `count` objects of its class (and color);
position compares box centres with GenEval's margin (0.1 x the summed box sizes); counting is exact
through its exclude entry {count + 1}.

Statistics: accuracy per category over images, overall = unweighted mean of GenEval's 6 categories
(shape-agnostic: of its 6, with color_position in place of position; --validate's overall is GenEval's 6 too).
95% intervals by percentile bootstrap over prompts (a prompt's images are correlated), all
categories resampled together for the overall interval. single_object is also split by the prompted
shape (single_object_by_shape; which shapes a model draws), without intervals. The color_position images are
also judged against the reversed relation (layout_vs_reversed): a model that ignores "left of" and "above" and
places two objects at random passes as often against either, so only the difference (paired bootstrap
interval) shows a learned layout; color_position is also split by the prompted relation
(color_position_by_relation), where placing objects by the order the prompt names them shows.
Shapes: images are uint8 (N, H, W, 3); a benchmark run is (prompts, images_per_prompt, H, W, 3).

Library only, no subcommand (covered by the tests): frechet_distance, the FID formula for FID-family metrics
on features the caller extracts (nothing here computes FID: the synthetic default has no feature network);
write_dpg_layout, DPG-Bench's input folder; check_geneval_layout, what GenEval's evaluator reads (the shapes
subcommand writes its geneval/ folder with write_geneval_layout, without checking it).
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import itertools
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

import data
from data import BACKGROUNDS, COLORS, SHAPES, Obj, Scene, image_grid, render, render_masks, save_png

#################################################################################
#                                  Prompt Set                                   #
#################################################################################

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")        # GenEval's
TAGS = CATEGORIES + ("color_position",)                                                          # + our layout probe
ATTRIBUTE_CATEGORIES = ("single_object", "two_object", "counting", "colors", "color_position", "color_attr")
RELATIONS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBERS = {2: "two", 3: "three", 4: "four"}
COLOR_NAMES = tuple(COLORS)


@dataclass(frozen=True)
class BenchmarkPrompt:
    metadata: dict      # one line of GenEval's evaluation_metadata.jsonl: tag, include, exclude?, prompt
    scene: Scene        # a ground-truth scene that satisfies it (for validating the judge)


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def _combinations(tag: str) -> list[tuple]:
    pairs = list(itertools.permutations(SHAPES, 2))
    return {"single_object": [(s,) for s in SHAPES], "two_object": pairs,
            "counting": [(s, n) for s in SHAPES for n in NUMBERS],
            "colors": [(s, c) for s in SHAPES for c in COLORS],
            "position": [(a, r, b) for a, b in pairs for r in RELATIONS],
            "color_attr": [(a, ca, b, cb) for a, b in pairs for ca, cb in itertools.permutations(COLORS, 2)],
            "color_position": [(a, ca, r, b, cb) for a, b in pairs for ca, cb in itertools.permutations(COLORS, 2)
                               for r in RELATIONS]}[tag]


def make_prompts(per_category: int = 50, seed: int = 0) -> list[BenchmarkPrompt]:
    """The benchmark: per_category prompts per tag, in TAGS order. The combinations of a tag are shuffled
    once and cycled, so classes, colors and relations are balanced; one random stream per tag."""
    prompts = []
    for k, tag in enumerate(TAGS):
        rng = np.random.default_rng([seed, k])
        combos = _combinations(tag)
        order = rng.permutation(len(combos))
        prompts += [_make_prompt(tag, combos[order[i % len(combos)]], rng) for i in range(per_category)]
    return prompts


def _make_prompt(tag: str, combo: tuple, rng: np.random.Generator) -> BenchmarkPrompt:
    relation = combo[1] if tag == "position" else combo[2] if tag == "color_position" else None
    if tag == "counting":
        entries = [(combo[0], None, combo[1])]                     # (class, color or None, count)
    elif tag == "colors":
        entries = [(combo[0], combo[1], 1)]
    elif tag == "position":
        entries = [(combo[2], None, 1), (combo[0], None, 1)]       # GenEval lists the target first
    elif tag == "color_position":
        entries = [(combo[3], combo[4], 1), (combo[0], combo[1], 1)]
    elif tag == "color_attr":
        entries = [(combo[0], combo[1], 1), (combo[2], combo[3], 1)]
    else:
        entries = [(s, None, 1) for s in combo]
    phrases = [_a(f"{c} {s}" if c else s) if n == 1 else f"{NUMBERS[n]} {_plural(s)}" for s, c, n in entries]
    text = "a photo of " + (f"{phrases[1]} {RELATIONS[relation]} {phrases[0]}" if relation else " and ".join(phrases))
    include = [{"class": s, "count": n, **({"color": c} if c else {})} for s, c, n in entries]
    if relation:
        include[1]["position"] = [relation, 0]
    exclude = {"exclude": [{"class": combo[0], "count": combo[1] + 1}]} if tag == "counting" else {}  # "exactly n"
    objs = [(s, c or str(rng.choice(COLOR_NAMES))) for s, c, n in entries for _ in range(n)]
    radius = {1: (0.18, 0.32), 2: (0.12, 0.18), 3: (0.12, 0.16), 4: (0.12, 0.15)}[len(objs)]
    return BenchmarkPrompt({"tag": tag, "include": include, **exclude, "prompt": text},
                           random_layout(rng, objs, radius, relation=relation))


def random_layout(rng: np.random.Generator, objs: list[tuple[str, str]], radius: tuple[float, float],
                  relation: str | None = None, tilt: float = 20.0) -> Scene:
    """Non-overlapping objects (a 2 px gap at 32 px between enclosing circles); with relation, objs[1] must be
    `relation` of objs[0] by the judge's own rule, with the offset mostly along the named axis."""
    for _ in range(2000):
        sizes = rng.uniform(*radius, len(objs))
        reach = 1.1 * sizes  # about the enclosing radius of every shape (a tilted corner may touch the border)
        if len(objs) == 1:  # object-centric, like the training images
            xy = 0.5 + rng.uniform(-0.15, 0.15, (1, 2))
        else:
            xy = rng.uniform(reach[:, None], 1 - reach[:, None], (len(objs), 2))
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) - (reach[:, None] + reach[None]) - 0.06
        if (gaps + 2 * np.eye(len(objs)) < 0).any():
            continue
        scene = Scene(tuple(Obj(s, c, float(r), float(x), float(y), float(rng.uniform(-tilt, tilt)))
                            for (s, c), r, (x, y) in zip(objs, sizes, xy)),
                      str(rng.choice(BACKGROUNDS)), float(rng.uniform()))
        if relation is not None:
            (dx, dy), boxes = xy[1] - xy[0], [_mask_box(m) for m in render_masks(scene)]
            along = abs(dx) > 2 * abs(dy) if relation in ("left of", "right of") else abs(dy) > 2 * abs(dx)
            if not (along and relation in relative_position(boxes[1], boxes[0])):
                continue
        return scene
    raise RuntimeError(f"could not place {objs} with radii {radius}")


def _mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), xs.max() + 1.0, ys.max() + 1.0

#################################################################################
#                       Judge: Color Segmentation + Shape CNN                   #
#################################################################################

PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], np.float32)   # (10, 3)
CLASSES = SHAPES + ("junk",)
CROP = 16                # classifier input side
MIN_AREA = 0.006         # components smaller than this fraction of the image are noise
MAX_RESIDUAL = 64.0      # RGB distance from the best "color blended with gray" explanation


def segment(images: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, 3) -> (color index (N, H, W) int8, -1 = background; alpha (N, H, W, 10) float32)."""
    index, alphas = [], []
    palette, palette_sum, palette_sq = PALETTE.T, PALETTE.sum(1), (PALETTE ** 2).sum(1)
    for x in np.split(images.astype(np.float32), range(chunk, len(images), chunk)):
        lum = x.mean(-1)
        gray = (np.abs(x - lum[..., None]).max(-1) < 12) & (lum > 80) & (lum < 180)
        count = gray.sum((1, 2), keepdims=True)                          # background level g of each image
        g = np.where(count >= 16, (lum * gray).sum((1, 2), keepdims=True) / np.maximum(count, 1), 130.0)
        g = g[..., None].astype(np.float32)
        # d = x - g, c = palette - g, expanded so that no (N, H, W, 10, 3) array is ever built.
        dc = x @ palette - g * (x.sum(-1, keepdims=True) + palette_sum) + 3 * g ** 2      # (n, H, W, 10)
        cc = palette_sq - 2 * g * palette_sum + 3 * g ** 2
        dd = (x ** 2).sum(-1, keepdims=True) - 2 * g * x.sum(-1, keepdims=True) + 3 * g ** 2
        a = np.clip(dc / cc, 0.0, 1.0)
        residual = dd - 2 * a * dc + a ** 2 * cc                                          # squared
        best = residual.argmin(-1)[..., None]
        keep = (np.take_along_axis(a, best, -1) >= 0.5) & (np.take_along_axis(residual, best, -1) < MAX_RESIDUAL ** 2)
        index.append(np.where(keep, best, -1)[..., 0].astype(np.int8))
        alphas.append(a)
    return np.concatenate(index), np.concatenate(alphas)


def components(images: np.ndarray) -> dict[str, np.ndarray]:
    """All color components of a batch: image index, color index, box (x0, y0, x1, y1) px, soft-mask crops."""
    n, h, w, _ = images.shape
    index, alpha = segment(images)
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True                                   # 8-neighbours, within one image
    labels, count, colors = np.zeros(index.shape, np.int64), 0, [np.zeros(1, np.int64)]
    for c in range(len(COLOR_NAMES)):                     # one color at a time, ids stacked into one map
        lab, num = ndimage.label(index == c, structure)
        labels += np.where(lab > 0, lab + count, 0)
        count += num
        colors.append(np.full(num, c))
    area = np.bincount(labels.ravel(), minlength=count + 1)
    area[0] = 0                                           # the background is not a component
    keep = np.flatnonzero(area >= MIN_AREA * h * w)
    compact = np.zeros(count + 1, np.int64)
    compact[keep] = np.arange(1, len(keep) + 1)
    labels = compact[labels]
    slices = ndimage.find_objects(labels)
    info = np.array([[s[0].start, s[2].start, s[1].start, s[2].stop, s[1].stop] for s in slices], np.int64)
    img, box = info.reshape(-1, 5)[:, 0], info.reshape(-1, 5)[:, 1:].astype(np.float32)
    col = np.concatenate(colors)[keep]
    # Soft mask: the component plus its antialiased rim (one dilation), valued by its color's alpha.
    grown = np.where(labels > 0, labels, ndimage.grey_dilation(labels, size=(1, 3, 3)))
    soft = (grown[img] == np.arange(1, len(keep) + 1)[:, None, None]) * alpha[img, :, :, col]
    return {"image": img, "color": col, "box": box, "crops": _crops(soft, box)}


def _crops(soft: np.ndarray, box: np.ndarray) -> torch.Tensor:
    """(K, H, W) soft masks -> (K, 1, CROP, CROP): a square around each box (1 px margin), resampled."""
    k, h, w = soft.shape
    if k == 0:
        return torch.zeros(0, 1, CROP, CROP)
    centre, side = (box[:, :2] + box[:, 2:]) / 2, (box[:, 2:] - box[:, :2]).max(1) + 2
    theta = torch.zeros(k, 2, 3)                  # output [-1, 1]^2 -> the square, in input [-1, 1] coordinates
    theta[:, 0, 0], theta[:, 1, 1] = torch.from_numpy(side / w), torch.from_numpy(side / h)
    theta[:, :, 2] = torch.from_numpy(2 * centre / np.array([w, h], np.float32) - 1)
    grid = F.affine_grid(theta, [k, 1, CROP, CROP], align_corners=False)
    return F.grid_sample(torch.from_numpy(soft).float()[:, None], grid, align_corners=False)


class ShapeCNN(nn.Module):
    """(K, 1, 16, 16) soft masks -> (K, 9) logits over SHAPES + junk. ~40k parameters."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),      # 8x8
                                 nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),     # 4x4
                                 nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, len(CLASSES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@contextmanager
def one_thread():
    """The judge's convolutions are tiny: extra threads only spin (100x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


JUDGE_SETTINGS = {"scenes": 6000, "noise_images": 1000, "epochs": 8, "batch_size": 128, "lr": 3e-3, "seed": 0}


def _training_set(scenes: int, noise_images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Components of random rendered scenes labelled through render_masks, plus noise blobs as junk."""
    rng = np.random.default_rng(seed)
    world = []
    for _ in range(scenes):
        n = int(rng.choice([1, 1, 2, 2, 3, 4]))
        objs = [(str(rng.choice(SHAPES)), str(rng.choice(COLOR_NAMES))) for _ in range(n)]
        if rng.random() < 0.25:  # overlapping objects: occluded shapes and fragments (junk) exist too
            world.append(Scene(tuple(Obj(s, c, float(rng.uniform(0.1, 0.36)), *map(float, rng.uniform(0.15, 0.85, 2)),
                                         float(rng.uniform(-30, 30))) for s, c in objs), str(rng.choice(BACKGROUNDS)),
                               float(rng.uniform())))
        else:
            radius = {1: (0.12, 0.36), 2: (0.1, 0.2), 3: (0.1, 0.17), 4: (0.1, 0.15)}[n]
            world.append(random_layout(rng, objs, radius, tilt=35.0))
    images = np.stack([render(s) for s in world]).astype(np.float32)
    # Generated images are softer and noisier than renders: blur a third, add pixel noise to all.
    images[: scenes // 3] = ndimage.gaussian_filter(images[: scenes // 3], (0, 0.6, 0.6, 0))
    images += rng.normal(0, 1, images.shape) * rng.uniform(0, 8, (len(images), 1, 1, 1))
    noise = rng.uniform(0, 256, (noise_images, 32, 32, 3))
    noise[::2] = ndimage.uniform_filter(noise[::2], size=(1, 3, 3, 1)) * 1.6 - 75     # blotchy noise too
    found = components(np.clip(np.concatenate([images, noise]), 0, 255).astype(np.uint8))
    labels = np.full(len(found["image"]), len(SHAPES))       # junk unless it is one whole-enough object
    for i, scene in enumerate(world):
        visible = render_masks(scene)
        whole = [render_masks(Scene((o,), scene.background))[0].sum() for o in scene.objects]
        for k in np.flatnonzero(found["image"] == i):
            for obj, m, area in zip(scene.objects, visible, whole):
                if obj.color == COLOR_NAMES[found["color"][k]] and m.sum() > 0.7 * area \
                        and _box_iou(_mask_box(m), found["box"][k]) > 0.7:
                    labels[k] = SHAPES.index(obj.shape)
    return found["crops"], torch.from_numpy(labels)


def _box_iou(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    return float(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))


def train_shape_cnn(settings: dict = JUDGE_SETTINGS, log: Callable[[str], None] = print) -> ShapeCNN:
    """Deterministic: seeded data, init and order, one thread. ~10 s of CPU."""
    start = time.time()
    x, y = _training_set(settings["scenes"], settings["noise_images"], settings["seed"])
    order = torch.Generator().manual_seed(settings["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings["seed"])
        model = ShapeCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=1e-4)
    batches = -(-len(x) // settings["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings["lr"], total_steps=settings["epochs"] * batches)
    with one_thread():
        for _ in range(settings["epochs"]):
            for idx in torch.randperm(len(x), generator=order).split(settings["batch_size"]):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        with torch.no_grad():
            accuracy = (model.eval()(x).argmax(1) == y).float().mean().item()
    log(f"trained the shape judge on {len(x)} components in {time.time() - start:.1f}s (train accuracy {accuracy:.3f})")
    return model


def judge_path(cache_dir: str | None = None) -> str:
    """Cache file named by a hash of the settings and of the code that produces its inputs."""
    cache_dir = cache_dir or os.environ.get("IMAGENET_T2I_CACHE") or os.path.expanduser("~/.cache/imagenet-t2i")
    code = "".join(inspect.getsource(f) for f in (segment, components, _crops, ShapeCNN, _training_set, random_layout))
    key = json.dumps([JUDGE_SETTINGS, CROP, MIN_AREA, MAX_RESIDUAL, code, inspect.getsource(data)], sort_keys=True)
    return os.path.join(cache_dir, f"judge-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors")


def load_judge(cache_dir: str | None = None, log: Callable[[str], None] = print) -> "Judge":
    """The cached shape judge; trained (and cached, atomically) on first use."""
    from safetensors.torch import load_file, save_file
    path = judge_path(cache_dir)
    model = ShapeCNN()
    if os.path.exists(path):
        model.load_state_dict(load_file(path))
    else:
        model = train_shape_cnn(log=log)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, path)
        log(f"cached the shape judge at {path}")
    return Judge(model.eval())


@dataclass(frozen=True)
class Detection:
    shape: str
    color: str
    score: float                                  # classifier probability of `shape`
    box: tuple[float, float, float, float]        # (x0, y0, x1, y1), fractions of the image side


class Judge:
    """Reads images: detect() finds objects, score() applies GenEval's rules to a prompt's metadata."""

    def __init__(self, model: ShapeCNN):
        self.model = model

    @torch.no_grad()
    def detect(self, images: np.ndarray, keep_junk: bool = False) -> list[list[Detection]]:
        """Objects per image, most confident first; keep_junk also returns components the classifier
        calls "junk" (shapeless blobs), which the shape-agnostic score counts as objects."""
        n, h, w, _ = images.shape
        found = components(images)
        with one_thread():
            probs = self.model(found["crops"]).softmax(1)
        score, cls = probs.max(1)
        out, boxes = [[] for _ in range(n)], found["box"] / [w, h, w, h]
        for i, c, k, p, b in zip(found["image"], found["color"], cls.tolist(), score.tolist(), boxes):
            if k < len(SHAPES) or keep_junk:
                out[i].append(Detection(CLASSES[k], COLOR_NAMES[c], p, tuple(map(float, b))))
        return [sorted(d, key=lambda d: -d.score) for d in out]

    def score(self, images: np.ndarray, metadatas: list[dict], ignore_shape: bool = False) -> tuple[np.ndarray, list[str]]:
        """(N,) bool: does image i satisfy metadatas[i]? Plus a reason per failure ("" when correct).
        ignore_shape: any colored blob counts as any class (colors, counts and layout only)."""
        detections = self.detect(images, keep_junk=ignore_shape)
        results = [check_metadata(d, m, ignore_shape) for d, m in zip(detections, metadatas)]
        return np.array([ok for ok, _ in results], bool), [why for _, why in results]


def relative_position(box_a, box_b, threshold: float = 0.1) -> set[str]:
    """GenEval's relations of A to B from box centres, ignoring offsets within threshold x the box sizes."""
    a, b = np.asarray(box_a, np.float64), np.asarray(box_b, np.float64)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    revised = np.maximum(np.abs(offset) - threshold * ((a[2:] - a[:2]) + (b[2:] - b[:2])), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    return {r for r, on in (("left of", dx < -0.5), ("right of", dx > 0.5), ("above", dy < -0.5), ("below", dy > 0.5)) if on}


def reverse_relation(metadata: dict) -> dict:
    """The same prompt metadata with every position relation reversed ("left of" <-> "right of", ...)."""
    include = [{**req, "position": [OPPOSITE[req["position"][0]], req["position"][1]]} if "position" in req else req
               for req in metadata["include"]]
    return {**metadata, "include": include}


def check_metadata(detections: list[Detection], metadata: dict, ignore_shape: bool = False) -> tuple[bool, str]:
    """GenEval's rules: include entries AND-ed (>= count of class [and color], position vs the objects
    matched by an earlier entry), exclude entries OR-ed (>= count fails). Unlike GenEval, the color
    filters candidates before the top `count` are taken (our colors are exact, not CLIP guesses)."""
    reasons, matched = [], []
    for req in metadata.get("include", []):
        name = f"{req.get('color', '')} {req['class']}".strip()
        found = [d for d in detections if (ignore_shape or d.shape == req["class"]) and req.get("color", d.color) == d.color
                 and not any(d in m for m in matched if m)]                # shape-agnostic: one blob, one entry
        found = found[:req["count"]]                                   # the most confident ones
        ok = len(found) >= req["count"]
        if not ok:
            reasons.append(f"expected {name}>={req['count']}, found {len(found)}")
        elif "position" in req:
            relation, target = req["position"]
            if matched[target] is None:
                ok = False
                reasons.append(f"no target for {name} to be {relation}")
            elif any(relation not in relative_position(d.box, t.box) for d in found for t in matched[target]):
                ok = False
                reasons.append(f"expected {name} {relation} target")
        matched.append(found if ok else None)
    for req in metadata.get("exclude", []):
        n = sum((ignore_shape or d.shape == req["class"]) and req.get("color", d.color) == d.color for d in detections)
        if n >= req["count"]:
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return not reasons, "; ".join(reasons)

#################################################################################
#                                  Statistics                                   #
#################################################################################

def bootstrap_accuracy(scores: dict[str, np.ndarray], num_resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> dict[str, dict]:
    """Accuracy per category and overall with percentile-bootstrap intervals.

    scores[category]: (prompts, images_per_prompt) of 0/1. Images of one prompt are correlated (same text),
    so prompts are the resampling unit. Overall = unweighted mean of the categories (GenEval); in each
    resample every category is resampled at once, so its interval is that of the mean.
    """
    rng = np.random.default_rng(seed)
    alpha = (1.0 - level) / 2
    result, resampled = {}, []
    for name, s in scores.items():
        per_prompt = np.asarray(s, dtype=np.float64).reshape(len(s), -1).mean(1)
        means = per_prompt[rng.integers(0, len(per_prompt), (num_resamples, len(per_prompt)))].mean(1)
        resampled.append(means)
        result[name] = _summary(per_prompt.mean(), means, alpha, len(per_prompt))
    point = float(np.mean([r["accuracy"] for r in result.values()]))
    result["overall"] = _summary(point, np.mean(resampled, axis=0), alpha, sum(r["prompts"] for r in result.values()))
    return result


def paired_difference(a: np.ndarray, b: np.ndarray, num_resamples: int = 2000, level: float = 0.95,
                      seed: int = 0) -> dict:
    """Mean of a, of b, and of a - b with a percentile-bootstrap interval; a and b: (prompts, images) 0/1 scores
    of the same images, so prompts are resampled together for both."""
    rng = np.random.default_rng(seed)
    a, b = (np.asarray(x, np.float64).reshape(len(x), -1).mean(1) for x in (a, b))
    diffs = (a - b)[rng.integers(0, len(a), (num_resamples, len(a)))].mean(1)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {"prompted": float(a.mean()), "reversed": float(b.mean()), "difference": float(a.mean() - b.mean()),
            "ci_low": float(lo), "ci_high": float(hi), "prompts": len(a)}


def _summary(point: float, resampled: np.ndarray, alpha: float, prompts: int) -> dict:
    lo, hi = np.quantile(resampled, [alpha, 1 - alpha])
    return {"accuracy": float(point), "ci_low": float(lo), "ci_high": float(hi), "prompts": int(prompts)}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64 (FID and its CLIP/DINOv2 variants)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # sqrtm failed on a singular product (fewer samples than dimensions can cause it, though SciPy 1.17
        # returns a finite root for those): regularise both covariances slightly.
        offset = np.eye(len(sigma1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a non-negligible imaginary part: {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


#################################################################################
#                      GenEval and DPG-Bench output layouts                     #
#################################################################################

def _atomic_dir(out_dir: str, fill: Callable[[str], None]) -> None:
    """fill() a temp folder beside out_dir, then rename it into place: never half a layout on disk."""
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(out_dir)))
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)


def write_geneval_layout(out_dir: str, metadatas: list[dict], images_per_prompt: np.ndarray) -> None:
    """GenEval's evaluator input: OUT/<5-digit index>/{metadata.jsonl, samples/0000.png..., grid.png}.

    images_per_prompt: uint8 (prompts, images, H, W, 3); metadatas[i] is line i of evaluation_metadata.jsonl.
    """
    images_per_prompt = np.asarray(images_per_prompt)
    if images_per_prompt.ndim != 5 or len(images_per_prompt) != len(metadatas):
        raise ValueError(f"need (prompts={len(metadatas)}, images, H, W, 3), got {images_per_prompt.shape}")

    def fill(tmp: str) -> None:
        for i, (meta, images) in enumerate(zip(metadatas, images_per_prompt)):
            folder = os.path.join(tmp, f"{i:05d}")
            os.makedirs(os.path.join(folder, "samples"))
            with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
                f.write(json.dumps(meta) + "\n")
            for j, image in enumerate(images):
                Image.fromarray(image).save(os.path.join(folder, "samples", f"{j:04d}.png"))
            cols = int(np.ceil(np.sqrt(len(images))))
            Image.fromarray(image_grid(images, cols)).save(os.path.join(folder, "grid.png"))

    _atomic_dir(out_dir, fill)


def check_geneval_layout(out_dir: str) -> int:
    """Enforce what GenEval's evaluator reads; returns the number of prompts, raises ValueError listing problems."""
    folders = sorted(n for n in os.listdir(out_dir) if os.path.isdir(os.path.join(out_dir, n)))
    problems = [f"folder names must be 5 digits: {n}" for n in folders if not re.fullmatch(r"\d{5}", n)]
    if not folders or folders != [f"{i:05d}" for i in range(len(folders))]:
        problems.append("need prompt folders numbered 00000, 00001, ... without gaps")
    for name in folders:
        try:
            with open(os.path.join(out_dir, name, "metadata.jsonl")) as f:
                lines = [line for line in f.read().splitlines() if line.strip()]
            meta = json.loads(lines[0]) if len(lines) == 1 else None
            include = meta.get("include") if isinstance(meta, dict) else None
            if not (isinstance(meta, dict) and isinstance(meta.get("tag"), str) and isinstance(meta.get("prompt"), str)
                    and isinstance(include, list)
                    and all(isinstance(r.get("class"), str) and isinstance(r.get("count"), int) for r in include)):
                raise ValueError(f"need one JSON line with tag, prompt, include [{{class, count}}]; got {len(lines)} lines")
        except (OSError, ValueError, AttributeError) as e:
            problems.append(f"{name}/metadata.jsonl: {e}")
        samples = os.path.join(out_dir, name, "samples")
        files = os.listdir(samples) if os.path.isdir(samples) else []
        if not files or any(not re.fullmatch(r"\d+\.png", f) for f in files):
            problems.append(f"{name}/samples: need images named like 0000.png, got {sorted(files)[:5]}")
    if problems:
        raise ValueError(f"{out_dir} is not a GenEval layout:\n  " + "\n  ".join(problems))
    return len(folders)


def write_dpg_layout(out_dir: str, prompt_ids: list[str], images_per_prompt: np.ndarray) -> None:
    """DPG-Bench input: one <id>.png per prompt, a 2x2 grid (2R x 2R) of its 4 images, all in one folder."""
    images_per_prompt = np.asarray(images_per_prompt)
    if images_per_prompt.ndim != 5 or images_per_prompt.shape[:2] != (len(prompt_ids), 4):
        raise ValueError(f"need (prompts={len(prompt_ids)}, 4, R, R, 3), got {images_per_prompt.shape}")

    def fill(tmp: str) -> None:
        for pid, images in zip(prompt_ids, images_per_prompt):
            Image.fromarray(image_grid(images, 2)).save(os.path.join(tmp, f"{pid}.png"))

    _atomic_dir(out_dir, fill)

#################################################################################
#                                   Benchmark                                   #
#################################################################################

def evaluate_shapes(generate, per_category: int = 50, images_per_prompt: int = 4, seed: int = 0,
                    out_dir: str | None = None, judge: Judge | None = None, guidance: float | None = None,
                    steps: int | None = None, batch_size: int = 64, method: str = "euler", shift: float = 1.0,
                    guidance_interval: tuple[float, float] = (0.0, 1.0), progress: bool = True) -> dict:
    """Generate the benchmark's images, judge them, and (with out_dir) write the report.

    generate: a sample.Pipeline (sampled by sample.generate with seed, guidance, steps, batch_size, method, shift
    and guidance_interval; the run's guidance and steps by default), or any callable prompts -> uint8
    (N, H, W, 3), one image per entry (e.g. an ablation's model in memory; the sampling settings are then the
    callable's business, recorded as None).
    Returns {"accuracy": {category | "overall": {accuracy, ci_low, ci_high, prompts}}, "attribute_accuracy": ...,
    "single_object_by_shape": {shape: accuracy}, "prompts": [...], "settings": ..., "seconds": ...}.
    """
    prompts = make_prompts(per_category, seed)
    metadatas = [p.metadata for p in prompts for _ in range(images_per_prompt)]
    start = time.time()
    if hasattr(generate, "image_size"):
        import sample  # the model side is only needed here: the judge and its tests work without it
        guidance = generate.config.guidance if guidance is None else guidance
        steps = generate.config.sample_steps if steps is None else steps
        images = sample.generate(generate, [m["prompt"] for m in metadatas], seed=seed, guidance=guidance,
                                 steps=steps, method=method, shift=shift, batch_size=batch_size,
                                 guidance_interval=guidance_interval, progress=progress)
    else:
        images = generate([m["prompt"] for m in metadatas])
        guidance = steps = method = shift = guidance_interval = None      # the callable's own, unknown here
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(metadatas):
        raise ValueError(f"generate must return uint8 ({len(metadatas)}, H, W, 3), got {images.dtype} {images.shape}")
    generate_seconds, start = time.time() - start, time.time()
    judge = judge or load_judge()
    correct, reasons = judge.score(images, metadatas)
    k, per_prompt = images_per_prompt, correct.reshape(len(prompts), images_per_prompt)
    tags = np.array([p.metadata["tag"] for p in prompts])
    # Shape-agnostic diagnostic: a young or small model can get colors, counts and layouts right before its shapes
    # are recognisable; this score shows that progress (layout through color_position: colors tell A from B).
    loose = judge.score(images, metadatas, ignore_shape=True)[0].reshape(len(prompts), k)
    # Does the layout follow the relation words, or would the opposite relation pass as often? A model that
    # ignores "left of" / "above" places two objects at random and scores the same against both.
    layout = tags == "color_position"
    where = np.repeat(layout, k)                                                    # per image
    opposite = judge.score(images[where], [reverse_relation(m) for m, w in zip(metadatas, where) if w],
                           ignore_shape=True)[0].reshape(-1, k)
    results = {
        "accuracy": bootstrap_accuracy({t: per_prompt[tags == t] for t in CATEGORIES}, seed=seed),
        "attribute_accuracy": bootstrap_accuracy({t: loose[tags == t] for t in ATTRIBUTE_CATEGORIES}, seed=seed),
        "layout_vs_reversed": paired_difference(loose[layout], opposite, seed=seed),
        "settings": {"per_category": per_category, "images_per_prompt": images_per_prompt, "seed": seed,
                     "guidance": guidance, "steps": steps, "sampler": method, "shift": shift,
                     "guidance_interval": guidance_interval and list(guidance_interval),
                     "image_size": int(images.shape[1]),
                     "checkpoint": str(getattr(generate, "checkpoint", ""))},
        "seconds": {"generate": round(generate_seconds, 2), "judge": round(time.time() - start, 2)},
        "prompts": [{**p.metadata, "correct": per_prompt[i].tolist(), "correct_any_shape": loose[i].tolist(),
                     "reasons": reasons[i * k:(i + 1) * k]} for i, p in enumerate(prompts)],
    }
    # Which shapes a model draws: single_object's accuracy split by the prompted class (a diagnostic, no interval).
    shapes = np.array([p.metadata["include"][0]["class"] for p in prompts])
    single = tags == "single_object"
    results["single_object_by_shape"] = {s: float(per_prompt[single & (shapes == s)].mean())
                                         for s in SHAPES if (single & (shapes == s)).any()}
    # And color_position by the prompted relation: a model that places the first-named object left or top passes
    # "left of" and "above", fails "right of" and "below", and averages out against the reversed relation.
    relation = np.array([p.metadata["include"][-1].get("position", [""])[0] for p in prompts])   # "" without one
    results["color_position_by_relation"] = {r: float(loose[layout & (relation == r)].mean())
                                             for r in RELATIONS if (layout & (relation == r)).any()}
    if out_dir is not None:
        write_report(out_dir, results, images.reshape(len(prompts), images_per_prompt, *images.shape[1:]))
    return results


def markdown_table(accuracy: dict) -> str:
    rows = [f"| {name} | {r['accuracy']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['prompts']} |"
            for name, r in accuracy.items()]
    return "| category | accuracy | 95% CI | prompts |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"


def report_tables(results: dict) -> str:
    by_shape = ", ".join(f"{s} {a:.2f}" for s, a in results["single_object_by_shape"].items())
    r = results["layout_vs_reversed"]
    by_relation = ", ".join(f"{rel} {a:.2f}" for rel, a in results["color_position_by_relation"].items())
    return ("GenEval rules (shape, color, count, position):\n\n" + markdown_table(results["accuracy"]) +
            f"\nsingle_object by shape: {by_shape}\n" +
            "\nShape-agnostic (any colored object counts as any shape):\n\n" +
            markdown_table(results["attribute_accuracy"]) +
            f"\ncolor_position against the reversed relation (the same images): prompted {r['prompted']:.3f}, "
            f"reversed {r['reversed']:.3f}, difference {r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
            " (about 0 for a model that ignores the relation words)\n" +
            f"color_position by relation: {by_relation}\n")


def marked_grid(images: np.ndarray, correct: np.ndarray, cols: int) -> np.ndarray:
    """Tiles upscaled to >= 64 px (nearest) inside a 2 px green (right) or red (wrong) frame."""
    scale = max(1, 64 // images.shape[1])
    tiles = images.repeat(scale, 1).repeat(scale, 2)
    framed = np.where(correct[:, None, None, None], np.uint8([0, 190, 0]), np.uint8([220, 0, 0]))
    framed = np.broadcast_to(framed, (len(tiles), tiles.shape[1] + 4, tiles.shape[2] + 4, 3)).copy()
    framed[:, 2:-2, 2:-2] = tiles
    return image_grid(framed, cols)


def write_report(out_dir: str, results: dict, images: np.ndarray) -> None:
    """results.json, results.md, grid_<category>.png (4 prompts a row) and geneval/ (GenEval's layout)."""
    os.makedirs(out_dir, exist_ok=True)
    tags = np.array([p["tag"] for p in results["prompts"]])
    geneval = np.isin(tags, CATEGORIES)                         # GenEval's six categories, as its evaluator expects
    # Frames: GenEval's rules for its categories, the shape-agnostic verdict for color_position.
    correct = np.array([p["correct" if g else "correct_any_shape"] for p, g in zip(results["prompts"], geneval)], bool)
    for tag in TAGS:
        tiles = images[tags == tag].reshape(-1, *images.shape[2:])
        grid = marked_grid(tiles, correct[tags == tag].ravel(), cols=4 * images.shape[1])     # 4 prompts a row
        save_png(grid, os.path.join(out_dir, f"grid_{tag}.png"))
    metadatas = [{k: v for k, v in p.items() if k not in ("correct", "correct_any_shape", "reasons")}
                 for p in results["prompts"]]
    write_geneval_layout(os.path.join(out_dir, "geneval"), [m for m, g in zip(metadatas, geneval) if g], images[geneval])
    for name, text in (("results.json", json.dumps(results, indent=1)),
                       ("results.md", report_tables(results))):
        with open(os.path.join(out_dir, name + ".tmp"), "w") as f:
            f.write(text)
        os.replace(os.path.join(out_dir, name + ".tmp"), os.path.join(out_dir, name))


def validate_judge(judge: Judge, per_category: int = 50, seed: int = 0) -> dict:
    """Accuracy per category on ground-truth renders, uniform noise and blank gray images, plus the
    renders' shape and color confusion (true object -> best-overlapping detection; last column: missed).
    "overall" is the benchmark's: the mean of GenEval's 6 categories, color_position reported beside it."""
    prompts = make_prompts(per_category, seed)
    metadatas, tags = [p.metadata for p in prompts], np.array([p.metadata["tag"] for p in prompts])
    renders = np.stack([render(p.scene) for p in prompts])
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, renders.shape, dtype=np.uint8)
    blank = np.broadcast_to(rng.integers(90, 171, (len(renders), 1, 1, 1)), renders.shape).astype(np.uint8)
    out = {}
    for name, images in (("renders", renders), ("noise", noise), ("blank", blank)):
        ok, _ = judge.score(images, metadatas)
        out[name] = {t: float(ok[tags == t].mean()) for t in TAGS}
        # One meaning of "overall" across the module: bootstrap_accuracy's over CATEGORIES, not all of TAGS.
        out[name]["overall"] = float(np.mean([out[name][t] for t in CATEGORIES]))
    shapes, colors = np.zeros((len(SHAPES), len(SHAPES) + 1), int), np.zeros((len(COLORS), len(COLORS) + 1), int)
    side = renders.shape[1]
    for p, found in zip(prompts, judge.detect(renders)):
        for obj, mask in zip(p.scene.objects, render_masks(p.scene, side)):
            ious = [_box_iou(np.array(_mask_box(mask)) / side, d.box) for d in found]
            d = found[int(np.argmax(ious))] if ious and max(ious) > 0.5 else None
            shapes[SHAPES.index(obj.shape), SHAPES.index(d.shape) if d else -1] += 1
            colors[COLOR_NAMES.index(obj.color), COLOR_NAMES.index(d.color) if d else -1] += 1
    out["shape_confusion"], out["color_confusion"] = shapes.tolist(), colors.tolist()
    return out


def format_validation(v: dict) -> str:
    # overall sits right after the categories it averages, our own tags (color_position) after it
    columns = (*CATEGORIES, "overall", *(t for t in TAGS if t not in CATEGORIES))
    lines = ["| images | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{v[name][t]:.3f}" for t in columns) + " |"
              for name in ("renders", "noise", "blank")]
    lines += ["", "overall: mean of GenEval's 6 categories, as in the benchmark's results (color_position apart)"]
    for title, names in (("shape_confusion", SHAPES), ("color_confusion", COLOR_NAMES)):
        lines += ["", f"{title} (rows: truth, columns: judged)"]
        lines += [" " * 9 + "".join(f"{n[:8]:>9}" for n in (*names, "missed"))]
        lines += [f"{n[:8]:>9}" + "".join(f"{c:>9}" for c in row) for n, row in zip(names, v[title])]
    return "\n".join(lines)

#################################################################################
#                                      CLI                                      #
#################################################################################

def main(argv: list[str] | None = None) -> None:
    # The CLI checks are sample.py's, so both command lines reject the same values with the same words.
    from sample import (guidance_interval, non_negative_float, non_negative_int, positive_float, positive_int,
                        unit_float)
    parser = argparse.ArgumentParser(description="Evaluation benchmarks for text-to-image runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("shapes", help="GenEval-style compositional benchmark on the synthetic domain",
                            description="Generate images for the benchmark prompts, judge them, write "
                                        "results.json/.md, grid_<category>.png and geneval/ under --out.")
    p.add_argument("--ckpt", help="run directory (runs/<name>) or one of its checkpoints/step_* folders")
    p.add_argument("--out", help="output folder (default: RUN/eval/shapes)")
    p.add_argument("--per-category", type=positive_int, default=50, help="prompts per category (default 50)")
    p.add_argument("--images-per-prompt", type=positive_int, default=4, help="(default 4, as GenEval)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seeds the prompt set, the sampling noise and the bootstrap")
    p.add_argument("--guidance", type=non_negative_float, help="classifier-free guidance scale (default: the run's)")
    p.add_argument("--steps", type=positive_int, help="sampling steps (default: the run's)")
    p.add_argument("--sampler", choices=("euler", "heun"), default="euler")
    p.add_argument("--shift", type=positive_float, default=1.0, help="time shift a in t' = a t / (1 + (a-1) t)")
    p.add_argument("--guidance-interval", type=unit_float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
                   help="guide only where LO <= t <= HI (default: 0 1, every step)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="sampling batch size (default 64)")
    p.add_argument("--device", help="cuda, cpu, mps (default: cuda if available)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--judge-cache", help="folder of the cached judge (default: $IMAGENET_T2I_CACHE, "
                                         "else ~/.cache/imagenet-t2i)")
    p.add_argument("--validate", action="store_true",
                   help="no model needed: print the judge's accuracy on ground-truth renders, noise and blank "
                        "images, and its shape/color confusion")
    args = parser.parse_args(argv)
    interval = guidance_interval(p, args.guidance_interval)
    if not args.validate and not args.ckpt:
        p.error("--ckpt is required (or --validate)")
    if args.ckpt and not os.path.isdir(args.ckpt):
        p.error(f"run directory not found: {args.ckpt}")
    judge = load_judge(args.judge_cache)
    if args.validate:
        print(format_validation(validate_judge(judge, args.per_category, args.seed)))
        return
    import sample
    try:
        pipe = sample.load_pipeline(args.ckpt, device=args.device, ema=not args.no_ema)
    except (FileNotFoundError, ValueError) as e:                  # no checkpoint there, or another model version
        p.error(str(e))
    run_dir = os.path.dirname(os.path.dirname(str(pipe.checkpoint)))     # runs/<name>/checkpoints/step_* -> runs/<name>
    out = args.out or os.path.join(run_dir, "eval", "shapes")
    results = evaluate_shapes(pipe, args.per_category, args.images_per_prompt, args.seed, out, judge,
                              args.guidance, args.steps, args.batch_size, args.sampler, args.shift, interval)
    print(report_tables(results))
    print(f"generation {results['seconds']['generate']:.1f}s, judge {results['seconds']['judge']:.1f}s; "
          f"wrote results.json, results.md, grid_<category>.png and geneval/ to {out}")


if __name__ == "__main__":
    main()
