"""
Which caption words does a trained model listen to? Its clean-image error with the true caption, against the
caption of the same scene with one attribute changed.

    python benchmarks/caption_probe.py --ckpt runs/default
    python benchmarks/caption_probe.py --ckpt runs/default --times 0.1 0.3 0.5 0.7 --grid denoising.png
    python benchmarks/caption_probe.py --ckpt runs/default --times 0.9 1    # where only the caption places objects

For N never-trained-on single-object synthetic scenes, with fixed noise eps and at a few fixed times t:

    E(c) = mean || x0_theta(x_t, t, c) - x0 ||^2,        x_t = (1 - t) x0 + t eps,   x0_theta = x_t - t v_theta

for c = the scene's caption, the caption of the same scene with another shape, with another color (their
words drawn from one seed), and the empty prompt. A word the model uses costs error when it is wrong, so
the table reports E(c') / E(c) - 1 per time; its last column keeps the caption and turns the image by 180°.
A second table asks the same of the layout, on N mixed samples of the training distribution (the run's CutMix
setting, "all" for a run without mixing; a new seed): their captions with the position words swapped (left <->
right, top <-> bottom, above <-> below), and the images turned. Where the layout shows through the noise the
caption is not needed; near t = 1 only the caption can place the two objects (`--times 0.9 1`), so a model that
places them as told loses there when the image is turned (more than with single, centred objects), and one that
reads the position words, when they are swapped. (A model can place objects without reading those words: by the
order in which the caption names them.) On the cpu preset (CutMix 1/2) swapped words raise the error at t = 1 by
~60% for a default run that learned the layout and by ~9% for one that did not, and the jump shows between two
checkpoints of a run (`--ckpt runs/NAME/checkpoints/step_N`). Necessary for a layout in the samples, not
sufficient: one run whose error rose 81% placed the objects as prompted only at guidance 3, not at 5
(docs/experiments.md, "When the layout is learned"). This reads a model's use of words long before a benchmark of its
samples can: an earlier default's (CutMix "all") error at t = 0.7 rises about 45% under a wrong shape word, 200%
under a wrong color word and under 2% with swapped position words (docs/experiments.md). Runs trained on class
names ("a photo of a star") are probed with class-name captions, so their color column is zero by construction.
--grid also draws what the network makes of the noisy images: can it keep a shape that is plainly visible at low
t?
"""
import argparse
import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from augment import MixedDataset  # noqa: E402
from data import (COLORS, SHAPES, Obj, Scene, SyntheticImageNet, class_caption, image_grid,  # noqa: E402
                  long_caption, random_scene, render, save_png, to_tensor, to_uint8)
from diffusion import add_noise, flow_matching_loss  # noqa: E402
from sample import load_pipeline  # noqa: E402

CAPTIONS = ("true", "other shape", "other color", "empty", "image turned")
LAYOUT_CAPTIONS = ("true", "swapped layout", "empty", "image turned")   # "image turned": true caption, x0 turned 180°
OPPOSITE_WORD = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "above": "below", "below": "above"}


def swap_layout(caption: str) -> str:
    """The caption of the mirrored layout: left <-> right, top <-> bottom, above <-> below."""
    return re.sub(r"\b(left|right|top|bottom|above|below)\b", lambda m: OPPOSITE_WORD[m.group(1)], caption)


def caption_variants(scene: Scene, rng: np.random.Generator, kind: str = "long") -> dict[str, str]:
    """The scene's caption and the captions of the scene with another shape / another color (same phrasing)."""
    obj, colors = scene.objects[0], list(COLORS)
    other_shape = SHAPES[(SHAPES.index(obj.shape) + 1 + rng.integers(len(SHAPES) - 1)) % len(SHAPES)]  # any other
    other_color = colors[(colors.index(obj.color) + 1 + rng.integers(len(colors) - 1)) % len(colors)]
    write, seed = (long_caption if kind == "long" else class_caption), int(rng.integers(2**31))

    def caption(o: Obj) -> str:                                          # every variant draws the same words
        return write(dataclasses.replace(scene, objects=(o,)), np.random.default_rng(seed))
    return {"true": caption(obj), "other shape": caption(dataclasses.replace(obj, shape=other_shape)),
            "other color": caption(dataclasses.replace(obj, color=other_color)), "empty": "",
            "image turned": caption(obj)}


def probe_set(pipe, num_images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, str]]]:
    """New scenes: images x0 (N,3,H,W), noise of the same shape, and each scene's caption variants."""
    rng = np.random.default_rng([seed, 104729])                         # not a training seed's stream
    scenes = [random_scene(rng, pipe.config.objects) for _ in range(num_images)]     # the run's own kind of scenes
    x0 = torch.stack([to_tensor(render(s, pipe.image_size)) for s in scenes])
    variants = [caption_variants(s, rng, pipe.config.captions) for s in scenes]
    return x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)), variants


