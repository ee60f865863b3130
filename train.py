"""
Train DiT-I with flow matching on ImageNet-like data, with text (TA) and image (IA) augmentation.

One plain loop for one process and for torchrun DDP:

    python train.py                                         # CPU default: TA+IA on synthetic data, 9.5-minute budget
    python train.py --preset gpu                            # one GPU, bf16 autocast
    torchrun --nproc_per_node=8 train.py --preset gpu --compile
    python train.py --name default --resume                 # continue the latest checkpoint of runs/default

One optimisation step, per rank (global batch = batch_size = world_size * grad_accum * micro-batch):

    batch  = (x0, caption, x0_mixed, caption_mixed)           x0: (b, C, H, W) in [-1, 1]
    t      ~ logit-normal(t_mean, 1)                          (b,)  early_t_mean for the first early_steps
    mix    = (t > t_mix) & (u < p_mix)                        the paper's IA rule (diffusion.mix_mask)
    x0, caption <- mixed versions where mix                   CutMix only at high noise
    caption <- "" with probability cond_dropout               the empty prompt doubles as the CFG null
    loss   = w(t) || v_theta((1-t) x0 + t eps, t, caption) - (eps - x0) ||^2      w = 1, or t^2 with loss "x"

Everything random in a step is drawn from generators seeded by (seed, rank, step), and the data order from
(seed, epoch): a run resumed from a checkpoint continues bit-for-bit like an uninterrupted one.

A time budget (--time_budget minutes; the cpu preset's 9.5) times the steps and fixes `steps` so that the run
ends in time on this machine. Only steps before the LR's decay are timed, where nothing depends on the total, so
the run is exactly `--steps N` with the N it wrote to config.json: the warmup for "cosine", minutes of steps for
"wsd" (warmup-stable-decay) and "constant", whose decay starts late or never (TimeBudget).

Run directory runs/<name>/: config.json (the resolved config), vocab.json (learned text encoder),
log.jsonl, samples/step_XXXXXXX.png, checkpoints/step_XXXXXXX/{model,ema}.safetensors + state.pt.
"""
import argparse
import contextlib
import copy
import dataclasses
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from augment import CUTMIX_SETTINGS, MixedDataset
from data import OBJECT_RANGES, ImageFolderCaptions, SyntheticImageNet, image_grid, save_png, to_uint8
from diffusion import flow_matching_loss, mix_mask, pad_tokens, sample, sample_t
from model import DIT_SIZES, DiT, HFTextEncoder, LearnedTextEncoder, TextToImage, WordTokenizer, count_parameters


#################################################################################
#                                  Configuration                                #
#################################################################################

@dataclass
class Config:
    name: str = "default"               # run directory: out_dir/name
    out_dir: str = "runs"               # parent folder of the run directories
    seed: int = 0                       # data, initial weights and every random draw of the run
    # data
    data: str = "synthetic"             # "synthetic", or an image folder root/<class>/*.jpg
    caption_file: str = ""              # image folder captions: TSV filename<TAB>caption, or JSONL
    num_images: int = 20000             # synthetic: a finite set, as ImageNet is finite
    image_size: int = 32                # pixels (synthetic: 32 or 64)
    objects: str = "varied"             # synthetic object ranges: "varied", "centered", "large" (data.OBJECT_RANGES)
    # the paper's recipe
    captions: str = "long"              # "long" (TA) or "class" (the AIO baseline: "a photo of a star")
    cutmix: str = "all"                 # IA: "none" or a CutMix setting (1/2, 1/4, 1/9, 1/16, all)
    crop: bool = False                  # IA: random crops of the plain image
    t_mix: float = 0.45                 # mixed samples only where t > t_mix (SNR < 1.5) ...
    p_mix: float = 0.5                  # ... and then with probability p_mix
    cond_dropout: float = 0.1           # caption -> "" (the guidance null) with this probability
    t_schedule: str = "logit_normal"    # training times: logit-normal, t = sigmoid(t_mean + z), or uniform
    t_mean: float = 0.0                 # logit-normal location: > 0 trains more at high noise (colors, layout, shapes)
    early_steps: int = 0                # the first steps draw t at early_t_mean instead (0: none) ...
    early_t_mean: float = 3.0           # ... nearer t = 1: more mixed samples there, where the layout words are learned
    loss: str = "v"                     # "v": velocity MSE; "x": weighted by t^2 (= clean-image MSE), less at low noise
    # model
    model: str = "tiny"                 # a key of model.DIT_SIZES
    patch_size: int = 4                 # 32x32 pixels -> 64 tokens; 8 -> 16 (wants prediction "x"); 2 on GPUs
    pos_embed: str = "sincos"           # 2D positions: fixed sin-cos table, or RoPE in self-attention
    prediction: str = "v"               # network output: "v" (velocity) or "x" (clean image: for wide patches)
    head_channels: int = 0              # > 0: final layer -> this many features per pixel -> 3x3 conv (0: DiT's)
    text_encoder: str = "learned"       # "learned" (trained jointly, offline) or a Hugging Face path/id
    text_width: int = 128               # learned text encoder: width ...
    text_depth: int = 2                 # ... and layers
    max_text_length: int = 64           # tokens per caption (longer ones are cut)
    # optimisation
    steps: int = 1500                   # optimiser steps (with a time budget: set from the measured speed)
    time_budget: float = 0.0            # minutes for the whole run: fixes `steps` from the measured speed (0: off)
    batch_size: int = 64                # global, over all ranks and accumulation steps
    grad_accum: int = 1                 # micro-steps per optimiser step
    lr: float = 3e-3                    # AdamW peak learning rate
    lr_schedule: str = "cosine"         # after linear warmup: "cosine" (down to min_lr), "constant", or "wsd"
    warmup: int = 75                    # linear warmup steps
    min_lr: float = 1e-5                # end of the cosine
    cooldown: float = 0.4               # "wsd" (warmup-stable-decay): the last fraction of steps is a cosine to min_lr
    weight_decay: float = 0.01          # not on norms, biases, embeddings
    beta2: float = 0.99                 # AdamW's second-moment decay
    grad_clip: float = 2.0              # max global gradient norm
    ema_decay: float = 0.999            # EMA cap; the decay warms up as (1+step)/(10+step): 0.99 at 900 steps
    # systems
    device: str = "auto"                # "auto", "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"                 # autocast: "auto" (bf16 on CUDA, float32 on CPU), "bfloat16", "float32"
    compile: bool = False               # torch.compile the model
    num_workers: int = 0                # DataLoader worker processes (0: in the training process)
    # logging, samples, checkpoints, held-out loss
    log_every: int = 25                 # steps between log lines (and the only host syncs)
    sample_every: int = 500             # steps between sample grids
    ckpt_every: int = 500               # steps between checkpoints
    keep_ckpts: int = 2                 # checkpoints kept (older ones are deleted)
    eval_every: int = 0                 # held-out flow-matching loss every N steps (0: off)
    sample_steps: int = 30              # Euler steps for sample grids (and sample.py's default)
    guidance: float = 5.0               # classifier-free guidance scale (and sample.py's default)


