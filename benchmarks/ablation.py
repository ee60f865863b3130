"""
The paper's ablation in miniature: AIO vs TA vs TA+IA vs TA+IA+crop, at equal compute.

    python benchmarks/ablation.py --steps 2600 --evals 2 --images-per-prompt 1   # the README's run: ~30 min, 2 cores
    python benchmarks/ablation.py --preset gpu --steps 4000 --seeds 0 1 --per-category 50 --images-per-prompt 4

Every recipe trains from the same seed with the same model, steps and batch on a FINITE synthetic dataset
(--num_images; ImageNet's 1.28M images are finite too, which is why TA-only training overfits), logs the
flow-matching loss on never-seen scenes and on seen ones (train.HeldOutLoss), and is scored with the shapes
benchmark (eval.py) at --evals evenly spaced checkpoints. Finished runs and scores are reused, so an
interrupted ablation continues where it stopped.

Writes to --out (default runs/ablation): results.json, results.md (final scores per category with 95%
intervals, GenEval rules and shape-agnostic), score_vs_steps.png, attribute_score_vs_steps.png and
heldout_loss.png.
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import eval as shapes_eval  # noqa: E402  (eval.py: the project's benchmark module)
import sample  # noqa: E402
import train  # noqa: E402

RECIPES = {
    "AIO": ["--captions", "class", "--cutmix", "none"],                  # class-name captions, plain images
    "TA": ["--captions", "long", "--cutmix", "none"],                    # + long detailed captions
    "TA+IA": ["--captions", "long"],                                     # + the preset's CutMix at high noise
    "TA+IA+crop": ["--captions", "long", "--crop"],                      # + random crops
}
COLORS = {"AIO": (120, 120, 120), "TA": (31, 119, 180), "TA+IA": (214, 39, 40), "TA+IA+crop": (44, 160, 44)}


#################################################################################
#                                Train and score                                #
#################################################################################

def train_recipe(recipe: str, seed: int, args: argparse.Namespace, extra: list[str]) -> Path:
    name = f"{recipe}-seed{seed}"
    run_dir = Path(args.out) / name
    every = args.steps // args.evals
    final = run_dir / "checkpoints" / f"step_{args.steps:07d}"
    if final.is_dir():
        print(f"[{name}] trained already: {final}")
        return run_dir
    flags = ["--preset", args.preset, "--name", name, "--out_dir", args.out, "--seed", str(seed),
             "--steps", str(args.steps), "--num_images", str(args.num_images), "--ckpt_every", str(every),
             "--keep_ckpts", str(args.evals), "--eval_every", str(every // 2), "--sample_every", str(args.steps),
             *extra, *RECIPES[recipe]]      # recipe last: extra flags may set the IA, not undo "--cutmix none"
    resume = ["--resume"] if train.checkpoints(run_dir) else []
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)                       # started, never checkpointed: nothing to keep, start over
    print(f"[{name}] python train.py {' '.join(flags + resume)}")
    train.main(flags + resume)
    return run_dir


def score_checkpoints(run_dir: Path, args: argparse.Namespace, judge) -> list[dict]:
    """Shapes-benchmark results of every kept checkpoint of a run (cached next to each checkpoint)."""
    scores = []
    for ckpt in train.checkpoints(run_dir):
        cached = ckpt / "shapes.json"
        if cached.is_file():
            result = json.loads(cached.read_text())
        else:
            pipe = sample.load_pipeline(str(ckpt))
            out_dir = str(run_dir / "eval" / ckpt.name) if ckpt == train.checkpoints(run_dir)[-1] else None
            full = shapes_eval.evaluate_shapes(pipe, per_category=args.per_category, seed=0, out_dir=out_dir,
                                               images_per_prompt=args.images_per_prompt, judge=judge)
            result = {"step": int(ckpt.name.split("_")[1]), "accuracy": full["accuracy"],
                      "attribute_accuracy": full["attribute_accuracy"],
                      "layout_vs_reversed": full["layout_vs_reversed"], "seconds": full["seconds"]}
            tmp = cached.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            os.replace(tmp, cached)
        scores.append(result)
    return scores


def heldout_curve(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "heldout_loss": r["heldout_loss"], "train_loss": r["train_loss"]}
            for r in records if "heldout_loss" in r]


#################################################################################
#                                Table and plots                                #
#################################################################################

def score_table(results: dict, key: str, categories: tuple[str, ...]) -> list[str]:
    names = list(categories) + ["overall"]
    lines = ["| recipe | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for run, r in results.items():
        acc = r["scores"][-1][key]
        cells = [f"{acc[c]['accuracy']:.2f} [{acc[c]['ci_low']:.2f}, {acc[c]['ci_high']:.2f}]" for c in names]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict, args: argparse.Namespace, hours: float) -> str:
    lines = ["GenEval rules (final checkpoint, 95% bootstrap intervals):", ""]
    lines += score_table(results, "accuracy", shapes_eval.CATEGORIES)
    lines += ["", "Shape-agnostic (any colored object counts as any shape):", ""]
    lines += score_table(results, "attribute_accuracy", shapes_eval.ATTRIBUTE_CATEGORIES)
    lines += ["", "| recipe | color_position | against the reversed relation | difference |", "|---|---|---|---|"]
    for run, r in results.items():
        x = r["scores"][-1].get("layout_vs_reversed")               # absent from scores cached before the check
        lines.append(f"| {run} | {x['prompted']:.2f} | {x['reversed']:.2f} | {x['difference']:+.2f} "
                     f"[{x['ci_low']:+.2f}, {x['ci_high']:+.2f}] |" if x else f"| {run} | | | |")
    lines += ["", "| recipe | held-out loss (final) | seen-scene loss (final) | min held-out loss (step) |",
              "|---|---|---|---|"]
    for run, r in results.items():
        curve = r["heldout"]
        best = min(curve, key=lambda c: c["heldout_loss"])
        lines.append(f"| {run} | {curve[-1]['heldout_loss']:.4f} | {curve[-1]['train_loss']:.4f} | "
                     f"{best['heldout_loss']:.4f} ({best['step']}) |")
    lines += ["", f"Setting: preset {args.preset}, {args.steps} steps, {args.num_images} training images, "
              f"{args.per_category} prompts per category x {args.images_per_prompt} images, seeds {args.seeds}; "
              f"this invocation took {hours:.2f} h (finished runs and cached scores are reused, not redone)."]
    return "\n".join(lines) + "\n"


def line_plot(series: dict[str, list[tuple[float, float]]], title: str, ylabel: str, path: Path,
              size: tuple[int, int] = (640, 400)) -> None:
    """A small line chart with PIL (no plotting dependency): one polyline and legend entry per series."""
    W, H = size
    left, right, top, bottom = 70, 150, 40, 50
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    pad = 0.05 * (max(ys) - min(ys) or 1)
    y0, y1 = min(ys) - pad, max(ys) + pad
    to_px = lambda x, y: (left + (x - x0) / (x1 - x0) * (W - left - right),   # noqa: E731
                          H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom))
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, W - right, H - bottom], outline="black")
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        _, py = to_px(x0, y)
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((5, py - 6), f"{y:.3f}", fill="black")
    for x in sorted(set(xs)):
        px, _ = to_px(x, y0)
        draw.line([px, H - bottom, px, H - bottom + 4], fill="black")
        draw.text((px - 12, H - bottom + 8), f"{x:g}", fill="black")
    draw.text((left, 4), title, fill="black")
    draw.text((W // 2 - 40, H - 18), "training step", fill="black")
    draw.text((5, top - 18), ylabel, fill="black")
    for k, (name, pts) in enumerate(series.items()):
        color = COLORS.get(name.split("-seed")[0], (0, 0, 0))
        draw.line([to_px(x, y) for x, y in pts], fill=color, width=2)
        for x, y in pts:
            px, py = to_px(x, y)
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        draw.line([W - right + 10, top + 10 + 18 * k, W - right + 30, top + 10 + 18 * k], fill=color, width=3)
        draw.text((W - right + 35, top + 4 + 18 * k), name, fill="black")
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    epilog = ("Flags after -- go to train.py before each recipe's own switches: -- --model S, or\n"
              "-- --cutmix all --t_mix 0.45 for the paper's IA in TA+IA (AIO and TA stay unmixed).")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=epilog)
    parser.add_argument("--preset", default="cpu", choices=tuple(train.PRESETS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=tuple(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--num-images", type=int, default=4000, help="size of the finite training set")
    parser.add_argument("--evals", type=int, default=3, help="benchmark checkpoints per run, evenly spaced")
    parser.add_argument("--per-category", type=int, default=50)
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--out", default="runs/ablation")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.steps % args.evals:
        parser.error(f"--steps {args.steps} must be divisible by --evals {args.evals}")

    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    judge = shapes_eval.load_judge()
    results = {}
    for seed in args.seeds:
        for recipe in args.recipes:
            run_dir = train_recipe(recipe, seed, args, extra)
            results[run_dir.name] = {"scores": score_checkpoints(run_dir, args, judge),
                                     "heldout": heldout_curve(run_dir)}
            print(f"[{run_dir.name}] overall {results[run_dir.name]['scores'][-1]['accuracy']['overall']['accuracy']:.3f}")

    hours = (time.time() - start) / 3600
    (out / "results.json").write_text(json.dumps({"settings": vars(args) | {"train_flags": extra},
                                                  "results": results}, indent=1))
    (out / "results.md").write_text(markdown(results, args, hours))
    for key, title, name in (("accuracy", "shapes benchmark, overall (GenEval rules)", "score_vs_steps.png"),
                             ("attribute_accuracy", "shapes benchmark, overall (shape-agnostic)",
                              "attribute_score_vs_steps.png")):
        line_plot({run: [(s["step"], s[key]["overall"]["accuracy"]) for s in r["scores"]]
                   for run, r in results.items()}, title, "overall accuracy", out / name)
    line_plot({run: [(c["step"], c["heldout_loss"]) for c in r["heldout"]] for run, r in results.items()},
              "flow-matching loss on never-seen scenes", "held-out loss", out / "heldout_loss.png")
    print((out / "results.md").read_text())
    return results


if __name__ == "__main__":
    main()
