"""Tests for diffusion.py: time sampling, noising, the IA rule, the loss (it trains), the ODE sampler
(exact Gaussian velocity), classifier-free guidance and its interval."""
import math

import pytest
import torch

from diffusion import add_noise, flow_matching_loss, mix_mask, sample, sample_t, time_shift
from model import DiT


#################################################################################
#                                   Training side                               #
#################################################################################

def test_sample_t_schedules():
    g = torch.Generator().manual_seed(0)
    t = sample_t(100_000, "logit_normal", m=0.5, s=0.8, generator=g)
    assert t.shape == (100_000,) and (t > 0).all() and (t < 1).all()
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean() - 0.5) < 0.01 and abs(logit.std() - 0.8) < 0.01
    u = sample_t(100_000, "uniform", generator=g)
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    a = sample_t(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, sample_t(5, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError):
        sample_t(4, "cosine")


def test_add_noise_endpoints_and_velocity():
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0.0, 0.3, 1.0])
    xt = add_noise(x0, eps, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], eps[2])
    torch.testing.assert_close(xt[1], 0.7 * x0[1] + 0.3 * eps[1])
    dt = 1e-3  # v = dx_t/dt = eps - x0
    torch.testing.assert_close((add_noise(x0, eps, t + dt) - xt) / dt, eps - x0, atol=1e-3, rtol=1e-3)


def test_mix_mask_is_the_papers_rule():
    g = torch.Generator().manual_seed(0)
    t = sample_t(200_000, generator=g)
    mixed = mix_mask(t, generator=g)
    assert not mixed[t <= 0.45].any()
    expected = 0.5 * (1 - 0.5 * (1 + math.erf(math.log(0.45 / 0.55) / math.sqrt(2))))  # 0.5 P(t > 0.45) = 0.290
    assert abs(mixed.float().mean().item() - expected) < 0.005
    assert abs(mixed[t > 0.45].float().mean().item() - 0.5) < 0.005
    assert torch.equal(mix_mask(t, p_mix=1.0), t > 0.45) and not mix_mask(t, p_mix=0.0).any()
    # t_mix = 0.45 is the official SNR threshold 1.5 written in rectified-flow time.
    assert abs(((1 - 0.4495) / 0.4495) ** 2 - 1.5) < 1e-3


def test_flow_matching_loss_value():
    x0, eps, t = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4), torch.rand(4)
    zero = lambda x, t, text, mask: torch.zeros_like(x)
    torch.testing.assert_close(flow_matching_loss(zero, x0, t, eps, None, None), ((eps - x0) ** 2).mean())
    oracle = lambda x, t_, text, mask: eps - x0
    assert flow_matching_loss(oracle, x0, t, eps, None, None) == 0
    # Weighting "x": each sample's velocity error times t^2, which for v = (x_t - x0_hat) / t is the x0 error.
    x0_hat = x0 + 0.1 * torch.randn_like(x0)
    from_x0 = lambda x, t_, text, mask: (x - x0_hat) / t_.view(-1, 1, 1, 1)
    torch.testing.assert_close(flow_matching_loss(from_x0, x0, t, eps, None, None, "x"), ((x0_hat - x0) ** 2).mean())
    torch.testing.assert_close(flow_matching_loss(zero, x0, t, eps, None, None, "x"),
                               ((eps - x0) ** 2 * t.view(-1, 1, 1, 1) ** 2).mean())
    with pytest.raises(ValueError, match="weighting"):
        flow_matching_loss(zero, x0, t, eps, None, None, "eps")