PRESETS: dict[str, dict] = {
    # Patch 8: 16 tokens, about twice the images/s of patch 4. A 128-wide token can output an 8x8x3 clean patch
    # but not the 192 numbers of noise in a velocity, hence x-prediction; the x loss and a high t_mean leave most
    # of the gradient to high noise, where colors and layout are decided, and where the shape word is learned:
    # below t ~ 0.5 a shape shows through the noise and the word is not needed. Large centred upright objects
    # are the world where the tiny model draws shapes within a thousand or two steps, not tens of thousands.
    # IA within ten minutes: only CutMix 1/2's clean halves teach "left of" / "above" that fast, and only near
    # t = 1, where the layout cannot be read from x_t; so every sample above t = 0.9 is mixed, none below, and
    # (0.5, 0.9) is left to single objects, where their shapes are learned. The layout words are learned
    # suddenly once enough mixes are seen, so the run starts at high noise: 650 steps at t_mean 3.0 (79% of the
    # samples mixed), then t_mean 1.5 (22%) for the shapes. At 1300 steps (what a slow 2-core machine fits in
    # the budget) that learned the layout in six seeds of six; a 455-step start in three of four, with a few
    # more shapes; t_mean 2.0 throughout (42%), the preset before, in one of three. Peak LR 2e-3: more shapes
    # and two-color scenes than 3e-3 in three seeds out of three. The cosine ends at half the peak, not at ~0:
    # with the start, more shapes and a layout at least as strong in every seed measured (a quarter of the peak
    # lies between; without the start a high floor cost the layout, as "wsd" did). As many steps as fit in 9.5
    # minutes: CPUs differ several-fold. Guidance 3, not 5: more colored shapes and a stronger layout in four
    # seeds of four, two-color scenes a little less often. The measurements are in docs/experiments.md ("When
    # the layout is learned", "Shapes with the start", "Half the peak", "Guidance on the half-peak preset").
    "cpu": dict(objects="large", patch_size=8, prediction="x", loss="x", cutmix="1/2", t_mix=0.9, p_mix=1.0,
                t_mean=1.5, early_steps=650, early_t_mean=3.0, lr=2e-3, min_lr=1e-3, time_budget=9.5,
                guidance=3.0),
    # One H200, about 5 minutes: DiT-S/2 on 256 tokens, bf16 autocast. A data worker makes ~700 mixed samples/s
    # (one 2-core EPYC core), so 12 workers keep up with the ~9k images/s estimated for the GPU.
    "gpu": dict(model="S", patch_size=2, batch_size=512, steps=4000, lr=1e-3, warmup=300, num_images=100000,
                num_workers=12, sample_every=1000, ckpt_every=2000, log_every=50),
}

