"""The benchmark scripts run and report consistent numbers (tiny settings, CPU)."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import caption_probe  # noqa: E402
import eval as E  # noqa: E402
import sample  # noqa: E402
import throughput  # noqa: E402
import train  # noqa: E402
from data import COLORS, SHAPES, random_scene, render, to_tensor  # noqa: E402
from model import DIT_SIZES, DiT  # noqa: E402


def test_throughput_reports_images_per_second_and_flops():
    r = throughput.main(["--model", "tiny", "--patch", "8", "--batch", "4", "--steps", "2", "--text-len", "8",
                        "--peak-tflops", "1"])
    flops = 3 * DiT(3, 32, 8, text_dim=128, **DIT_SIZES["tiny"]).flops_per_forward(8)
    assert r["images_per_s"] > 0 and r["train_GFLOP_per_image"] == round(flops / 1e9, 3)
    assert abs(r["achieved_TFLOPs"] - r["images_per_s"] * flops / 1e12) < 1e-3
    assert 0 < r["mfu"] < 1 and abs(r["mfu"] - r["images_per_s"] * flops / 1e12) < 1e-3 and r["params_M"] > 2


def test_caption_probe_changes_one_attribute_per_caption():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = random_scene(rng)
        obj, v = scene.objects[0], caption_probe.caption_variants(scene, rng)
        assert obj.shape in v["true"] and obj.shape not in v["other shape"]
        assert any(s in v["other shape"] for s in SHAPES if s != obj.shape)
        if obj.color in v["true"]:                          # short captions leave the color out one time in three
            assert obj.color not in v["other color"] and any(c in v["other color"] for c in COLORS if c != obj.color)
        assert v["empty"] == "" and obj.shape in v["other color"]
        assert caption_probe.caption_variants(scene, rng, "class")["true"].endswith(obj.shape)


def test_layout_probe_mirrors_only_the_position_words():
    assert caption_probe.swap_layout("In the top-left corner, a red star. The star is to the left of a leftover "
                                     "circle, above a square.") == ("In the bottom-right corner, a red star. The star "
                                                                     "is to the right of a leftover circle, below a square.")

    class Run:                      # what layout_probe_set reads of a pipeline
        image_size, config = 32, train.Config(objects="centered")
    x0, noise, variants = caption_probe.layout_probe_set(Run(), num_images=32, seed=0)
    assert x0.shape == noise.shape == (32, 3, 32, 32)
    swapped = [v for v in variants if v["swapped layout"] != v["true"]]
    assert len(swapped) > 16                        # most mixed captions say where the pasted image is
    for v in swapped:
        assert caption_probe.swap_layout(v["swapped layout"]) == v["true"] and v["empty"] == ""
    insets = ("corner", "border", "area")                                   # where CM 1/4, 1/9, 1/16 paste
    assert any(w in v["true"] for v in variants for w in insets)            # "all", the Config default

    class HalvesRun:
        image_size, config = 32, train.Config(objects="large", cutmix="1/2")
    _, _, halves = caption_probe.layout_probe_set(HalvesRun(), num_images=32, seed=0)
    assert not any(w in v["true"] for v in halves for w in insets)          # the run's own CutMix setting


def test_caption_probe_on_a_trained_run(tmp_path):
    run_dir = train.main(["--model", "tiny", "--patch_size", "8", "--num_images", "64", "--batch_size", "16",
                          "--steps", "3", "--warmup", "1", "--sample_every", "1000", "--out_dir", str(tmp_path)])
    grid = tmp_path / "denoising.png"
    errors, layout = caption_probe.main(["--ckpt", str(run_dir), "--num-images", "24", "--times", "0.5", "0.9",
                                         "--grid", str(grid)])
    assert list(errors) == [0.5, 0.9] and all(e[k] > 0 for e in errors.values() for k in caption_probe.CAPTIONS)
    assert list(layout) == [0.5, 0.9] and all(set(e) == set(caption_probe.LAYOUT_CAPTIONS) for e in layout.values())
    assert Image.open(grid).size == (8 * 32 * 3, 5 * 32 * 3)                  # clean row + (x_t, x0) per time

    # Re-initialised, the x-predicting network outputs x0_theta = 0 (its head is zero): the error is the mean
    # of x0^2 over the probe's scenes whatever the caption, so every rise is zero.
    pipe = sample.load_pipeline(str(run_dir))
    pipe.model.dit.initialize_weights()
    errors = caption_probe.probe(pipe, num_images=16, times=(0.5,), batch_size=5)
    rng = np.random.default_rng([0, 104729])
    x0 = torch.stack([to_tensor(render(random_scene(rng, pipe.config.objects))) for _ in range(16)])
    assert all(abs(e - float((x0 ** 2).mean())) < 1e-6 for e in errors[0.5].values())


def test_ablation_report_has_the_layout_check():
    import ablation
    accuracy = {c: {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6}
                for c in E.CATEGORIES + E.ATTRIBUTE_CATEGORIES + ("overall",)}
    layout = {"prompted": 0.2, "reversed": 0.15, "difference": 0.05, "ci_low": -0.05, "ci_high": 0.15, "prompts": 50}
    run = {"heldout": [{"step": 10, "heldout_loss": 0.02, "train_loss": 0.02}]}
    results = {"TA+IA-seed0": {**run, "scores": [{"accuracy": accuracy, "attribute_accuracy": accuracy,
                                                  "layout_vs_reversed": layout}]},
               "TA-seed0": {**run, "scores": [{"accuracy": accuracy, "attribute_accuracy": accuracy}]}}  # cached before
    args = argparse.Namespace(preset="cpu", steps=10, num_images=64, per_category=2, images_per_prompt=1, seeds=[0])
    lines = ablation.markdown(results, args, hours=0.1).splitlines()
    assert "| TA+IA-seed0 | 0.20 | 0.15 | +0.05 [-0.05, +0.15] |" in lines and "| TA-seed0 | | | |" in lines
