"""
Generate images from a trained run: prompts in, PNGs and a grid out.

    python sample.py --ckpt runs/default "a red star to the left of a blue circle" "a small green heart"
    python sample.py --ckpt runs/default --prompts prompts.txt --images-per-prompt 4 --guidance 3 --steps 50

The run directory holds config.json (how to rebuild the model), vocab.json (learned text encoder) and
checkpoints/step_*/; the latest checkpoint's EMA weights are used unless --no-ema. Sampling integrates the
flow-matching ODE from t = 1 (noise) to t = 0 with classifier-free guidance against the empty prompt
(diffusion.sample; --guidance-interval LO HI guides only where LO <= t <= HI). Image i of a call starts from
noise i of one seeded stream, so results do not depend on the batch size.
"""
import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from data import image_grid, save_png, to_uint8
from diffusion import sample
from model import WordTokenizer
from train import Config, TextConditioner, build_model, checkpoints, load_weights


@dataclass
class Pipeline:
    """A trained model ready to sample: the network, its text conditioner and the run's config."""
    model: torch.nn.Module
    condition: TextConditioner
    config: Config
    device: torch.device
    checkpoint: Path

    @property
    def image_size(self) -> int:
        return self.config.image_size


def load_pipeline(run_dir: str, device: str | None = None, ema: bool = True) -> Pipeline:
    """Rebuild the model of runs/<name> (or of one checkpoints/step_* folder) and load its weights."""
    path = Path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"run directory not found: {path}")
    if path.parent.name == "checkpoints":                              # a specific checkpoint was given
        ckpt, path = path, path.parent.parent
    else:
        found = checkpoints(path)
        if not found:
            raise FileNotFoundError(f"no checkpoint in {path / 'checkpoints'} (train first: python train.py)")
        ckpt = found[-1]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'} is missing: is {path} a run directory of train.py?")
    saved = json.loads((path / "config.json").read_text())
    cfg = Config(**{k: v for k, v in saved.items() if k in Config.__dataclass_fields__})
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = WordTokenizer.load(path / "vocab.json") if cfg.text_encoder == "learned" else None
    condition = TextConditioner(cfg, tokenizer, device)
    model = build_model(cfg, len(tokenizer) if tokenizer else None, condition.frozen_dim)
    load_weights(model, ckpt / ("ema.safetensors" if ema else "model.safetensors"))
    return Pipeline(model.to(device).eval(), condition, cfg, device, ckpt)


@torch.no_grad()
def generate(pipe: Pipeline, prompts: list[str], seed: int = 0, guidance: float | None = None,
             steps: int | None = None, method: str = "euler", shift: float = 1.0, batch_size: int = 64,
             guidance_interval: tuple[float, float] = (0.0, 1.0), progress: bool = True) -> np.ndarray:
    """One image per prompt entry -> uint8 (N, H, W, 3). Defaults for guidance/steps come from the run's config."""
    cfg, s = pipe.config, pipe.image_size
    guidance = cfg.guidance if guidance is None else guidance
    steps = cfg.sample_steps if steps is None else steps
    noise = torch.randn(len(prompts), 3, s, s, generator=torch.Generator().manual_seed(seed))
    model = pipe.model
    null_text, null_mask = pipe.condition([""])
    null_text = model.encode_text(null_text, null_mask)
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="sampling", disable=not progress, leave=False):
        text, mask = pipe.condition(prompts[i:i + batch_size])
        # Captions are encoded once per batch; the ODE then calls the DiT alone, steps (x2 for guidance) times.
        x = sample(model.dit, noise[i:i + batch_size].to(pipe.device), model.encode_text(text, mask), mask,
                   null_text, null_mask, steps=steps, method=method, guidance=guidance, shift=shift,
                   guidance_interval=guidance_interval)
        out.append(to_uint8(x.clamp(-1, 1).cpu()))
    return np.concatenate(out) if out else np.zeros((0, s, s, 3), np.uint8)


def _number(kind: type, ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: a finite kind(text) for which ok(value) holds, else argparse's error naming the flag and
    `expected` (0 images or steps would otherwise end in a traceback far from the flag)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")     # seeds: numpy rejects negative ones
non_negative_float = _number(float, lambda v: v >= 0, "a non-negative number")  # guidance: 0 unconditional, 1 none
positive_float = _number(float, lambda v: v > 0, "a positive number")
unit_float = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def guidance_interval(parser: argparse.ArgumentParser, values: list[float]) -> tuple[float, float]:
    """--guidance-interval LO HI (each checked by unit_float) as a tuple; LO > HI is a usage error."""
    lo, hi = values
    if lo > hi:
        parser.error(f"--guidance-interval: LO must not exceed HI, got {lo} {hi}")
    return lo, hi


def read_prompts(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            parser.error(f"--prompts: file not found: {path}")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            parser.error(f"--prompts: {path} holds no prompt (one per line expected)")
    if not prompts:
        parser.error("give prompts as arguments or with --prompts FILE")
    return prompts


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="*", help="text prompts")
    parser.add_argument("--ckpt", required=True, help="run directory (runs/<name>) or one of its checkpoints/step_*")
    parser.add_argument("--prompts", help="text file with one prompt per line")
    parser.add_argument("--out", help="output folder (default: <run>/samples/<prompt set>)")
    parser.add_argument("--images-per-prompt", type=positive_int, default=4)
    parser.add_argument("--guidance", type=non_negative_float, help="guidance scale (default: the run's)")
    parser.add_argument("--steps", type=positive_int, help="ODE steps (default: the run's)")
    parser.add_argument("--sampler", choices=("euler", "heun"), default="euler")
    parser.add_argument("--guidance-interval", type=unit_float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
                        help="guide only where LO <= t <= HI (default: 0 1, every step)")
    parser.add_argument("--shift", type=positive_float, default=1.0, help="time shift a in t' = a t / (1 + (a-1) t)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--scale", type=positive_int, default=4, help="upscale factor of the saved grid")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    args = parser.parse_args(argv)
    interval = guidance_interval(parser, args.guidance_interval)
    prompts = read_prompts(args, parser)
    try:
        pipe = load_pipeline(args.ckpt, args.device, ema=not args.no_ema)
    except (FileNotFoundError, ValueError) as e:                  # no run there, or weights of another version
        parser.error(str(e))

    n = args.images_per_prompt
    images = generate(pipe, [p for p in prompts for _ in range(n)], seed=args.seed, guidance=args.guidance,
                      steps=args.steps, method=args.sampler, shift=args.shift, batch_size=args.batch_size,
                      guidance_interval=interval)
    run_dir = pipe.checkpoint.parent.parent
    out = Path(args.out) if args.out else run_dir / "samples" / f"{pipe.checkpoint.name}_seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
        slug = re.sub(r"[^a-z0-9]+", "_", prompts[k // n].lower()).strip("_")[:60]
        save_png(image, out / f"{k // n:04d}_{slug}_{k % n}.png")
    save_png(image_grid(images, cols=n, scale=args.scale), out / "grid.png")
    (out / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    print(f"{len(images)} images from {pipe.checkpoint} -> {out} (grid: {out / 'grid.png'})")
    return out


if __name__ == "__main__":
    main()