# Fields that may change when resuming: they leave the model, data and noise alone (a new `steps` does reshape
# the cosine schedule from the resumed step on; config.json is rewritten with it).
RESUMABLE_FIELDS = {"name", "out_dir", "steps", "time_budget", "device", "compile", "num_workers", "log_every",
                    "sample_every", "ckpt_every", "keep_ckpts", "eval_every", "sample_steps", "guidance"}

POSITIVE_FIELDS = ("num_images", "image_size", "steps", "batch_size", "grad_accum", "max_text_length", "log_every",
                   "sample_every", "ckpt_every", "keep_ckpts", "sample_steps")

CHOICES = {"model": tuple(DIT_SIZES), "objects": tuple(OBJECT_RANGES), "captions": ("long", "class"),
           "cutmix": ("none",) + CUTMIX_SETTINGS, "lr_schedule": ("constant", "cosine", "wsd"),
           "t_schedule": ("logit_normal", "uniform"), "pos_embed": ("sincos", "rope"), "prediction": ("v", "x"),
           "loss": ("v", "x"), "dtype": ("auto", "bfloat16", "float32")}

# Fixed prompts for the sample grids: single objects, attributes, and two-object layouts.
SAMPLE_PROMPTS = [
    "a red star", "a blue circle", "a yellow triangle", "a green square",
    "a large purple heart on a striped background", "a small white cross", "an orange diamond", "a pink crescent",
    "a red star to the left of a blue circle", "a yellow square to the right of a green triangle",
    "a white heart above a black cross", "a blue diamond below an orange circle",
]


def field_comments() -> dict[str, str]:
    """The comment after each Config field: --help shows the same words the dataclass does."""
    found = (re.match(r"\s+(\w+): [^=]+=[^#]*#\s*(.*)", line) for line in inspect.getsource(Config).splitlines())
    return {m.group(1): m.group(2) for m in found if m}


def parse_args(argv: list[str] | None = None) -> tuple[Config, bool, set[str]]:
    """Config from --preset, then explicit flags; returns (config, resume, names of the flags given)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=tuple(PRESETS), help="named defaults (default: cpu)")
    parser.add_argument("--resume", action="store_true", help="continue the latest checkpoint of out_dir/name")
    comments = field_comments()
    for field in dataclasses.fields(Config):
        flag, kind = f"--{field.name}", type(field.default)
        by_preset = "".join(f"; {name} preset: {p[field.name]!r}" for name, p in PRESETS.items() if field.name in p)
        text = f"{comments.get(field.name, '')} (default: {field.default!r}{by_preset})".strip()
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, type=kind, default=None, choices=CHOICES.get(field.name), help=text)
    args = parser.parse_args(argv)
    given = {f.name for f in dataclasses.fields(Config) if getattr(args, f.name) is not None}
    cfg = Config(**PRESETS[args.preset])
    for name in given:
        setattr(cfg, name, getattr(args, name))
    if "steps" in given and "time_budget" not in given:
        cfg.time_budget = 0.0                                   # an explicit step count wins over the preset's budget
    if cfg.time_budget > 0 and cfg.warmup < 8 and not args.resume:           # a resumed run keeps its steps
        parser.error(f"--time_budget measures the speed during the warmup: it needs --warmup >= 8, got {cfg.warmup}")
    for name in POSITIVE_FIELDS:
        if getattr(cfg, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(cfg, name)}")
    if cfg.early_steps < 0:
        parser.error(f"--early_steps counts steps: expected 0 or more, got {cfg.early_steps}")
    if cfg.head_channels < 0:
        parser.error(f"--head_channels: expected 0 (DiT's linear head) or more, got {cfg.head_channels}")
    if not 0 < cfg.cooldown <= 1:
        parser.error(f"--cooldown is a fraction of the steps: expected 0 < cooldown <= 1, got {cfg.cooldown}")
    if cfg.batch_size % cfg.grad_accum:
        parser.error(f"--batch_size {cfg.batch_size} must be divisible by --grad_accum {cfg.grad_accum}")
    if cfg.device != "auto":
        try:
            torch.device(cfg.device)
        except RuntimeError:
            parser.error(f"--device: expected auto, cpu, cuda, cuda:N or mps, got {cfg.device!r}")
    return cfg, args.resume, given


#################################################################################
#                           Building data and model                            #
#################################################################################

def build_dataset(cfg: Config) -> MixedDataset:
    if cfg.data == "synthetic":
        base = SyntheticImageNet(cfg.num_images, cfg.image_size, seed=cfg.seed, objects=cfg.objects)
    else:
        base = ImageFolderCaptions(cfg.data, cfg.caption_file or None, cfg.image_size)
    cutmix = None if cfg.cutmix == "none" else cfg.cutmix
    return MixedDataset(base, captions=cfg.captions, cutmix=cutmix, crop=cfg.crop, seed=cfg.seed)


def build_tokenizer(dataset: MixedDataset, cfg: Config) -> WordTokenizer:
    """Word vocabulary of the training captions, including those of mixed and cropped samples."""
    # Mixed captions add placement words ("corner", "half", ...): probe 2000 items for them
    # (200 for real images, where every probe reads two files).
    rng = np.random.default_rng(cfg.seed)
    probe = rng.choice(len(dataset), size=min(len(dataset), 2000 if cfg.data == "synthetic" else 200), replace=False)
    captions = list(dataset.base.long_captions) + list(dataset.base.class_captions) + SAMPLE_PROMPTS
    for i in probe:
        item = dataset[(0, int(i))]
        captions += [item["caption"], item["mixed_caption"]]
    return WordTokenizer.build(captions, max_length=cfg.max_text_length)


def build_model(cfg: Config, vocab_size: int | None, text_dim: int | None = None) -> TextToImage:
    """The trained module: DiT, plus the learned text encoder when no frozen encoder is used."""
    learned = cfg.text_encoder == "learned"
    text_encoder = LearnedTextEncoder(vocab_size, cfg.text_width, cfg.text_depth, max_length=cfg.max_text_length) \
        if learned else None
    dit = DiT(in_channels=3, input_size=cfg.image_size, patch_size=cfg.patch_size,
              text_dim=cfg.text_width if learned else text_dim, pos_embed=cfg.pos_embed, prediction=cfg.prediction,
              head_channels=cfg.head_channels, **DIT_SIZES[cfg.model])
    return TextToImage(dit, text_encoder)


class TextConditioner:
    """Captions -> what the model's `text` argument takes: token ids (learned encoder) or frozen embeddings."""

    def __init__(self, cfg: Config, tokenizer: WordTokenizer | None, device: torch.device,
                 dtype: torch.dtype = torch.float32):
        self.tokenizer, self.device = tokenizer, device
        # A frozen encoder runs in the autocast dtype (bf16 on GPUs): it is the largest network of the step.
        self.frozen = None if cfg.text_encoder == "learned" else \
            HFTextEncoder(cfg.text_encoder, max_length=cfg.max_text_length, dtype=dtype).to(device)
        # Compiled graphs are specialised to shapes: a fixed text length avoids one recompile per new length.
        self.pad_to = cfg.max_text_length if cfg.compile else None

    @property
    def frozen_dim(self) -> int | None:
        return self.frozen.dim if self.frozen is not None else None

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frozen is not None:
            text, mask = self.frozen(captions)
        else:
            ids, mask = self.tokenizer(captions)
            text, mask = ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
        return pad_tokens(text, mask, self.pad_to) if self.pad_to else (text, mask)


