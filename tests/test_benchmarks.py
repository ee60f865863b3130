"""The benchmark scripts run and report consistent numbers (tiny settings, CPU)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import throughput  # noqa: E402
from model import DIT_SIZES, DiT  # noqa: E402


def test_throughput_reports_images_per_second_and_flops():
    r = throughput.main(["--model", "tiny", "--patch", "8", "--batch", "4", "--steps", "2", "--text-len", "8",
                        "--peak-tflops", "1"])
    flops = 3 * DiT(3, 32, 8, text_dim=128, **DIT_SIZES["tiny"]).flops_per_forward(8)
    assert r["images_per_s"] > 0 and r["train_GFLOP_per_image"] == round(flops / 1e9, 3)
    assert abs(r["achieved_TFLOPs"] - r["images_per_s"] * flops / 1e12) < 1e-3
    assert 0 < r["mfu"] < 1 and abs(r["mfu"] - r["images_per_s"] * flops / 1e12) < 1e-3 and r["params_M"] > 2