def layout_probe_set(pipe, num_images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, str]]]:
    """Mixed samples of new scenes: images x0 (N,3,H,W), noise, and their captions with the layout kept or swapped."""
    base = SyntheticImageNet(max(num_images, 64), pipe.image_size, seed=seed + 104729, objects=pipe.config.objects)
    cutmix = "all" if pipe.config.cutmix == "none" else pipe.config.cutmix          # the run's own kind of mixes
    items = [MixedDataset(base, captions=pipe.config.captions, cutmix=cutmix, seed=seed)[i] for i in range(num_images)]
    x0 = torch.stack([item["mixed_image"] for item in items]).float()
    variants = [{"true": c, "swapped layout": swap_layout(c), "empty": "", "image turned": c}
                for c in (i["mixed_caption"] for i in items)]
    return x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)), variants


@torch.no_grad()
def probe(pipe, num_images: int = 256, times: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9), seed: int = 0,
          batch_size: int = 128, layout: bool = False) -> dict[float, dict[str, float]]:
    """{t: {caption kind: mean clean-image error}} over `num_images` new scenes, fixed noise per image: single
    objects with CAPTIONS, or with layout=True mixed samples with LAYOUT_CAPTIONS."""
    x0, noise, variants = (layout_probe_set if layout else probe_set)(pipe, num_images, seed)
    kinds = LAYOUT_CAPTIONS if layout else CAPTIONS
    errors = {t: dict.fromkeys(kinds, 0.0) for t in times}
    for i in range(0, num_images, batch_size):
        x, eps = x0[i:i + batch_size].to(pipe.device), noise[i:i + batch_size].to(pipe.device)
        for kind in kinds:
            text, mask = pipe.condition([v[kind] for v in variants[i:i + batch_size]])
            image = x.flip(-2, -1) if kind == "image turned" else x
            for t in times:
                tt = torch.full((len(x),), t, device=pipe.device)
                # weighting "x": t^2 |v_theta - v|^2 = |x0_theta - x0|^2, the clean-image error
                error = flow_matching_loss(pipe.model, image, tt, eps, text, mask, weighting="x")
                errors[t][kind] += error.item() * len(x) / num_images
    return errors


@torch.no_grad()
def denoising_grid(pipe, times: tuple[float, ...], seed: int = 0, n: int = 8) -> np.ndarray:
    """uint8 image: the first n probe scenes, then for each t a row of x_t and a row of x0_theta (true caption)."""
    x0, noise, variants = probe_set(pipe, n, seed)
    x0, noise = x0.to(pipe.device), noise.to(pipe.device)
    text, mask = pipe.condition([v["true"] for v in variants])
    rows = [x0]
    for t in times:
        tt = torch.full((n,), t, device=pipe.device)
        x_t = add_noise(x0, noise, tt)
        rows += [x_t, x_t - t * pipe.model(x_t, tt, text, mask).float()]
    return image_grid(to_uint8(torch.cat(rows)), cols=n, scale=3)


def main(argv: list[str] | None = None) -> tuple[dict[float, dict[str, float]], dict[float, dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="run directory (runs/<name>) or one of its checkpoints/step_*")
    parser.add_argument("--num-images", type=int, default=256, help="new scenes per table (default 256)")
    parser.add_argument("--times", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9], help="noise levels t")
    parser.add_argument("--seed", type=int, default=0, help="seeds the scenes, the captions' words and the noise")
    parser.add_argument("--device", default=None, help="cuda, cpu, mps (default: cuda if available)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--grid", default="", help="also write a PNG: 8 scenes, then x_t and x0_theta per --times")
    args = parser.parse_args(argv)
    if args.num_images < 1 or not all(0 < t <= 1 for t in args.times):
        parser.error("--num-images must be >= 1 and every --times value in (0, 1]")
    try:
        pipe = load_pipeline(args.ckpt, device=args.device, ema=not args.no_ema)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    if pipe.config.data != "synthetic":
        parser.error(f"{args.ckpt} was trained on {pipe.config.data}; the probe draws synthetic scenes")

    errors = probe(pipe, args.num_images, tuple(args.times), args.seed)
    layout = probe(pipe, args.num_images, tuple(args.times), args.seed, layout=True)
    print(f"{pipe.checkpoint}: clean-image error with the true caption, and its rise with a changed one\n")
    for title, kinds, table in (("single objects", CAPTIONS, errors), ("mixed samples", LAYOUT_CAPTIONS, layout)):
        print(f"| t | {title}: true caption | " + " | ".join(kinds[1:]) + " |\n|---|---|" + "---|" * (len(kinds) - 1))
        for t, e in table.items():
            rise = " | ".join(f"{100 * (e[k] / e['true'] - 1):+.1f}%" for k in kinds[1:])
            print(f"| {t:g} | {e['true']:.4f} | {rise} |")
        print()
    if args.grid:
        save_png(denoising_grid(pipe, tuple(args.times), args.seed), args.grid)
        print(f"wrote {args.grid}")
    return errors, layout


if __name__ == "__main__":
    main()