#################################################################################
#                        Data order, optimiser, EMA, LR                         #
#################################################################################

class EpochBatches(torch.utils.data.Sampler):
    """Endless batches of (epoch, index): epoch e is randperm(N) seeded by (seed, e), dealt to the ranks
    round-robin. Starting at micro-batch `start` makes a resumed run see exactly the same data."""

    def __init__(self, n: int, batch: int, rank: int, world: int, seed: int, start: int = 0):
        self.n, self.batch, self.rank, self.world, self.seed, self.start = n, batch, rank, world, seed, start
        self.per_epoch = (n // world) // batch
        if self.per_epoch == 0:
            raise ValueError(f"{n} images cannot fill one batch of {batch} on each of {world} ranks")

    def __iter__(self):
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            mine = order[self.rank::self.world].tolist()
            for b in range(offset, self.per_epoch):
                yield [(epoch, i) for i in mine[b * self.batch:(b + 1) * self.batch]]
            epoch, offset = epoch + 1, 0


def step_generator(seed: int, rank: int, step: int, micro_step: int, device="cpu") -> torch.Generator:
    """A generator seeded by (seed, rank, step, micro-step, device type): resumable without saved RNG streams."""
    key = [seed, rank, step, micro_step, 0 if torch.device(device).type == "cpu" else 1]
    return torch.Generator(device).manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))


def t_mean_at(step: int, cfg: Config) -> float:
    """The logit-normal location of a step: early_t_mean for the first early_steps, then t_mean. A high-noise start
    (more mixed samples near t = 1) has the layout words learned earlier (docs/experiments.md, "When the layout is
    learned"). A count of steps, not a fraction: the layout is learned after enough mixes, whatever the run's
    length, and a time budget sets the length only once the early steps have begun."""
    return cfg.early_t_mean if step < cfg.early_steps else cfg.t_mean


