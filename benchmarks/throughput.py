"""
Training throughput of DiT-I: images/s and model FLOP utilisation for one forward+backward+AdamW step.

    python benchmarks/throughput.py                                   # tiny, patch 4, 32x32x3, on this machine
    python benchmarks/throughput.py --model paper --channels 4 --patch 2 --text-dim 2048 --text-len 128 \\
        --batch 256 --compile                                         # the paper's setting on a GPU (bf16)

Measures the network alone on random inputs (no data loading), after warm-up steps, synchronising the
device only around the timed loop. FLOPs per image = 3 x DiT.flops_per_forward (multiply-add = 2 FLOPs);
MFU is against --peak-tflops (default: 989, dense bf16 of an H100/H200; pass your device's number).
"""
import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusion import flow_matching_loss  # noqa: E402
from model import DIT_SIZES, DiT, count_parameters  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=tuple(DIT_SIZES))
    parser.add_argument("--channels", type=int, default=3, help="3 for pixels, 4 for SD-VAE latents")
    parser.add_argument("--size", type=int, default=32, help="input side (pixels or latent)")
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--head-channels", type=int, default=0, help="DiT head_channels (0: the linear head)")
    parser.add_argument("--text-dim", type=int, default=128)
    parser.add_argument("--text-len", type=int, default=48)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = DiT(args.channels, args.size, args.patch, text_dim=args.text_dim, head_channels=args.head_channels,
                **DIT_SIZES[args.model]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step_model = torch.compile(model) if args.compile else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    B = args.batch
    x0 = torch.randn(B, args.channels, args.size, args.size, device=device)
    text = torch.randn(B, args.text_len, args.text_dim, device=device)
    mask = torch.ones(B, args.text_len, dtype=torch.bool, device=device)

    def step() -> None:
        with autocast:
            loss = flow_matching_loss(step_model, x0, torch.rand(B, device=device), torch.randn_like(x0), text, mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):                                                   # warm-up (and compilation)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    images_per_s = B / seconds
    flops = 3 * model.flops_per_forward(args.text_len)
    result = {"model": args.model, "params_M": round(count_parameters(model) / 1e6, 2), "device": str(device),
              "batch": B, "images_per_s": round(images_per_s, 1), "step_ms": round(1000 * seconds, 1),
              "train_GFLOP_per_image": round(flops / 1e9, 3), "achieved_TFLOPs": round(images_per_s * flops / 1e12, 3),
              "mfu": round(images_per_s * flops / (args.peak_tflops * 1e12), 4)}
    print(result)
    return result


if __name__ == "__main__":
    main()
