"""
Flow matching (rectified flow): the training objective, the paper's image-augmentation rule, the ODE sampler.

The one time convention of this project
---------------------------------------
    t in [0, 1]:  t = 0 is data, t = 1 is pure noise
    x_t = (1 - t) x0 + t eps,        eps ~ N(0, I)                      (a straight line from data to noise)
    v   = dx_t/dt = eps - x0                                             (what the network predicts)
    SNR(t) = ((1 - t) / t)^2                                             (signal / noise power, unit-variance data)

Training draws t from a logit-normal, t = sigmoid(m + s z) with z ~ N(0, 1) (SD3: most samples land in the
middle of the path, where predicting v is hardest and most useful), and regresses the velocity:

    L = E_{x0, eps, t} || v_theta(x_t, t, text) - (eps - x0) ||^2

The network may also output the clean image instead (JiT, Li & He 2025: `DiT(prediction="x")`), turned into
a velocity by the same line, v_theta = (x_t - x0_theta) / t (t >= 0.05). And the errors may be weighted by
t^2 (loss "x"), which is the clean-image error of that parametrisation:

    t^2 || v_theta - v ||^2 = || x0_theta - x0 ||^2        (low noise levels count less; colors and layout,
                                                            decided at high noise, get more of the gradient)

Why x-prediction: with p x p patches each token outputs p^2 C numbers. A velocity contains the noise, which
has full rank, so a 128-wide token cannot produce the 192 numbers of an 8x8x3 patch of noise: samples keep
a floor of noise. A clean patch is low-dimensional and passes through. (Measured in docs/experiments.md.)

Sampling integrates dx/dt = v_theta(x, t, text) from t = 1 (x = eps) down to t = 0 with Euler or Heun steps.
Classifier-free guidance extrapolates from the unconditional (empty prompt) velocity towards the conditional one,

    v = v_uncond + w (v_cond - v_uncond)                                (w = 1: plain conditional model)

on all channels, optionally only for t inside a guidance interval. The time grid is uniform in u and then
shifted, t = a u / (1 + (a - 1) u): a > 1 spends more steps at high noise, where the layout is decided
(larger images/latents carry more redundant signal at the same t, so they need a larger a).

Image augmentation only at high noise (the paper's IA rule)
------------------------------------------------------------
Per sample: draw t; if t > t_mix and u < p_mix (u ~ U[0,1]) train on the CutMix'ed image + its caption instead.
At low noise the model would learn to draw the sharp paste borders; at high noise they are drowned in noise.
The official code uses a signal level gamma = 1 - t_official with x = sqrt(gamma) x0 + sqrt(1 - gamma) eps and
mixes when t_official > 0.4, i.e. SNR = gamma / (1 - gamma) < 0.6 / 0.4 = 1.5. The same SNR in our time:

    ((1 - t) / t)^2 < 1.5   <=>   t > 1 / (1 + sqrt(1.5)) = 0.4495   ->   t_mix = 0.45.

With logit-normal(0, 1) t, P(t > 0.45) = 0.58, so about 29% of the samples are mixed.

Shapes: x0, noise, x_t, v: (B, C, H, W); t: (B,) float; text (B, L, D) embeddings or (B, L) ids; mask (B, L) bool.
"""
from typing import Callable

import torch
import torch.nn as nn


#################################################################################
#                              Training: noise and loss                         #
#################################################################################

def sample_t(n: int, schedule: str = "logit_normal", m: float = 0.0, s: float = 1.0,
             generator: torch.Generator | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """(n,) training times in (0, 1). logit_normal: sigmoid(m + s z); uniform: U(0, 1)."""
    draw_on = generator.device if generator is not None else device        # a generator draws on its own device
    if schedule == "logit_normal":
        t = torch.sigmoid(m + s * torch.randn(n, generator=generator, device=draw_on))
    elif schedule == "uniform":
        t = torch.rand(n, generator=generator, device=draw_on)
    else:
        raise ValueError(f"schedule must be 'logit_normal' or 'uniform', got {schedule!r}")
    return t.to(device) if device is not None else t


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)               # (B,) -> (B,1,1,1)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps."""
    t = _per_sample(t, x0)
    return (1 - t) * x0 + t * noise