def training_batch(batch: dict, cfg: Config, step: int, gen: torch.Generator,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The paper's IA rule and condition dropout on one (micro-)batch from MixedDataset.

    t ~ logit-normal(t_mean_at(step), 1); a sample becomes its CutMix version (image AND caption) where t > t_mix and
    u < p_mix; then its caption becomes "" (the CFG null) with probability cond_dropout. The draws happen on the
    host, from `gen`, so picking caption strings needs no device sync. Returns x0 (b,C,H,W) and t (b,) on
    `device`, and the captions. Both image versions travel (from pinned memory, asynchronously); the choice is
    made on the device."""
    b = len(batch["caption"])
    t = sample_t(b, cfg.t_schedule, m=t_mean_at(step, cfg), generator=gen)
    use_mix = mix_mask(t, cfg.t_mix, cfg.p_mix, generator=gen) if cfg.cutmix != "none" else torch.zeros(b, dtype=bool)
    drop = (torch.rand(b, generator=gen) < cfg.cond_dropout).tolist()
    captions = ["" if d else (mixed if m else plain) for plain, mixed, m, d in
                zip(batch["caption"], batch["mixed_caption"], use_mix.tolist(), drop)]
    image, mixed = (batch[k].to(device, non_blocking=True) for k in ("image", "mixed_image"))
    x0 = torch.where(use_mix.to(device, non_blocking=True)[:, None, None, None], mixed, image)
    return x0, t.to(device, non_blocking=True), captions


def make_optimizer(model: torch.nn.Module, cfg: Config, fused: bool) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases, embeddings and positions (1-d tensors or embedding tables)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or id(p) in embeddings or "pos" in name.split(".")[-1]:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=fused)


def decay_start(cfg: Config) -> int:
    """First step of the decay. Before it the LR does not depend on cfg.steps (see the time budget below)."""
    if cfg.lr_schedule == "constant":
        return cfg.steps
    if cfg.lr_schedule == "wsd":
        return max(cfg.warmup, cfg.steps - round(cfg.cooldown * cfg.steps))
    return cfg.warmup


def learning_rate(step: int, cfg: Config) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    start = decay_start(cfg)
    if step < start:
        return cfg.lr
    progress = (step - start) / max(1, cfg.steps - start)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def calibration_steps(cfg: Config) -> tuple[int, int]:
    """Steps [first, last) of the warmup timed first by a time-budgeted run (TimeBudget)."""
    last = min(cfg.warmup, 100)
    return last // 2, last


BUDGET_MARGIN = 0.15  # of the time left, kept when ~40 warmup steps set the length. 2-core VMs wander: one timed 185
                      # images/s there and averaged 165 after (7% ran 35 s over), one 217 and ~185 (12%: 16 s over)
LATE_MARGIN = 0.07    # when minutes of steps set it: the speed after 40% of seven default runs was 0.94-1.08x the
                      # speed over the steps between the warmup and that point
LATE_AT = 0.4         # fraction of the budget at which a schedule with a late decay ("wsd", "constant") sets it


def steps_in_budget(cfg: Config, elapsed_s: float, step: int, step_s: float, margin: float = BUDGET_MARGIN) -> int:
    """Total steps that end the run within cfg.time_budget minutes, `elapsed_s` into it at `step`, one step taking
    `step_s`. A sample grid costs about (48 images x sample_steps x 2 for guidance) forward passes, one step
    3 x batch_size (forward + backward); `margin` of the time left is kept for the machine's speed to wander."""
    left = (1 - margin) * (60 * cfg.time_budget - elapsed_s)
    grid_s = step_s * 4 * len(SAMPLE_PROMPTS) * cfg.sample_steps * 2 / (3 * cfg.batch_size)
    total = step + max(0, int(left / step_s))
    while total > step and (total - step) * step_s + (total // cfg.sample_every + 1) * grid_s > left:
        total -= 1
    return max(total, cfg.warmup + 1)


class TimeBudget:
    """Sets cfg.steps so that a run ends within cfg.time_budget minutes on this machine.

    The speed is timed only while nothing done so far depends on the total step count (the LR before its decay,
    the data order, the noise, the EMA), so a budgeted run is exactly `--steps N` with the N in its config.json:
      1. over the second half of the warmup (calibration_steps). Final for "cosine", whose decay starts there.
      2. "wsd" and "constant" decay late, so they time again at LATE_AT of the budget (or just before the decay),
         over every step since the warmup: minutes of the machine's speed, not seconds, and LATE_MARGIN suffices.
    Rank 0 measures and broadcasts, so every rank stops at the same step. Grids and checkpoints (`paused_s`) are
    not step time.
    """

    def __init__(self, cfg: Config, t0: float, world: int, device: torch.device):
        self.cfg, self.t0, self.world, self.device = cfg, t0, world, device
        self.first, self.warmup_end = calibration_steps(cfg)
        self.late = None                     # the step of the second measurement, chosen by the first
        self.paused_s = 0.0
        self.clock = {}                      # step -> seconds of training (wall time less paused_s) before it

    def before_step(self, step: int) -> bool:
        """Call before every step; True when it has just set cfg.steps."""
        if step not in (self.first, self.warmup_end, self.late):
            return False
        if self.device.type == "cuda":
            torch.cuda.synchronize()                                   # time the GPU's work, not the queueing
        now = time.time()
        self.clock[step] = now - self.paused_s
        if step == self.first:
            return False
        cfg, elapsed = self.cfg, now - self.t0
        if step == self.warmup_end:
            step_s = (self.clock[step] - self.clock[self.first]) / (step - self.first)
            steps = steps_in_budget(cfg, elapsed, step, step_s)
            late = -1
            last_stable = decay_start(dataclasses.replace(cfg, steps=steps)) - 1
            if last_stable > step:
                late = min(last_stable, max(step + 1, step + int((LATE_AT * 60 * cfg.time_budget - elapsed) / step_s)))
            steps, late = self._from_rank0([steps, late])
            self.late = late if late > 0 else None
        else:
            step_s = (self.clock[step] - self.clock[self.warmup_end]) / (step - self.warmup_end)
            steps = steps_in_budget(cfg, elapsed, step, step_s, LATE_MARGIN)
            while decay_start(dataclasses.replace(cfg, steps=steps)) < step:      # the LR so far stays the run's
                steps += 1
            (steps,) = self._from_rank0([steps])
        cfg.steps = steps
        return True

    def _from_rank0(self, values: list[int]) -> list[int]:
        values = torch.tensor(values, device=self.device)
        if self.world > 1:
            dist.broadcast(values, src=0)
        return values.tolist()


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    # Warm-up of the decay, (1 + step) / (10 + step): early EMA weights are not stuck at the random init.
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - d)


#################################################################################
#                               Checkpoints                                     #
#################################################################################

def atomic_write_json(path: Path, obj) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(obj, f, indent=2)
    os.replace(f.name, path)


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_" + "[0-9]" * 7))


def save_checkpoint(run_dir: Path, step: int, model, ema, optimizer, keep: int) -> Path:
    """checkpoints/step_XXXXXXX/: written into a temporary folder, then renamed (never half-written)."""
    final = run_dir / "checkpoints" / f"step_{step:07d}"
    final.parent.mkdir(parents=True, exist_ok=True)
    for leftover in final.parent.glob(".tmp_*"):                      # from a run killed while saving
        shutil.rmtree(leftover)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp_"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, tmp / "ema.safetensors")
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "state.pt")
    if final.exists():                                                # the same step again: swap, then delete
        os.replace(final, tmp.with_name(tmp.name + "_old"))
    os.replace(tmp, final)
    shutil.rmtree(tmp.with_name(tmp.name + "_old"), ignore_errors=True)
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def load_weights(model: torch.nn.Module, path: Path, device="cpu") -> None:
    """model <- the safetensors file at `path`; weights written by another version of model.py (a renamed or
    removed tensor, another shape) fail with the names, not with a wall of shapes from load_state_dict."""
    saved, expected = load_file(path, device=str(device)), model.state_dict()
    missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & saved.keys() if saved[k].shape != expected[k].shape)
    if missing or unexpected or reshaped:
        found = [f"{what}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}" for what, names in
                 (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped)) if names]
        raise ValueError(f"{path} does not fit this version of model.py ({'; '.join(found)}): it was written by "
                         f"another version of the code; sample or resume it with that version, or train anew")
    model.load_state_dict(saved)