def test_loss_falls_when_overfitting_a_few_samples():
    torch.manual_seed(0)
    model = DiT(in_channels=3, input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, text_dim=16)
    x0, eps = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t, text, mask = torch.rand(4), torch.randn(4, 5, 16), torch.ones(4, 5, dtype=torch.bool)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = flow_matching_loss(model, x0, t, eps, text, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


#################################################################################
#                                   Sampler                                     #
#################################################################################

MU = torch.tensor([-2.0, -0.5, 0.0, 0.7, 1.5, 3.0, -1.0, 0.2]).view(1, 2, 2, 2)
SIGMA = torch.tensor([0.5, 0.6, 0.8, 1.0, 1.3, 2.0, 0.7, 1.6]).view(1, 2, 2, 2)


def gaussian_velocity(x, t, text=None, mask=None):
    """Exact marginal velocity for x0 ~ N(mu, sigma^2) per dimension. x_t = (1-t) x0 + t eps is Gaussian with
    mean (1-t) mu and variance V = (1-t)^2 sigma^2 + t^2; v = eps - x0 has mean -mu and Cov(v, x_t) =
    t - (1-t) sigma^2, so E[v | x_t] = -mu + (t - (1-t) sigma^2) / V * (x_t - (1-t) mu)."""
    t = t.view(-1, 1, 1, 1).to(x.dtype)
    mu, var = MU.to(x.dtype), SIGMA.to(x.dtype) ** 2
    return -mu + (t - (1 - t) * var) / ((1 - t) ** 2 * var + t ** 2) * (x - (1 - t) * mu)


def sample_gaussian(method, steps, shift=1.0, dtype=torch.float64):
    noise = torch.randn(4096, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    text, mask = torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool)
    x0 = sample(gaussian_velocity, noise, text.expand(4096, 1, 1), mask.expand(4096, 1), text, mask,
                steps=steps, method=method, guidance=1.0, shift=shift, dtype=dtype)
    return x0, MU + SIGMA * noise  # the exact flow maps noise z to mu + sigma z


def relative_errors(x0, exact):
    """Errors of the sample mean and std per dimension, relative to the target sigma."""
    std = exact.std(0)
    return ((x0.mean(0) - exact.mean(0)) / std).abs().max().item(), (x0.std(0) / std - 1).abs().max().item()


@pytest.mark.parametrize("method,steps,shift", [("euler", 100, 1.0), ("heun", 30, 1.0), ("heun", 50, 3.0)])
def test_sampler_reproduces_gaussian_mean_and_std(method, steps, shift):
    x0, exact = sample_gaussian(method, steps, shift)
    assert x0.dtype == torch.float32 and x0.shape == exact.shape
    mean_err, std_err = relative_errors(x0, exact)
    assert mean_err < 0.02 and std_err < 0.02, (mean_err, std_err)
    assert (x0.mean(0) - MU).abs().max() < 0.1 and (x0.std(0) / SIGMA - 1).abs().max() < 0.05  # vs the target


def test_heun_beats_euler_and_coarse_euler_fails():
    exact = sample_gaussian("euler", 100)[1]
    heun = max(relative_errors(sample_gaussian("heun", 10)[0], exact))
    euler = max(relative_errors(sample_gaussian("euler", 10)[0], exact))
    assert heun < 0.25 * euler and euler > 0.02  # the 2% tolerance above has teeth
    f32 = max(relative_errors(sample_gaussian("heun", 30, dtype=torch.float32)[0], exact))
    assert f32 < 0.02


class Recorder:
    """A model with v = constant a for the caption (text value 1) and b for the empty prompt (value 0)."""

    def __init__(self, a=1.0, b=-2.0):
        self.a, self.b, self.calls = a, b, []

    def __call__(self, x, t, text, mask):
        self.calls.append((x.shape[0], round(float(t[0]), 6), x.dtype))
        is_cond = text[:, 0, 0].view(-1, 1, 1, 1)  # 1 for the caption, 0 for the empty prompt
        return torch.ones_like(x) * (self.b + (self.a - self.b) * is_cond)


class Bf16Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.bfloat16))
        self.seen = []

    def forward(self, x, t, text, mask):
        self.seen.append(x.dtype)
        return x * self.scale


def run(model, guidance, interval=(0.0, 1.0), steps=10, method="euler", null_len=1):
    noise = torch.zeros(2, 3, 4, 4)
    text, mask = torch.ones(2, 3, 1), torch.tensor([[True, True, False], [True, True, True]])
    null = torch.zeros(1, null_len, 1), torch.ones(1, null_len, dtype=torch.bool)  # a different length
    return sample(model, noise, text, mask, *null, steps=steps, method=method, guidance=guidance,
                  guidance_interval=interval)