def mix_mask(t: torch.Tensor, t_mix: float = 0.45, p_mix: float = 0.5,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) bool: which samples use the mixed (CutMix) image and caption: t > t_mix and u < p_mix."""
    u = torch.rand(t.shape, generator=generator, device=generator.device if generator is not None else t.device)
    return (t > t_mix) & (u.to(t.device) < p_mix)


def flow_matching_loss(model: Callable, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                       text: torch.Tensor, text_mask: torch.Tensor, weighting: str = "v") -> torch.Tensor:
    """Squared error between the predicted and the true velocity eps - x0, averaged over every element (in
    float32); weighting "x" multiplies each sample's error by t^2 (the clean-image error, see above)."""
    v = model(add_noise(x0, noise, t), t, text, text_mask)
    error = (v.float() - (noise - x0).float()) ** 2
    if weighting == "x":
        error = error * _per_sample(t, error) ** 2
    elif weighting != "v":
        raise ValueError(f"weighting must be 'v' or 'x', got {weighting!r}")
    return error.mean()


#################################################################################
#                                ODE Sampler                                    #
#################################################################################

def time_shift(t: torch.Tensor | float, a: float) -> torch.Tensor | float:
    """t' = a t / (1 + (a - 1) t): keeps 0 and 1, increasing in t; a > 1 moves the grid towards noise."""
    return a * t / (1 + (a - 1) * t)


def pad_tokens(text: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (B,L,...) text and (B,L) mask to `length` with zeros / False (masked out, so the model ignores them)."""
    pad = length - text.shape[1]
    if pad == 0:
        return text, mask
    text = torch.cat([text, text.new_zeros(text.shape[0], pad, *text.shape[2:])], dim=1)
    return text, torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], dim=1)


@torch.no_grad()
def sample(model: Callable, noise: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
           null_text: torch.Tensor, null_mask: torch.Tensor, steps: int = 50, method: str = "euler",
           guidance: float = 4.0, guidance_interval: tuple[float, float] = (0.0, 1.0), shift: float = 1.0,
           dtype: torch.dtype | None = None) -> torch.Tensor:
    """Integrate dx/dt = v from t = 1 (x = noise) to t = 0; returns x0 (B,C,H,W) in float32.

    model(x, t, text, mask) -> v; a module or any callable. null_text/null_mask: the empty prompt, batch 1 or B.
    Guidance w applies where guidance_interval[0] <= t <= guidance_interval[1]; elsewhere (and for w = 1) only
    the conditional branch runs. Heun costs 2 evaluations per step; its last step (to t = 0) is plain Euler.
    The ODE state stays in `dtype` (default float64: hundreds of small updates add no rounding drift; float32
    on MPS, which has no float64); the model sees its input in its own dtype."""
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    params = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    model_dtype = params.dtype if params is not None else noise.dtype
    B, device = noise.shape[0], noise.device
    dtype = dtype or (torch.float32 if device.type == "mps" else torch.float64)

    # Cond and uncond in one batch of 2B: pad both texts to a common length (padding is masked out).
    length = max(text.shape[1], null_text.shape[1])
    text, text_mask = pad_tokens(text, text_mask, length)
    null_text = null_text.expand(B, *null_text.shape[1:])
    null_text, null_mask = pad_tokens(null_text, null_mask.expand(B, -1), length)
    text_both, mask_both = torch.cat([text, null_text]), torch.cat([text_mask, null_mask])

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        x_in = x.to(model_dtype)
        if guidance != 1.0 and guidance_interval[0] <= t <= guidance_interval[1]:
            t_in = torch.full((2 * B,), t, device=device)
            v_cond, v_uncond = model(torch.cat([x_in, x_in]), t_in, text_both, mask_both).to(dtype).chunk(2)
            return v_uncond + guidance * (v_cond - v_uncond)
        return model(x_in, torch.full((B,), t, device=device), text, text_mask).to(dtype)

    # The time grid lives on the host as Python floats: no device syncs, and the interval test is exact.
    ts = [time_shift(1.0 - i / steps, shift) for i in range(steps + 1)]
    x = noise.to(dtype)
    for t, t_next in zip(ts[:-1], ts[1:]):
        dt = t_next - t                                                      # negative: we go towards t = 0
        v = velocity(x, t)
        if method == "heun" and t_next > 0:
            v_next = velocity(x + dt * v, t_next)                           # predictor (Euler) ...
            v = 0.5 * (v + v_next)                                          # ... corrector (trapezoid)
        x = x + dt * v
    return x.float()