def check_resumable(saved: dict, cfg: Config, given: set[str]) -> Config:
    """The saved config, with the flags given now; a flag that changes what is trained is an error."""
    clashes = [f"--{k}: checkpoint has {saved[k]!r}, asked {getattr(cfg, k)!r}" for k in sorted(given)
               if k not in RESUMABLE_FIELDS and k in saved and saved[k] != getattr(cfg, k)]
    if clashes:
        raise SystemExit("Resuming with a config that does not match the checkpoint:\n  " + "\n  ".join(clashes))
    merged = Config(**{k: v for k, v in saved.items() if k in Config.__dataclass_fields__})
    for k in given:
        setattr(merged, k, getattr(cfg, k))
    return merged


def _logged_step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf                                                # a line cut short by the crash


def trim_log(path: Path, step: int) -> None:
    """Drop the log records written after `step` (the checkpoint a run resumes from): they will be written again."""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _logged_step(line) <= step]
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            f.writelines(kept)
        os.replace(f.name, path)


#################################################################################
#                           Samples and held-out loss                           #
#################################################################################

@torch.no_grad()
def sample_grid(model, condition: TextConditioner, cfg: Config, device, path: Path) -> None:
    """A grid of SAMPLE_PROMPTS (rows: prompts, 4 seeds each) from fixed noise, written atomically."""
    prompts = [p for p in SAMPLE_PROMPTS for _ in range(4)]
    noise = torch.randn(len(prompts), 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    text, mask = condition(prompts)
    null_text, null_mask = condition([""])
    images = sample(model.dit, noise.to(device), model.encode_text(text, mask), mask,
                    model.encode_text(null_text, null_mask), null_mask, steps=cfg.sample_steps,
                    guidance=cfg.guidance, method="euler")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(image_grid(to_uint8(images.clamp(-1, 1)), cols=4, scale=2), path)


class HeldOutLoss:
    """Flow-matching loss at fixed (t, eps) on plain images: unseen scenes vs. a fixed subset of the training set.
    The gap between the two is the overfitting the paper reports for TA-only training on a finite dataset."""

    def __init__(self, train_set: MixedDataset, cfg: Config, n: int = 512):
        seen = train_set.base
        unseen = SyntheticImageNet(n, cfg.image_size, seed=cfg.seed + 7919, objects=cfg.objects)  # never trained on
        self.sets, self.weighting = {}, cfg.loss
        for name, ds in (("heldout", unseen), ("train", seen)):
            idx = range(min(n, len(ds)))
            captions = getattr(ds, f"{cfg.captions}_captions")
            self.sets[name] = (torch.stack([ds[i]["image"] for i in idx]), [captions[i] for i in idx])
        gen = torch.Generator().manual_seed(1234)
        self.t = torch.linspace(0.02, 0.98, n)[torch.randperm(n, generator=gen)]                # the same for both
        self.noise = torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=gen)

    @torch.no_grad()
    def __call__(self, model, condition: TextConditioner, device, batch: int = 128) -> dict[str, float]:
        out = {}
        for name, (images, captions) in self.sets.items():
            total = 0.0
            for i in range(0, len(captions), batch):
                text, mask = condition(captions[i:i + batch])
                x0, t, eps = (v[i:i + batch].to(device) for v in (images, self.t, self.noise))
                total += flow_matching_loss(model, x0, t[:len(x0)], eps[:len(x0)], text, mask,
                                            self.weighting).item() * len(x0)
            out[f"{name}_loss"] = total / len(captions)
        return out