def test_guidance_formula_and_one_equals_no_guidance():
    a, b, w = 1.0, -2.0, 4.0
    rec = Recorder(a, b)
    x0 = run(rec, guidance=w, null_len=5)
    torch.testing.assert_close(x0, torch.full_like(x0, -(b + w * (a - b))))  # x0 = x1 - v over a unit time
    assert all(n == 4 for n, _, _ in rec.calls) and len(rec.calls) == 10  # cond + uncond batched: 2B
    rec = Recorder(a, b)
    x0 = run(rec, guidance=1.0)
    torch.testing.assert_close(x0, torch.full_like(x0, -a))  # the unconditional branch is never used ...
    assert all(n == 2 for n, _, _ in rec.calls)  # ... nor even evaluated


def test_guidance_interval_limits_cfg():
    a, b, w = 1.0, -2.0, 3.0
    rec = Recorder(a, b)
    x0 = run(rec, guidance=w, interval=(0.45, 1.0))  # grid 1.0, 0.9, ..., 0.1: the first 6 steps are guided
    guided = [t for n, t, _ in rec.calls if n == 4]
    assert guided == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    assert [t for n, t, _ in rec.calls if n == 2] == [0.4, 0.3, 0.2, 0.1]
    torch.testing.assert_close(x0, torch.full_like(x0, -(0.6 * (b + w * (a - b)) + 0.4 * a)))


def test_heun_call_pattern_and_model_dtype():
    rec = Recorder()
    run(rec, guidance=1.0, steps=4, method="heun")
    # 3 Heun steps (2 evaluations each) and a final Euler step to t = 0: the model never sees t = 0.
    assert [t for _, t, _ in rec.calls] == [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]
    assert all(dtype == torch.float32 for _, _, dtype in rec.calls)  # a callable is fed the noise's dtype
    model = Bf16Model()  # a module is fed its own dtype; the result comes back in float32
    out = run(model, guidance=2.0, steps=2)
    assert model.seen == [torch.bfloat16, torch.bfloat16] and out.dtype == torch.float32
    with pytest.raises(ValueError):
        run(rec, guidance=1.0, method="rk4")


def test_time_shift():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for a in (0.5, 1.0, 3.0):
        s = time_shift(t, a)
        assert s[0] == 0 and s[-1] == 1 and (s.diff() > 0).all()
    torch.testing.assert_close(time_shift(t, 1.0), t)
    assert time_shift(0.5, 3.0) == 0.75 and (time_shift(t, 3.0) >= t).all()  # a > 1: more time at high noise


def test_batched_guidance_with_a_real_dit_matches_separate_passes():
    torch.manual_seed(0)
    model = DiT(in_channels=3, input_size=8, patch_size=4, hidden_size=32, depth=1, num_heads=2, text_dim=8).eval()
    with torch.no_grad():
        for p in model.parameters():  # leave the all-zero init so text and time matter
            p.add_(torch.randn_like(p) * 0.1)
    noise, text, mask = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    null_text, null_mask = torch.randn(1, 2, 8), torch.ones(1, 2, dtype=torch.bool)
    out = sample(model, noise, text, mask, null_text, null_mask, steps=3, guidance=2.5)
    x = noise.double()
    for t, t_next in [(1.0, 2 / 3), (2 / 3, 1 / 3), (1 / 3, 0.0)]:  # the same Euler steps, one forward per branch
        tt = torch.full((2,), t)
        v_c = model(x.float(), tt, text, mask).double()
        v_u = model(x.float(), tt, null_text.expand(2, -1, -1), null_mask.expand(2, -1)).double()
        x = x + (t_next - t) * (v_u + 2.5 * (v_c - v_u))
    torch.testing.assert_close(out, x.float(), atol=1e-5, rtol=1e-5)