#################################################################################
#                                 Training loop                                 #
#################################################################################

def setup_distributed(cfg: Config) -> tuple[int, int, torch.device]:
    """RANK/LOCAL_RANK/WORLD_SIZE from torchrun; NCCL on CUDA, gloo on CPU."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device if world == 1 or cfg.device == "cpu" else f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def main(argv: list[str] | None = None) -> Path:
    cfg, resume, given = parse_args(argv)
    run_dir = Path(cfg.out_dir) / cfg.name
    if resume:
        if not (run_dir / "config.json").is_file():
            raise SystemExit(f"--resume: no run at {run_dir} (expected {run_dir / 'config.json'})")
        cfg = check_resumable(json.loads((run_dir / "config.json").read_text()), cfg, given)
    rank, world, device = setup_distributed(cfg)
    master = rank == 0
    if not resume and ((run_dir / "config.json").exists() or checkpoints(run_dir)):
        # A new run in an old folder would mix two logs and let the old checkpoints outlive the new ones.
        raise SystemExit(f"{run_dir} already holds a run: continue it with --resume, start another with "
                         f"--name NEW, or delete {run_dir}")
    if world > 1:
        dist.barrier()                                  # every rank has looked at run_dir before rank 0 writes to it
    if cfg.batch_size % (world * cfg.grad_accum):
        raise SystemExit(f"--batch_size {cfg.batch_size} must be divisible by world_size x grad_accum = "
                         f"{world} x {cfg.grad_accum}")
    micro = cfg.batch_size // (world * cfg.grad_accum)
    amp_dtype = {"auto": torch.bfloat16 if device.type == "cuda" else None, "bfloat16": torch.bfloat16,
                 "float32": None}[cfg.dtype]
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    # ---- data, text, model ------------------------------------------------------------------------------
    t0 = time.time()
    dataset = build_dataset(cfg)
    tokenizer = None
    if cfg.text_encoder == "learned":
        vocab_path = run_dir / "vocab.json"
        tokenizer = WordTokenizer.load(vocab_path) if resume else build_tokenizer(dataset, cfg)
    condition = TextConditioner(cfg, tokenizer, device, dtype=amp_dtype or torch.float32)
    torch.manual_seed(cfg.seed)                                     # identical initial weights on every rank
    model = build_model(cfg, len(tokenizer) if tokenizer else None, condition.frozen_dim).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    # One fused kernel for the whole update: CUDA, and the CPU since torch 2.4 (the floor of requirements.txt),
    # where it takes the tiny default's AdamW step from ~9 ms to ~3 ms.
    optimizer = make_optimizer(model, cfg, fused=device.type in ("cuda", "cpu"))
    start = 0
    if resume:
        last = checkpoints(run_dir)[-1] if checkpoints(run_dir) else None
        if last is None:
            raise SystemExit(f"--resume: {run_dir / 'checkpoints'} holds no checkpoint")
        try:
            load_weights(model, last / "model.safetensors", device)
            load_weights(ema, last / "ema.safetensors", device)
        except ValueError as e:
            raise SystemExit(f"--resume: {e}") from None
        state = torch.load(last / "state.pt", map_location=device, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        start = state["step"]
        if master:
            atomic_write_json(run_dir / "config.json", dataclasses.asdict(cfg))   # with the flags given now
            trim_log(run_dir / "log.jsonl", start)
    elif master:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", dataclasses.asdict(cfg))
        if tokenizer is not None:
            tokenizer.save(run_dir / "vocab.json")
    if master:
        n_dit, n_all = count_parameters(model.dit), count_parameters(model)
        print(f"{len(dataset)} images ready in {time.time() - t0:.1f}s | DiT-{cfg.model}: {n_dit / 1e6:.2f}M params, "
              f"{n_all / 1e6:.2f}M with the text encoder | {world} rank(s) on {device}, micro-batch {micro}")

    train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    if cfg.compile:
        train_model = torch.compile(train_model)
    sampler = EpochBatches(len(dataset), micro, rank, world, cfg.seed, start=start * cfg.grad_accum)
    loader = iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                              pin_memory=device.type == "cuda",
                                              persistent_workers=cfg.num_workers > 0))
    heldout = HeldOutLoss(dataset, cfg) if cfg.eval_every and cfg.data == "synthetic" and master else None
    flops_per_image = 3 * model.flops_per_forward(cfg.max_text_length // 2)     # text length: a typical batch's
    log_file = open(run_dir / "log.jsonl", "a") if master else None

    # ---- loop ---------------------------------------------------------------------------------------------
    loss_sum, loss_count, tick = torch.zeros((), device=device), 0, time.time()
    budget = TimeBudget(cfg, t0, world, device) if cfg.time_budget > 0 and not resume else None
    bar = tqdm(initial=start, total=cfg.steps, disable=not master, dynamic_ncols=True)
    step = start
    while step < cfg.steps:
        if budget is not None and budget.before_step(step):
            bar.total = cfg.steps
            if master:
                atomic_write_json(run_dir / "config.json", dataclasses.asdict(cfg))
                log_file.write(json.dumps({"event": "time_budget", "step": step, "steps": cfg.steps}) + "\n")
                log_file.flush()
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro_step in range(cfg.grad_accum):
            x0, t, captions = training_batch(next(loader), cfg, step,
                                             step_generator(cfg.seed, rank, step, micro_step), device)
            noise_gen = step_generator(cfg.seed, rank, step, micro_step, device)
            noise = torch.randn(x0.shape, generator=noise_gen, device=device)
            text, mask = condition(captions)
            # Gradients are all-reduced only on the last micro-step of the accumulation.
            last = world == 1 or micro_step == cfg.grad_accum - 1
            with contextlib.nullcontext() if last else train_model.no_sync():
                with autocast:
                    loss = flow_matching_loss(train_model, x0, t, noise, text, mask, cfg.loss)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
            loss_count += 1
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_ema(ema, model, step, cfg.ema_decay)
        done = step + 1

        if done % cfg.log_every == 0 or done == cfg.steps:
            if world > 1:
                dist.all_reduce(loss_sum)
            mean_loss = loss_sum.item() / (loss_count * world)                  # the only host sync, when logging
            elapsed, tick = time.time() - tick, time.time()
            images_per_s = loss_count * micro * world / elapsed
            record = {"step": done, "loss": round(mean_loss, 5), "grad_norm": round(grad_norm.item(), 4), "lr": lr,
                      "images_per_s": round(images_per_s, 1)}
            if device.type == "cuda":
                peak = 989e12 * world                                           # H100/H200 dense bf16
                record["mfu"] = round(images_per_s * flops_per_image / peak, 4)
            loss_sum.zero_()
            loss_count = 0
            if master:
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_s:.0f}")
                if heldout is not None and (done % cfg.eval_every < cfg.log_every or done == cfg.steps):
                    record.update(heldout(ema, condition, device))
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
        pause_start = time.time()                                      # grids and checkpoints are not training
        if master and (done % cfg.sample_every == 0 or done == cfg.steps):
            sample_grid(ema, condition, cfg, device, run_dir / "samples" / f"step_{done:07d}.png")
        if master and (done % cfg.ckpt_every == 0 or done == cfg.steps):
            save_checkpoint(run_dir, done, model, ema, optimizer, cfg.keep_ckpts)
        paused = time.time() - pause_start
        tick += paused
        if budget is not None:
            budget.paused_s += paused
        step = done
        bar.update(1)
    bar.close()

    # ---- end: every rank must hold the same weights --------------------------------------------------------
    if world > 1:
        tensors = list(model.parameters()) + list(ema.parameters())
        fingerprint = torch.stack([p.detach().double().sum() for p in tensors])
        gathered = [torch.zeros_like(fingerprint) for _ in range(world)]
        dist.all_gather(gathered, fingerprint)
        in_sync = all(torch.equal(g, gathered[0]) for g in gathered)
    if master:
        final = {"event": "done", "step": step, "wall_s": round(time.time() - t0, 1)}
        if world > 1:
            final["ranks_in_sync"] = in_sync
        log_file.write(json.dumps(final) + "\n")
        log_file.close()
        print(f"done in {final['wall_s']}s: {run_dir}")
    if world > 1:
        # Both ranks tear gloo down together: rank 0 once aborted after its last write ("terminate called without
        # an active exception") while rank 1, with nothing to write, had already torn down.
        dist.barrier()
        dist.destroy_process_group()
    return run_dir


if __name__ == "__main__":
    main()
